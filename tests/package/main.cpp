// Uses the installed headers and the compiled CPU backend: quantizes a small matrix to int4
// with tiles, multiplies through the backend registry, and checks the documented error bound.
#include <cmath>
#include <cstdio>

#include "qforge/qforge.hpp"

int main() {
  using namespace qforge;
  TensorF w({4, 64});
  for (std::int64_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.37f * static_cast<float>(i));
  const QArray q = quantize(w, {QType::kInt4, {0}, {{1, std::int64_t{32}}}, "absmax"});
  const TensorF dq = dequantize(q);
  const QuantLayout layout = q.layout();
  bool within_bound = true;
  layout.for_each([&](std::int64_t e, std::int64_t c) {
    // scale/2 plus float rounding: the scale is up to 1 ulp below absmax/7.5 and dq is rounded
    // once to float, together less than 2^-22 |w| (docs/user-guide.md, "Error bounds").
    within_bound = within_bound && std::fabs(w[e] - dq[e]) <= q.scale()[c] / 2 + std::ldexp(std::fabs(w[e]), -22);
  });
  float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, d[4] = {};
  backend::run(backend::GemmF32Op{2, 2, 2, a, 2, b, 2, d, 2});
  const bool gemm_ok = d[0] == 1 && d[1] == 2 && d[2] == 3 && d[3] == 4;
  std::printf("qforge package consumer: backends=%zu int4 bound %s, gemm %s\n",
              backend::Registry::instance().backends().size(), within_bound ? "ok" : "VIOLATED",
              gemm_ok ? "ok" : "WRONG");
  return within_bound && gemm_ok ? 0 : 1;
}
