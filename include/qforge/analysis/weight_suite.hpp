// A benchmark suite of quantization error over generated weight families — gaussian, uniform,
// gaussian with a few large outliers, and rows with widely varied ranges — across granularities
// and qtypes, printed as one table. The weights come from a fixed-seed generator written here
// (Box-Muller on mt19937_64) so the table is the same on every platform.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "qforge/analysis/error_analysis.hpp"

namespace qforge::analysis {

enum class WeightFamily { kGaussian, kUniform, kOutliers, kMultiChannel };

inline constexpr WeightFamily kAllWeightFamilies[] = {WeightFamily::kGaussian, WeightFamily::kUniform,
                                                      WeightFamily::kOutliers, WeightFamily::kMultiChannel};

inline std::string_view family_name(WeightFamily f) {
  switch (f) {
    case WeightFamily::kGaussian: return "gaussian";
    case WeightFamily::kUniform: return "uniform";
    case WeightFamily::kOutliers: return "outliers";
    default: return "multi-channel";
  }
}

inline WeightFamily parse_weight_family(std::string_view s) {
  for (WeightFamily f : kAllWeightFamilies)
    if (s == family_name(f)) return f;
  throw_error(Status::kInvalidArgument, "unknown weight family '{}' (expected gaussian, uniform, outliers, multi-channel)", s);
}

class WeightGenerator {
 public:
  explicit WeightGenerator(std::uint64_t seed) : rng_(seed) {}
  double uniform01() { return (static_cast<double>(rng_() >> 11) + 0.5) * 0x1.0p-53; }  // (0, 1)
  double normal() {
    const double u1 = uniform01(), u2 = uniform01();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * 3.14159265358979323846 * u2);
  }

 private:
  std::mt19937_64 rng_;
};

// Outlier family: one element in 500 is scaled up 20x, as in the activation-outlier studies.
inline constexpr double kOutlierRate = 0.002;
inline constexpr double kOutlierGain = 20.0;
// Multi-channel family: row standard deviations spread log-uniformly over two decades.
inline constexpr double kChannelRangeDecades = 2.0;

// A [rows, cols] weight of the family, standard deviation 0.02 (a typical init) before the
// family's own shaping.
inline TensorF generate_weights(WeightFamily family, std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  WeightGenerator g(seed);
  TensorF w({rows, cols});
  constexpr double kStd = 0.02;
  const double uniform_half_width = kStd * std::sqrt(3.0);  // same variance as the gaussian
  for (std::int64_t r = 0; r < rows; ++r) {
    const double row_std =
        family == WeightFamily::kMultiChannel ? kStd * std::pow(10.0, kChannelRangeDecades * (g.uniform01() - 0.5)) : kStd;
    for (std::int64_t c = 0; c < cols; ++c) {
      double v;
      switch (family) {
        case WeightFamily::kUniform: v = uniform_half_width * (2.0 * g.uniform01() - 1.0); break;
        case WeightFamily::kOutliers: {
          v = kStd * g.normal();
          if (g.uniform01() < kOutlierRate) v *= kOutlierGain;
          break;
        }
        default: v = row_std * g.normal();
      }
      w.at(r, c) = static_cast<float>(v);
    }
  }
  return w;
}

struct SuiteOptions {
  std::int64_t rows = 256;
  std::int64_t cols = 512;
  std::int64_t group = 64;
  std::uint64_t seed = 1234;
  std::vector<WeightFamily> families{std::begin(kAllWeightFamilies), std::end(kAllWeightFamilies)};
  std::vector<QType> qtypes{QType::kInt8, QType::kInt4, QType::kNf4, QType::kFp8E4M3};
  std::vector<formats::GgmlType> ggml_types{formats::GgmlType::kQ8_0, formats::GgmlType::kQ4_0,
                                            formats::GgmlType::kQ4_1};
};

struct SuiteRow {
  WeightFamily family;
  QuantErrorReport report;
};

// Every family x qtype x granularity (per-tensor, per-channel, per-group), then the GGML types.
inline std::vector<SuiteRow> run_suite(const SuiteOptions& o) {
  std::vector<SuiteRow> rows;
  for (WeightFamily f : o.families) {
    const TensorF w = generate_weights(f, o.rows, o.cols, o.seed);
    const std::string name(family_name(f));
    for (QType t : o.qtypes)
      for (const auto& r : compare_configs(w, standard_granularities(t, o.group), name)) rows.push_back({f, r});
    for (auto gt : o.ggml_types) rows.push_back({f, analyze_ggml(w, gt, name)});
  }
  return rows;
}

inline std::string format_suite_table(const std::vector<SuiteRow>& rows) {
  std::vector<QuantErrorReport> reports;
  reports.reserve(rows.size());
  for (const auto& r : rows) reports.push_back(r.report);
  return format_report_table(reports);
}

}  // namespace qforge::analysis
