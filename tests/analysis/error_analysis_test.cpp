// Checks of the error analysis against what theory says the library's quantizers must do.
// Tolerances are derived in the comments; the data is generated with fixed seeds (printed by
// SCOPED_TRACE where a test loops over them).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "qforge/analysis/error_analysis.hpp"
#include "qforge/analysis/weight_suite.hpp"

namespace qforge::analysis {
namespace {

constexpr std::uint64_t kSeed = 20261124;

TensorF uniform_tensor(std::int64_t n, double half_width, std::uint64_t seed) {
  WeightGenerator g(seed);
  TensorF t({n});
  for (std::int64_t i = 0; i < n; ++i) t[i] = static_cast<float>(half_width * (2 * g.uniform01() - 1));
  return t;
}

// A full-scale sine sampled at an irrational frequency, so the samples cover the phase evenly.
TensorF sine_tensor(std::int64_t n, double amplitude) {
  TensorF t({n});
  const double f = (std::sqrt(5.0) - 1) / 2;
  for (std::int64_t i = 0; i < n; ++i) t[i] = static_cast<float>(amplitude * std::sin(2 * 3.14159265358979323846 * f * static_cast<double>(i)));
  return t;
}

HowToQuantize how(QType t, std::vector<int> channel_axes = {}, std::string calibration = "absmax") {
  return HowToQuantize{t, std::move(channel_axes), {}, std::move(calibration)};
}

// Every integer qtype and granularity: no element inside its calibrated range is off by more than
// half a step (plus float rounding), and the largest error reaches nearly that bound (the bound is
// tight: with 64k gaussian elements some land within 1% of a half-step boundary).
TEST(ErrorAnalysis, MaxErrorWithinScaleOverTwo) {
  const TensorF w = generate_weights(WeightFamily::kGaussian, 128, 256, kSeed);
  for (QType t : {QType::kInt2, QType::kInt3, QType::kInt4, QType::kInt8}) {
    for (const auto& h : standard_granularities(t, 32)) {
      for (const char* calib : {"absmax", "minmax"}) {
        HowToQuantize hq = h;
        hq.calibration_method = calib;
        SCOPED_TRACE(describe(hq) + " " + calib);
        const auto r = analyze(w, hq, "w");
        EXPECT_EQ(r.over_bound, 0);
        EXPECT_LE(r.bound_ratio, 1.0 + 1e-4);  // 2^-22 |x| / (scale/2) <= 2^-21 * 2B < 1e-4
        EXPECT_GT(r.bound_ratio, 0.99);
        EXPECT_LE(r.error.max_abs, r.max_bound * (1 + 1e-4));
      }
    }
  }
}

// A calibration that clips (half the absmax) must show elements beyond the bound: the check can fail.
TEST(ErrorAnalysis, ClippingCalibrationExceedsTheBound) {
  const TensorF w = generate_weights(WeightFamily::kGaussian, 64, 128, kSeed);
  const auto r = analyze(w, how(QType::kInt4, {0}, "absmax,0.5"), "w");
  EXPECT_GT(r.over_bound, 0);
  EXPECT_GT(r.bound_ratio, 2.0);  // the row maximum is clipped to half its value: 0.5 absmax = 3.75 steps
}

// Uniform data through a symmetric absmax b-bit quantizer spreads over 2B = 2^b - 1 steps, so
// SQNR = 20 log10(2^b - 1). With n = 2^16 samples, the relative standard error of the noise
// power is sqrt(4/5 / n) ~ 0.35% (0.015 dB), so 0.1 dB is over 6 standard errors. For b >= 4 this
// is within 0.6 dB of the 6.02 b textbook figure (20 log10(16/15) = 0.56 dB at b = 4).
TEST(ErrorAnalysis, UniformDataSqnrMatchesTheory) {
  const TensorF x = uniform_tensor(1 << 16, 1.0, kSeed);
  for (QType t : {QType::kInt4, QType::kInt5, QType::kInt6, QType::kInt7, QType::kInt8}) {
    SCOPED_TRACE(std::string(to_string(t)));
    const int b = info(t).bits;
    const auto r = analyze(x, how(t), "uniform");
    EXPECT_NEAR(r.error.sqnr_db, uniform_signal_sqnr_db(symmetric_steps(t)), 0.1);
    EXPECT_NEAR(r.error.sqnr_db, uniform_quantizer_sqnr_db(b), 0.6);
    EXPECT_NEAR(r.predicted_sqnr_db, r.error.sqnr_db, 0.1);  // the noise model is exact here
  }
}

// A full-scale sine has power A^2/2 instead of A^2/3, 1.76 dB above the uniform figure, but its
// samples crowd at +/-A, which the symmetric grid (scale = A / (qmax + 0.5)) puts exactly half a
// step past the last level: those samples err by nearly half a step, more than the step^2/12 the
// textbook assumes. So the measured SQNR lies below 6.02 b + 1.76, by less as b grows (the crowd
// within a step of the peak shrinks like 2^(-b/2)): 0.5 dB from b = 6 on.
TEST(ErrorAnalysis, SineSqnrApproachesTextbookFigure) {
  const TensorF x = sine_tensor(1 << 16, 1.0);
  double previous_gap = 1e9;
  for (QType t : {QType::kInt6, QType::kInt7, QType::kInt8}) {
    SCOPED_TRACE(std::string(to_string(t)));
    const auto r = analyze(x, how(t), "sine");
    const double gap = sine_quantizer_sqnr_db(info(t).bits) - r.error.sqnr_db;
    EXPECT_GT(gap, 0.0);
    EXPECT_LT(gap, 0.5);
    EXPECT_LT(gap, previous_gap);
    previous_gap = gap;
  }
}

// Each added bit halves the step: SQNR(b+1) - SQNR(b) = 20 log10((2^(b+1) - 1) / (2^b - 1)).
TEST(ErrorAnalysis, EachBitAddsSixDecibels) {
  const TensorF x = uniform_tensor(1 << 16, 0.5, kSeed + 1);
  const auto reports = compare_qtypes(x, how(QType::kInt4), {QType::kInt4, QType::kInt5, QType::kInt6, QType::kInt7, QType::kInt8}, "x");
  for (std::size_t i = 1; i < reports.size(); ++i) {
    SCOPED_TRACE(reports[i].config);
    const double expected = uniform_signal_sqnr_db(std::pow(2.0, 4 + static_cast<double>(i)) - 1) -
                            uniform_signal_sqnr_db(std::pow(2.0, 3 + static_cast<double>(i)) - 1);
    EXPECT_NEAR(reports[i].error.sqnr_db - reports[i - 1].error.sqnr_db, expected, 0.15);
    EXPECT_GT(reports[i].bits_per_weight, reports[i - 1].bits_per_weight - 1e-9);
  }
}

// Gaussian weights at 8 bits: rounding noise is uniform within a step (step^2/12), except that
// symmetric absmax puts each cell's largest element at exactly qmax + 0.5 steps, an error of
// exactly half a step (step^2/4). The measured noise is therefore the model's times
// (1 + 2 / cell_size): 0.03 dB for rows of 256, 0.13 dB for groups of 64. Sampling spread ~0.02 dB.
TEST(ErrorAnalysis, NoiseModelPredictsGaussianInt8) {
  const TensorF w = generate_weights(WeightFamily::kGaussian, 128, 256, kSeed);
  const double cell_sizes[] = {128.0 * 256.0, 256.0, 64.0};
  const auto configs = standard_granularities(QType::kInt8, 64);
  for (std::size_t i = 0; i < configs.size(); ++i) {
    SCOPED_TRACE(describe(configs[i]));
    const auto r = analyze(w, configs[i], "w");
    EXPECT_NEAR(r.predicted_sqnr_db - r.error.sqnr_db, 10 * std::log10(1 + 2 / cell_sizes[i]), 0.05);
  }
}

// Rows whose standard deviations span two decades: one scale for the whole matrix sets the step
// by the widest row. Under the noise model the per-channel gain is E[max-row std^2] / E[row std^2]
// = 100 / ((10^2 - 10^-2) / (4 ln 10)) = 9.2, i.e. 9.6 dB, minus sampling spread; require 7 dB.
// Groups split every row further, so their cells' absmax (hence the predicted noise) can only shrink.
TEST(ErrorAnalysis, FinerGranularityHelpsVariedChannels) {
  const TensorF w = generate_weights(WeightFamily::kMultiChannel, 128, 256, kSeed);
  const auto r = compare_configs(w, standard_granularities(QType::kInt8, 32), "w");
  ASSERT_EQ(r.size(), 3u);
  EXPECT_GT(r[1].error.sqnr_db, r[0].error.sqnr_db + 7.0);
  EXPECT_GT(r[1].predicted_sqnr_db, r[0].predicted_sqnr_db + 7.0);
  EXPECT_GE(r[2].predicted_sqnr_db, r[1].predicted_sqnr_db);
  EXPECT_GT(r[2].error.sqnr_db, r[1].error.sqnr_db);
  EXPECT_GT(r[2].bits_per_weight, r[1].bits_per_weight);  // more scales cost storage
}

// Outliers 20x the typical weight set the per-tensor int4 step. Without them the absmax of 32k
// gaussian values is about 4.2 sigma (step 0.56 sigma, noise 0.026 sigma^2); with them it is
// 20x the largest outlier-scaled gaussian (~60 sigma, step 8 sigma) and almost every inlier rounds
// to zero (noise ~ sigma^2). The inliers' MSE must rise by well over 10x.
TEST(ErrorAnalysis, OutliersCostTheInliers) {
  const TensorF w = generate_weights(WeightFamily::kOutliers, 128, 256, kSeed);
  const std::int64_t k = static_cast<std::int64_t>(kOutlierRate * 128 * 256 * 2);  // covers every outlier
  const auto impact = outlier_impact(w, how(QType::kInt4), k, "w");
  EXPECT_EQ(impact.k, k);
  EXPECT_GT(impact.mse_ratio(), 10.0);
  EXPECT_GT(impact.sqnr_cost_db(), 10.0);
  EXPECT_GT(impact.outlier_energy_fraction, 0.3);  // 0.2% of elements at 20x carry 400 * 0.002 / 1.8 ~ 44%
  EXPECT_EQ(impact.outliers.count, k);
  EXPECT_EQ(impact.inliers_with_outliers.count, w.size() - k);

  // A gaussian without outliers: removing its 0.4% largest values lowers the absmax from ~4.2 to
  // ~2.9 sigma. Inlier noise goes as step^2, so the MSE ratio is the squared absmax ratio, within
  // the sampling spread of int4 rounding noise on 32k values (a few percent; allow 15%).
  const TensorF g = generate_weights(WeightFamily::kGaussian, 128, 256, kSeed);
  const auto plain = outlier_impact(g, how(QType::kInt4), k, "g");
  const auto top = top_k_magnitudes(g, k + 1);
  const double absmax_ratio = std::fabs(g[top.front()]) / std::fabs(g[top.back()]);
  EXPECT_NEAR(plain.mse_ratio() / (absmax_ratio * absmax_ratio), 1.0, 0.15);
}

// Doubling every scale doubles the step without clipping anything: 8-bit rounding noise, which
// is proportional to step^2, grows 4x (sampling spread of 32k elements ~1%). Factor 1 reproduces
// the plain quantization exactly. On uniform data any clipping costs more than it refines.
TEST(ErrorAnalysis, ScaleSensitivity) {
  const TensorF w = generate_weights(WeightFamily::kGaussian, 128, 256, kSeed);
  const auto h = how(QType::kInt8, {0});
  const auto pts = scale_sensitivity(w, h, {0.5, 1.0, 2.0}, "w");
  ASSERT_EQ(pts.size(), 3u);
  EXPECT_EQ(pts[1].error.mse, analyze(w, h, "w").error.mse);
  EXPECT_NEAR(pts[2].error.mse / pts[1].error.mse, 4.0, 0.2);
  EXPECT_GT(pts[0].error.max_abs, 4 * pts[1].error.max_abs);  // clipped rows lose half their maximum

  const TensorF u = generate_weights(WeightFamily::kUniform, 128, 256, kSeed);
  const auto upts = scale_sensitivity(u, how(QType::kInt4, {0}), {0.8, 0.9, 1.0, 1.1, 1.25}, "u");
  EXPECT_DOUBLE_EQ(best_scale(upts).factor, 1.0);
  try {
    scale_sensitivity(w, h, {0.0}, "weight.x");
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("weight.x"), std::string::npos);
  }
}

// GGML Q8_0 is absmax/127 per 32 values with an fp16 scale; the library's int8 group-32 is
// absmax/127.5. Three derived differences: Q8_0 puts each block's largest value exactly on a level
// (no error, noise x (1 - 1/32)); int8 puts it half a step off (noise x (1 + 2/32), see
// NoiseModelPredictsGaussianInt8); Q8_0's step is 255/254 larger. Q8_0 ahead by
// 10 log10((1 + 2/32) / (1 - 1/32)) - 20 log10(255/254) = 0.37 dB; fp16 rounding of d is < 0.01 dB.
// Bits per weight are the block sizes: 34 and 18 bytes per 32 values.
TEST(ErrorAnalysis, GgmlBlocksAgreeWithGroupwiseInt8) {
  const TensorF w = generate_weights(WeightFamily::kGaussian, 64, 256, kSeed);
  const auto q8 = analyze_ggml(w, formats::GgmlType::kQ8_0, "w");
  const auto int8 = analyze(w, HowToQuantize{QType::kInt8, {0}, {{1, TileSize{std::int64_t{32}}}}, "absmax"}, "w");
  const double expected = 10 * std::log10((1 + 2.0 / 32) / (1 - 1.0 / 32)) - 20 * std::log10(255.0 / 254.0);
  EXPECT_NEAR(q8.error.sqnr_db - int8.error.sqnr_db, expected, 0.1);
  EXPECT_DOUBLE_EQ(q8.bits_per_weight, 8.5);
  const auto q4 = analyze_ggml(w, formats::GgmlType::kQ4_0, "w");
  EXPECT_DOUBLE_EQ(q4.bits_per_weight, 4.5);
  EXPECT_LT(q4.error.sqnr_db, q8.error.sqnr_db - 18.0);  // four bits fewer: ~24 dB less
  try {
    analyze_ggml(TensorF({2, 33}), formats::GgmlType::kQ4_0, "blk.0.ffn");
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.ffn"), std::string::npos) << e.what();
  }
}

TEST(ErrorAnalysis, MismatchedShapesNameTheTensor) {
  const QArray q = quantize(TensorF({4, 4}, 1.0f), how(QType::kInt8));
  try {
    analyze_quantized(TensorF({16}, 1.0f), q, "layers.3.mlp");
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.3.mlp"), std::string::npos) << e.what();
  }
}

TEST(WeightSuite, GeneratorIsDeterministicAndFamiliesDiffer) {
  EXPECT_EQ(generate_weights(WeightFamily::kOutliers, 8, 32, 7), generate_weights(WeightFamily::kOutliers, 8, 32, 7));
  EXPECT_FALSE(generate_weights(WeightFamily::kGaussian, 8, 32, 7) == generate_weights(WeightFamily::kGaussian, 8, 32, 8));
  // The uniform family never exceeds its half-width sqrt(3) * 0.02.
  const TensorF u = generate_weights(WeightFamily::kUniform, 16, 64, 7);
  for (std::int64_t i = 0; i < u.size(); ++i) ASSERT_LE(std::fabs(u[i]), 0.02 * std::sqrt(3.0) + 1e-7);
  EXPECT_EQ(parse_weight_family("multi-channel"), WeightFamily::kMultiChannel);
  EXPECT_THROW(parse_weight_family("cauchy"), Error);
}

TEST(WeightSuite, TableCoversEveryFamilyAndConfig) {
  SuiteOptions o;
  o.rows = 32;
  o.cols = 128;
  const auto rows = run_suite(o);
  const std::size_t per_family = o.qtypes.size() * 3 + o.ggml_types.size();
  ASSERT_EQ(rows.size(), o.families.size() * per_family);
  for (const auto& r : rows) {
    SCOPED_TRACE(r.report.name + " " + r.report.config);
    if (std::isfinite(r.report.bound_ratio)) {
      EXPECT_EQ(r.report.over_bound, 0);
    }
    EXPECT_GT(r.report.error.sqnr_db, 0.0);
  }
  const std::string table = format_suite_table(rows);
  for (WeightFamily f : kAllWeightFamilies) EXPECT_NE(table.find(family_name(f)), std::string::npos);
  EXPECT_NE(table.find("Q4_0"), std::string::npos);
  EXPECT_NE(table.find("nf4 group 64"), std::string::npos);
}

}  // namespace
}  // namespace qforge::analysis
