// Helpers the provider tests share: seeded uniform tensors, the max-abs relative difference, and
// the check of QT's integer backward product against its exact scheme and its rounding bound.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>

#include "qforge/core/qarray.hpp"
#include "qforge/nn/nn.hpp"

namespace qforge::providers::test_util {

inline TensorF random_tensor(Shape shape, std::uint64_t seed, float lo = -1, float hi = 1) {
  TensorF t(std::move(shape));
  nn::Rng rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  for (auto& v : t.vec()) v = d(rng);
  return t;
}

// max |a − b| / max |b|.
inline double max_rel_diff(const TensorF& a, const TensorF& b) {
  double scale = 0, diff = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, double(std::fabs(b[i])));
    diff = std::max(diff, double(std::fabs(a[i] - b[i])));
  }
  return diff / scale;
}

struct Check {
  double exact_ratio = 0;   // max |got − the integer scheme in double| / float-rounding allowance (≤ 1)
  double bound_ratio = 0;   // max |got − float reference| / derived bound (must stay ≤ 1)
  double float_rel = 0;     // max |got − float reference| / max |float reference|
};

// got[P, K] should be G[P, R] · dq(q)[R, K] with q's scale [R or 1, T] (zero point likewise).
// Per K tile j the gradient G ⊙ s[:, j] is quantized per row to int8 with scale
// sg[p, j] = max_r |G[p, r]·s[r, j]| / 127.5, so rounding moves each of its entries by at most
// sg/2 and the result by at most sg[p, j]/2 · Σ_r |q[r, k] − z[r, j]|; float rounding of the
// final scaling (and of the zero-point subtraction) adds a few ulps of the two integer terms.
inline Check check_backward(const TensorF& G, const QArray& q, const TensorF& got) {
  const std::int64_t P = G.shape()[0], R = q.shape()[0], K = q.shape()[1], T = q.scale().shape()[1], tile = K / T;
  const bool per_row = q.scale().shape()[0] == R;
  const TensorF dq = dequantize(q);
  Check c;
  double ref_max = 0, diff_max = 0;
  for (std::int64_t j = 0; j < T; ++j) {
    TensorF gj = G;
    for (std::int64_t p = 0; p < P; ++p)
      for (std::int64_t r = 0; r < R; ++r) gj.at(p, r) *= q.scale().at(per_row ? r : 0, j);
    const TensorF gq = fake_quantize(gj, {QType::kInt8, {0}, {}, "absmax"});
    for (std::int64_t p = 0; p < P; ++p) {
      double sg = 0;
      for (std::int64_t r = 0; r < R; ++r) sg = std::max(sg, std::fabs(double(gj.at(p, r))) / 127.5);
      for (std::int64_t k = j * tile; k < (j + 1) * tile; ++k) {
        double exact = 0, ref = 0, codes = 0, magnitude = 0;
        for (std::int64_t r = 0; r < R; ++r) {
          const double z = q.zero_point() ? q.zero_point()->at(per_row ? r : 0, j) : 0;
          const double v = q.value(r * K + k) - z;
          exact += double(gq.at(p, r)) * v;
          ref += double(G.at(p, r)) * dq.at(r, k);
          codes += std::fabs(v);
          magnitude += std::fabs(q.value(r * K + k)) + std::fabs(z);
        }
        const double g = got.at(p, k);
        const double rounding = 4e-6 * sg * 128 * magnitude + 1e-30;  // a few float32 ulps of the integer terms
        const double bound = 0.5 * sg * codes + rounding;
        c.exact_ratio = std::max(c.exact_ratio, std::fabs(g - exact) / rounding);
        c.bound_ratio = std::max(c.bound_ratio, std::fabs(g - ref) / bound);
        ref_max = std::max(ref_max, std::fabs(ref));
        diff_max = std::max(diff_max, std::fabs(g - ref));
      }
    }
  }
  c.float_rel = diff_max / ref_max;
  return c;
}

}  // namespace qforge::providers::test_util
