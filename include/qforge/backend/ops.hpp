// The closed set of heavy operations a Backend executes. Each op is a plain struct of pointers
// and sizes (no ownership); Op is their std::variant, so adding an op is a compile error in every
// backend until it handles (or declines) it. Layouts are row-major; weights are [N, K] (out, in).
#pragma once

#include <cstdint>
#include <string_view>
#include <variant>

#include "qforge/core/matmul.hpp"

namespace qforge::backend {

// dst[M, N] (+)= a[M, K] * b[N, K]^T, all float32. lda/ldb/ldd are row strides in elements.
struct GemmF32Op {
  std::int64_t M = 0, N = 0, K = 0;
  const float* a = nullptr;
  std::int64_t lda = 0;
  const float* b = nullptr;
  std::int64_t ldb = 0;
  float* dst = nullptr;
  std::int64_t ldd = 0;
  bool accumulate = false;
};

// Symmetric rank-k update for Hessian statistics: h[K, K] += alpha * x[T, K]^T x[T, K].
// The full matrix is written (both triangles), so callers never symmetrise.
struct SyrkOp {
  std::int64_t T = 0, K = 0;
  const float* x = nullptr;
  std::int64_t ldx = 0;
  float* h = nullptr;
  float alpha = 1.0f;
};

// dst[M, N] = a_codes[M, K] * b_codes[N, K]^T with int32 accumulation, int8 operands.
struct GemmS8S8S32Op {
  std::int64_t M = 0, N = 0, K = 0;
  const std::int8_t* a = nullptr;
  const std::int8_t* b = nullptr;
  std::int32_t* dst = nullptr;
};

// dst[M, N] = dq(a)[M, K] * dq(b)[N, K]^T computed in integers: integer dot products of the codes
// within each K tile, times both scales, with a zero-point correction for one asymmetric
// operand. The semantics are core/matmul.hpp's integer_matmul; a and b are integer QArrays whose
// scales are [M or 1, T] and [N or 1, T].
struct QuantizedMatmulOp {
  const QArray* a = nullptr;
  const QArray* b = nullptr;
  float* dst = nullptr;  // M x N, row-major
};

using Op = std::variant<GemmF32Op, SyrkOp, GemmS8S8S32Op, QuantizedMatmulOp>;

inline std::string_view op_name(const Op& op) {
  struct Namer {
    std::string_view operator()(const GemmF32Op&) const { return "gemm_f32"; }
    std::string_view operator()(const SyrkOp&) const { return "syrk_f32"; }
    std::string_view operator()(const GemmS8S8S32Op&) const { return "gemm_s8s8s32"; }
    std::string_view operator()(const QuantizedMatmulOp&) const { return "quantized_matmul"; }
  };
  return std::visit(Namer{}, op);
}

}  // namespace qforge::backend
