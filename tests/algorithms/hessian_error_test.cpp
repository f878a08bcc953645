// hessian_rel_err (one float32 GEMM per chunk of rows, double dot products) against its scalar
// double reference: exact where float32 is exact, within the derived bound on real GPTQ codes.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "qforge/algorithms/gptq.hpp"
#include "qforge/algorithms/hessian_error.hpp"
#include "test_util.hpp"

namespace qa = qforge::algorithms;

namespace {
// k/8 with |k| <= 64 for the weights; H symmetric with integer entries in [-16, 16] off the
// diagonal and a diagonal that dominates them (so positive definite, as a Hessian is). Every
// product and partial sum of the GEMM stays below 2^24 eighths (|δ| <= 16, Σ_k |H_jk| <= 3056 at
// 96 columns), so float32 is exact and so is the ratio.
struct DyadicLayer {
  std::int64_t rows, cols;
  std::vector<float> w, wq;
  std::vector<double> h;
};

DyadicLayer dyadic_layer(std::int64_t rows, std::int64_t cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> k(-64, 64), hv(-16, 16);
  DyadicLayer l{rows, cols, {}, {}, std::vector<double>(static_cast<std::size_t>(cols * cols))};
  for (std::int64_t i = 0; i < rows * cols; ++i) {
    l.w.push_back(static_cast<float>(k(gen)) / 8.0f);
    l.wq.push_back(static_cast<float>(k(gen)) / 8.0f);
  }
  for (std::int64_t i = 0; i < cols; ++i)
    for (std::int64_t j = 0; j < i; ++j)
      l.h[static_cast<std::size_t>(i * cols + j)] = l.h[static_cast<std::size_t>(j * cols + i)] = hv(gen);
  for (std::int64_t i = 0; i < cols; ++i) {
    double off = 0;
    for (std::int64_t j = 0; j < cols; ++j) off += std::abs(l.h[static_cast<std::size_t>(i * cols + j)]);
    l.h[static_cast<std::size_t>(i * cols + i)] = off + 1;
  }
  return l;
}
}  // namespace

// 300 rows: one full chunk of 256 and a partial one, so the chunk offsets are covered.
TEST(HessianRelErr, ExactWhereFloat32IsExact) {
  for (unsigned seed : {11u, 12u}) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    const auto l = dyadic_layer(300, 96, seed);
    const auto ref = qa::hessian_rel_err_reference(l.h.data(), l.w.data(), l.wq.data(), l.rows, l.cols);
    ASSERT_GT(ref.value, 0.0);
    EXPECT_EQ(qa::hessian_rel_err(l.h.data(), l.w.data(), l.wq.data(), l.rows, l.cols), ref.value);
  }
}

TEST(HessianRelErr, ZeroForAnExactLayerAndForAZeroWeight) {
  const auto l = dyadic_layer(5, 32, 13);
  EXPECT_EQ(qa::hessian_rel_err(l.h.data(), l.w.data(), l.w.data(), l.rows, l.cols), 0.0);
  const std::vector<float> zero(l.w.size(), 0.0f);
  EXPECT_EQ(qa::hessian_rel_err(l.h.data(), zero.data(), l.wq.data(), l.rows, l.cols), 0.0);
}

// GPTQ's codes make δ nearly H-orthogonal, the hard case for float32 (κ large): the GEMM path must
// stay within the worst-case bound derived in hessian_error.hpp. RTN codes for contrast.
TEST(HessianRelErr, WithinTheDerivedBoundOnGptqAndRtnCodes) {
  for (unsigned seed : {21u, 22u}) {
    const std::int64_t rows = 96, cols = 512, tokens = 1024;
    const auto layer = qa::testing::correlated_layer(rows, cols, tokens, seed);
    const auto h = qa::testing::gram(layer.x, tokens, cols);
    qa::GptqOptions o;
    o.grid.bits = 3;
    o.grid.group_size = 128;
    o.act_order = true;
    const auto gptq = qa::gptq(layer.w.data(), rows, cols, h.data(), o).weight;
    const auto rtn = qa::quantize_rtn(layer.w.data(), rows, cols, o.grid).weight;
    for (const auto* wq : {&gptq, &rtn}) {
      const auto ref = qa::hessian_rel_err_reference(h.data(), layer.w.data(), wq->data(), rows, cols);
      const double got = qa::hessian_rel_err(h.data(), layer.w.data(), wq->data(), rows, cols);
      std::printf("[ seed %u %s ] rel_err %.6g, |error| %.3g, bound %.3g, kappa %.3g\n", seed, wq == &gptq ? "gptq" : "rtn",
                  ref.value, std::abs(got - ref.value), ref.bound, ref.kappa);
      EXPECT_GT(ref.value, 0.0);
      EXPECT_LE(std::abs(got - ref.value), ref.bound) << "seed " << seed;
    }
  }
}
