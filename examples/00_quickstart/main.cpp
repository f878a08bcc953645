// Quick start: quantize a weight matrix three ways and look at what each costs.
//
//   build/release/examples/example_00_quickstart
//
// Per-channel int8, int4 in tiles of 32 along the input axis, and NF4 in blocks of 64; for each,
// the scale shape, the bytes, the relative RMSE and the worst element in units of its scale
// (at most 0.5 for integer grids with absmax/minmax; more for mse, which clips on purpose, and
// for fp8/nf4, whose steps grow with the magnitude).
#include <cmath>
#include <cstdio>
#include <random>

#include "qforge/qforge.hpp"

namespace {

qforge::TensorF random_weight(std::int64_t out, std::int64_t in, std::uint64_t seed) {
  qforge::TensorF w({out, in});
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (std::int64_t i = 0; i < w.size(); ++i) w[i] = normal(rng);
  return w;
}

void report(const char* label, const qforge::TensorF& w, const qforge::HowToQuantize& how) {
  using namespace qforge;
  QuantizeOptions options;
  options.name = label;  // named in any error message
  const QArray q = quantize(w, how, options);
  const TensorF dq = dequantize(q);
  double err2 = 0, ref2 = 0, worst_ratio = 0;
  q.layout().for_each([&](std::int64_t e, std::int64_t c) {
    const double d = w[e] - dq[e];
    err2 += d * d;
    ref2 += double(w[e]) * w[e];
    worst_ratio = std::max(worst_ratio, std::fabs(d) / q.scale()[c]);
  });
  std::printf("%-28s scale %-10s %8zu bytes (fp32 %zu)  rel. RMSE %.4f  worst |err|/scale %.3f\n", label,
              shape_str(q.scale().shape()).c_str(), q.nbytes(), static_cast<std::size_t>(w.size()) * 4,
              std::sqrt(err2 / ref2), worst_ratio);
}

}  // namespace

int main() {
  using namespace qforge;
  const TensorF w = random_weight(256, 512, 2026);
  report("int8 per output channel", w, {QType::kInt8, {0}, {}, "absmax"});
  report("int4, tiles of 32", w, {QType::kInt4, {0}, {{1, std::int64_t{32}}}, "absmax"});
  report("int4, tiles of 32, mse", w, {QType::kInt4, {0}, {{1, std::int64_t{32}}}, "mse"});
  report("uint4 asymmetric, tiles 32", w, {QType::kUInt4, {0}, {{1, std::int64_t{32}}}, "minmax"});
  report("nf4, blocks of 64", w, {QType::kNf4, {0}, {{1, std::int64_t{64}}}, "absmax"});
  report("fp8 e4m3 per channel", w, {QType::kFp8E4M3, {0}, {}, "absmax"});
  try {
    QuantizeOptions options;
    options.name = "demo.weight";
    quantize(w, {QType::kInt4, {}, {{1, std::int64_t{48}}}, "absmax"}, options);
  } catch (const Error& e) {
    std::printf("a bad tile is an error: %s\n", e.what());
  }
  return 0;
}
