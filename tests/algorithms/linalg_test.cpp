// The recursive float32 Cholesky (A = Ũ Ũᵀ) and triangular solves against componentwise
// backward-error bounds (Higham, Accuracy and Stability, Thm 10.3 and §8.1, γ_k = kε/(1-kε)):
//   |Ũ Ũᵀ − A| ≤ γ_{n+1} |Ũ| |Ũᵀ|,   |X Ũ − B| ≤ γ_n (|B| + |X| W).
// They hold for any summation order, hence for the backend's GEMMs; a factor 2 covers the leaf
// blocks being factored in double and rounded to float. The solves apply each leaf as its
// inverse (rounded to float), which adds |Ũ_jj| |Ũ_jj⁻¹| |Ũ_jj| on the leaf diagonal blocks of W
// (Higham §13.1: block substitution with explicit diagonal inverses) on top of |Ũ|.
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

TEST(Linalg, CholeskyMeetsBackwardErrorBound) {
  // Sizes below, at and across the leaf and the whole-diagonal panel sizes, including primes.
  for (const std::int64_t n : std::vector<std::int64_t>{1, 7, la::kBlock - 1, la::kBlock, la::kBlock + 1, 300, 521, 700}) {
    const unsigned seed = 900u + static_cast<unsigned>(n);
    SCOPED_TRACE(testing::Message() << "n " << n << " seed " << seed);
    std::printf("linalg: n %lld seed %u\n", static_cast<long long>(n), seed);
    const auto a = random_spd(n, seed, 0.1);
    la::UpperCholesky f;
    ASSERT_TRUE(la::cholesky_upper(a, n, f));
    const MatrixXdR u = Eigen::Map<const MatrixXfR>(f.u.data(), n, n).cast<double>();
    const MatrixXdR ad = Eigen::Map<const MatrixXfR>(a.data(), n, n).cast<double>();
    ASSERT_EQ(MatrixXdR(u.triangularView<Eigen::StrictlyLower>()).cwiseAbs().maxCoeff(), 0.0);
    ASSERT_GT(u.diagonal().minCoeff(), 0.0);
    const MatrixXdR residual = (u * u.transpose() - ad).cwiseAbs();
    const MatrixXdR bound = gamma(n + 1) * u.cwiseAbs() * u.cwiseAbs().transpose();
    EXPECT_TRUE(((residual - bound).array() <= 0.0).all()) << "worst excess " << (residual - bound).maxCoeff();
  }
}

TEST(Linalg, SolvesMeetBackwardErrorBound) {
  for (const std::int64_t n : std::vector<std::int64_t>{1, la::kBlock + 3, 300, 700}) {
    const unsigned seed = 1900u + static_cast<unsigned>(n);
    SCOPED_TRACE(testing::Message() << "n " << n << " seed " << seed);
    std::printf("linalg solve: n %lld seed %u\n", static_cast<long long>(n), seed);
    la::UpperCholesky f;
    ASSERT_TRUE(la::cholesky_upper(random_spd(n, seed, 0.1), n, f));
    const MatrixXdR u = Eigen::Map<const MatrixXfR>(f.u.data(), n, n).cast<double>();
    // W = |Ũ| plus, on each leaf's diagonal block, |Ũ_jj| |Ũ_jj⁻¹| |Ũ_jj|.
    MatrixXdR w = u.cwiseAbs();
    for (std::int64_t j0 = 0; j0 < n; j0 += la::kBlock) {
      const std::int64_t b = std::min(la::kBlock, n - j0);
      const MatrixXdR ujj = u.block(j0, j0, b, b);
      const MatrixXdR inv = ujj.triangularView<Eigen::Upper>().solve(MatrixXdR::Identity(b, b));
      w.block(j0, j0, b, b) += ujj.cwiseAbs() * inv.cwiseAbs() * ujj.cwiseAbs();
    }
    const std::int64_t rows = 37, ld = n + 5;  // a row stride wider than the matrix
    std::mt19937 gen(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> bv(static_cast<std::size_t>(rows * ld), 0.0f);
    for (auto& v : bv) v = d(gen);
    for (const bool transposed : {false, true}) {
      SCOPED_TRACE(testing::Message() << "transposed " << transposed);
      std::vector<float> xv = bv;
      la::solve_right(f, xv.data(), rows, ld, transposed);
      const auto as_matrix = [&](const std::vector<float>& v) {
        return Eigen::Map<const MatrixXfR, 0, Eigen::OuterStride<>>(v.data(), rows, n, Eigen::OuterStride<>(ld)).cast<double>().eval();
      };
      const MatrixXdR x = as_matrix(xv), b = as_matrix(bv);
      const MatrixXdR t = transposed ? MatrixXdR(u.transpose()) : u;
      const MatrixXdR wt = transposed ? MatrixXdR(w.transpose()) : w;
      const MatrixXdR residual = (x * t - b).cwiseAbs();
      const MatrixXdR bound = 2.0 * gamma(n + la::kBlock) * (b.cwiseAbs() + x.cwiseAbs() * wt);
      EXPECT_TRUE(((residual - bound).array() <= 0.0).all()) << "worst excess " << (residual - bound).maxCoeff();
      for (std::int64_t r = 0; r < rows; ++r)  // the padding beyond n is untouched
        for (std::int64_t j = n; j < ld; ++j)
          ASSERT_EQ(xv[static_cast<std::size_t>(r * ld + j)], bv[static_cast<std::size_t>(r * ld + j)]);
    }
  }
}

TEST(Linalg, IndefiniteMatrixIsReportedNotFactored) {
  // Positive definite except for one entry in the first rows, which the recursion factors last:
  // the failure is found after other leaves succeeded.
  const std::int64_t n = 200;
  auto a = random_spd(n, 77, 0.1);
  a[static_cast<std::size_t>(10 * n + 10)] = -1.0f;
  la::UpperCholesky f;
  EXPECT_FALSE(la::cholesky_upper(a, n, f));
}
