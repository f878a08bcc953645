// Handwritten digits with a small CNN (Conv2d on the 8x8 images), trained in C++, and the
// accuracy of any checkpoint of it.
//
//   example_02_digits_cnn train [--data build/data/digits.csv] [--epochs N] [--save OUT.safetensors]
//   example_02_digits_cnn eval FILE [--data ...]     FILE: .safetensors or .gguf, quantized or not
//
// The split (seed 2026, last 20% held out) is the one example_01_digits_mlp uses, so the MLP and
// the CNN are measured on the same images.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "qforge/nn/nn.hpp"
#include "qforge/nn/state.hpp"
#include "qforge/nn/zoo.hpp"

namespace {

constexpr std::uint64_t kSplitSeed = 2026;
constexpr std::uint64_t kInitSeed = 11;

std::unique_ptr<qforge::nn::DigitsCnn> make_model() {
  qforge::nn::Rng rng(kInitSeed);
  return std::make_unique<qforge::nn::DigitsCnn>(rng);
}

int usage() {
  std::fprintf(stderr, "usage: example_02_digits_cnn train [--data CSV] [--epochs N] [--save OUT.safetensors]\n"
                       "       example_02_digits_cnn eval FILE [--data CSV]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace qforge;
  if (argc < 2) return usage();
  const std::string mode = argv[1];
  std::string data_path = data::default_digits_path(QFORGE_SOURCE_DIR), save_path, eval_path;
  int epochs = 15;
  for (int i = 2; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--data") && i + 1 < argc) data_path = argv[++i];
    else if (!std::strcmp(argv[i], "--save") && i + 1 < argc) save_path = argv[++i];
    else if (!std::strcmp(argv[i], "--epochs") && i + 1 < argc) epochs = std::atoi(argv[++i]);
    else if (mode == "eval" && eval_path.empty()) eval_path = argv[i];
    else return usage();
  }
  if (epochs <= 0) return usage();
  try {
    const auto split = data::split_digits(data::load_digits(data_path), 0.2, kSplitSeed);
    auto model = make_model();
    if (mode == "train") {
      nn::TrainOptions opt;
      opt.epochs = epochs;
      const auto start = std::chrono::steady_clock::now();
      const double loss = nn::train_classifier(*model, split.train, opt);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("trained CNN conv3x3(1->16) conv3x3/2(16->32) linear(512->10) on %lld digits, %d epochs in %.1f s: "
                  "final loss %.4f, test accuracy %.4f (%lld images)\n",
                  static_cast<long long>(split.train.size()), epochs, seconds, loss, nn::accuracy(*model, split.test),
                  static_cast<long long>(split.test.size()));
      if (!save_path.empty()) {
        nn::save_parameters(*model, save_path,
                            {{"model", "cnn conv3x3(1->16) relu conv3x3s2(16->32) relu linear(512->10)"},
                             {"dataset", "digits (sklearn/UCI), 8x8, pixels/16"},
                             {"split", "seeded shuffle 2026, last 20% test"}});
        std::printf("saved %s\n", save_path.c_str());
      }
      return 0;
    }
    if (mode == "eval" && !eval_path.empty()) {
      nn::load_parameters(*model, formats::Checkpoint(eval_path));
      std::printf("%-40s test accuracy %.4f\n", eval_path.c_str(), nn::accuracy(*model, split.test));
      return 0;
    }
    return usage();
  } catch (const Error& e) {
    std::fprintf(stderr, "example_02_digits_cnn: error: %s\n", e.what());
    return 1;
  }
}
