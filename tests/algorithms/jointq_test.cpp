// JointQ's candidates (clip-optimise, clip-optimise-EP, GPTQ), iterated local search, thread
// independence, GGML grids and the §1.9 error-propagation re-quantization, on several seeds.
#include <algorithm>
#include <array>
#include <cstdio>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "qforge/algorithms/jointq.hpp"
#include "test_util.hpp"

namespace qa = qforge::algorithms;
using qa::testing::correlated_layer;
using qa::testing::cross_gram;
using qa::testing::gram;
using qa::testing::output_error;

namespace {
qa::JointqOptions all_candidates(int bits, std::int64_t gs, double lambda) {
  qa::JointqOptions o;
  o.grid.bits = bits;
  o.grid.group_size = gs;
  o.regularization_lambda = lambda;
  o.enable_clip_optimize_ep = true;
  o.threads = 2;
  return o;
}

}  // namespace

TEST(Jointq, EachCandidateWinsSomeRowsAndTheSearchNeverIncreasesTheObjective) {
  std::array<int, qa::kJointqCandidates> used{};
  for (unsigned seed : {201u, 202u, 203u, 204u}) {
    const auto l = correlated_layer(24, 64, 300, seed);
    const auto h = gram(l.x, l.tokens, l.cols);
    // Grouped (all three candidates; EP needs k > 1) and per-channel (clip-optimise and GPTQ).
    for (auto [gs, lambda] : {std::pair<std::int64_t, double>{16, 0.0}, {16, 0.1}, {0, 0.0}, {0, 0.1}}) {
      const auto o = all_candidates(3, gs, lambda);
      const auto r = qa::jointq(l.w.data(), l.rows, l.cols, h.data(), static_cast<double>(l.tokens), o);
      std::array<int, qa::kJointqCandidates> here{};
      for (std::int64_t i = 0; i < l.rows; ++i) {
        const auto ri = static_cast<std::size_t>(i);
        const int c = r.row_candidate[ri];
        ++here[static_cast<std::size_t>(c)];
        double best = std::numeric_limits<double>::infinity();
        for (int k = 0; k < qa::kJointqCandidates; ++k) {
          const double v = r.row_candidate_objective[ri * qa::kJointqCandidates + static_cast<std::size_t>(k)];
          if (k == 0 || k == 2 || (k == 1 && gs > 0)) {
            EXPECT_TRUE(std::isfinite(v)) << "candidate " << k << " did not run on row " << i;
          }
          if (std::isfinite(v)) best = std::min(best, v);
        }
        EXPECT_EQ(r.row_start_objective[ri], best) << "row " << i;
        EXPECT_EQ(r.row_start_objective[ri], r.row_candidate_objective[ri * qa::kJointqCandidates + static_cast<std::size_t>(c)]);
        EXPECT_LE(r.row_search_objective[ri], r.row_start_objective[ri] * (1 + 1e-12)) << "row " << i;
        EXPECT_LE(r.row_objective[ri], r.row_search_objective[ri] * (1 + 1e-9) + 1e-12) << "row " << i;
      }
      std::printf("[ seed %u g%lld lambda %.1f ] rows from clip %d, clip-EP %d, GPTQ %d\n", seed, static_cast<long long>(gs), lambda, here[0], here[1], here[2]);
      for (int k = 0; k < qa::kJointqCandidates; ++k) used[static_cast<std::size_t>(k)] += here[static_cast<std::size_t>(k)];
    }
  }
  EXPECT_GT(used[0], 0) << "clip-optimise never won a row";
  EXPECT_GT(used[1], 0) << "clip-optimise-EP never won a row";
  EXPECT_GT(used[2], 0) << "GPTQ never won a row";
}

TEST(Jointq, EpCandidateAndIteratedLocalSearchNeverRaiseARowsObjective) {
  for (unsigned seed : {211u, 212u, 213u}) {
    std::printf("[ seed %u ]\n", seed);
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    const auto l = correlated_layer(16, 64, 300, seed);
    const auto h = gram(l.x, l.tokens, l.cols);
    for (bool sym : {false, true}) {
      auto o = all_candidates(3, 16, 0.0);
      o.grid.sym = sym;
      o.enable_clip_optimize_ep = false;
      const auto base = qa::jointq(l.w.data(), l.rows, l.cols, h.data(), static_cast<double>(l.tokens), o);
      o.enable_clip_optimize_ep = true;
      const auto ep = qa::jointq(l.w.data(), l.rows, l.cols, h.data(), static_cast<double>(l.tokens), o);
      o.ils_enabled = true;
      o.ils_iterations = 3;
      o.ils_zero_probability = 0.05;
      const auto ils = qa::jointq(l.w.data(), l.rows, l.cols, h.data(), static_cast<double>(l.tokens), o);
      for (std::int64_t i = 0; i < l.rows; ++i) {
        const auto ri = static_cast<std::size_t>(i);
        // A superset of candidates: the best start can only fall.
        EXPECT_LE(ep.row_start_objective[ri], base.row_start_objective[ri]) << "row " << i;
        // ILS runs after the same search and keeps only improvements.
        EXPECT_EQ(ils.row_search_objective[ri], ep.row_search_objective[ri]);
        EXPECT_LE(ils.row_objective[ri], ep.row_objective[ri]) << "row " << i;
      }
      std::printf("  sym %d: ILS improved %lld of %lld rows\n", sym, static_cast<long long>(ils.ils_improved_rows),
                  static_cast<long long>(l.rows));
      EXPECT_LE(output_error(l.w, ils.layer.weight, l.x, nullptr, l.rows, l.cols, l.tokens),
                output_error(l.w, ep.layer.weight, l.x, nullptr, l.rows, l.cols, l.tokens) * (1 + 1e-9));
    }
  }
}

TEST(Jointq, ResultDoesNotDependOnTheThreadCount) {
  const auto l = correlated_layer(20, 64, 300, 221);
  const auto h = gram(l.x, l.tokens, l.cols);
  auto o = all_candidates(4, 16, 0.1);
  o.act_order = true;
  o.ils_enabled = true;
  o.ils_iterations = 2;
  o.ils_zero_probability = 0.05;
  o.threads = 1;
  const auto one = qa::jointq(l.w.data(), l.rows, l.cols, h.data(), 300.0, o);
  o.threads = 3;
  const auto three = qa::jointq(l.w.data(), l.rows, l.cols, h.data(), 300.0, o);
  EXPECT_EQ(one.layer.codes, three.layer.codes);
  EXPECT_EQ(one.layer.weight, three.layer.weight);
  EXPECT_EQ(one.row_objective, three.row_objective);
}

// Each start is evaluated in float32 GEMMs and searched from there (docs/algorithms.md, JointQ,
// Precision): the reported objective must still be the row's objective, (w − ŵ) XX (w − ŵ)ᵀ at
// λ = 0, recomputed here in double from the codes and scales (measured within ~1e-6; held to 1e-5).
TEST(Jointq, ReportedObjectiveMatchesADoublePrecisionRecomputation) {
  const auto l = correlated_layer(16, 256, 600, 231);
  const auto h = gram(l.x, l.tokens, l.cols);
  for (bool ils : {false, true}) {
    auto o = all_candidates(4, 64, 0.0);
    o.ils_enabled = ils;
    o.ils_zero_probability = 0.05;
    const auto r = qa::jointq(l.w.data(), l.rows, l.cols, h.data(), static_cast<double>(l.tokens), o);
    for (std::int64_t i = 0; i < l.rows; ++i) {
      std::vector<double> e(static_cast<std::size_t>(l.cols));
      for (std::int64_t j = 0; j < l.cols; ++j) {
        const auto q = static_cast<std::size_t>(i * l.cols + j);
        const auto& p = r.layer.params[static_cast<std::size_t>(i * r.layer.groups + j / r.layer.group_size)];
        e[static_cast<std::size_t>(j)] =
            l.w[q] - static_cast<double>(p.scale) * (r.layer.codes[q] - static_cast<double>(p.zero));
      }
      double objective = 0.0;
      for (std::int64_t a = 0; a < l.cols; ++a)
        for (std::int64_t b = 0; b < l.cols; ++b)
          objective += e[static_cast<std::size_t>(a)] * h[static_cast<std::size_t>(a * l.cols + b)] *
                       e[static_cast<std::size_t>(b)];
      EXPECT_NEAR(r.row_objective[static_cast<std::size_t>(i)], objective, 1e-5 * objective)
          << "row " << i << " ils " << ils;
    }
  }
}

TEST(Jointq, GgmlGridsAreSolvedOnTheirIntegerLattice) {
  for (unsigned seed : {231u, 232u}) {
    std::printf("[ seed %u ]\n", seed);
    const auto l = correlated_layer(8, 64, 300, seed);
    const auto h = gram(l.x, l.tokens, l.cols);
    for (const char* name : {"q4_0", "q4_1", "q8_0"}) {
      SCOPED_TRACE(name);
      qa::JointqOptions o;
      o.grid = qa::parse_grid(name);
      o.regularization_lambda = 0.0;
      const auto r = qa::jointq(l.w.data(), l.rows, l.cols, h.data(), 300.0, o);
      ASSERT_EQ(r.layer.grid.kind, o.grid.kind);
      ASSERT_EQ(r.layer.group_size, 32);
      const int lo = o.grid.kind == qa::GridKind::kQ8_0 ? -128 : -8, hi = o.grid.kind == qa::GridKind::kQ8_0 ? 127 : 7;
      for (auto c : r.layer.codes) ASSERT_TRUE(c >= lo && c <= hi);
      for (const auto& p : r.layer.params) EXPECT_EQ(p.scale, qforge::fp16_to_fp32(qforge::fp32_to_fp16(p.scale)));
      auto w = r.layer.weight;
      auto copy = r.layer;
      copy.dequantize_all();
      EXPECT_EQ(copy.weight, w);
      const auto rtn = qa::quantize_rtn(l.w.data(), l.rows, l.cols, o.grid);
      const double e = output_error(l.w, r.layer.weight, l.x, nullptr, l.rows, l.cols, l.tokens);
      const double e_rtn = output_error(l.w, rtn.weight, l.x, nullptr, l.rows, l.cols, l.tokens);
      std::printf("  %s: output error %.4g (RTN %.4g)\n", name, e, e_rtn);
      EXPECT_LT(e, e_rtn);
    }
  }
}

TEST(Jointq, ErrorPropagationLowersTheStage2ErrorWithinTheAllowedChange) {
  for (unsigned seed : {241u, 242u, 243u}) {
    std::printf("[ seed %u ]\n", seed);
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    const auto l = correlated_layer(16, 64, 400, seed);
    // The quantized model's inputs: X plus correlated upstream noise.
    auto xq = l.x;
    const auto noise = correlated_layer(1, 64, 400, seed + 1000);
    for (std::size_t i = 0; i < xq.size(); ++i) xq[i] += 0.15f * noise.x[i];
    const auto xx = gram(l.x, l.tokens, l.cols);
    const auto hh = gram(xq, l.tokens, l.cols);
    const auto hx = cross_gram(xq, l.x, l.tokens, l.cols);
    qa::JointqOptions o;
    o.grid.bits = 3;
    o.grid.group_size = 16;
    o.regularization_lambda = 0.0;
    const auto stage1 = qa::jointq(l.w.data(), l.rows, l.cols, xx.data(), 400.0, o);
    const auto ep = qa::jointq_error_propagation(l.w.data(), l.rows, l.cols, stage1.layer, xx.data(), hh.data(), hx.data(), {});
    const qa::JointqEpOptions eo;
    for (std::int64_t i = 0; i < l.rows; ++i) {
      const auto ri = static_cast<std::size_t>(i);
      EXPECT_LE(ep.row_error_after[ri], ep.row_error_before[ri]) << "row " << i;
      const double rho_max = ep.row_degradation[ri] > eo.degradation_threshold
                                 ? std::clamp(eo.variation_scale * ep.row_degradation[ri], 0.0, eo.variation_cap)
                                 : 0.0;
      EXPECT_LE(ep.row_rho[ri], rho_max) << "row " << i;
    }
    for (auto c : ep.layer.codes) ASSERT_TRUE(c >= -4 && c <= 3);
    const double before = output_error(l.w, stage1.layer.weight, l.x, &xq, l.rows, l.cols, l.tokens);
    const double after = output_error(l.w, ep.layer.weight, l.x, &xq, l.rows, l.cols, l.tokens);
    double sum_after = 0.0;
    for (double v : ep.row_error_after) sum_after += v;
    std::printf("  stage-2 error %.5g -> %.5g (%lld of %lld rows changed)\n", before, after,
                static_cast<long long>(ep.rows_changed), static_cast<long long>(l.rows));
    EXPECT_NEAR(sum_after, after, 1e-4 * after);
    EXPECT_GT(ep.rows_changed, 0);
    EXPECT_LT(after, before);
  }
}
