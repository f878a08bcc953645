// What quantization costs one tensor: error metrics against the theoretical bound and the
// theoretical SQNR, outlier impact, scale sensitivity, and comparisons across granularities and
// bit widths. Everything quantizes through the library's own quantize()/quantize_with_scale()
// (core/qarray.hpp) and ggml block encoders (formats/gguf_blocks.hpp); nothing here re-implements
// a quantizer, so the numbers describe exactly what the library produces.
//
// Works per tensor and per site alike: a "site" is any named tensor a caller quantizes (a weight,
// or the activations seen at an op site), passed with its name.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qforge/analysis/metrics.hpp"
#include "qforge/core/qarray.hpp"
#include "qforge/formats/gguf_blocks.hpp"

namespace qforge::analysis {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- theory -------------------------------------------------------------------------------------

// SQNR of a signal uniformly filling `steps` quantization steps, with uniform rounding noise of
// variance step^2/12: signal variance (steps*step)^2/12, so SQNR = 20 log10(steps).
inline double uniform_signal_sqnr_db(double steps) { return 20.0 * std::log10(steps); }

// The textbook figure for a full-scale sine through a b-bit quantizer: 6.02 b + 1.76 dB.
inline double sine_quantizer_sqnr_db(int bits) { return uniform_quantizer_sqnr_db(bits) + 10.0 * std::log10(1.5); }

// Steps that a symmetric absmax-calibrated integer qtype spreads over [-absmax, absmax]: the scale
// is absmax / B (B = qmax + 0.5 for signed types), so 2 absmax / scale = 2B = 2^b - 1 steps.
inline double symmetric_steps(QType t) { return 2.0 * info(t).symmetric_bound; }

// ---- one tensor, one quantization ---------------------------------------------------------------

struct QuantErrorReport {
  std::string name;
  std::string config;      // what was applied, e.g. "int4 group 128"
  ErrorStats error;
  double bits_per_weight = 0;    // storage of codes, scales and zero points per element
  // Per-element bound: an element inside its cell's calibrated range is off by at most scale/2
  // (integer qtypes; the grid step is the scale). NaN where the step is not uniform.
  double max_bound = kNaN;        // largest scale/2 over the cells
  double bound_ratio = kNaN;      // max over elements of |error| / (its cell's scale / 2)
  std::int64_t over_bound = 0;    // elements beyond their bound (clipped by the calibration)
  // Uniform-noise model: noise power = mean over elements of (cell scale)^2 / 12.
  double predicted_sqnr_db = kNaN;

  nlohmann::json to_json() const {
    auto finite = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
    nlohmann::json j = error.to_json();
    j["name"] = name;
    j["config"] = config;
    j["bits_per_weight"] = bits_per_weight;
    j["max_error_bound"] = finite(max_bound);
    j["bound_ratio"] = finite(bound_ratio);
    j["elements_over_bound"] = over_bound;
    j["predicted_sqnr_db"] = finite(predicted_sqnr_db);
    return j;
  }
};

// The bound an element inside its calibrated range meets (docs/user-guide.md, "Error bounds"):
// half a step, plus the float32 rounding of the scale (<= 1 ulp) and of the dequantized value
// (<= 1/2 ulp), which together stay below 2^-22 |x|.
inline double element_error_bound(double x, double scale) { return 0.5 * scale + std::ldexp(std::fabs(x), -22); }

// Error of an existing QArray `q` against the float tensor `x` it was made from.
inline QuantErrorReport analyze_quantized(const TensorF& x, const QArray& q, std::string name, std::string config = {}) {
  if (x.shape() != q.shape())
    throw_error(Status::kShapeMismatch, "{}: tensor shape {} differs from the quantized shape {}", name,
                shape_str(x.shape()), shape_str(q.shape()));
  QuantErrorReport r;
  r.name = std::move(name);
  r.config = config.empty() ? std::string(to_string(q.qtype())) : std::move(config);
  const TensorF y = dequantize(q);
  r.error = compare(x, y);
  r.bits_per_weight = x.size() > 0 ? 8.0 * static_cast<double>(q.nbytes()) / static_cast<double>(x.size()) : 0;
  if (!is_integer(q.qtype()) || x.size() == 0) return r;

  const float* s = q.scale().data();
  double ratio = 0, noise = 0, signal = 0;
  std::int64_t over = 0;
  q.layout().for_each([&](std::int64_t e, std::int64_t c) {
    const double half_step = 0.5 * s[c];
    const double err = std::fabs(static_cast<double>(x[e]) - y[e]);
    ratio = std::max(ratio, err / half_step);
    if (err > element_error_bound(x[e], s[c])) ++over;
    noise += static_cast<double>(s[c]) * s[c] / 12.0;
    signal += static_cast<double>(x[e]) * x[e];
  });
  r.max_bound = max_error_bound(q);
  r.bound_ratio = ratio;
  r.over_bound = over;
  r.predicted_sqnr_db = noise > 0 ? 10.0 * std::log10(signal / noise) : kNaN;
  return r;
}

// A readable name for a HowToQuantize on a matrix: per-tensor, per-channel, group N, ...
inline std::string describe(const HowToQuantize& how) {
  std::string g;
  if (!how.tiled_axes.empty()) {
    const auto& [axis, tile] = *how.tiled_axes.begin();
    g = std::holds_alternative<std::int64_t>(tile) ? fmt::format("group {}", std::get<std::int64_t>(tile))
                                                   : fmt::format("tile {:g} of axis {}", std::get<double>(tile), axis);
  } else if (!how.channelwise_axes.empty()) {
    g = "per-channel";
  } else {
    g = "per-tensor";
  }
  std::string out = fmt::format("{} {}", to_string(how.qtype), g);
  if (how.calibration_method != "absmax") out += fmt::format(" ({})", how.calibration_method);
  return out;
}

inline QuantErrorReport analyze(const TensorF& x, const HowToQuantize& how, std::string name) {
  QuantizeOptions opts;
  opts.name = name;
  const QArray q = quantize(x, how, opts);
  return analyze_quantized(x, q, std::move(name), describe(how));
}

// A GGML block type (Q4_0, Q8_0, ...) applied row by row with the formats' reference encoder and
// decoder. The bound fields stay NaN: Q4_0 maps the signed absmax to -8 so the other side can
// clip by a full step, which is ggml's design rather than a scale/2 grid.
inline QuantErrorReport analyze_ggml(const TensorF& x, formats::GgmlType type, std::string name) {
  if (x.rank() < 1) throw_error(Status::kShapeMismatch, "{}: a GGML block type needs at least one dimension", name);
  const std::int64_t cols = x.shape().back();
  const std::int64_t rows = cols > 0 ? x.size() / cols : 0;
  const std::int64_t row_bytes = formats::ggml_row_bytes(type, cols, name);
  std::vector<std::uint8_t> blocks(static_cast<std::size_t>(row_bytes));
  TensorF y(x.shape());
  for (std::int64_t r = 0; r < rows; ++r) {
    formats::encode_row(type, x.data() + r * cols, blocks.data(), cols);
    formats::decode_row(type, blocks.data(), y.data() + r * cols, cols);
  }
  QuantErrorReport rep;
  rep.name = std::move(name);
  rep.config = std::string(formats::ggml_traits(type).name);
  rep.error = compare(x, y);
  rep.bits_per_weight = cols > 0 ? 8.0 * static_cast<double>(row_bytes) / static_cast<double>(cols) : 0;
  return rep;
}

// ---- outliers -----------------------------------------------------------------------------------

// How much the k largest-magnitude elements cost everyone else: the inliers' error when the
// outliers take part in calibration, against the inliers' error when they are removed (set to
// zero, which stays inside every calibrated range) before calibration.
struct OutlierImpact {
  std::int64_t k = 0;
  double outlier_energy_fraction = 0;  // share of sum x^2 carried by the k outliers
  ErrorStats inliers_with_outliers;     // calibrated on all of x
  ErrorStats inliers_without_outliers;  // calibrated on x with the outliers removed
  ErrorStats outliers;                  // the outliers' own error when they take part
  double mse_ratio() const {
    return inliers_without_outliers.mse > 0 ? inliers_with_outliers.mse / inliers_without_outliers.mse : kNaN;
  }
  double sqnr_cost_db() const { return inliers_without_outliers.sqnr_db - inliers_with_outliers.sqnr_db; }
  nlohmann::json to_json() const {
    return {{"k", k}, {"outlier_energy_fraction", outlier_energy_fraction},
            {"inliers_with_outliers", inliers_with_outliers.to_json()},
            {"inliers_without_outliers", inliers_without_outliers.to_json()},
            {"outliers", outliers.to_json()}, {"mse_ratio", mse_ratio()}};
  }
};

// Indices of the k largest |x|, ties broken by index so the choice is deterministic.
inline std::vector<std::int64_t> top_k_magnitudes(const TensorF& x, std::int64_t k) {
  std::vector<std::int64_t> idx(static_cast<std::size_t>(x.size()));
  std::iota(idx.begin(), idx.end(), std::int64_t{0});
  k = std::clamp<std::int64_t>(k, 0, x.size());
  auto larger = [&](std::int64_t a, std::int64_t b) {
    const float ma = std::fabs(x[a]), mb = std::fabs(x[b]);
    return ma != mb ? ma > mb : a < b;
  };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), larger);
  idx.resize(static_cast<std::size_t>(k));
  return idx;
}

inline OutlierImpact outlier_impact(const TensorF& x, const HowToQuantize& how, std::int64_t k,
                                    std::string_view name = "tensor") {
  OutlierImpact r;
  const std::vector<std::int64_t> top = top_k_magnitudes(x, k);
  r.k = static_cast<std::int64_t>(top.size());
  std::vector<bool> is_outlier(static_cast<std::size_t>(x.size()), false);
  for (auto i : top) is_outlier[static_cast<std::size_t>(i)] = true;

  TensorF cleaned = x;
  for (auto i : top) cleaned[i] = 0.0f;
  QuantizeOptions opts;
  opts.name = name;
  const TensorF with = dequantize(quantize(x, how, opts));
  const TensorF without = dequantize(quantize(cleaned, how, opts));

  std::vector<float> in_x, in_with, in_without, out_x, out_with;
  double energy_out = 0, energy = 0;
  for (std::int64_t e = 0; e < x.size(); ++e) {
    energy += static_cast<double>(x[e]) * x[e];
    if (is_outlier[static_cast<std::size_t>(e)]) {
      energy_out += static_cast<double>(x[e]) * x[e];
      out_x.push_back(x[e]);
      out_with.push_back(with[e]);
    } else {
      in_x.push_back(x[e]);
      in_with.push_back(with[e]);
      in_without.push_back(without[e]);
    }
  }
  const auto n_in = static_cast<std::int64_t>(in_x.size());
  r.outlier_energy_fraction = energy > 0 ? energy_out / energy : 0;
  r.inliers_with_outliers = compare(in_x.data(), in_with.data(), n_in);
  r.inliers_without_outliers = compare(in_x.data(), in_without.data(), n_in);
  r.outliers = compare(out_x.data(), out_with.data(), static_cast<std::int64_t>(out_x.size()));
  return r;
}

// ---- scale sensitivity --------------------------------------------------------------------------

// Error when the calibrated scales are multiplied by `factor` (zero points kept): factors below 1
// clip the extremes to refine the grid, factors above 1 coarsen it.
struct ScalePoint {
  double factor = 1;
  ErrorStats error;
};

inline std::vector<ScalePoint> scale_sensitivity(const TensorF& x, const HowToQuantize& how,
                                                 const std::vector<double>& factors, std::string_view name = "tensor") {
  QuantizeOptions opts;
  opts.name = name;
  const QArray base = quantize(x, how, opts);
  std::vector<ScalePoint> out;
  for (double f : factors) {
    if (!(f > 0) || !std::isfinite(f))
      throw_error(Status::kInvalidArgument, "{}: scale factor {} must be positive and finite", name, f);
    ScaleAndZeroPoint sz{base.scale(), base.zero_point()};
    for (std::int64_t c = 0; c < sz.scale.size(); ++c) sz.scale[c] = static_cast<float>(sz.scale[c] * f);
    const TensorF y = dequantize(quantize_with_scale(x, how, std::move(sz), opts));
    out.push_back({f, compare(x, y)});
  }
  return out;
}

// The factor with the lowest MSE among those tried.
inline ScalePoint best_scale(const std::vector<ScalePoint>& points) {
  if (points.empty()) throw_error(Status::kInvalidArgument, "best_scale: no points");
  return *std::min_element(points.begin(), points.end(),
                           [](const ScalePoint& a, const ScalePoint& b) { return a.error.mse < b.error.mse; });
}

// ---- granularity and bit-width comparisons ------------------------------------------------------

// The usual granularities of a [out, in] weight: one scale, one per output row, one per group of
// `group` inputs in each row (group must divide the row length).
inline std::vector<HowToQuantize> standard_granularities(QType t, std::int64_t group) {
  HowToQuantize per_tensor{t, {}, {}, "absmax"};
  HowToQuantize per_channel{t, {0}, {}, "absmax"};
  HowToQuantize per_group{t, {0}, {{1, TileSize{group}}}, "absmax"};
  return {per_tensor, per_channel, per_group};
}

inline std::vector<QuantErrorReport> compare_configs(const TensorF& x, const std::vector<HowToQuantize>& configs,
                                                     const std::string& name) {
  std::vector<QuantErrorReport> out;
  out.reserve(configs.size());
  for (const auto& how : configs) out.push_back(analyze(x, how, name));
  return out;
}

// One granularity over several qtypes (bit widths, or integer vs NF4 vs FP8 at equal bits).
inline std::vector<QuantErrorReport> compare_qtypes(const TensorF& x, const HowToQuantize& base,
                                                    const std::vector<QType>& qtypes, const std::string& name) {
  std::vector<HowToQuantize> configs;
  for (QType t : qtypes) {
    HowToQuantize how = base;
    how.qtype = t;
    configs.push_back(how);
  }
  return compare_configs(x, configs, name);
}

// ---- tables -------------------------------------------------------------------------------------

inline std::string fmt_db(double v) { return std::isfinite(v) ? fmt::format("{:7.2f}", v) : std::string("      -"); }

inline std::string format_report_table(const std::vector<QuantErrorReport>& reports) {
  std::size_t name_w = 6, cfg_w = 6;
  for (const auto& r : reports) {
    name_w = std::max(name_w, r.name.size());
    cfg_w = std::max(cfg_w, r.config.size());
  }
  std::string out = fmt::format("{:<{}}  {:<{}}  {:>6}  {:>10}  {:>9}  {:>7}  {:>7}  {:>9}  {:>9}\n", "tensor", name_w,
                                "config", cfg_w, "bits/w", "rmse", "rel.err", "SQNR dB", "model dB", "max err",
                                "err/bound");
  for (const auto& r : reports)
    out += fmt::format("{:<{}}  {:<{}}  {:6.2f}  {:10.3e}  {:9.3e}  {}  {}  {:9.3e}  {:>9}\n", r.name, name_w, r.config,
                       cfg_w, r.bits_per_weight, r.error.rmse, r.error.relative, fmt_db(r.error.sqnr_db),
                       fmt_db(r.predicted_sqnr_db), r.error.max_abs,
                       std::isfinite(r.bound_ratio) ? fmt::format("{:.3f}", r.bound_ratio) : std::string("-"));
  return out;
}

inline nlohmann::json to_json(const std::vector<QuantErrorReport>& reports) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : reports) j.push_back(r.to_json());
  return j;
}

}  // namespace qforge::analysis
