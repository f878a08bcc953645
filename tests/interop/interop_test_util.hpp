// Shared by the xtensor and Eigen interop tests: the QArrays to compare, and the comparison.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "qforge/core/qarray.hpp"
#include "qforge/interop/eigen.hpp"
#include "qforge/interop/xtensor.hpp"

namespace qforge::testing {

// Seeded normal values in a row-major Tensor: the reference every other layout is built from.
// The seed is printed, and named in any failure.
inline TensorF seeded_tensor(Shape shape, std::uint64_t seed) {
  std::printf("seed %llu for %s\n", static_cast<unsigned long long>(seed), shape_str(shape).c_str());
  TensorF t(std::move(shape));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (std::int64_t i = 0; i < t.size(); ++i) t[i] = dist(rng);
  return t;
}

// Quantizations that exercise every code path of the quantizer: per-channel and tiled scales,
// 8-bit and packed 4-bit codes, zero points, codebook and minifloat codes, and a calibration
// that gathers whole cells (percentile). The last axis is tiled by 16: shapes must allow it.
// Axis 0 is channelwise where it is not also the tiled last axis (rank 1).
inline std::vector<HowToQuantize> interop_hows(int rank) {
  const int last = rank - 1;
  const std::vector<int> rows = rank > 1 ? std::vector<int>{0} : std::vector<int>{};
  return {
      {QType::kInt8, {0}, {}, "absmax"},
      {QType::kInt4, rows, {{last, std::int64_t{16}}}, "absmax"},
      {QType::kUInt4, rows, {{last, std::int64_t{16}}}, "minmax"},
      {QType::kNf4, {}, {{last, std::int64_t{16}}}, "absmax"},
      {QType::kFp8E4M3, {}, {}, "absmax"},
      {QType::kInt8, {0}, {}, "percentile,99"},
  };
}

inline std::string how_str(const HowToQuantize& how) { return fmt::format("{} {}", to_string(how.qtype), how.calibration_method); }

// Bit-equal: qtype, shape, the stored code bytes, the scale bits and the zero points.
inline void expect_same_qarray(const QArray& actual, const QArray& expected) {
  ASSERT_EQ(actual.qtype(), expected.qtype());
  ASSERT_EQ(actual.shape(), expected.shape());
  ASSERT_EQ(actual.scale().shape(), expected.scale().shape());
  EXPECT_TRUE(std::equal(actual.storage().begin(), actual.storage().end(), expected.storage().begin(),
                         expected.storage().end()))
      << "codes differ";
  EXPECT_EQ(std::memcmp(actual.scale().data(), expected.scale().data(),
                        static_cast<std::size_t>(expected.scale().size()) * sizeof(float)),
            0)
      << "scales differ";
  ASSERT_EQ(actual.zero_point().has_value(), expected.zero_point().has_value());
  if (expected.zero_point()) {
    EXPECT_EQ(*actual.zero_point(), *expected.zero_point());
  }
}

// Bit-equal float buffers: dequantization into any layout is the same arithmetic.
inline void expect_same_values(const TensorF& actual, const TensorF& expected) {
  ASSERT_EQ(actual.shape(), expected.shape());
  EXPECT_EQ(std::memcmp(actual.data(), expected.data(), static_cast<std::size_t>(expected.size()) * sizeof(float)), 0);
}

// Every quantization of interop_hows, from `array` (an xtensor or Eigen array, any layout) and
// from `reference` (a row-major Tensor holding the same logical values), is bit-equal.
template <class Array>
void expect_same_as_tensor_path(const Array& array, const TensorF& reference) {
  for (const HowToQuantize& how : interop_hows(reference.rank())) {
    SCOPED_TRACE(how_str(how));
    expect_same_qarray(interop::quantize(array, how), quantize(reference, how));
  }
}

}  // namespace qforge::testing
