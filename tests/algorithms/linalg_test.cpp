// The blocked float32 Cholesky and triangular inverse against the classical componentwise
// backward-error bounds (Higham, Accuracy and Stability, Thms 10.3 and 8.10 with γ_k = kε/(1-kε)):
//   |L Lᵀ − A| ≤ γ_{n+1} |L| |Lᵀ|,   |L X − I| ≤ γ_n |L| |X|.
// They hold for any summation order, hence for the backend's blocked GEMMs; a factor 2 covers the
// diagonal blocks being factored in double and rounded to float.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include <Eigen/Core>
#include <gtest/gtest.h>

#include "qforge/algorithms/linalg.hpp"

namespace la = qforge::algorithms::linalg;
using MatrixXfR = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixXdR = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {
// A = Gᵀ G / t + shift I with t > n rows of Gaussian G: positive definite, moderately conditioned.
std::vector<float> random_spd(std::int64_t n, unsigned seed, double shift) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d(0.0, 1.0);
  const std::int64_t t = n + 16;
  MatrixXdR g(t, n);
  for (std::int64_t i = 0; i < t; ++i)
    for (std::int64_t j = 0; j < n; ++j) g(i, j) = d(gen) * (1.0 + (j % 7));
  MatrixXdR a = g.transpose() * g / static_cast<double>(t);
  a.diagonal().array() += shift;
  std::vector<float> out(static_cast<std::size_t>(n * n));
  for (std::int64_t i = 0; i < n * n; ++i) out[static_cast<std::size_t>(i)] = static_cast<float>(a.data()[i]);
  return out;
}

double gamma(std::int64_t k) {
  const double eps = std::numeric_limits<float>::epsilon() / 2;  // unit round-off
  return 2.0 * k * eps / (1.0 - k * eps);
}
}  // namespace

TEST(Linalg, CholeskyAndInverseMeetBackwardErrorBounds) {
  // Sizes below, at and across the 128 block and the 512-row panels, including primes.
  for (std::int64_t n : {1, 7, 127, 128, 129, 300, 521, 700}) {
    const unsigned seed = 900u + static_cast<unsigned>(n);
    SCOPED_TRACE(testing::Message() << "n " << n << " seed " << seed);
    std::printf("linalg: n %lld seed %u\n", static_cast<long long>(n), seed);
    const auto a = random_spd(n, seed, 0.1);
    la::LowerCholesky f;
    ASSERT_TRUE(la::cholesky_lower(a, n, f));
    const MatrixXdR l = Eigen::Map<const MatrixXfR>(f.l.data(), n, n).cast<double>();
    const MatrixXdR ad = Eigen::Map<const MatrixXfR>(a.data(), n, n).cast<double>();
    ASSERT_EQ(MatrixXdR(l.triangularView<Eigen::StrictlyUpper>()).cwiseAbs().maxCoeff(), 0.0);
    const MatrixXdR residual = (l * l.transpose() - ad).cwiseAbs();
    const MatrixXdR bound = gamma(n + 1) * l.cwiseAbs() * l.cwiseAbs().transpose();
    EXPECT_TRUE(((residual - bound).array() <= 0.0).all()) << "worst excess " << (residual - bound).maxCoeff();

    const auto yv = la::inverse_lower_transposed(f);
    const MatrixXdR x = Eigen::Map<const MatrixXfR>(yv.data(), n, n).cast<double>().transpose();
    ASSERT_EQ(MatrixXdR(x.triangularView<Eigen::StrictlyUpper>()).cwiseAbs().maxCoeff(), 0.0);
    const MatrixXdR inv_residual = (l * x - MatrixXdR::Identity(n, n)).cwiseAbs();
    const MatrixXdR inv_bound = gamma(n) * l.cwiseAbs() * x.cwiseAbs();
    EXPECT_TRUE(((inv_residual - inv_bound).array() <= 0.0).all())
        << "worst excess " << (inv_residual - inv_bound).maxCoeff();
  }
}

TEST(Linalg, IndefiniteMatrixIsReportedNotFactored) {
  // Positive definite except for one block past the first: the failure is found in a later block.
  const std::int64_t n = 200;
  auto a = random_spd(n, 77, 0.1);
  a[static_cast<std::size_t>(150 * n + 150)] = -1.0f;
  la::LowerCholesky f;
  EXPECT_FALSE(la::cholesky_lower(a, n, f));
}

TEST(Linalg, TransposeOfNonMultipleOfTile) {
  const std::int64_t n = 70;
  std::vector<float> m(static_cast<std::size_t>(n * n));
  for (std::int64_t i = 0; i < n * n; ++i) m[static_cast<std::size_t>(i)] = static_cast<float>(i);
  const auto t = la::transpose(m, n);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < n; ++j) ASSERT_EQ(t[static_cast<std::size_t>(j * n + i)], m[static_cast<std::size_t>(i * n + j)]);
}
