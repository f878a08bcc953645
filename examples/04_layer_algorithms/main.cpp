// RTN, GPTQ, QEP and JointQ on a model loaded from a file: the shipped digits MLP
// (models/digits_mlp.safetensors, 64-128-64-10) quantized at low bit widths by each method, with
// a per-layer error table and the test accuracy of every result.
//
//   example_04_layer_algorithms [--model models/digits_mlp.safetensors] [--data build/data/digits.csv]
//                               [--bits 4,3,2] [--group-size 16] [--calibration 512]
//
// The digits come from scripts/fetch-digits.sh. Calibration uses the first --calibration
// training images in batches of 128; errors and accuracy are measured on the 359 held-out test
// images. Per layer: w = ‖W − Ŵ‖²/‖W‖², out = ‖Y − Ŷ‖²/‖Y‖² where Y is the layer's product in the
// float model and Ŷ in the quantized one (so it includes the error reaching the layer from
// earlier ones). RTN rounds each group of the same asymmetric grid to nearest; GPTQ, QEP and
// JointQ run through providers::calibrate_and_quantize with their default settings.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "qforge/nn/state.hpp"
#include "qforge/nn/zoo.hpp"
#include "qforge/providers/calibrating.hpp"

namespace {

using namespace qforge;

constexpr std::uint64_t kSplitSeed = 2026;  // the split the shipped model was trained on

std::unique_ptr<nn::Mlp> load_model(const std::string& path) {
  nn::Rng rng(0);
  auto m = std::make_unique<nn::Mlp>(std::vector<std::int64_t>{64, 128, 64, 10}, rng);
  nn::load_parameters(*m, formats::Checkpoint(path));
  return m;
}

// Records the float product of every weight site (its output) on one forward pass.
class OutputCapture : public nn::Interceptor {
 public:
  std::optional<nn::Var> intercept(nn::Context&, const nn::SiteCall& call) override {
    nn::Var y = nn::Context::float_product(call);
    outputs[call.site.module_path] = y.value();
    return y;
  }
  std::map<std::string, TensorF> outputs;
};

std::map<std::string, TensorF> layer_outputs(nn::Module& m, const TensorF& x) {
  OutputCapture c;
  nn::Context ctx(&c, false);
  m.forward(ctx, nn::Var(x));
  return std::move(c.outputs);
}

double rel_err(const TensorF& ref, const TensorF& q) {
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(ref[i]) - q[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return den > 0 ? num / den : 0.0;
}

// Round to nearest on the layer grid, weight by weight (no calibration data).
void quantize_rtn(nn::Module& m, const algorithms::GridSpec& grid) {
  for (auto& [name, p] : m.named_parameters()) {
    TensorF& w = p->var.value();
    if (w.rank() != 2) continue;
    const auto q = algorithms::quantize_rtn(w.data(), w.dim(0), w.dim(1), grid, name);
    std::copy(q.weight.begin(), q.weight.end(), w.data());
  }
}

struct Method {
  std::string name;
  std::function<void(nn::Module&, const providers::Batches&)> run;
};

std::vector<int> parse_bits(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  for (std::string t; std::getline(ss, t, ',');) out.push_back(std::stoi(t));
  return out;
}

int usage() {
  std::fprintf(stderr, "usage: example_04_layer_algorithms [--model FILE] [--data CSV] [--bits 4,3,2] [--group-size N] "
                       "[--calibration N]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path = std::string(QFORGE_SOURCE_DIR) + "/models/digits_mlp.safetensors";
  std::string data_path = data::default_digits_path(QFORGE_SOURCE_DIR), bits_arg = "4,3,2";
  std::int64_t group_size = 16, calibration = 512;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--model") && i + 1 < argc) model_path = argv[++i];
    else if (!std::strcmp(argv[i], "--data") && i + 1 < argc) data_path = argv[++i];
    else if (!std::strcmp(argv[i], "--bits") && i + 1 < argc) bits_arg = argv[++i];
    else if (!std::strcmp(argv[i], "--group-size") && i + 1 < argc) group_size = std::stoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--calibration") && i + 1 < argc) calibration = std::stoll(argv[++i]);
    else return usage();
  }
  try {
    const auto split = data::split_digits(data::load_digits(data_path), 0.2, kSplitSeed);
    providers::Batches batches;
    const std::int64_t n = std::min(calibration, split.train.size());
    for (std::int64_t b = 0; b < n; b += 128) {
      const std::int64_t e = std::min(n, b + 128);
      batches.emplace_back(Shape{e - b, 64}, std::vector<float>(split.train.images.data() + b * 64, split.train.images.data() + e * 64));
    }
    auto fp = load_model(model_path);
    const auto ref = layer_outputs(*fp, split.test.images);
    std::printf("%s: float test accuracy %.2f%% (%lld images); calibration: %lld training images\n\n", model_path.c_str(),
                100 * nn::accuracy(*fp, split.test), static_cast<long long>(split.test.size()), static_cast<long long>(n));

    for (int bits : parse_bits(bits_arg)) {
      const auto qtype = providers::detail::int_qtype(bits);
      algorithms::GridSpec grid = algorithms::parse_grid("int" + std::to_string(bits));
      grid.sym = false;
      grid.group_size = group_size;
      rules::GptqRule gptq;
      gptq.weight_qtype = qtype;
      gptq.group_size = group_size;
      rules::QepRule qep;
      qep.weight_qtype = qtype;
      qep.group_size = group_size;
      rules::JointqRule jointq;
      jointq.weight_qtype = qtype;
      jointq.group_size = group_size;
      auto via = [](rules::AlgorithmRule r) {
        return [r](nn::Module& m, const providers::Batches& b) { providers::calibrate_and_quantize(m, {r}, b); };
      };
      const std::vector<Method> methods = {{"RTN", [grid](nn::Module& m, const providers::Batches&) { quantize_rtn(m, grid); }},
                                           {"GPTQ", via(gptq)},
                                           {"QEP", via(qep)},
                                           {"JointQ", via(jointq)}};
      std::printf("int%d g%lld asymmetric\n\n| method |", bits, static_cast<long long>(group_size));
      for (const auto& [layer, y] : ref) std::printf(" %s w | %s out |", layer.c_str(), layer.c_str());
      std::printf(" test acc | seconds |\n|---|");
      for (std::size_t i = 0; i < ref.size(); ++i) std::printf("---:|---:|");
      std::printf("---:|---:|\n");
      for (const auto& method : methods) {
        auto q = load_model(model_path);
        const auto start = std::chrono::steady_clock::now();
        method.run(*q, batches);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const auto out = layer_outputs(*q, split.test.images);
        std::printf("| %s |", method.name.c_str());
        for (const auto& [layer, y] : ref) {
          const std::string w = layer + ".weight";
          std::printf(" %.2e | %.2e |", rel_err(fp->parameter(w)->var.value(), q->parameter(w)->var.value()),
                      rel_err(y, out.at(layer)));
        }
        std::printf(" %.2f%% | %.2f |\n", 100 * nn::accuracy(*q, split.test), secs);
        std::fflush(stdout);
      }
      std::printf("\n");
    }
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "example_04_layer_algorithms: error: %s\n", e.what());
    return 1;
  }
}
