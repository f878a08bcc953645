// Reference integer matrix product of two QArrays: the semantics every backend's quantized GEMM
// must reproduce. dst[m, n] = sum_k dq(a)[m, k] * dq(b)[n, k], computed as int32 dot products of
// codes within each scale tile along K, times the two scales, with a zero-point correction when
// exactly one operand is asymmetric (Qwix dot_general: "only one operand may be asymmetric").
//
// a: [M, K] (activations, one row per token); b: [N, K] (weights, the checkpoint layout).
// Scales are [M, Ta] and [N, Tb] with Ta, Tb each 1 or a common tile count T along K.
#pragma once

#include <cstdint>

#include "qforge/core/qarray.hpp"

namespace qforge {

inline TensorF integer_matmul(const QArray& a, const QArray& b) {
  if (a.shape().size() != 2 || b.shape().size() != 2 || a.shape()[1] != b.shape()[1])
    throw_error(Status::kShapeMismatch, "integer_matmul: need a [M, K] and b [N, K], got {} and {}",
                shape_str(a.shape()), shape_str(b.shape()));
  for (const QArray* q : {&a, &b})
    if (!is_integer(q->qtype()))
      throw_error(Status::kUnsupported, "integer_matmul: qtype {} is not an integer type; dequantize instead",
                  to_string(q->qtype()));
  if (a.zero_point() && b.zero_point())
    throw_error(Status::kUnsupported, "integer_matmul: only one operand may carry a zero point");
  const std::int64_t M = a.shape()[0], N = b.shape()[0], K = a.shape()[1];
  const std::int64_t ta = a.scale().shape()[1], tb = b.scale().shape()[1];
  if (a.scale().shape()[0] != M && a.scale().shape()[0] != 1)
    throw_error(Status::kShapeMismatch, "integer_matmul: scale of a must be per-row or per-tensor");
  if (b.scale().shape()[0] != N && b.scale().shape()[0] != 1)
    throw_error(Status::kShapeMismatch, "integer_matmul: scale of b must be per-row or per-tensor");
  if (ta != 1 && tb != 1 && ta != tb)
    throw_error(Status::kShapeMismatch, "integer_matmul: K tiles differ ({} vs {})", ta, tb);
  const std::int64_t tiles = std::max(ta, tb);
  const std::int64_t tile = K / tiles;
  auto scale_at = [](const QArray& q, std::int64_t row, std::int64_t t) {
    const auto& s = q.scale();
    const std::int64_t r = s.shape()[0] == 1 ? 0 : row;
    const std::int64_t c = s.shape()[1] == 1 ? 0 : t;
    return std::pair<float, std::int32_t>{s.at(r, c), q.zero_point() ? q.zero_point()->at(r, c) : 0};
  };
  TensorF dst({M, N});
  for (std::int64_t m = 0; m < M; ++m) {
    for (std::int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (std::int64_t t = 0; t < tiles; ++t) {
        std::int64_t dot = 0, sum_a = 0, sum_b = 0;  // int64: int16 codes overflow int32 sums
        for (std::int64_t k = t * tile; k < (t + 1) * tile; ++k) {
          const std::int64_t qa = a.code(m * K + k), qb = b.code(n * K + k);
          dot += qa * qb;
          sum_a += qa;
          sum_b += qb;
        }
        const auto [sa, za] = scale_at(a, m, t);
        const auto [sb, zb] = scale_at(b, n, t);
        // (qa - za) . (qb - zb) with at most one of za, zb non-zero.
        const std::int64_t corrected = dot - static_cast<std::int64_t>(za) * sum_b -
                                       static_cast<std::int64_t>(zb) * sum_a;
        acc += static_cast<double>(corrected) * sa * sb;
      }
      dst.at(m, n) = static_cast<float>(acc);
    }
  }
  return dst;
}

}  // namespace qforge
