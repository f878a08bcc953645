// Synthetic layers for the algorithm tests: correlated inputs (Toeplitz covariance, heavy tails,
// a few outlier channels), their Hessians and output errors computed directly.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace qforge::algorithms::testing {

struct Layer {
  std::int64_t rows, cols, tokens;
  std::vector<float> w;  // [rows, cols]
  std::vector<float> x;  // [tokens, cols]
};

// x_t = L z_t with L from an AR(1) (Toeplitz rho^|i-j|) process, Student-t-like tails from a
// scale mixture, and every 7th channel amplified 8x as an outlier channel.
inline Layer correlated_layer(std::int64_t rows, std::int64_t cols, std::int64_t tokens, unsigned seed,
                              double rho = 0.9) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::chi_squared_distribution<float> chi(3.0f);
  Layer l{rows, cols, tokens, {}, {}};
  l.w.resize(static_cast<std::size_t>(rows * cols));
  for (auto& v : l.w) v = n01(gen) * 0.1f;
  l.x.resize(static_cast<std::size_t>(tokens * cols));
  const float s = static_cast<float>(std::sqrt(1.0 - rho * rho));
  for (std::int64_t t = 0; t < tokens; ++t) {
    const float tail = std::sqrt(3.0f / std::max(chi(gen), 0.05f));
    float prev = n01(gen);
    for (std::int64_t j = 0; j < cols; ++j) {
      const float v = j == 0 ? prev : static_cast<float>(rho) * prev + s * n01(gen);
      prev = v;
      l.x[static_cast<std::size_t>(t * cols + j)] = v * tail * (j % 7 == 3 ? 8.0f : 1.0f);
    }
  }
  return l;
}

// Σ_t a_tᵀ b_t ([cols, cols], rows indexed by a's column): X̂ᵀX for (a, b) = (X̂, X).
inline std::vector<double> cross_gram(const std::vector<float>& a, const std::vector<float>& b, std::int64_t tokens,
                                      std::int64_t cols) {
  std::vector<double> h(static_cast<std::size_t>(cols * cols), 0.0);
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t i = 0; i < cols; ++i) {
      const double ai = a[static_cast<std::size_t>(t * cols + i)];
      for (std::int64_t j = 0; j < cols; ++j) h[static_cast<std::size_t>(i * cols + j)] += ai * b[static_cast<std::size_t>(t * cols + j)];
    }
  return h;
}

inline std::vector<double> gram(const std::vector<float>& x, std::int64_t tokens, std::int64_t cols) {
  return cross_gram(x, x, tokens, cols);
}

// sum over tokens of ||W x - Wq xq||^2 (xq = x when null).
inline double output_error(const std::vector<float>& w, const std::vector<float>& wq, const std::vector<float>& x,
                           const std::vector<float>* xq, std::int64_t rows, std::int64_t cols, std::int64_t tokens) {
  double err = 0.0;
  const auto& xhat = xq ? *xq : x;
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t r = 0; r < rows; ++r) {
      double a = 0.0, b = 0.0;
      for (std::int64_t j = 0; j < cols; ++j) {
        a += static_cast<double>(w[static_cast<std::size_t>(r * cols + j)]) * x[static_cast<std::size_t>(t * cols + j)];
        b += static_cast<double>(wq[static_cast<std::size_t>(r * cols + j)]) * xhat[static_cast<std::size_t>(t * cols + j)];
      }
      err += (a - b) * (a - b);
    }
  return err;
}

}  // namespace qforge::algorithms::testing
