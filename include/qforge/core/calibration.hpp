// Calibration: from a tensor to the range each scale cell must cover.
//
// Method strings follow Qwix (absmax[,s], minmax[,s], rms,k, fixed,a, fixed,lo,hi) plus two of
// ours: percentile,p (the p-th percentile of |x| per cell, numpy's linear interpolation) and mse
// (grid search of the clipping ratio minimising that cell's squared quantization error).
// Calibration rejects NaN and Inf, naming the tensor and the first bad element.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "qforge/core/layout.hpp"
#include "qforge/core/numerics.hpp"

namespace qforge {

enum class CalibrationKind { kAbsMax, kMinMax, kRms, kFixed, kPercentile, kMse };

struct CalibrationMethod {
  CalibrationKind kind = CalibrationKind::kAbsMax;
  double factor = 1.0;       // absmax/minmax multiplier, rms k
  bool has_factor = false;   // an explicit factor was given (matters for STE gradient masks)
  double fixed_lo = 0.0;     // fixed range
  double fixed_hi = 0.0;
  double percentile = 100.0;
  std::string text = "absmax";

  // Symmetric methods produce an absmax per cell; asymmetric ones a (min, max) pair.
  bool symmetric() const {
    if (kind == CalibrationKind::kMinMax) return false;
    if (kind == CalibrationKind::kFixed) return fixed_lo == -fixed_hi;
    return true;
  }
};

namespace detail {
inline std::vector<std::string_view> split_commas(std::string_view s) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    const auto comma = s.find(',', start);
    auto part = s.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    while (!part.empty() && part.front() == ' ') part.remove_prefix(1);
    while (!part.empty() && part.back() == ' ') part.remove_suffix(1);
    parts.push_back(part);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return parts;
}
inline double parse_number(std::string_view text, std::string_view method) {
  double v = 0;
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || ptr != end || !std::isfinite(v))
    throw_error(Status::kInvalidArgument, "calibration method '{}': '{}' is not a number", method, text);
  return v;
}
}  // namespace detail

inline CalibrationMethod parse_calibration_method(std::string_view text) {
  const auto parts = detail::split_commas(text);
  const auto name = parts[0];
  const std::size_t nargs = parts.size() - 1;
  auto arg = [&](std::size_t i) { return detail::parse_number(parts[i + 1], text); };
  auto bad = [&](std::string_view why) -> CalibrationMethod {
    throw_error(Status::kInvalidArgument, "calibration method '{}': {}", text, why);
  };
  CalibrationMethod m;
  m.text = std::string(text);
  if (name == "absmax" || name == "minmax") {
    m.kind = name == "absmax" ? CalibrationKind::kAbsMax : CalibrationKind::kMinMax;
    if (nargs > 1) return bad("takes at most one factor");
    if (nargs == 1) {
      m.factor = arg(0);
      m.has_factor = true;
      if (m.factor <= 0) return bad("the factor must be positive");
    }
  } else if (name == "rms") {
    m.kind = CalibrationKind::kRms;
    if (nargs != 1) return bad("rms needs exactly one factor k, as in 'rms,7'");
    m.factor = arg(0);
    m.has_factor = true;
    if (m.factor <= 0) return bad("the factor must be positive");
  } else if (name == "fixed") {
    m.kind = CalibrationKind::kFixed;
    if (nargs == 1) {
      m.fixed_hi = arg(0);
      m.fixed_lo = -m.fixed_hi;
      if (m.fixed_hi <= 0) return bad("the bound must be positive");
    } else if (nargs == 2) {
      m.fixed_lo = arg(0);
      m.fixed_hi = arg(1);
      if (!(m.fixed_lo <= 0 && 0 <= m.fixed_hi && m.fixed_lo < m.fixed_hi))
        return bad("needs lo <= 0 <= hi and lo < hi");
    } else {
      return bad("fixed takes 'fixed,a' or 'fixed,lo,hi'");
    }
  } else if (name == "percentile") {
    m.kind = CalibrationKind::kPercentile;
    if (nargs != 1) return bad("percentile needs one value p in (0, 100], as in 'percentile,99.9'");
    m.percentile = arg(0);
    if (!(m.percentile > 0 && m.percentile <= 100)) return bad("p must be in (0, 100]");
  } else if (name == "mse") {
    m.kind = CalibrationKind::kMse;
    if (nargs != 0) return bad("mse takes no arguments");
  } else {
    return bad("unknown method (expected absmax, minmax, rms, fixed, percentile or mse)");
  }
  return m;
}

// The range of every scale cell. For a symmetric method `lo` is -`hi` and `hi` is the absmax.
struct CalibratedRange {
  TensorF lo;
  TensorF hi;
  bool symmetric = true;
};

// Element sources: a `const float*` to contiguous row-major memory, or a TensorView<const float>
// (strided); both are read as x[row-major flat index].

// Throws Error naming `name` and the first NaN/Inf element.
template <class Elements>
void check_finite(const Elements& x, const QuantLayout& layout, std::string_view name) {
  const std::int64_t n = layout.num_elements();
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i]))
      throw_error(Status::kNumericalError, "tensor '{}': non-finite value {} at index {} (flat {})", name,
                  x[i], layout.index_str(i), i);
}

namespace detail {
// Per-cell values, for the methods that need the whole distribution of a cell.
template <class Elements>
std::vector<std::vector<float>> gather_cells(const Elements& x, const QuantLayout& layout) {
  std::vector<std::vector<float>> cells(static_cast<std::size_t>(layout.num_cells()));
  layout.for_each([&](std::int64_t e, std::int64_t c) { cells[static_cast<std::size_t>(c)].push_back(x[e]); });
  return cells;
}

inline double percentile_of_abs(std::vector<float> v, double p) {
  if (v.empty()) return 0.0;
  for (auto& f : v) f = std::fabs(f);
  std::sort(v.begin(), v.end());
  const double pos = p / 100.0 * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(pos));
  const auto hi = std::min(lo + 1, v.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return v[lo] + (static_cast<double>(v[hi]) - v[lo]) * frac;
}

// Squared error of quantizing `v` symmetrically with clipping value `absmax`.
inline double symmetric_sq_error(const std::vector<float>& v, double absmax, QType qtype) {
  const float scale = static_cast<float>(absmax / info(qtype).symmetric_bound);
  double err = 0;
  for (float x : v) {
    const double dq = qtype_decode(qtype, qtype_encode(qtype, x / scale)) * scale;
    err += (x - dq) * (x - dq);
  }
  return err;
}

// GPTQ's grid (maxshrink 0.8, 100 steps): clip = absmax * (1 - i/100), i = 0..80; first best wins.
inline double mse_search_absmax(const std::vector<float>& v, QType qtype) {
  double absmax = 0;
  for (float x : v) absmax = std::max(absmax, static_cast<double>(std::fabs(x)));
  if (absmax == 0) return 0;
  double best = absmax, best_err = std::numeric_limits<double>::infinity();
  for (int i = 0; i <= 80; ++i) {
    const double clip = absmax * (1.0 - i / 100.0);
    const double err = symmetric_sq_error(v, clip, qtype);
    if (err < best_err) {
      best_err = err;
      best = clip;
    }
  }
  return best;
}
}  // namespace detail

template <class Elements>
CalibratedRange calibrate(const Elements& x, const QuantLayout& layout, const CalibrationMethod& m, QType qtype,
                          std::string_view name = "tensor") {
  check_finite(x, layout, name);
  if (!m.symmetric() && !has_asymmetric_range(qtype))
    throw_error(Status::kInvalidArgument,
                "tensor '{}': calibration '{}' is asymmetric but qtype {} has no asymmetric range", name,
                m.text, to_string(qtype));
  CalibratedRange r{TensorF(layout.scale_shape()), TensorF(layout.scale_shape()), m.symmetric()};
  float* lo = r.lo.data();
  float* hi = r.hi.data();
  const std::int64_t cells = layout.num_cells();
  switch (m.kind) {
    case CalibrationKind::kAbsMax:
      layout.for_each([&](std::int64_t e, std::int64_t c) { hi[c] = std::max(hi[c], std::fabs(x[e])); });
      for (std::int64_t c = 0; c < cells; ++c) hi[c] *= static_cast<float>(m.factor);  // float32, as Qwix
      break;
    case CalibrationKind::kMinMax:  // lo starts at 0 and hi at 0: min clipped to <= 0, max to >= 0
      layout.for_each([&](std::int64_t e, std::int64_t c) {
        lo[c] = std::min(lo[c], x[e]);
        hi[c] = std::max(hi[c], x[e]);
      });
      for (std::int64_t c = 0; c < cells; ++c) {
        lo[c] *= static_cast<float>(m.factor);
        hi[c] *= static_cast<float>(m.factor);
      }
      break;
    case CalibrationKind::kRms: {
      std::vector<double> sum(static_cast<std::size_t>(cells), 0.0);
      layout.for_each([&](std::int64_t e, std::int64_t c) { sum[static_cast<std::size_t>(c)] += double(x[e]) * x[e]; });
      const double per_cell = static_cast<double>(layout.num_elements()) / static_cast<double>(std::max<std::int64_t>(cells, 1));
      for (std::int64_t c = 0; c < cells; ++c)
        hi[c] = static_cast<float>(m.factor * std::sqrt(sum[static_cast<std::size_t>(c)] / per_cell));
      break;
    }
    case CalibrationKind::kFixed:
      std::fill(lo, lo + cells, static_cast<float>(m.fixed_lo));
      std::fill(hi, hi + cells, static_cast<float>(m.fixed_hi));
      break;
    case CalibrationKind::kPercentile: {
      const auto values = detail::gather_cells(x, layout);
      for (std::int64_t c = 0; c < cells; ++c)
        hi[c] = static_cast<float>(detail::percentile_of_abs(values[static_cast<std::size_t>(c)], m.percentile));
      break;
    }
    case CalibrationKind::kMse: {
      const auto values = detail::gather_cells(x, layout);
      for (std::int64_t c = 0; c < cells; ++c)
        hi[c] = static_cast<float>(detail::mse_search_absmax(values[static_cast<std::size_t>(c)], qtype));
      break;
    }
  }
  if (r.symmetric)
    for (std::int64_t c = 0; c < cells; ++c) lo[c] = -hi[c];
  return r;
}

// Scale and zero point from a calibrated range (Qwix compute_scale / compute_zero_point), with
// Qwix's float32 arithmetic as XLA runs it on the CPU: a division by a value that is the same
// across the loop (the constant bound here, a broadcast scale in quantize) is a multiplication by
// its float32 reciprocal, an elementwise one a true division. So symmetric scale = absmax · fl(1/B),
// asymmetric scale = (hi − lo) · fl(1/(qmax − qmin)) and zp = round(qmin − lo / scale), saturated. A scale
// below sqrt(FLT_MIN) becomes 1, so an all-zero cell quantizes to 0 with no NaN.
struct ScaleAndZeroPoint {
  TensorF scale;
  std::optional<Tensor<std::int32_t>> zero_point;
};

inline float guard_scale(float s) {
  static const float kMinScale = std::sqrt(std::numeric_limits<float>::min());
  return s < kMinScale ? 1.0f : s;
}

inline ScaleAndZeroPoint compute_scale(const CalibratedRange& r, QType qtype) {
  const auto& qi = info(qtype);
  ScaleAndZeroPoint out{TensorF(r.hi.shape()), std::nullopt};
  const std::int64_t cells = r.hi.size();
  if (r.symmetric) {
    const float reciprocal = 1.0f / static_cast<float>(qi.symmetric_bound);
    // Qwix's bound B = qmax + 0.5 means ±absmax maps to ±B; its float32 scale can leave
    // −absmax · fl(1/scale) a hair above −B (−127.49999), so that value lands on qmin + 1, as in Qwix.
    for (std::int64_t c = 0; c < cells; ++c) out.scale[c] = guard_scale(r.hi[c] * reciprocal);
    return out;
  }
  out.zero_point = Tensor<std::int32_t>(r.hi.shape());
  const float reciprocal_range = 1.0f / static_cast<float>(qi.qmax - qi.qmin);
  for (std::int64_t c = 0; c < cells; ++c) {
    const float s = guard_scale((r.hi[c] - r.lo[c]) * reciprocal_range);
    out.scale[c] = s;
    (*out.zero_point)[c] = round_saturate(static_cast<double>(static_cast<float>(qi.qmin) - r.lo[c] / s), qi.qmin, qi.qmax);
  }
  return out;
}

}  // namespace qforge
