// Helpers shared by the core tests: seeded random tensors and an "expect Error containing" check.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>

#include "qforge/qforge.hpp"

namespace qforge::testing {

inline TensorF normal_tensor(Shape shape, std::uint64_t seed, float mean = 0.0f, float stddev = 1.0f) {
  TensorF t(std::move(shape));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(mean, stddev);
  for (std::int64_t i = 0; i < t.size(); ++i) t[i] = dist(rng);
  return t;
}

// Runs f, expects a qforge::Error whose message contains every needle.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "expected a qforge::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

// The documented per-element bound for a value inside the calibrated range: half a step, plus
// the float rounding of the scale (<= 1 ulp) and of the dequantized value (<= 1/2 ulp), which
// together stay below 2^-22 |x| (docs/user-guide.md, "Error bounds").
inline float half_step_bound(float x, float scale) { return scale / 2 + std::ldexp(std::fabs(x), -22); }

}  // namespace qforge::testing
