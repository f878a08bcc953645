// Error metrics between a reference tensor and its quantized approximation. Sums run in double
// so the metrics of large tensors do not drift with their size.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "qforge/core/qarray.hpp"

namespace qforge::analysis {

struct ErrorStats {
  std::int64_t count = 0;
  double mse = 0;           // mean (x - y)^2
  double rmse = 0;          // sqrt(mse)
  double relative = 0;      // ||x - y|| / ||x||  (relative RMSE)
  double sqnr_db = 0;       // 10 log10(sum x^2 / sum (x - y)^2); +inf when exact
  double max_abs = 0;       // max |x - y|
  double signal_rms = 0;    // sqrt(mean x^2)

  nlohmann::json to_json() const {
    auto finite = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
    return {{"count", count}, {"mse", mse}, {"rmse", rmse}, {"relative_rmse", relative},
            {"sqnr_db", finite(sqnr_db)}, {"max_abs_error", max_abs}};
  }
};

inline ErrorStats compare(const float* x, const float* y, std::int64_t n) {
  ErrorStats s;
  s.count = n;
  double err2 = 0, sig2 = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - y[i];
    err2 += d * d;
    sig2 += static_cast<double>(x[i]) * x[i];
    s.max_abs = std::max(s.max_abs, std::fabs(d));
  }
  if (n > 0) {
    s.mse = err2 / static_cast<double>(n);
    s.signal_rms = std::sqrt(sig2 / static_cast<double>(n));
  }
  s.rmse = std::sqrt(s.mse);
  s.relative = sig2 > 0 ? std::sqrt(err2 / sig2) : (err2 > 0 ? std::numeric_limits<double>::infinity() : 0.0);
  s.sqnr_db = err2 > 0 ? 10.0 * std::log10(sig2 / err2) : std::numeric_limits<double>::infinity();
  return s;
}
inline ErrorStats compare(const TensorF& x, const TensorF& y) {
  if (x.shape() != y.shape())
    throw_error(Status::kShapeMismatch, "compare: shapes {} and {} differ", shape_str(x.shape()), shape_str(y.shape()));
  return compare(x.data(), y.data(), x.size());
}

// SQNR of an ideal uniform b-bit quantizer on a full-scale uniform signal: 6.02 b + 1.76 dB is
// for a sine; for a uniform signal it is exactly 20 log10(2^b) = 6.02 b dB.
inline double uniform_quantizer_sqnr_db(int bits) { return 20.0 * std::log10(std::pow(2.0, bits)); }

// Largest error quantize/dequantize may make on x inside its calibrated range: scale/2 per cell.
inline double max_error_bound(const QArray& q) {
  double bound = 0;
  for (std::int64_t c = 0; c < q.scale().size(); ++c) bound = std::max(bound, 0.5 * q.scale()[c]);
  return bound;
}

}  // namespace qforge::analysis
