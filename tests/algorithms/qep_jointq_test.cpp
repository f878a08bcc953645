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
    const std::int64_t in = 48, hid = 64, out = 16, tokens = 600;
    const auto l1 = correlated_layer(hid, in, tokens, seed);
    const auto l2 = correlated_layer(out, hid, 1, seed + 100);
    qa::GridSpec g3;
    g3.bits = 3;
    const auto w1q = qa::quantize_rtn(l1.w.data(), hid, in, g3).weight;
    const auto y1 = forward(l1.w, l1.x, hid, in, tokens);
    const auto y1q = forward(w1q, l1.x, hid, in, tokens);
    const auto h = gram(y1q, tokens, hid);
    const auto hd = cross(y1, y1q, tokens, hid);
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
  EXPECT_NE(std::find(o.lambda_list.begin(), o.lambda_list.end(), inc.accepted_lambda), o.lambda_list.end());
  o.regularization_mode = "diagonal";
  EXPECT_THROW(qa::jointq(l.w.data(), 8, 32, h.data(), 300.0, o), qforge::Error);
  o.lambda_mode = "fixed_lambda";
  o.grid = qa::parse_grid("nf4");
  EXPECT_THROW(qa::jointq(l.w.data(), 8, 32, h.data(), 300.0, o), qforge::Error);
}
