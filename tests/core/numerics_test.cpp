// Rounding, saturation and value codecs: qwix-semantics.md §5 items 1, 2 and 8, and the FP8/FP4
// conversions (round to nearest even, saturate at the largest finite value).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "qforge/core/numerics.hpp"

namespace qforge {
namespace {

std::vector<int> encode_all(QType t, const std::vector<double>& xs) {
  std::vector<int> out;
  for (double x : xs) out.push_back(qtype_encode(t, x));
  return out;
}

// §5 item 2: convert_to vectors.
TEST(Numerics, ConvertToRoundsHalfEvenThenSaturates) {
  EXPECT_EQ(encode_all(QType::kInt8, {1.2, 3.5, -127.5, 129, -1300}), (std::vector<int>{1, 4, -128, 127, -128}));
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(encode_all(QType::kInt8, {inf, -inf}), (std::vector<int>{127, -128}));
  EXPECT_EQ(encode_all(QType::kInt4, {1.2, 3.5, 8, -1300}), (std::vector<int>{1, 4, 7, -8}));
  EXPECT_EQ(encode_all(QType::kInt16, {1.2, 3.5, -32768.5, 32769, -40000}),
            (std::vector<int>{1, 4, -32768, 32767, -32768}));
  EXPECT_EQ(encode_all(QType::kInt6, {1.2, 3.5, 129, -1300}), (std::vector<int>{1, 4, 31, -32}));
  EXPECT_EQ(encode_all(QType::kUInt8, {-1.2, 3.5, 129, 1300}), (std::vector<int>{0, 4, 129, 255}));
}

TEST(Numerics, HalfEvenTiesBothWays) {
  EXPECT_EQ(round_half_even(0.5), 0.0);
  EXPECT_EQ(round_half_even(1.5), 2.0);
  EXPECT_EQ(round_half_even(2.5), 2.0);
  EXPECT_EQ(round_half_even(-0.5), -0.0);
  EXPECT_EQ(round_half_even(-1.5), -2.0);
  EXPECT_EQ(round_half_even(-2.5), -2.0);
  EXPECT_EQ(round_half_even(2.4999999), 2.0);
}

// The standard normal quantile Φ⁻¹(p) by Newton's method on Φ(z) = erfc(−z/√2)/2, in double.
double normal_quantile(double p) {
  double z = 0.0;
  for (int i = 0; i < 100; ++i) {
    const double step = (0.5 * std::erfc(-z / std::sqrt(2.0)) - p) / (std::exp(-0.5 * z * z) / std::sqrt(2.0 * M_PI));
    z -= step;
    if (std::fabs(step) < 1e-15) break;
  }
  return z;
}

// The NF4 table derived independently from its definition (QLoRA; bitsandbytes'
// create_normal_map(offset = 0.9677083, use_extra_value = True)): 8 positive quantiles of N(0, 1)
// at 9 points evenly spaced from the offset down to 1/2 (the last dropped), 7 negative ones at 8
// such points, and 0, scaled so the largest is 1. bitsandbytes forms the probabilities in float32
// (error ≤ 2⁻²⁴·p, times the quantile's slope 1/φ(z) ≤ 13.8, over z_max = 1.85: ≤ 4.5e-7) and
// stores float32 values (≤ 6e-8): within 1e-6 of the derivation in double.
TEST(Numerics, Nf4CodebookIsTheNormalFloatConstruction) {
  constexpr double kOffset = 0.9677083;
  std::vector<double> values{0.0};
  for (int i = 0; i < 8; ++i) values.push_back(normal_quantile(kOffset - i * (kOffset - 0.5) / 8));
  for (int i = 0; i < 7; ++i) values.push_back(-normal_quantile(kOffset - i * (kOffset - 0.5) / 7));
  std::sort(values.begin(), values.end());
  const double top = values.back();
  for (std::size_t c = 0; c < 16; ++c)
    EXPECT_NEAR(kNf4Codebook[c], values[c] / top, 1e-6) << "code " << c;
}

// §5 item 8.
TEST(Numerics, Nf4NearestCodeAndDecode) {
  EXPECT_EQ(encode_all(QType::kNf4, {-1, -0.5, 0, 0.8, 1}), (std::vector<int>{0, 2, 7, 14, 15}));
  EXPECT_EQ(qtype_decode(QType::kNf4, 0), -1.0);
  EXPECT_EQ(qtype_decode(QType::kNf4, 7), 0.0);
  EXPECT_EQ(qtype_decode(QType::kNf4, 15), 1.0);
}

TEST(Numerics, Nf4ExactTieGoesToTheLowerCode) {
  for (int i = 0; i < 15; ++i) {
    const float mid = (kNf4Codebook[i] + kNf4Codebook[i + 1]) * 0.5f;
    EXPECT_EQ(nf4_encode(mid), i) << "midpoint between codes " << i << " and " << i + 1;
    EXPECT_EQ(nf4_encode(std::nextafter(mid, 2.0f)), i + 1);
  }
}

struct MiniFloatCase {
  QType qtype;
  const MiniFloatSpec* spec;
  double max_finite;
};

class MiniFloat : public ::testing::TestWithParam<MiniFloatCase> {};

// Every finite code decodes and re-encodes to itself: the codec is a bijection on finite values.
TEST_P(MiniFloat, EveryFiniteCodeRoundTrips) {
  const auto& c = GetParam();
  const int codes = 1 << info(c.qtype).storage_bits;
  for (int code = 0; code < codes; ++code) {
    const double v = qtype_decode(c.qtype, code);
    if (!std::isfinite(v) || (v == 0.0 && code != 0)) continue;  // NaN/Inf patterns and -0
    EXPECT_EQ(qtype_encode(c.qtype, v), code) << "value " << v;
  }
}

// Between two neighbouring finite values, the midpoint goes to the one with the even mantissa,
// and anything off the midpoint goes to the nearer one.
TEST_P(MiniFloat, MidpointsRoundToEvenMantissa) {
  const auto& c = GetParam();
  const int sign_bit = 1 << (c.spec->exp_bits + c.spec->man_bits);
  for (int code = 0; code + 1 < sign_bit; ++code) {
    const double lo = qtype_decode(c.qtype, code), hi = qtype_decode(c.qtype, code + 1);
    if (!std::isfinite(hi)) break;
    const double mid = (lo + hi) / 2;
    const int even = (code % 2 == 0) ? code : code + 1;
    EXPECT_EQ(qtype_encode(c.qtype, mid), even) << "tie between " << lo << " and " << hi;
    EXPECT_EQ(qtype_encode(c.qtype, -mid), even | sign_bit);
    EXPECT_EQ(qtype_encode(c.qtype, std::nextafter(mid, 0.0)), code);
    EXPECT_EQ(qtype_encode(c.qtype, std::nextafter(mid, 1e9)), code + 1);
  }
}

TEST_P(MiniFloat, SaturatesAtTheLargestFiniteValue) {
  const auto& c = GetParam();
  const int max_code = qtype_encode(c.qtype, c.max_finite);
  EXPECT_EQ(qtype_decode(c.qtype, max_code), c.max_finite);
  EXPECT_EQ(qtype_encode(c.qtype, c.max_finite * 1.5), max_code);
  EXPECT_EQ(qtype_encode(c.qtype, std::numeric_limits<double>::infinity()), max_code);
  EXPECT_EQ(qtype_decode(c.qtype, qtype_encode(c.qtype, -1e30)), -c.max_finite);
}

INSTANTIATE_TEST_SUITE_P(Formats, MiniFloat,
                         ::testing::Values(MiniFloatCase{QType::kFp8E4M3, &kE4M3, 448.0},
                                           MiniFloatCase{QType::kFp8E5M2, &kE5M2, 57344.0},
                                           MiniFloatCase{QType::kFp4E2M1, &kE2M1, 6.0}),
                         [](const auto& info_) { return std::string(to_string(info_.param.qtype)); });

TEST(Numerics, Fp8KnownBitPatterns) {
  EXPECT_EQ(qtype_encode(QType::kFp8E4M3, 448.0), 0x7E);
  EXPECT_EQ(qtype_encode(QType::kFp8E4M3, 1.0), 0x38);
  EXPECT_EQ(qtype_encode(QType::kFp8E4M3, -1.0), 0xB8);
  EXPECT_EQ(qtype_encode(QType::kFp8E4M3, std::ldexp(1.0, -9)), 0x01);  // smallest subnormal
  EXPECT_TRUE(std::isnan(qtype_decode(QType::kFp8E4M3, 0x7F)));        // e4m3fn: only NaN, no Inf
  EXPECT_EQ(qtype_encode(QType::kFp8E5M2, 1.0), 0x3C);
  EXPECT_EQ(qtype_encode(QType::kFp8E5M2, 57344.0), 0x7B);
  EXPECT_TRUE(std::isinf(qtype_decode(QType::kFp8E5M2, 0x7C)));
  EXPECT_EQ(qtype_decode(QType::kFp4E2M1, 0x7), 6.0);
  EXPECT_EQ(qtype_decode(QType::kFp4E2M1, 0x1), 0.5);
}

// Stochastic rounding is unbiased: E[q(x)] = x inside the range, and a seed reproduces it.
TEST(Numerics, StochasticRoundingIsUnbiasedAndSeeded) {
  constexpr std::uint64_t kSeed = 20261124;
  SCOPED_TRACE(::testing::Message() << "seed " << kSeed);
  StochasticRounder a(kSeed), b(kSeed);
  const double x = 2.3;
  constexpr int kDraws = 200000;
  double sum = 0;
  for (int i = 0; i < kDraws; ++i) {
    const int qa = a.encode(QType::kInt8, x);
    EXPECT_EQ(qa, b.encode(QType::kInt8, x));
    ASSERT_TRUE(qa == 2 || qa == 3);
    sum += qa;
  }
  // q - x is Bernoulli(0.3) shifted; its std is sqrt(0.21); 6 standard errors of the mean.
  EXPECT_NEAR(sum / kDraws, x, 6 * std::sqrt(0.21 / kDraws));
}

}  // namespace
}  // namespace qforge
