// ggml's block formats: the GGUF type ids, block sizes, and the scalar reference encoders and
// decoders. The encoders reproduce ggml's quantize_row_*_ref byte for byte (checked against
// ggml's own output in tests/data/ggml-vectors), including its float operation order, its
// rounding (roundf: half away from zero; Q4_0/Q4_1: truncation of x + 8.5 / x + 0.5) and its
// fp16 scale rounding. SIMD kernels in the CPU backend must match these functions exactly.
//
// Rows are `n` floats, n a multiple of the block size; blocks are packed little-endian structs.
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include "qforge/core/error.hpp"
#include "qforge/core/half.hpp"

namespace qforge::formats {

// GGUF tensor type ids (ggml's enum ggml_type).
enum class GgmlType : std::uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15,
  kI8 = 24, kI16 = 25, kI32 = 26, kI64 = 27, kF64 = 28, kBF16 = 30,
};

struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;
  std::int64_t block_elems;  // values per block
  std::int64_t block_bytes;  // bytes per block
  bool quantized;
  bool codec;  // qforge can encode/decode it
};

inline constexpr std::array<GgmlTypeTraits, 20> kGgmlTypes = {{
    {GgmlType::kF32, "F32", 1, 4, false, true},
    {GgmlType::kF16, "F16", 1, 2, false, true},
    {GgmlType::kQ4_0, "Q4_0", 32, 18, true, true},
    {GgmlType::kQ4_1, "Q4_1", 32, 20, true, true},
    {GgmlType::kQ5_0, "Q5_0", 32, 22, true, false},
    {GgmlType::kQ5_1, "Q5_1", 32, 24, true, false},
    {GgmlType::kQ8_0, "Q8_0", 32, 34, true, true},
    {GgmlType::kQ8_1, "Q8_1", 32, 36, true, true},
    {GgmlType::kQ2_K, "Q2_K", 256, 84, true, false},
    {GgmlType::kQ3_K, "Q3_K", 256, 110, true, false},
    {GgmlType::kQ4_K, "Q4_K", 256, 144, true, true},
    {GgmlType::kQ5_K, "Q5_K", 256, 176, true, false},
    {GgmlType::kQ6_K, "Q6_K", 256, 210, true, true},
    {GgmlType::kQ8_K, "Q8_K", 256, 292, true, false},
    {GgmlType::kI8, "I8", 1, 1, false, false},
    {GgmlType::kI16, "I16", 1, 2, false, false},
    {GgmlType::kI32, "I32", 1, 4, false, false},
    {GgmlType::kI64, "I64", 1, 8, false, false},
    {GgmlType::kF64, "F64", 1, 8, false, false},
    {GgmlType::kBF16, "BF16", 1, 2, false, true},
}};

// Traits of a type id, or nullopt for ids ggml removed (4, 5, 31-33, 36-38) or never had.
inline std::optional<GgmlTypeTraits> find_ggml_type(std::uint32_t id) {
  for (const auto& t : kGgmlTypes)
    if (static_cast<std::uint32_t>(t.type) == id) return t;
  return std::nullopt;
}
inline const GgmlTypeTraits& ggml_traits(GgmlType type) {
  for (const auto& t : kGgmlTypes)
    if (t.type == type) return t;
  throw_error(Status::kInvalidArgument, "unknown GGML type id {}", static_cast<std::uint32_t>(type));
}
inline std::optional<GgmlType> parse_ggml_type(std::string_view name) {
  for (const auto& t : kGgmlTypes) {
    if (t.name.size() != name.size()) continue;
    bool same = true;
    for (std::size_t i = 0; i < name.size(); ++i)
      same = same && std::toupper(static_cast<unsigned char>(name[i])) == t.name[i];
    if (same) return t.type;
  }
  return std::nullopt;
}
// Bytes of a row of n values; throws naming `what` when n is not a whole number of blocks.
inline std::int64_t ggml_row_bytes(GgmlType type, std::int64_t n, std::string_view what = "row") {
  const auto& t = ggml_traits(type);
  if (n % t.block_elems != 0)
    throw_error(Status::kShapeMismatch, "{}: row length {} is not a multiple of the {} block size {}", what, n,
                t.name, t.block_elems);
  return n / t.block_elems * t.block_bytes;
}

// ---- block structs (packed by construction: only byte-sized members after 2-byte ones) -------
struct BlockQ4_0 { std::uint16_t d; std::uint8_t qs[16]; };
struct BlockQ4_1 { std::uint16_t d, m; std::uint8_t qs[16]; };
struct BlockQ8_0 { std::uint16_t d; std::int8_t qs[32]; };
struct BlockQ8_1 { std::uint16_t d, s; std::int8_t qs[32]; };
struct BlockQ4_K { std::uint16_t d, dmin; std::uint8_t scales[12]; std::uint8_t qs[128]; };
struct BlockQ6_K { std::uint8_t ql[128]; std::uint8_t qh[64]; std::int8_t scales[16]; std::uint16_t d; };
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ8_0) == 34 &&
              sizeof(BlockQ8_1) == 36 && sizeof(BlockQ4_K) == 144 && sizeof(BlockQ6_K) == 210);

namespace detail {
inline void check_blocks(std::int64_t n, std::int64_t block, std::string_view type) {
  if (n < 0 || n % block != 0)
    throw_error(Status::kShapeMismatch, "{}: row length {} is not a multiple of the block size {}", type, n, block);
}
inline float absmax_of(const float* x, int count) {
  float amax = 0.0f;
  for (int j = 0; j < count; ++j) amax = std::max(amax, std::fabs(x[j]));
  return amax;
}
}  // namespace detail

// ---- encoders --------------------------------------------------------------------------------
// Q8_0: d = absmax / 127 (fp32 for quantizing, stored fp16); q = roundf(x / d) in [-127, 127].
inline void quantize_row_q8_0_ref(const float* x, void* dst, std::int64_t n) {
  detail::check_blocks(n, 32, "Q8_0");
  auto* y = static_cast<BlockQ8_0*>(dst);
  for (std::int64_t b = 0; b < n / 32; ++b, x += 32) {
    const float d = detail::absmax_of(x, 32) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    for (int j = 0; j < 32; ++j) y[b].qs[j] = static_cast<std::int8_t>(std::roundf(x[j] * id));
  }
}

// Q8_1: Q8_0 plus s = fp16(d * sum(q)), the term Q4_1 dot products need.
inline void quantize_row_q8_1_ref(const float* x, void* dst, std::int64_t n) {
  detail::check_blocks(n, 32, "Q8_1");
  auto* y = static_cast<BlockQ8_1*>(dst);
  for (std::int64_t b = 0; b < n / 32; ++b, x += 32) {
    const float d = detail::absmax_of(x, 32) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    int sum = 0;
    for (int j = 0; j < 16; ++j) {
      y[b].qs[j] = static_cast<std::int8_t>(std::roundf(x[j] * id));
      y[b].qs[j + 16] = static_cast<std::int8_t>(std::roundf(x[j + 16] * id));
      sum += y[b].qs[j] + y[b].qs[j + 16];
    }
    y[b].s = fp32_to_fp16(static_cast<float>(sum) * d);
  }
}

// Q4_0: d = (signed value of the largest magnitude, first one wins) / -8, so that value maps to
// code 0 exactly; q = min(15, trunc(x / d + 8.5)). Low nibble element j, high nibble j + 16.
inline void quantize_row_q4_0_ref(const float* x, void* dst, std::int64_t n) {
  detail::check_blocks(n, 32, "Q4_0");
  auto* y = static_cast<BlockQ4_0*>(dst);
  for (std::int64_t b = 0; b < n / 32; ++b, x += 32) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; ++j)
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    for (int j = 0; j < 16; ++j) {
      const auto q0 = std::min<std::uint8_t>(15, static_cast<std::uint8_t>(static_cast<std::int8_t>(x[j] * id + 8.5f)));
      const auto q1 =
          std::min<std::uint8_t>(15, static_cast<std::uint8_t>(static_cast<std::int8_t>(x[j + 16] * id + 8.5f)));
      y[b].qs[j] = static_cast<std::uint8_t>(q0 | (q1 << 4));
    }
  }
}

// Q4_1: d = (max - min) / 15, m = min; q = min(15, trunc((x - min) / d + 0.5)).
inline void quantize_row_q4_1_ref(const float* x, void* dst, std::int64_t n) {
  detail::check_blocks(n, 32, "Q4_1");
  auto* y = static_cast<BlockQ4_1*>(dst);
  for (std::int64_t b = 0; b < n / 32; ++b, x += 32) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; ++j) {
      if (x[j] < min) min = x[j];
      if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    y[b].m = fp32_to_fp16(min);
    for (int j = 0; j < 16; ++j) {
      const auto q0 = std::min<std::uint8_t>(15, static_cast<std::uint8_t>(static_cast<std::int8_t>((x[j] - min) * id + 0.5f)));
      const auto q1 =
          std::min<std::uint8_t>(15, static_cast<std::uint8_t>(static_cast<std::int8_t>((x[j + 16] - min) * id + 0.5f)));
      y[b].qs[j] = static_cast<std::uint8_t>(q0 | (q1 << 4));
    }
  }
}

// ---- decoders --------------------------------------------------------------------------------
inline void dequantize_row_q8_0(const void* src, float* y, std::int64_t n) {
  detail::check_blocks(n, 32, "Q8_0");
  const auto* x = static_cast<const BlockQ8_0*>(src);
  for (std::int64_t b = 0; b < n / 32; ++b, y += 32) {
    const float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(x[b].qs[j]) * d;
  }
}
inline void dequantize_row_q8_1(const void* src, float* y, std::int64_t n) {
  detail::check_blocks(n, 32, "Q8_1");
  const auto* x = static_cast<const BlockQ8_1*>(src);
  for (std::int64_t b = 0; b < n / 32; ++b, y += 32) {
    const float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(x[b].qs[j]) * d;
  }
}
inline void dequantize_row_q4_0(const void* src, float* y, std::int64_t n) {
  detail::check_blocks(n, 32, "Q4_0");
  const auto* x = static_cast<const BlockQ4_0*>(src);
  for (std::int64_t b = 0; b < n / 32; ++b, y += 32) {
    const float d = fp16_to_fp32(x[b].d);
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>((x[b].qs[j] & 0x0F) - 8) * d;
      y[j + 16] = static_cast<float>((x[b].qs[j] >> 4) - 8) * d;
    }
  }
}
inline void dequantize_row_q4_1(const void* src, float* y, std::int64_t n) {
  detail::check_blocks(n, 32, "Q4_1");
  const auto* x = static_cast<const BlockQ4_1*>(src);
  for (std::int64_t b = 0; b < n / 32; ++b, y += 32) {
    const float d = fp16_to_fp32(x[b].d), m = fp16_to_fp32(x[b].m);
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>(x[b].qs[j] & 0x0F) * d + m;
      y[j + 16] = static_cast<float>(x[b].qs[j] >> 4) * d + m;
    }
  }
}

// Q4_K's 6-bit sub-block scale and min, unpacked from the 12 scale bytes.
inline void q4_k_scale_min(int j, const std::uint8_t* q, std::uint8_t& sc, std::uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = static_cast<std::uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

inline void dequantize_row_q4_k(const void* src, float* y, std::int64_t n) {
  detail::check_blocks(n, 256, "Q4_K");
  const auto* x = static_cast<const BlockQ4_K*>(src);
  for (std::int64_t b = 0; b < n / 256; ++b) {
    const float d = fp16_to_fp32(x[b].d), dmin = fp16_to_fp32(x[b].dmin);
    const std::uint8_t* q = x[b].qs;
    for (int chunk = 0; chunk < 4; ++chunk, q += 32) {
      std::uint8_t sc, m;
      q4_k_scale_min(2 * chunk, x[b].scales, sc, m);
      const float d1 = d * sc, m1 = dmin * m;
      q4_k_scale_min(2 * chunk + 1, x[b].scales, sc, m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

inline void dequantize_row_q6_k(const void* src, float* y, std::int64_t n) {
  detail::check_blocks(n, 256, "Q6_K");
  const auto* x = static_cast<const BlockQ6_K*>(src);
  for (std::int64_t b = 0; b < n / 256; ++b) {
    const float d = fp16_to_fp32(x[b].d);
    const std::uint8_t* ql = x[b].ql;
    const std::uint8_t* qh = x[b].qh;
    const std::int8_t* sc = x[b].scales;
    for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * sc[is] * static_cast<float>(q1);
        y[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
        y[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
        y[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
      }
    }
  }
}

// ---- dispatch by type id ----------------------------------------------------------------------
// Encodes a row of n floats into `type`; F32/F16/BF16 convert. Throws for types without an encoder.
inline void encode_row(GgmlType type, const float* x, void* dst, std::int64_t n) {
  switch (type) {
    case GgmlType::kF32: std::memcpy(dst, x, static_cast<std::size_t>(n) * 4); return;
    case GgmlType::kF16: {
      auto* h = static_cast<std::uint16_t*>(dst);
      for (std::int64_t i = 0; i < n; ++i) h[i] = fp32_to_fp16(x[i]);
      return;
    }
    case GgmlType::kBF16: {
      auto* h = static_cast<std::uint16_t*>(dst);
      for (std::int64_t i = 0; i < n; ++i) h[i] = fp32_to_bf16(x[i]);
      return;
    }
    case GgmlType::kQ4_0: quantize_row_q4_0_ref(x, dst, n); return;
    case GgmlType::kQ4_1: quantize_row_q4_1_ref(x, dst, n); return;
    case GgmlType::kQ8_0: quantize_row_q8_0_ref(x, dst, n); return;
    case GgmlType::kQ8_1: quantize_row_q8_1_ref(x, dst, n); return;
    default:
      throw_error(Status::kUnsupported, "no encoder for GGML type {}", ggml_traits(type).name);
  }
}

// Decodes a row of n values of `type` into floats. Throws for types without a decoder.
inline void decode_row(GgmlType type, const void* src, float* y, std::int64_t n) {
  switch (type) {
    case GgmlType::kF32: std::memcpy(y, src, static_cast<std::size_t>(n) * 4); return;
    case GgmlType::kF16: {
      const auto* h = static_cast<const std::uint16_t*>(src);
      for (std::int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(h[i]);
      return;
    }
    case GgmlType::kBF16: {
      const auto* h = static_cast<const std::uint16_t*>(src);
      for (std::int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(h[i]);
      return;
    }
    case GgmlType::kQ4_0: dequantize_row_q4_0(src, y, n); return;
    case GgmlType::kQ4_1: dequantize_row_q4_1(src, y, n); return;
    case GgmlType::kQ8_0: dequantize_row_q8_0(src, y, n); return;
    case GgmlType::kQ8_1: dequantize_row_q8_1(src, y, n); return;
    case GgmlType::kQ4_K: dequantize_row_q4_k(src, y, n); return;
    case GgmlType::kQ6_K: dequantize_row_q6_k(src, y, n); return;
    default:
      throw_error(Status::kUnsupported, "no decoder for GGML type {}", ggml_traits(type).name);
  }
}

}  // namespace qforge::formats
