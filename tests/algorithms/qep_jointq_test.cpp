#include <cstdio>
#include <optional>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "qforge/algorithms/jointq.hpp"
#include "qforge/algorithms/qep.hpp"
#include "test_util.hpp"

namespace qa = qforge::algorithms;
using qa::testing::correlated_layer;
using qa::testing::gram;
using qa::testing::output_error;

namespace {
// y[t, r] = sum_j w[r, j] x[t, j]
std::vector<float> forward(const std::vector<float>& w, const std::vector<float>& x, std::int64_t rows, std::int64_t cols,
                           std::int64_t tokens) {
  std::vector<float> y(static_cast<std::size_t>(tokens * rows));
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t r = 0; r < rows; ++r) {
      double a = 0;
      for (std::int64_t j = 0; j < cols; ++j) a += static_cast<double>(w[static_cast<std::size_t>(r * cols + j)]) * x[static_cast<std::size_t>(t * cols + j)];
      y[static_cast<std::size_t>(t * rows + r)] = static_cast<float>(a);
    }
  return y;
}

std::vector<double> cross(const std::vector<float>& x, const std::vector<float>& xq, std::int64_t tokens, std::int64_t cols) {
  // (X − X̂)ᵀ X̂
  std::vector<double> h(static_cast<std::size_t>(cols * cols), 0.0);
  for (std::int64_t t = 0; t < tokens; ++t)
    for (std::int64_t a = 0; a < cols; ++a) {
      const double d = static_cast<double>(x[static_cast<std::size_t>(t * cols + a)]) - xq[static_cast<std::size_t>(t * cols + a)];
      for (std::int64_t b = 0; b < cols; ++b) h[static_cast<std::size_t>(a * cols + b)] += d * xq[static_cast<std::size_t>(t * cols + b)];
    }
  return h;
}

// Layer 1 quantized at 3 bits makes layer 2's inputs noisy: layer 2's weight, its float and
// quantized-prefix inputs, and the statistics QEP reads (H = Ŷ1ᵀŶ1, H_δ = (Y1 − Ŷ1)ᵀŶ1).
struct Chain {
  qa::testing::Layer l2;
  std::vector<float> y1, y1q;
  std::vector<double> h, hd;
};
Chain two_layer_chain(unsigned seed, std::int64_t in, std::int64_t hid, std::int64_t out, std::int64_t tokens) {
  const auto l1 = correlated_layer(hid, in, tokens, seed);
  Chain c{correlated_layer(out, hid, 1, seed + 100), {}, {}, {}, {}};
  qa::GridSpec g3;
  g3.bits = 3;
  const auto w1q = qa::quantize_rtn(l1.w.data(), hid, in, g3).weight;
  c.y1 = forward(l1.w, l1.x, hid, in, tokens);
  c.y1q = forward(w1q, l1.x, hid, in, tokens);
  c.h = gram(c.y1q, tokens, hid);
  c.hd = cross(c.y1, c.y1q, tokens, hid);
  return c;
}
}  // namespace

TEST(Qep, AlphaZeroAndExactInputsLeaveTheWeightUnchanged) {
  for (unsigned seed : {61u, 62u}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    const auto l = correlated_layer(8, 32, 200, seed);
    const auto h = gram(l.x, l.tokens, l.cols);
    auto xq = l.x;
    for (auto& v : xq) v *= 1.01f;
    const auto hd = cross(l.x, xq, l.tokens, l.cols);
    qa::QepOptions o;
    o.correction_factor = 0.0;
    EXPECT_EQ(qa::qep_correct(l.w.data(), 8, 32, h.data(), hd.data(), o), l.w);
    o.correction_factor = 0.5;
    const std::vector<double> zero(32 * 32, 0.0);
    EXPECT_EQ(qa::qep_correct(l.w.data(), 8, 32, h.data(), zero.data(), o), l.w);
    // α = 0: QEP+GPTQ is GPTQ code for code.
    o.correction_factor = 0.0;
    qa::GptqOptions g;
    g.grid.group_size = 16;
    EXPECT_EQ(qa::qep_gptq(l.w.data(), 8, 32, h.data(), hd.data(), o, g).codes, qa::gptq(l.w.data(), 8, 32, h.data(), g).codes);
  }
}

TEST(Qep, ReducesOutputErrorOfATwoLayerChain) {
  // Layer 1 quantized at 3 bits makes the second layer's inputs noisy; QEP corrects layer 2's
  // float weight for that noise before GPTQ. Objective: ||Y1 W2ᵀ − Ŷ1 Ŵ2ᵀ||².
  for (unsigned seed : {71u, 72u, 73u}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    const std::int64_t hid = 64, out = 16, tokens = 600;
    const auto [l2, y1, y1q, h, hd] = two_layer_chain(seed, 48, hid, out, tokens);
    qa::GptqOptions g;
    g.grid.bits = 4;
    g.grid.group_size = 16;
    const auto plain = qa::gptq(l2.w.data(), out, hid, h.data(), g);
    const auto qep = qa::qep_gptq(l2.w.data(), out, hid, h.data(), hd.data(), qa::QepOptions{}, g);
    const double e_plain = output_error(l2.w, plain.weight, y1, &y1q, out, hid, tokens);
    const double e_qep = output_error(l2.w, qep.weight, y1, &y1q, out, hid, tokens);
    EXPECT_LT(e_qep, e_plain);
  }
}

TEST(Qep, ShiftInsideGptqEqualsCorrectingFirst) {
  // qep_gptq folds the correction into GPTQ's own factor (one solve, no second factorisation);
  // it must quantize exactly as correcting W first and then running GPTQ, up to float round-off
  // moving a value across a rounding boundary (< 1% of codes), with and without act-order.
  for (unsigned seed : {81u, 82u}) {
    const std::int64_t hid = 128, out = 24;
    const auto [l2, y1, y1q, h, hd] = two_layer_chain(seed, 96, hid, out, 700);
    for (const bool act_order : {false, true}) {
      SCOPED_TRACE(testing::Message() << "seed " << seed << " act_order " << act_order);
      qa::GptqOptions g;
      g.grid.bits = 4;
      g.grid.group_size = 32;
      g.block_size = 48;
      g.act_order = act_order;
      const auto fused = qa::qep_gptq(l2.w.data(), out, hid, h.data(), hd.data(), qa::QepOptions{}, g);
      const auto corrected = qa::qep_correct(l2.w.data(), out, hid, h.data(), hd.data(), qa::QepOptions{});
      const auto separate = qa::gptq(corrected.data(), out, hid, h.data(), g);
      int flips = 0;
      for (std::size_t i = 0; i < fused.codes.size(); ++i) flips += fused.codes[i] != separate.codes[i];
      EXPECT_LE(flips, static_cast<int>(fused.codes.size() / 100)) << flips << " of " << fused.codes.size();
      const auto plain = qa::gptq(l2.w.data(), out, hid, h.data(), g);
      int plain_flips = 0;  // the check can fail: QEP moves many codes
      for (std::size_t i = 0; i < fused.codes.size(); ++i) plain_flips += plain.codes[i] != separate.codes[i];
      EXPECT_GT(plain_flips, static_cast<int>(fused.codes.size() / 20));
      EXPECT_NEAR(fused.loss, separate.loss, 1e-3 * separate.loss);
    }
  }
}

TEST(Jointq, NeverWorseThanItsGptqStartOnAnyRow) {
  for (unsigned seed : {81u, 82u, 83u}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    const auto l = correlated_layer(12, 64, 400, seed);
    const auto h = gram(l.x, l.tokens, l.cols);
    for (bool sym : {false, true}) {
      for (std::int64_t gs : {0, 16}) {
        qa::JointqOptions o;
        o.regularization_lambda = 0.0;
        o.grid.bits = 3;
        o.grid.sym = sym;
        o.grid.group_size = gs;
        o.threads = 2;
        const auto r = qa::jointq(l.w.data(), l.rows, l.cols, h.data(), static_cast<double>(l.tokens), o);
        for (std::int64_t i = 0; i < l.rows; ++i)
          EXPECT_LE(r.row_objective[static_cast<std::size_t>(i)], r.row_gptq_objective[static_cast<std::size_t>(i)] * (1 + 1e-12))
              << "row " << i << " sym " << sym << " g" << gs;
        // With λ = 0 the row objective is the row's output error: check it against the data.
        qa::GptqOptions g;
        g.grid = o.grid;
        const auto gq = qa::gptq(l.w.data(), l.rows, l.cols, h.data(), g);
        EXPECT_LE(output_error(l.w, r.layer.weight, l.x, nullptr, l.rows, l.cols, l.tokens),
                  output_error(l.w, gq.weight, l.x, nullptr, l.rows, l.cols, l.tokens) * (1 + 1e-9));
        for (auto c : r.layer.codes) ASSERT_TRUE(c >= -4 && c <= 3);
      }
    }
  }
}

// The λ that OneComp's incremental rule (onecomp.md §1.6) accepts, replayed here: each candidate is
// the fixed-λ solve warm-started from the last accepted result, its errors are recomputed in
// double (relative squared weight error and H-weighted output error), and the walk stops at the
// first candidate that neither lowers both errors nor trades ≤ 3% of E_y for ≥ 10% of E_w.
double expected_incremental_lambda(const std::vector<float>& w, std::int64_t rows, std::int64_t cols,
                                   const std::vector<double>& h, double tokens, const qa::JointqOptions& o) {
  const qa::MatrixXdR xx = Eigen::Map<const qa::MatrixXdR>(h.data(), cols, cols);
  const auto errors = [&](const qa::QuantizedLayer& q) {
    double nw = 0, dw = 0, ny = 0, dy = 0;
    for (std::int64_t r = 0; r < rows; ++r) {
      Eigen::VectorXd a(cols), d(cols);
      for (std::int64_t j = 0; j < cols; ++j) {
        const auto k = static_cast<std::size_t>(r * cols + j);
        a[j] = w[k];
        d[j] = a[j] - q.weight[k];
      }
      nw += a.squaredNorm(), dw += d.squaredNorm(), ny += a.dot(xx * a), dy += d.dot(xx * d);
    }
    return std::pair{dw / nw, dy / ny};
  };
  std::optional<qa::JointqResult> accepted;
  std::pair<double, double> prev{};
  std::size_t accepted_index = 0;
  for (std::size_t i = 0; i < o.lambda_list.size(); ++i) {
    auto cand = qa::detail::jointq_fixed(w, rows, cols, xx, tokens, o.lambda_list[i], o,
                                         accepted ? &accepted->layer : nullptr, "replay");
    const auto [ew, ey] = errors(cand.layer);
    if (accepted && !((ey < prev.second && ew < prev.first) ||
                      (ew <= prev.first && ey <= 1.03 * prev.second && ew <= 0.9 * prev.first)))
      break;
    accepted = std::move(cand);
    prev = {ew, ey};
    accepted_index = i;
  }
  std::printf("incremental lambda: accepted %zu of %zu (lambda %g)\n", accepted_index + 1, o.lambda_list.size(),
              o.lambda_list[accepted_index]);
  // The data must make the walk advance, or a loop that never leaves the first λ would pass.
  EXPECT_GT(accepted_index, 0u);
  return o.lambda_list[accepted_index];
}

TEST(Jointq, RegularisationActOrderAndIncrementalLambda) {
  const auto l = correlated_layer(8, 32, 300, 91);
  const auto h = gram(l.x, l.tokens, l.cols);
  qa::JointqOptions o;
  o.grid.group_size = 16;
  o.act_order = true;
  o.threads = 1;
  auto r = qa::jointq(l.w.data(), 8, 32, h.data(), 300.0, o);
  ASSERT_EQ(r.layer.perm.size(), 32u);
  auto w = r.layer.weight;
  r.layer.dequantize_all();
  EXPECT_EQ(w, r.layer.weight);
  o.act_order = false;
  o.regularization_mode = "identity";
  o.lambda_mode = "incremental_lambda";
  const auto inc = qa::jointq(l.w.data(), 8, 32, h.data(), 300.0, o);
  EXPECT_EQ(inc.accepted_lambda, expected_incremental_lambda(l.w, 8, 32, h, 300.0, o));
  o.regularization_mode = "diagonal";
  EXPECT_THROW(qa::jointq(l.w.data(), 8, 32, h.data(), 300.0, o), qforge::Error);
  o.lambda_mode = "fixed_lambda";
  o.grid = qa::parse_grid("nf4");
  EXPECT_THROW(qa::jointq(l.w.data(), 8, 32, h.data(), 300.0, o), qforge::Error);
}
