// Handwritten digits with an MLP, trained in C++, and the accuracy of any checkpoint of it.
//
//   example_01_digits_mlp train [--data build/data/digits.csv] [--save models/digits_mlp.safetensors]
//   example_01_digits_mlp eval FILE [--data ...]     FILE: .safetensors or .gguf, quantized or not
//
// `eval` loads the weights by name (GGUF block types and qforge's quantized safetensors are
// dequantized on load) and reports test accuracy on the same seeded split `train` used, so the
// cost of a quantized checkpoint is measured on data the model never saw.
#include <cstdio>
#include <cstring>
#include <string>

#include "qforge/nn/nn.hpp"
#include "qforge/nn/state.hpp"
#include "qforge/nn/zoo.hpp"

namespace {

constexpr std::uint64_t kSplitSeed = 2026;  // the split the shipped model was trained on
constexpr std::uint64_t kInitSeed = 7;

std::unique_ptr<qforge::nn::Mlp> make_model() {
  qforge::nn::Rng rng(kInitSeed);
  return std::make_unique<qforge::nn::Mlp>(std::vector<std::int64_t>{64, 128, 64, 10}, rng);
}

int usage() {
  std::fprintf(stderr, "usage: example_01_digits_mlp train [--data CSV] [--save OUT.safetensors]\n"
                       "       example_01_digits_mlp eval FILE [--data CSV]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace qforge;
  if (argc < 2) return usage();
  const std::string mode = argv[1];
  std::string data_path = data::default_digits_path(QFORGE_SOURCE_DIR), save_path, eval_path;
  for (int i = 2; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--data") && i + 1 < argc) data_path = argv[++i];
    else if (!std::strcmp(argv[i], "--save") && i + 1 < argc) save_path = argv[++i];
    else if (mode == "eval" && eval_path.empty()) eval_path = argv[i];
    else return usage();
  }
  try {
    const auto split = data::split_digits(data::load_digits(data_path), 0.2, kSplitSeed);
    auto model = make_model();
    if (mode == "train") {
      nn::TrainOptions opt;
      opt.epochs = 40;
      const double loss = nn::train_classifier(*model, split.train, opt);
      std::printf("trained MLP 64-128-64-10 on %lld digits: final loss %.4f, test accuracy %.4f (%lld images)\n",
                  static_cast<long long>(split.train.size()), loss, nn::accuracy(*model, split.test),
                  static_cast<long long>(split.test.size()));
      if (!save_path.empty()) {
        nn::save_parameters(*model, save_path,
                            {{"model", "mlp 64-128-64-10"}, {"dataset", "digits (sklearn/UCI), 8x8, pixels/16"},
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
    std::fprintf(stderr, "example_01_digits_mlp: error: %s\n", e.what());
    return 1;
  }
}
