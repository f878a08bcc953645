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
// Block buffers come from files and callers at any byte offset, while the block structs hold
// uint16 fields: touching them in place would be a misaligned access (undefined behaviour), so
// encoders fill a local block that is copied out when it goes out of scope, and decoders read a
// copy.
template <class Block>
struct BlockOut {
  std::uint8_t* at;
  Block block{};
  ~BlockOut() { std::memcpy(at, &block, sizeof(Block)); }
};
template <class Block>
BlockOut<Block> block_out(void* base, std::int64_t index) {
  return {static_cast<std::uint8_t*>(base) + index * static_cast<std::int64_t>(sizeof(Block))};
}
template <class Block>
Block load_block(const void* base, std::int64_t index) {
  Block block;
  std::memcpy(&block, static_cast<const std::uint8_t*>(base) + index * static_cast<std::int64_t>(sizeof(Block)),
              sizeof(Block));
  return block;
}
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
  for (std::int64_t b = 0; b < n / 32; ++b, x += 32) {
    auto out = detail::block_out<BlockQ8_0>(dst, b);
    BlockQ8_0& yb = out.block;
    const float d = detail::absmax_of(x, 32) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    yb.d = fp32_to_fp16(d);
    for (int j = 0; j < 32; ++j) yb.qs[j] = static_cast<std::int8_t>(std::roundf(x[j] * id));
  }
}

// Q8_1: Q8_0 plus s = fp16(d * sum(q)), the term Q4_1 dot products need.
inline void quantize_row_q8_1_ref(const float* x, void* dst, std::int64_t n) {
  detail::check_blocks(n, 32, "Q8_1");
  for (std::int64_t b = 0; b < n / 32; ++b, x += 32) {
    auto out = detail::block_out<BlockQ8_1>(dst, b);
    BlockQ8_1& yb = out.block;
    const float d = detail::absmax_of(x, 32) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    yb.d = fp32_to_fp16(d);
    int sum = 0;
    for (int j = 0; j < 16; ++j) {
      yb.qs[j] = static_cast<std::int8_t>(std::roundf(x[j] * id));
      yb.qs[j + 16] = static_cast<std::int8_t>(std::roundf(x[j + 16] * id));
      sum += yb.qs[j] + yb.qs[j + 16];
    }
    yb.s = fp32_to_fp16(static_cast<float>(sum) * d);
  }
}

// Q4_0: d = (signed value of the largest magnitude, first one wins) / -8, so that value maps to
// code 0 exactly; q = min(15, trunc(x / d + 8.5)). Low nibble element j, high nibble j + 16.
inline void quantize_row_q4_0_ref(const float* x, void* dst, std::int64_t n) {
  detail::check_blocks(n, 32, "Q4_0");
  for (std::int64_t b = 0; b < n / 32; ++b, x += 32) {
    auto out = detail::block_out<BlockQ4_0>(dst, b);
    BlockQ4_0& yb = out.block;
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; ++j)
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    yb.d = fp32_to_fp16(d);
    for (int j = 0; j < 16; ++j) {
      const auto q0 = std::min<std::uint8_t>(15, static_cast<std::uint8_t>(static_cast<std::int8_t>(x[j] * id + 8.5f)));
      const auto q1 =
          std::min<std::uint8_t>(15, static_cast<std::uint8_t>(static_cast<std::int8_t>(x[j + 16] * id + 8.5f)));
      yb.qs[j] = static_cast<std::uint8_t>(q0 | (q1 << 4));
    }
  }
}

// Q4_1: d = (max - min) / 15, m = min; q = min(15, trunc((x - min) / d + 0.5)).
inline void quantize_row_q4_1_ref(const float* x, void* dst, std::int64_t n) {
  detail::check_blocks(n, 32, "Q4_1");
  for (std::int64_t b = 0; b < n / 32; ++b, x += 32) {
    auto out = detail::block_out<BlockQ4_1>(dst, b);
    BlockQ4_1& yb = out.block;
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; ++j) {
      if (x[j] < min) min = x[j];
      if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    yb.d = fp32_to_fp16(d);
    yb.m = fp32_to_fp16(min);
    for (int j = 0; j < 16; ++j) {
      const auto q0 = std::min<std::uint8_t>(15, static_cast<std::uint8_t>(static_cast<std::int8_t>((x[j] - min) * id + 0.5f)));
      const auto q1 =
          std::min<std::uint8_t>(15, static_cast<std::uint8_t>(static_cast<std::int8_t>((x[j + 16] - min) * id + 0.5f)));
      yb.qs[j] = static_cast<std::uint8_t>(q0 | (q1 << 4));
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

// ---- K-quant encoders -------------------------------------------------------------------------
// Ports of ggml's quantize_row_q4_K_ref / quantize_row_q6_K_ref and their searches
// (make_qkx2_quants, make_qx_quants) keeping ggml's float operation order, so the bytes match.
namespace detail {
inline constexpr float kGroupMaxEps = 1e-15f;

// ggml's nearest_int: adding 1.5 * 2^23 leaves round-half-even(x) in the mantissa bits.
inline int nearest_int(float fval) {
  const float val = fval + 12582912.0f;
  std::int32_t i;
  std::memcpy(&i, &val, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// Weighted least-squares search for an unsigned grid [0, nmax] with a min <= 0: returns the
// scale, stores -min in the_min and the codes in L.
inline float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, std::uint8_t* L, float* the_min,
                              std::uint8_t* Laux, float rmin, float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<std::uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * static_cast<float>(L[i]) + min - x[i];
    diff = diff * diff;
    best_error += weights[i] * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = static_cast<std::uint8_t>(l);
      const float w = weights[i];
      const auto fl = static_cast<float>(l);
      sum_l += w * fl;
      sum_l2 += w * fl * fl;
      sum_xl += w * fl * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * static_cast<float>(Laux[i]) + this_min - x[i];
        diff = diff * diff;
        cur_error += weights[i] * diff;
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// Signed grid [-nmax, nmax - 1] search with weights x^2 (ggml's rmse_type 1, no imatrix): returns
// the (signed) scale and stores codes + nmax in L.
inline float make_qx_quants(int n, int nmax, const float* x, std::int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  const auto fnmax = static_cast<float>(nmax);
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<std::int8_t>(l + nmax);
    const float w = x[i] * x[i];
    const auto fl = static_cast<float>(l);
    sumlx += w * x[i] * fl;
    suml2 += w * fl * fl;
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(fnmax + 0.1f * static_cast<float>(is)) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = x[i] * x[i];
      const auto fl = static_cast<float>(l);
      sumlx += w * x[i] * fl;
      suml2 += w * fl * fl;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * x[i]);
        L[i] = static_cast<std::int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}
}  // namespace detail

// Q4_K: per sub-block of 32 a weighted (scale, min) search, then 6-bit scales/mins relative to
// the block's largest (d = max_scale / 63, dmin = max_min / 63), then codes against the stored grid.
inline void quantize_row_q4_k_ref(const float* x, void* dst, std::int64_t n) {
  detail::check_blocks(n, 256, "Q4_K");
  std::uint8_t L[256], Laux[32];
  float weights[32], mins[8], scales[8];
  for (std::int64_t b = 0; b < n / 256; ++b, x += 256) {
    auto out = detail::block_out<BlockQ4_K>(dst, b);
    BlockQ4_K& yb = out.block;
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
      const float av_x = std::sqrt(sum_x2 / 32);
      for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
      scales[j] = detail::make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.0f, 0.1f, 20);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    std::memset(yb.scales, 0, 12);
    for (int j = 0; j < 8; ++j) {
      const auto ls = static_cast<std::uint8_t>(std::min(63, detail::nearest_int(inv_scale * scales[j]) & 0xFF));
      const auto lm = static_cast<std::uint8_t>(std::min(63, detail::nearest_int(inv_min * mins[j]) & 0xFF));
      if (j < 4) {
        yb.scales[j] = ls;
        yb.scales[j + 4] = lm;
      } else {
        yb.scales[j + 4] = static_cast<std::uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
        yb.scales[j - 4] = static_cast<std::uint8_t>(yb.scales[j - 4] | ((ls >> 4) << 6));
        yb.scales[j] = static_cast<std::uint8_t>(yb.scales[j] | ((lm >> 4) << 6));
      }
    }
    yb.d = fp32_to_fp16(max_scale / 63.0f);
    yb.dmin = fp32_to_fp16(max_min / 63.0f);
    for (int j = 0; j < 8; ++j) {
      std::uint8_t sc, m;
      q4_k_scale_min(j, yb.scales, sc, m);
      const float d = fp16_to_fp32(yb.d) * sc;
      if (d == 0.0f) continue;  // keep the search's codes, as ggml does
      const float dm = fp16_to_fp32(yb.dmin) * m;
      for (int i = 0; i < 32; ++i) {
        const int l = detail::nearest_int((x[32 * j + i] + dm) / d);
        L[32 * j + i] = static_cast<std::uint8_t>(std::max(0, std::min(15, l)));
      }
    }
    std::uint8_t* q = yb.qs;
    for (int j = 0; j < 256; j += 64, q += 32)
      for (int l = 0; l < 32; ++l) q[l] = static_cast<std::uint8_t>(L[j + l] | (L[j + l + 32] << 4));
  }
}

// Q6_K: per sub-block of 16 a signed-scale search, int8 scales relative to the largest
// (iscale = -128 / max_scale), then 6-bit codes split into ql (low 4 bits) and qh (high 2).
inline void quantize_row_q6_k_ref(const float* x, void* dst, std::int64_t n) {
  detail::check_blocks(n, 256, "Q6_K");
  std::int8_t L[256];
  float scales[16];
  for (std::int64_t b = 0; b < n / 256; ++b, x += 256) {
    auto out = detail::block_out<BlockQ6_K>(dst, b);
    BlockQ6_K& yb = out.block;
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
      const float scale = detail::make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
      scales[ib] = scale;
      const float abs_scale = std::fabs(scale);
      if (abs_scale > max_abs_scale) {
        max_abs_scale = abs_scale;
        max_scale = scale;
      }
    }
    if (max_abs_scale < detail::kGroupMaxEps) {
      std::memset(&yb, 0, sizeof(BlockQ6_K));
      yb.d = fp32_to_fp16(0.0f);
      continue;
    }
    const float iscale = -128.0f / max_scale;
    yb.d = fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < 16; ++ib)
      yb.scales[ib] = static_cast<std::int8_t>(std::min(127, detail::nearest_int(iscale * scales[ib])));
    for (int j = 0; j < 16; ++j) {
      const float d = fp16_to_fp32(yb.d) * yb.scales[j];
      if (d == 0.0f) continue;
      for (int i = 0; i < 16; ++i) {
        int l = detail::nearest_int(x[16 * j + i] / d);
        l = std::max(-32, std::min(31, l));
        L[16 * j + i] = static_cast<std::int8_t>(l + 32);
      }
    }
    std::uint8_t* ql = yb.ql;
    std::uint8_t* qh = yb.qh;
    for (int j = 0; j < 256; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const auto u = [&](int k) { return static_cast<std::uint8_t>(L[j + l + k]); };
        ql[l] = static_cast<std::uint8_t>((u(0) & 0xF) | ((u(64) & 0xF) << 4));
        ql[l + 32] = static_cast<std::uint8_t>((u(32) & 0xF) | ((u(96) & 0xF) << 4));
        qh[l] = static_cast<std::uint8_t>((u(0) >> 4) | ((u(32) >> 4) << 2) | ((u(64) >> 4) << 4) | ((u(96) >> 4) << 6));
      }
    }
  }
}

// ---- decoders --------------------------------------------------------------------------------
inline void dequantize_row_q8_0(const void* src, float* y, std::int64_t n) {
  detail::check_blocks(n, 32, "Q8_0");
  for (std::int64_t b = 0; b < n / 32; ++b, y += 32) {
    const auto xb = detail::load_block<BlockQ8_0>(src, b);
    const float d = fp16_to_fp32(xb.d);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(xb.qs[j]) * d;
  }
}
inline void dequantize_row_q8_1(const void* src, float* y, std::int64_t n) {
  detail::check_blocks(n, 32, "Q8_1");
  for (std::int64_t b = 0; b < n / 32; ++b, y += 32) {
    const auto xb = detail::load_block<BlockQ8_1>(src, b);
    const float d = fp16_to_fp32(xb.d);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(xb.qs[j]) * d;
  }
}
inline void dequantize_row_q4_0(const void* src, float* y, std::int64_t n) {
  detail::check_blocks(n, 32, "Q4_0");
  for (std::int64_t b = 0; b < n / 32; ++b, y += 32) {
    const auto xb = detail::load_block<BlockQ4_0>(src, b);
    const float d = fp16_to_fp32(xb.d);
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>((xb.qs[j] & 0x0F) - 8) * d;
      y[j + 16] = static_cast<float>((xb.qs[j] >> 4) - 8) * d;
    }
  }
}
inline void dequantize_row_q4_1(const void* src, float* y, std::int64_t n) {
  detail::check_blocks(n, 32, "Q4_1");
  for (std::int64_t b = 0; b < n / 32; ++b, y += 32) {
    const auto xb = detail::load_block<BlockQ4_1>(src, b);
    const float d = fp16_to_fp32(xb.d), m = fp16_to_fp32(xb.m);
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>(xb.qs[j] & 0x0F) * d + m;
      y[j + 16] = static_cast<float>(xb.qs[j] >> 4) * d + m;
    }
  }
}

inline void dequantize_row_q4_k(const void* src, float* y, std::int64_t n) {
  detail::check_blocks(n, 256, "Q4_K");
  for (std::int64_t b = 0; b < n / 256; ++b) {
    const auto xb = detail::load_block<BlockQ4_K>(src, b);
    const float d = fp16_to_fp32(xb.d), dmin = fp16_to_fp32(xb.dmin);
    const std::uint8_t* q = xb.qs;
    for (int chunk = 0; chunk < 4; ++chunk, q += 32) {
      std::uint8_t sc, m;
      q4_k_scale_min(2 * chunk, xb.scales, sc, m);
      const float d1 = d * sc, m1 = dmin * m;
      q4_k_scale_min(2 * chunk + 1, xb.scales, sc, m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

inline void dequantize_row_q6_k(const void* src, float* y, std::int64_t n) {
  detail::check_blocks(n, 256, "Q6_K");
  for (std::int64_t b = 0; b < n / 256; ++b) {
    const auto xb = detail::load_block<BlockQ6_K>(src, b);
    const float d = fp16_to_fp32(xb.d);
    const std::uint8_t* ql = xb.ql;
    const std::uint8_t* qh = xb.qh;
    const std::int8_t* sc = xb.scales;
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
    case GgmlType::kQ4_K: quantize_row_q4_k_ref(x, dst, n); return;
    case GgmlType::kQ6_K: quantize_row_q6_k_ref(x, dst, n); return;
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
