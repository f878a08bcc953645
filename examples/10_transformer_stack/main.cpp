// A transformer-sized stack of Linear layers (hidden 2048, 8 layers, ReLU between) run through
// the backend in float32, W8A8 (int8 weights per row, int8 activations per row) and W4A8 (int4
// weights in groups of 128, int8 activations per row), at batch 1 and 64. Prints latency,
// tokens per second, weight memory, and each quantized forward's error against float32.
//
// Usage: example_10_transformer_stack [--threads N] [--reps R]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "qforge/backend/cpu_features.hpp"
#include "qforge/backend/registry.hpp"
#include "qforge/backend/threads.hpp"

namespace qb = qforge::backend;

namespace {

constexpr std::int64_t kHidden = 2048, kLayers = 8, kGroup = 128;

struct FloatLayer { std::vector<float> w; };                                  // [out, in]
struct W8Layer { std::vector<std::int8_t> w; std::vector<float> scales; };   // per row
struct W4Layer { std::vector<std::uint8_t> w; std::vector<float> scales; };  // groups of 128

void relu(std::vector<float>& x) {
  for (float& v : x) v = std::max(v, 0.0f);
}

// One forward of the stack: layer(i, in, out) computes out = in * W_i^T.
using LayerFn = std::function<void(std::int64_t, const float*, float*, std::int64_t)>;
std::vector<float> forward(const LayerFn& layer, const std::vector<float>& input, std::int64_t batch) {
  std::vector<float> x = input, y(x.size());
  for (std::int64_t i = 0; i < kLayers; ++i) {
    layer(i, x.data(), y.data(), batch);
    if (i + 1 < kLayers) relu(y);
    std::swap(x, y);
  }
  return x;
}

double median_ms(const std::function<void()>& fn, int reps) {
  fn();  // warm-up
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--threads") == 0) qb::set_num_threads(std::atoi(argv[i + 1]));
    else if (std::strcmp(argv[i], "--reps") == 0) reps = std::max(1, std::atoi(argv[i + 1]));
  }
  std::printf("qforge transformer stack: %lld Linear layers, hidden %lld, ReLU between\n",
              static_cast<long long>(kLayers), static_cast<long long>(kHidden));
  std::printf("CPU: %s, ISA %s, %d threads\n\n", qb::cpu_features().model.c_str(),
              std::string(qb::to_string(qb::active_isa())).c_str(), qb::num_threads());

  // Weights ~ N(0, 2 / hidden) keep activations at a steady scale through the ReLUs.
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, std::sqrt(2.0f / kHidden));
  std::vector<FloatLayer> fl(kLayers);
  std::vector<W8Layer> w8(kLayers);
  std::vector<W4Layer> w4(kLayers);
  for (std::int64_t i = 0; i < kLayers; ++i) {
    fl[i].w.resize(kHidden * kHidden);
    for (float& v : fl[i].w) v = dist(rng);
    w8[i].w.resize(kHidden * kHidden);
    w8[i].scales.resize(kHidden);
    qb::run(qb::QuantizeRowsOp{qb::RowFormat::kInt8, kHidden, kHidden, kHidden, fl[i].w.data(), kHidden, w8[i].w.data(),
                               w8[i].scales.data()});
    w4[i].w.resize(kHidden * kHidden / 2);
    w4[i].scales.resize(kHidden * kHidden / kGroup);
    qb::run(qb::QuantizeRowsOp{qb::RowFormat::kInt4, kHidden, kHidden, kGroup, fl[i].w.data(), kHidden, w4[i].w.data(),
                               w4[i].scales.data()});
  }
  const double mb = 1024.0 * 1024.0;
  const double bytes_f32 = kLayers * kHidden * kHidden * 4.0;
  const double bytes_w8 = kLayers * (kHidden * kHidden + kHidden * 4.0);
  const double bytes_w4 = kLayers * (kHidden * kHidden / 2.0 + kHidden * kHidden / kGroup * 4.0);

  const LayerFn f32 = [&](std::int64_t i, const float* x, float* y, std::int64_t b) {
    qb::run(qb::GemmF32Op{b, kHidden, kHidden, x, kHidden, fl[i].w.data(), kHidden, y, kHidden});
  };
  const LayerFn a8w8 = [&](std::int64_t i, const float* x, float* y, std::int64_t b) {
    qb::run(qb::GemmW8A8Op{b, kHidden, kHidden, x, kHidden, w8[i].w.data(), w8[i].scales.data(), y, kHidden});
  };
  const LayerFn a8w4 = [&](std::int64_t i, const float* x, float* y, std::int64_t b) {
    qb::run(qb::GemmW4A8Op{b, kHidden, kHidden, kGroup, x, kHidden, w4[i].w.data(), w4[i].scales.data(), y, kHidden});
  };
  const LayerFn a16w4 = [&](std::int64_t i, const float* x, float* y, std::int64_t b) {
    qb::run(qb::GemmW4A16Op{b, kHidden, kHidden, kGroup, x, kHidden, w4[i].w.data(), w4[i].scales.data(), y, kHidden});
  };
  struct Variant { const char* name; const LayerFn* fn; double bytes; };
  const Variant variants[] = {{"float32", &f32, bytes_f32},
                              {"W8A8 (int8 per row)", &a8w8, bytes_w8},
                              {"W4A8 (int4 g128)", &a8w4, bytes_w4},
                              {"W4A16 (int4 g128, fused dequant)", &a16w4, bytes_w4}};

  std::printf("%-34s %6s %12s %12s %12s %12s\n", "variant", "batch", "latency ms", "tokens/s", "weights MB", "rel. error");
  for (std::int64_t batch : {1, 64}) {
    std::vector<float> input(static_cast<std::size_t>(batch * kHidden));
    std::normal_distribution<float> in(0.0f, 1.0f);
    for (float& v : input) v = in(rng);
    const std::vector<float> want = forward(f32, input, batch);
    for (const Variant& v : variants) {
      if (batch > 1 && v.fn == &a16w4) continue;  // W4A16 is the batch-1 (GEMV) path
      std::vector<float> got;
      const double ms = median_ms([&] { got = forward(*v.fn, input, batch); }, reps);
      std::printf("%-34s %6lld %12.2f %12.1f %12.1f %12.4f\n", v.name, static_cast<long long>(batch), ms,
                  static_cast<double>(batch) / (ms / 1000.0), v.bytes / mb, relative_error(got, want));
    }
  }
  return 0;
}
