// Helpers the provider tests share: seeded uniform tensors and the max-abs relative difference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>

#include "qforge/nn/nn.hpp"

namespace qforge::providers::test_util {

inline TensorF random_tensor(Shape shape, std::uint64_t seed, float lo = -1, float hi = 1) {
  TensorF t(std::move(shape));
  nn::Rng rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  for (auto& v : t.vec()) v = d(rng);
  return t;
}

// max |a − b| / max |b|.
inline double max_rel_diff(const TensorF& a, const TensorF& b) {
  double scale = 0, diff = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, double(std::fabs(b[i])));
    diff = std::max(diff, double(std::fabs(a[i] - b[i])));
  }
  return diff / scale;
}

}  // namespace qforge::providers::test_util
