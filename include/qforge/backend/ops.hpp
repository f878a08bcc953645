// The closed set of heavy operations a Backend executes. Each op is a plain struct of pointers
// and sizes (no ownership); Op is their std::variant, so adding an op is a compile error in every
// backend until it handles (or declines) it. Layouts are row-major; weights are [N, K] (out, in).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include "qforge/core/matmul.hpp"
#include "qforge/formats/gguf_blocks.hpp"

namespace qforge::backend {

// dst[M, N] = alpha * a[M, K] * b[N, K]^T (+ dst when accumulating), all float32. lda/ldb/ldd
// are row strides in elements. a_km stores a as [K, M] and b_kn stores b as [K, N] instead, so
// that algorithms can multiply by a transposed panel of a larger matrix without copying it.
struct GemmF32Op {
  std::int64_t M = 0, N = 0, K = 0;
  const float* a = nullptr;
  std::int64_t lda = 0;
  const float* b = nullptr;
  std::int64_t ldb = 0;
  float* dst = nullptr;
  std::int64_t ldd = 0;
  bool accumulate = false;
  float alpha = 1.0f;
  bool a_km = false;
  bool b_kn = false;
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

// ---- row quantization (int8 per row / int4 in groups) ------------------------------------------
// Symmetric quantization of each row of x[rows, cols] in groups of `group` columns (group == cols:
// one scale per row; cols % group == 0, and group even for int4):
//   s = absmax(group) / qmax,  inv = (s != 0 ? 1 / s : 0),  q = clamp(rne(x * inv), -qmax, qmax)
// with qmax = 127 (int8) or 7 (int4) and rne = round to nearest, ties to even (the rounding SIMD
// conversions use, so every ISA produces the same codes). Codes are row-major with no padding:
// int8 one byte each; int4 two's-complement nibbles, element 2i in the low nibble of byte i and
// element 2i+1 in the high nibble. scales is [rows, cols / group].
enum class RowFormat { kInt8, kInt4 };

inline int row_format_qmax(RowFormat f) { return f == RowFormat::kInt8 ? 127 : 7; }
inline std::int64_t row_format_bytes(RowFormat f, std::int64_t cols) { return f == RowFormat::kInt8 ? cols : cols / 2; }

struct QuantizeRowsOp {
  RowFormat format = RowFormat::kInt8;
  std::int64_t rows = 0, cols = 0, group = 0;
  const float* x = nullptr;
  std::int64_t ldx = 0;  // row stride of x in floats
  void* codes = nullptr;   // rows * row_format_bytes(format, cols) bytes
  float* scales = nullptr;  // rows * (cols / group)
};

// y[r, c] = scales[r, c / group] * code[r, c]: the exact inverse map of QuantizeRowsOp's codes.
struct DequantizeRowsOp {
  RowFormat format = RowFormat::kInt8;
  std::int64_t rows = 0, cols = 0, group = 0;
  const void* codes = nullptr;
  const float* scales = nullptr;
  float* y = nullptr;
  std::int64_t ldy = 0;
};

// ---- quantized matrix products (weights [N, K], activations a[M, K] float) ---------------------
// W8A8: a is quantized per row on the fly (QuantizeRowsOp int8, group K: codes qa, scale sa);
// w holds int8 codes [N, K] with one scale per row. With exact int32 dot products:
//   dst[m, n] = (float(sum_k qa[m,k] * w[n,k]) * sa[m]) * w_scales[n]     (two float products)
struct GemmW8A8Op {
  std::int64_t M = 0, N = 0, K = 0;
  const float* a = nullptr;
  std::int64_t lda = 0;
  const std::int8_t* w = nullptr;
  const float* w_scales = nullptr;  // [N]
  float* dst = nullptr;
  std::int64_t ldd = 0;
};

// W4A8: int4 weights in groups (QuantizeRowsOp int4 layout, scales [N, K / group]), activations
// quantized per row to int8 on the fly. Each group's dot product is an exact int32; groups are
// summed in order with fused multiply-adds, then scaled by the activation scale:
//   acc = 0; for g: acc = fma(float(isum_g), w_scales[n, g], acc);   dst[m, n] = acc * sa[m]
struct GemmW4A8Op {
  std::int64_t M = 0, N = 0, K = 0, group = 128;
  const float* a = nullptr;
  std::int64_t lda = 0;
  const std::uint8_t* w = nullptr;  // N * K / 2 bytes
  const float* w_scales = nullptr;  // [N, K / group]
  float* dst = nullptr;
  std::int64_t ldd = 0;
};

// W4A16: int4 weights in groups times float activations, dequantized on the fly (for M = 1 this
// is the fused dequantize-GEMV: the float weights are never written to memory).
//   dst[m, n] = sum_k a[m, k] * (w_scales[n, k / group] * code[n, k])
// Float reduction: results agree with the reference within the rounding bound for K terms.
struct GemmW4A16Op {
  std::int64_t M = 0, N = 0, K = 0, group = 128;
  const float* a = nullptr;
  std::int64_t lda = 0;
  const std::uint8_t* w = nullptr;
  const float* w_scales = nullptr;
  float* dst = nullptr;
  std::int64_t ldd = 0;
};

// ---- GGUF block formats -------------------------------------------------------------------------
// Encodes rows of x[rows, cols] into ggml blocks (Q4_0, Q4_1, Q8_0, Q8_1), byte for byte what
// formats::quantize_row_<t>_ref writes. dst rows are ggml_row_bytes(type, cols) apart.
struct EncodeBlocksOp {
  formats::GgmlType type = formats::GgmlType::kQ8_0;
  std::int64_t rows = 0, cols = 0;
  const float* x = nullptr;
  std::int64_t ldx = 0;
  void* dst = nullptr;
};

// Block-weights x block-activations matrix-vector product, ggml's vec_dot:
//   Q4_0 x Q8_0: y[n] = sum_b float(isum_b) * (d_w * d_x)
//   Q4_1 x Q8_1: y[n] = sum_b d_w * d_x * isum_b + m_w * s_x
//   Q8_0 x Q8_0: y[n] = sum_b float(isum_b) * (d_w * d_x)
// w: N rows of K / 32 blocks of weight_type; x: one row of K / 32 blocks of the activation type
// (Q8_1 for Q4_1 weights, else Q8_0). Float reduction over blocks: a rounding bound applies.
struct GemvBlocksOp {
  formats::GgmlType weight_type = formats::GgmlType::kQ4_0;
  std::int64_t N = 0, K = 0;
  const void* w = nullptr;
  const void* x = nullptr;
  float* y = nullptr;
};

// Block-weights GEMM with float activations: each row of a is encoded to Q8_0 (Q8_1 for Q4_1
// weights) with the reference encoder, then dst[m, n] is GemvBlocksOp's y[n] for that row.
struct GemmBlocksOp {
  formats::GgmlType weight_type = formats::GgmlType::kQ4_0;
  std::int64_t M = 0, N = 0, K = 0;
  const float* a = nullptr;
  std::int64_t lda = 0;
  const void* w = nullptr;
  float* dst = nullptr;
  std::int64_t ldd = 0;
};

// ---- NF4 ---------------------------------------------------------------------------------------
// NF4 weights x float activations GEMV: w[n, k] = absmax[(n * K + k) / block] * kNf4Codebook[code]
// with codes packed bitsandbytes-style (element 2i in the HIGH nibble of byte i, 2i+1 in the low)
// over the flattened [N, K] matrix; K % block == 0, block even. y[n] = sum_k w[n, k] * x[k].
struct GemvNf4Op {
  std::int64_t N = 0, K = 0, block = 64;
  const std::uint8_t* codes = nullptr;  // N * K / 2 bytes
  const float* absmax = nullptr;         // N * K / block
  const float* x = nullptr;
  float* y = nullptr;
};

// ---- GPTQ ----------------------------------------------------------------------------------------
// GPTQ's lazy block update: w[r, c] -= sum_j err[r, j] * hinv[j, c] for r < rows, c < cols,
// j < B (err = the block's scaled quantization errors, hinv = rows of the inverse-Hessian
// Cholesky factor, already offset to the first column to update).
struct GptqBlockUpdateOp {
  std::int64_t rows = 0, cols = 0, B = 0;
  const float* err = nullptr;
  std::int64_t lde = 0;
  const float* hinv = nullptr;
  std::int64_t ldh = 0;
  float* w = nullptr;
  std::int64_t ldw = 0;
};

using Op = std::variant<GemmF32Op, SyrkOp, GemmS8S8S32Op, QuantizedMatmulOp, QuantizeRowsOp, DequantizeRowsOp,
                        GemmW8A8Op, GemmW4A8Op, GemmW4A16Op, EncodeBlocksOp, GemvBlocksOp, GemmBlocksOp, GemvNf4Op,
                        GptqBlockUpdateOp>;

inline std::string_view op_name(const Op& op) {
  struct Namer {
    std::string_view operator()(const GemmF32Op&) const { return "gemm_f32"; }
    std::string_view operator()(const SyrkOp&) const { return "syrk_f32"; }
    std::string_view operator()(const GemmS8S8S32Op&) const { return "gemm_s8s8s32"; }
    std::string_view operator()(const QuantizedMatmulOp&) const { return "quantized_matmul"; }
    std::string_view operator()(const QuantizeRowsOp&) const { return "quantize_rows"; }
    std::string_view operator()(const DequantizeRowsOp&) const { return "dequantize_rows"; }
    std::string_view operator()(const GemmW8A8Op&) const { return "gemm_w8a8"; }
    std::string_view operator()(const GemmW4A8Op&) const { return "gemm_w4a8"; }
    std::string_view operator()(const GemmW4A16Op&) const { return "gemm_w4a16"; }
    std::string_view operator()(const EncodeBlocksOp&) const { return "encode_blocks"; }
    std::string_view operator()(const GemvBlocksOp&) const { return "gemv_blocks"; }
    std::string_view operator()(const GemmBlocksOp&) const { return "gemm_blocks"; }
    std::string_view operator()(const GemvNf4Op&) const { return "gemv_nf4"; }
    std::string_view operator()(const GptqBlockUpdateOp&) const { return "gptq_block_update"; }
  };
  return std::visit(Namer{}, op);
}

// Argument rules every backend relies on (sizes, group divisibility, block multiples). Returns
// an empty string when op is well formed, else what is wrong; run() turns it into an Error.
inline std::string op_argument_error(const Op& op) {
  struct Checker {
    static std::string groups(std::int64_t cols, std::int64_t group, bool int4) {
      if (group <= 0 || cols % group != 0) return fmt::format("K/cols {} is not a multiple of group {}", cols, group);
      if (int4 && group % 2 != 0) return fmt::format("int4 group {} must be even", group);
      return {};
    }
    static std::string blocks(std::int64_t K) {
      return K % 32 == 0 ? std::string{} : fmt::format("K {} is not a multiple of the block size 32", K);
    }
    static std::string block_weight(formats::GgmlType t) {
      using formats::GgmlType;
      return t == GgmlType::kQ4_0 || t == GgmlType::kQ4_1 || t == GgmlType::kQ8_0
                 ? std::string{}
                 : fmt::format("weight type {} has no block kernel (Q4_0, Q4_1, Q8_0)", formats::ggml_traits(t).name);
    }
    std::string operator()(const GemmF32Op&) const { return {}; }
    std::string operator()(const SyrkOp&) const { return {}; }
    std::string operator()(const GemmS8S8S32Op&) const { return {}; }
    std::string operator()(const QuantizedMatmulOp&) const { return {}; }
    std::string operator()(const QuantizeRowsOp& o) const { return groups(o.cols, o.group, o.format == RowFormat::kInt4); }
    std::string operator()(const DequantizeRowsOp& o) const { return groups(o.cols, o.group, o.format == RowFormat::kInt4); }
    std::string operator()(const GemmW8A8Op&) const { return {}; }
    std::string operator()(const GemmW4A8Op& o) const { return groups(o.K, o.group, true); }
    std::string operator()(const GemmW4A16Op& o) const { return groups(o.K, o.group, true); }
    std::string operator()(const EncodeBlocksOp& o) const {
      using formats::GgmlType;
      if (o.type != GgmlType::kQ4_0 && o.type != GgmlType::kQ4_1 && o.type != GgmlType::kQ8_0 && o.type != GgmlType::kQ8_1)
        return fmt::format("no block encoder for {}", formats::ggml_traits(o.type).name);
      return blocks(o.cols);
    }
    std::string operator()(const GemvBlocksOp& o) const {
      auto e = block_weight(o.weight_type);
      return e.empty() ? blocks(o.K) : e;
    }
    std::string operator()(const GemmBlocksOp& o) const {
      auto e = block_weight(o.weight_type);
      return e.empty() ? blocks(o.K) : e;
    }
    std::string operator()(const GemvNf4Op& o) const {
      if (o.block <= 0 || o.block % 2 != 0 || o.K % o.block != 0)
        return fmt::format("NF4 block {} must be even and divide K {}", o.block, o.K);
      return {};
    }
    std::string operator()(const GptqBlockUpdateOp&) const { return {}; }
  };
  return std::visit(Checker{}, op);
}

}  // namespace qforge::backend
