// Calibration method strings and what they compute: qwix-semantics.md §5 item 7, plus the
// percentile and mse methods.
#include <gtest/gtest.h>

#include <cmath>

#include "core/test_util.hpp"

namespace qforge {
namespace {

using testing::expect_error;
using testing::normal_tensor;

TEST(Calibration, ParsesQwixStrings) {
  EXPECT_EQ(parse_calibration_method("absmax").kind, CalibrationKind::kAbsMax);
  const auto a = parse_calibration_method("absmax,0.5");
  EXPECT_DOUBLE_EQ(a.factor, 0.5);
  EXPECT_TRUE(a.has_factor);
  EXPECT_FALSE(parse_calibration_method("minmax").symmetric());
  EXPECT_DOUBLE_EQ(parse_calibration_method("rms,7").factor, 7.0);
  EXPECT_TRUE(parse_calibration_method("fixed,3").symmetric());
  EXPECT_FALSE(parse_calibration_method("fixed,-1,2").symmetric());
  EXPECT_DOUBLE_EQ(parse_calibration_method("percentile,99.9").percentile, 99.9);
  EXPECT_EQ(parse_calibration_method("mse").kind, CalibrationKind::kMse);
}

TEST(Calibration, BadStringsAreErrorsThatQuoteTheString) {
  expect_error([] { parse_calibration_method("rms"); }, {"rms"});
  expect_error([] { parse_calibration_method("fixed,1,2"); }, {"fixed,1,2"});
  expect_error([] { parse_calibration_method("absmax,x"); }, {"absmax,x", "x"});
  expect_error([] { parse_calibration_method("minimax"); }, {"minimax", "unknown"});
  expect_error([] { parse_calibration_method("percentile,0"); }, {"percentile,0"});
  expect_error([] { parse_calibration_method("mse,2"); }, {"mse,2"});
}

TEST(Calibration, FixedThreeIsPerTensorAbsmaxThree) {
  const TensorF x({4}, {-10, 0.5, 1, 10});
  const QArray q = quantize(x, {QType::kInt8, {}, {}, "fixed,3"});
  EXPECT_NEAR(q.scale()[0], 3.0f / 127.5f, std::ldexp(3.0f / 127.5f, -23));
  EXPECT_EQ(q.code(0), -128);  // clipped
  EXPECT_EQ(q.code(3), 127);
}

TEST(Calibration, FixedAsymmetricRangeGivesZeroPoint) {
  const TensorF x({3}, {-1, 0, 2});
  const QArray q = quantize(x, {QType::kInt8, {}, {}, "fixed,-1,2"});
  EXPECT_FLOAT_EQ(q.scale()[0], 3.0f / 255.0f);
  ASSERT_TRUE(q.zero_point());
  EXPECT_EQ((*q.zero_point())[0], -43);  // round(-128 + 1 / (3/255)) = round(-42.999..)
}

TEST(Calibration, AbsmaxFactorScalesTheRange) {
  const TensorF x({4}, {-4, 1, 2, 3});
  const QArray q = quantize(x, {QType::kInt8, {}, {}, "absmax,0.5"});
  EXPECT_NEAR(q.scale()[0], 2.0f / 127.5f, std::ldexp(2.0f / 127.5f, -23));
}

TEST(Calibration, RmsIsKTimesRootMeanSquare) {
  const TensorF x({4}, {1, -1, 1, -1});
  const QArray q = quantize(x, {QType::kInt8, {}, {}, "rms,3"});
  EXPECT_NEAR(q.scale()[0], 3.0f / 127.5f, std::ldexp(3.0f / 127.5f, -23));
}

TEST(Calibration, PercentileInterpolatesLikeNumpy) {
  TensorF x({5}, {0, -1, 2, -3, 4});  // |x| sorted: 0 1 2 3 4
  const QArray q = quantize(x, {QType::kInt8, {}, {}, "percentile,50"});
  EXPECT_NEAR(q.scale()[0], 2.0f / 127.5f, 1e-8);
  const QArray q2 = quantize(x, {QType::kInt8, {}, {}, "percentile,90"});  // pos 3.6 -> 3.6
  EXPECT_NEAR(q2.scale()[0], 3.6f / 127.5f, 1e-7);
}

// mse searches clipping ratios 1.00, 0.99, ..., 0.20 of absmax and keeps the best: on Gaussian
// data with a far outlier, int4 clipping beats absmax; the result is never worse than absmax.
TEST(Calibration, MseSearchNeverLosesToAbsmax) {
  constexpr std::uint64_t kSeed = 5;
  SCOPED_TRACE(::testing::Message() << "seed " << kSeed);
  TensorF x = normal_tensor({1, 512}, kSeed);
  x[17] = 12.0f;
  auto sq_error = [&](const char* method) {
    const TensorF dq = fake_quantize(x, {QType::kInt4, {}, {}, method});
    double e = 0;
    for (std::int64_t i = 0; i < x.size(); ++i) e += (x[i] - dq[i]) * (x[i] - dq[i]);
    return e;
  };
  EXPECT_LT(sq_error("mse"), sq_error("absmax"));
  const QArray q = quantize(x, {QType::kInt4, {}, {}, "mse"});
  EXPECT_LT(q.scale()[0], 12.0f / 7.5f);
}

TEST(Calibration, MinMaxPerChannelKeepsEachChannelsRange) {
  TensorF x({2, 3}, {-1, 0, 3, 0, 1, 2});
  const QArray q = quantize(x, {QType::kInt8, {0}, {}, "minmax"});
  EXPECT_FLOAT_EQ(q.scale()[0], 4.0f / 255.0f);
  EXPECT_FLOAT_EQ(q.scale()[1], 2.0f / 255.0f);  // min clipped to 0
}

}  // namespace
}  // namespace qforge
