// Quantization grids for the layer algorithms (RTN, GPTQ, QEP, JointQ).
//
// A grid turns one group of a weight row into parameters (GroupParams) and then maps single values
// to integer codes and back. Codes are always stored signed in int8 so that every grid shares one
// layout: value = scale * (code - zero) + offset.
//  - kInt, b bits (1..8): the IST-DASLab quantizer (quant.py). Internally q in [0, 2^b-1] with zero
//    point z; the stored code is q - 2^(b-1) and the stored zero is z - 2^(b-1) (0 when symmetric).
//    Rounding is half-to-even (torch.round), see algorithms.md P7.
//  - kNf4: 16-level NormalFloat codebook times the group's absmax; code = level index - 8.
//  - kQ4_0 / kQ4_1 / kQ8_0: ggml's block rules (groups of 32). The scale is computed in fp32 for
//    quantizing and rounded to fp16 for dequantizing, exactly as formats/gguf_blocks.hpp encodes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "qforge/core/error.hpp"
#include "qforge/core/half.hpp"
#include "qforge/core/numerics.hpp"

namespace qforge::algorithms {

enum class GridKind { kInt, kNf4, kQ4_0, kQ4_1, kQ8_0 };
enum class RangeMethod { kMinMax, kAbsMax, kMse };

struct GridSpec {
  GridKind kind = GridKind::kInt;
  int bits = 4;                 // kInt only
  bool sym = false;             // kInt only (nf4 and q4_0/q8_0 are symmetric by construction)
  std::int64_t group_size = 0;  // 0: one group per row (per-channel)
  RangeMethod range = RangeMethod::kMinMax;
  // The reference's symmetric quirk (P6): a group with no negative value keeps xmin = 0, so its
  // upper half is clipped. false matches the reference; true always uses [-max|x|, max|x|].
  bool fix_sym_nonnegative = false;
  // MSE search (quant.py defaults): candidates p = 1 - i/grid for i < maxshrink*grid, |err|^norm.
  int mse_grid = 100;
  float mse_maxshrink = 0.8f;
  float mse_norm = 2.4f;
};

struct GroupParams {
  float scale = 1.0f;      // dequantization scale (fp16-rounded for the ggml grids)
  float inv_scale = 1.0f;  // quantization multiplier (ggml: 1/d in fp32; 0 when d = 0)
  float zero = 0.0f;       // signed zero point: value = scale * (code - zero) + offset
  float offset = 0.0f;     // Q4_1's block minimum (fp16-rounded); 0 elsewhere
  float qmin_raw = 0.0f;   // kInt internals: z in the unsigned [0, maxq] domain
};

inline std::string grid_name(const GridSpec& g) {
  switch (g.kind) {
    case GridKind::kInt: return "int" + std::to_string(g.bits);
    case GridKind::kNf4: return "nf4";
    case GridKind::kQ4_0: return "q4_0";
    case GridKind::kQ4_1: return "q4_1";
    case GridKind::kQ8_0: return "q8_0";
  }
  return "?";
}

inline bool is_ggml_grid(GridKind k) { return k == GridKind::kQ4_0 || k == GridKind::kQ4_1 || k == GridKind::kQ8_0; }

// Parses int1..int8, nf4, q4_0, q4_1, q8_0 (the qforge layer --qtype values).
inline GridSpec parse_grid(std::string_view name) {
  GridSpec g;
  if (name == "nf4") {
    g.kind = GridKind::kNf4;
  } else if (name == "q4_0") {
    g.kind = GridKind::kQ4_0;
  } else if (name == "q4_1") {
    g.kind = GridKind::kQ4_1;
  } else if (name == "q8_0") {
    g.kind = GridKind::kQ8_0;
  } else if (name.size() == 4 && name.substr(0, 3) == "int" && name[3] >= '1' && name[3] <= '8') {
    g.bits = name[3] - '0';
  } else {
    throw_error(Status::kInvalidArgument, "unknown qtype '{}' (expected int1..int8, nf4, q4_0, q4_1, q8_0)", name);
  }
  if (is_ggml_grid(g.kind)) g.group_size = 32;
  return g;
}

// Resolved group size for a row of `cols` values; throws when it does not divide the row.
inline std::int64_t effective_group_size(const GridSpec& g, std::int64_t cols, std::string_view site) {
  if (g.kind == GridKind::kInt && (g.bits < 1 || g.bits > 8))
    throw_error(Status::kInvalidArgument, "{}: {} bits is outside 1..8", site, g.bits);
  if (is_ggml_grid(g.kind) && g.group_size != 32 && g.group_size != 0)
    throw_error(Status::kInvalidArgument, "{}: {} uses groups of 32, not {}", site, grid_name(g), g.group_size);
  const std::int64_t gs = is_ggml_grid(g.kind) ? 32 : (g.group_size <= 0 ? cols : g.group_size);
  if (cols <= 0 || cols % gs != 0)
    throw_error(Status::kShapeMismatch, "{}: group size {} does not divide the {} input columns", site, gs, cols);
  return gs;
}

namespace detail {
inline int int_maxq(int bits) { return (1 << bits) - 1; }
inline int int_half(int bits) { return 1 << (bits - 1); }

// quant.py quantize(): s * (clamp(round(x / s) + z, 0, maxq) - z), as an unsigned q.
inline int int_q(float x, float s, float z, int maxq) {
  const float q = std::nearbyint(x / s) + z;
  return static_cast<int>(std::clamp(q, 0.0f, static_cast<float>(maxq)));
}

inline GroupParams int_params_from_range(float xmin, float xmax, const GridSpec& g) {
  const int maxq = int_maxq(g.bits);
  if (xmin == 0.0f && xmax == 0.0f) {
    xmin = -1.0f;
    xmax = 1.0f;
  }
  GroupParams p;
  p.scale = (xmax - xmin) / static_cast<float>(maxq);
  p.inv_scale = 1.0f / p.scale;
  p.qmin_raw = g.sym ? static_cast<float>(maxq + 1) / 2.0f : std::nearbyint(-xmin / p.scale);
  p.zero = p.qmin_raw - static_cast<float>(int_half(g.bits));
  return p;
}

// find_params for one row/group: the reference's min-max (range always includes 0).
inline void int_minmax_range(std::span<const float> x, std::int64_t stride, const GridSpec& g, float& xmin,
                             float& xmax) {
  xmin = 0.0f;
  xmax = 0.0f;
  for (std::size_t i = 0; i < x.size(); i += static_cast<std::size_t>(stride)) {
    xmin = std::min(xmin, x[i]);
    xmax = std::max(xmax, x[i]);
  }
  if (g.sym) {
    xmax = std::max(std::fabs(xmin), xmax);
    if (xmin < 0.0f || g.fix_sym_nonnegative) xmin = -xmax;
  }
}

inline float nf4_absmax(std::span<const float> x, std::int64_t stride) {
  float amax = 0.0f;
  for (std::size_t i = 0; i < x.size(); i += static_cast<std::size_t>(stride)) amax = std::max(amax, std::fabs(x[i]));
  return amax;
}
}  // namespace detail

// Quantizes one value with fixed params; returns the signed code.
inline int quantize_code(const GridSpec& g, const GroupParams& p, float x) {
  switch (g.kind) {
    case GridKind::kInt:
      return detail::int_q(x, p.scale, p.qmin_raw, detail::int_maxq(g.bits)) - detail::int_half(g.bits);
    case GridKind::kNf4: {
      const float xn = p.scale != 0.0f ? x * p.inv_scale : 0.0f;
      int best = 0;
      float best_d = std::numeric_limits<float>::infinity();
      for (int i = 0; i < 16; ++i) {
        const float d = std::fabs(xn - kNf4Codebook[static_cast<std::size_t>(i)]);
        if (d < best_d) {
          best_d = d;
          best = i;
        }
      }
      return best - 8;
    }
    case GridKind::kQ4_0: {
      // ggml: min(15, (int8)(x*id + 8.5)); the clamp below only matters for values outside the
      // group's own range (GPTQ-updated weights), where ggml's cast would be undefined.
      const float t = std::trunc(x * p.inv_scale + 8.5f);
      return static_cast<int>(std::clamp(t, 0.0f, 15.0f)) - 8;
    }
    case GridKind::kQ4_1: {
      const float t = std::trunc((x - p.qmin_raw) * p.inv_scale + 0.5f);
      return static_cast<int>(std::clamp(t, 0.0f, 15.0f)) - 8;
    }
    case GridKind::kQ8_0: return static_cast<int>(std::clamp(std::round(x * p.inv_scale), -127.0f, 127.0f));
  }
  return 0;
}

inline float dequantize_code(const GridSpec& g, const GroupParams& p, int code) {
  switch (g.kind) {
    case GridKind::kInt: return p.scale * (static_cast<float>(code) - p.zero);
    case GridKind::kNf4: return kNf4Codebook[static_cast<std::size_t>(code + 8)] * p.scale;
    case GridKind::kQ4_0: return static_cast<float>(code) * p.scale;
    case GridKind::kQ4_1: return static_cast<float>(code + 8) * p.scale + p.offset;
    case GridKind::kQ8_0: return static_cast<float>(code) * p.scale;
  }
  return 0.0f;
}

// quantize_code and dequantize_code over n values, value i with params p[i]: the same results,
// bit for bit. The integer grid (the common case) runs on per-value parameter arrays so that
// it vectorises; on x86 the rounding is cvtps2dq, which rounds with the current rounding mode
// exactly as nearbyint does (values are first clamped to ±2^22, which the final clamp to
// [0, maxq] makes invisible).
struct ParamColumns {
  std::vector<GroupParams> p;
  std::vector<float> scale, qmin_raw, zero;
  explicit ParamColumns(std::int64_t n)
      : p(static_cast<std::size_t>(n)), scale(p.size()), qmin_raw(p.size()), zero(p.size()) {}
  void set(std::int64_t i, const GroupParams& v) {
    const auto k = static_cast<std::size_t>(i);
    p[k] = v;
    scale[k] = v.scale;
    qmin_raw[k] = v.qmin_raw;
    zero[k] = v.zero;
  }
};

inline void quantize_values(const GridSpec& g, const ParamColumns& pc, std::int64_t i0, std::int64_t i1,
                            const float* x, float* q, std::int8_t* code) {
  if (g.kind != GridKind::kInt) {
    for (std::int64_t i = i0; i < i1; ++i) {
      const int c = quantize_code(g, pc.p[static_cast<std::size_t>(i)], x[i - i0]);
      code[i - i0] = static_cast<std::int8_t>(c);
      q[i - i0] = dequantize_code(g, pc.p[static_cast<std::size_t>(i)], c);
    }
    return;
  }
  const float maxq = static_cast<float>(detail::int_maxq(g.bits)), half = static_cast<float>(detail::int_half(g.bits));
  const float* s = pc.scale.data() + i0;
  const float* z = pc.qmin_raw.data() + i0;
  const float* zero = pc.zero.data() + i0;
  const std::int64_t n = i1 - i0;
  std::int64_t i = 0;
#if defined(__SSE2__)
  const __m128 lim = _mm_set1_ps(4194304.0f), neg_lim = _mm_set1_ps(-4194304.0f);
  const __m128 vmax = _mm_set1_ps(maxq), vhalf = _mm_set1_ps(half), vzero = _mm_setzero_ps();
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_min_ps(_mm_max_ps(_mm_div_ps(_mm_loadu_ps(x + i), _mm_loadu_ps(s + i)), neg_lim), lim);
    const __m128 u = _mm_min_ps(_mm_max_ps(_mm_add_ps(_mm_cvtepi32_ps(_mm_cvtps_epi32(v)), _mm_loadu_ps(z + i)), vzero), vmax);
    const __m128 c = _mm_sub_ps(u, vhalf);  // the signed code, exact in float
    _mm_storeu_ps(q + i, _mm_mul_ps(_mm_loadu_ps(s + i), _mm_sub_ps(c, _mm_loadu_ps(zero + i))));
    alignas(16) std::int32_t ci[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(ci), _mm_cvttps_epi32(c));
    for (int k = 0; k < 4; ++k) code[i + k] = static_cast<std::int8_t>(ci[k]);
  }
#endif
  for (; i < n; ++i) {
    const int c = detail::int_q(x[i], s[i], z[i], static_cast<int>(maxq)) - static_cast<int>(half);
    code[i] = static_cast<std::int8_t>(c);
    q[i] = s[i] * (static_cast<float>(c) - zero[i]);
  }
}

inline float quantize_value(const GridSpec& g, const GroupParams& p, float x) {
  return dequantize_code(g, p, quantize_code(g, p, x));
}

namespace detail {
inline double group_error(const GridSpec& g, const GroupParams& p, std::span<const float> x, std::int64_t stride) {
  double err = 0.0;
  for (std::size_t i = 0; i < x.size(); i += static_cast<std::size_t>(stride))
    err += std::pow(std::fabs(static_cast<double>(quantize_value(g, p, x[i]) - x[i])), g.mse_norm);
  return err;
}

inline GroupParams ggml_params(GridKind kind, std::span<const float> x, std::int64_t stride) {
  GroupParams p;
  if (kind == GridKind::kQ8_0) {
    const float d = nf4_absmax(x, stride) / 127.0f;
    p.inv_scale = d != 0.0f ? 1.0f / d : 0.0f;
    p.scale = fp16_to_fp32(fp32_to_fp16(d));
  } else if (kind == GridKind::kQ4_0) {
    float amax = 0.0f, max = 0.0f;
    for (std::size_t i = 0; i < x.size(); i += static_cast<std::size_t>(stride))
      if (amax < std::fabs(x[i])) {
        amax = std::fabs(x[i]);
        max = x[i];
      }
    const float d = max / -8.0f;
    p.inv_scale = d != 0.0f ? 1.0f / d : 0.0f;
    p.scale = fp16_to_fp32(fp32_to_fp16(d));
  } else {
    float mn = std::numeric_limits<float>::max(), mx = -std::numeric_limits<float>::max();
    for (std::size_t i = 0; i < x.size(); i += static_cast<std::size_t>(stride)) {
      mn = std::min(mn, x[i]);
      mx = std::max(mx, x[i]);
    }
    const float d = (mx - mn) / 15.0f;
    p.inv_scale = d != 0.0f ? 1.0f / d : 0.0f;
    p.scale = fp16_to_fp32(fp32_to_fp16(d));
    p.qmin_raw = mn;  // quantizing subtracts the fp32 min
    p.offset = fp16_to_fp32(fp32_to_fp16(mn));
    p.zero = 0.0f;
  }
  return p;
}
}  // namespace detail

// Parameters for the values x[0], x[stride], ... of one group.
inline GroupParams find_params(const GridSpec& g, std::span<const float> x, std::int64_t stride = 1) {
  if (is_ggml_grid(g.kind)) {
    if (g.range == RangeMethod::kMse)
      throw_error(Status::kUnsupported, "{}: the ggml scale rule is fixed; MSE range search does not apply",
                  grid_name(g));
    return detail::ggml_params(g.kind, x, stride);
  }
  if (g.kind == GridKind::kNf4) {
    const float amax = detail::nf4_absmax(x, stride);
    GroupParams p;
    p.scale = amax;
    p.inv_scale = amax != 0.0f ? 1.0f / amax : 0.0f;
    if (g.range == RangeMethod::kMse) {
      double best = detail::group_error(g, p, x, stride);
      const int n = static_cast<int>(g.mse_maxshrink * static_cast<float>(g.mse_grid));
      for (int i = 1; i < n; ++i) {
        GroupParams c;
        c.scale = amax * (1.0f - static_cast<float>(i) / static_cast<float>(g.mse_grid));
        c.inv_scale = c.scale != 0.0f ? 1.0f / c.scale : 0.0f;
        const double e = detail::group_error(g, c, x, stride);
        if (e < best) {
          best = e;
          p = c;
        }
      }
    }
    return p;
  }
  float xmin, xmax;
  if (g.range == RangeMethod::kAbsMax && g.sym) {
    // Qwix-style absmax: max|x| maps to the largest positive code 2^(b-1)-1.
    const float amax = detail::nf4_absmax(x, stride);
    const int qpos = std::max(1, detail::int_half(g.bits) - 1);
    GroupParams p;
    p.scale = amax != 0.0f ? amax / static_cast<float>(qpos) : 1.0f;
    p.inv_scale = 1.0f / p.scale;
    p.qmin_raw = static_cast<float>(detail::int_half(g.bits));
    p.zero = 0.0f;
    return p;
  }
  detail::int_minmax_range(x, stride, g, xmin, xmax);
  GroupParams p = detail::int_params_from_range(xmin, xmax, g);
  if (g.range == RangeMethod::kMse) {
    // quant.py's grid search: shrink the range by p, keep a candidate only when strictly better.
    double best = std::numeric_limits<double>::infinity();
    const int n = static_cast<int>(g.mse_maxshrink * static_cast<float>(g.mse_grid));
    const int maxq = detail::int_maxq(g.bits);
    for (int i = 0; i < n; ++i) {
      const float shrink = 1.0f - static_cast<float>(i) / static_cast<float>(g.mse_grid);
      const float xmin1 = shrink * xmin, xmax1 = shrink * xmax;
      GroupParams c;
      c.scale = (xmax1 - xmin1) / static_cast<float>(maxq);
      if (!(c.scale > 0.0f)) continue;
      c.inv_scale = 1.0f / c.scale;
      c.qmin_raw = g.sym ? p.qmin_raw : std::nearbyint(-xmin1 / c.scale);
      c.zero = c.qmin_raw - static_cast<float>(detail::int_half(g.bits));
      const double e = detail::group_error(g, c, x, stride);
      if (e < best) {
        best = e;
        p = c;
      }
    }
  }
  return p;
}

}  // namespace qforge::algorithms
