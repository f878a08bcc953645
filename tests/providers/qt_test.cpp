// QtProvider: QAT's straight-through estimator and gradient masks, QT's integer backward, and
// static scales that update only while training.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "qforge/nn/zoo.hpp"
#include "qforge/providers/qt.hpp"
#include "providers/provider_test_util.hpp"

namespace qforge::providers {
namespace {

using test_util::max_rel_diff;
using test_util::random_tensor;

using rules::QtRule;

QtRule qt_rule(std::optional<QType> w, std::optional<QType> a, std::optional<QType> bwd = std::nullopt) {
  QtRule r;
  r.weight_qtype = w;
  r.act_qtype = a;
  r.bwd_qtype = bwd;
  return r;
}

// A single Linear under a fixed upstream gradient r: loss = sum(y ⊙ r), so dL/dy = r exactly
// and the gradients a provider produces can be checked against closed forms.
struct OneLinear {
  nn::Rng rng{5};
  nn::Linear lin{24, 12, rng};
  TensorF r = random_tensor({6, 12}, 77);
  nn::Var x = nn::Var(random_tensor({6, 24}, 78), true);
  void run(bool training = true) {
    nn::Context ctx(lin.interceptor().get(), training);
    const nn::Var y = lin.forward(ctx, x);
    nn::backward(y, r);
  }
};

// qwix-semantics.md §5 item 12.
TEST(Qt, StraightThroughMaskZeroesGradientsOutsideTheCalibratedRange) {
  const TensorF x({1, 5}, {-2, -1, 0, 1, 2});
  const HowToQuantize clip{QType::kInt8, {}, {}, "absmax,0.5"};
  EXPECT_EQ(detail::gradient_mask(x, clip, quantize(x, clip)).vec(), (std::vector<float>{0, 1, 1, 1, 0}));
  const HowToQuantize plain{QType::kInt8, {}, {}, "absmax"};
  EXPECT_EQ(detail::gradient_mask(x, plain, quantize(x, plain)).vec(), (std::vector<float>{1, 1, 1, 1, 1}));
  const HowToQuantize fixed{QType::kInt8, {}, {}, "fixed,1.5"};
  EXPECT_EQ(detail::gradient_mask(x, fixed, quantize(x, fixed)).vec(), (std::vector<float>{0, 1, 1, 1, 0}));
}

TEST(Qt, QatGradientsAreTheFloatStraightThroughGradients) {
  OneLinear plain, qat;
  quantize_model(qat.lin, QtProvider({qt_rule(QType::kInt4, QType::kInt4)}), {qat.x.value()});
  plain.run();
  qat.run();
  // STE with absmax (no clipping): dx = r·W and dW = rᵀ·x with the float operands; only the
  // summation order differs (24- or 6-term float sums: < 1e-6 relative).
  EXPECT_LT(max_rel_diff(qat.x.grad(), plain.x.grad()), 1e-6);
  EXPECT_LT(max_rel_diff(qat.lin.weight().var.grad(), plain.lin.weight().var.grad()), 1e-6);
}

TEST(Qt, QatForwardIsTheFakeQuantizedProduct) {
  OneLinear m;
  quantize_model(m.lin, QtProvider({qt_rule(QType::kInt4, QType::kInt8)}), {m.x.value()});
  nn::Context ctx(m.lin.interceptor().get(), false);
  const TensorF y = m.lin.forward(ctx, m.x).value();
  const TensorF xq = fake_quantize(m.x.value(), {QType::kInt8, {0}, {}, "absmax"});
  const TensorF wq = fake_quantize(m.lin.weight().var.value(), {QType::kInt4, {0}, {}, "absmax"});
  for (std::int64_t i = 0; i < 6; ++i)
    for (std::int64_t n = 0; n < 12; ++n) {
      double acc = m.lin.bias()->var.value()[n];
      for (std::int64_t k = 0; k < 24; ++k) acc += double(xq.at(i, k)) * wq.at(n, k);
      EXPECT_NEAR(y.at(i, n), acc, 1e-5);
    }
}

// QT: dx must be exactly the product of the quantized, scale-shifted gradient with the weight
// codes — computed in integers, so it equals the float product of those dequantized operands up
// to float32 rounding of the final scaling (1e-6 relative).
TEST(Qt, QtBackwardIsTheIntegerProductOfQuantizedGradientAndCodes) {
  OneLinear m;
  quantize_model(m.lin, QtProvider({qt_rule(QType::kInt8, QType::kInt8, QType::kInt8)}), {m.x.value()});
  m.run();
  const QArray qw = quantize(m.lin.weight().var.value(), {QType::kInt8, {0}, {}, "absmax"});
  const QArray g1 = quantize(detail::scale_columns(m.r, qw.scale()), {QType::kInt8, {0}, {}, "absmax"});
  const TensorF g1f = dequantize(g1);
  TensorF want({6, 24});
  for (std::int64_t i = 0; i < 6; ++i)
    for (std::int64_t k = 0; k < 24; ++k) {
      double acc = 0;
      for (std::int64_t n = 0; n < 12; ++n) acc += double(g1f.at(i, n)) * qw.code(n * 24 + k);
      want.at(i, k) = static_cast<float>(acc);
    }
  EXPECT_LT(max_rel_diff(m.x.grad(), want), 1e-6);
  // And it stays close to the float STE gradient (int8 gradient quantization: a few percent).
  OneLinear plain;
  plain.run();
  EXPECT_LT(max_rel_diff(m.x.grad(), plain.x.grad()), 0.03);
  EXPECT_LT(max_rel_diff(m.lin.weight().var.grad(), plain.lin.weight().var.grad()), 0.03);
}

// Stochastic rounding of the int4 gradient: a seed reproduces itself, seeds differ from each other
// and from round-to-nearest, and the mean of dx over seeds converges to the product of the
// unrounded (scale-shifted) gradient with the weight codes, the quantity the rounding is unbiased for.
TEST(Qt, StochasticRoundingOfGradientsIsSeededAndUnbiased) {
  QtRule r = qt_rule(QType::kInt8, QType::kInt8, QType::kInt4);
  OneLinear nearest;
  quantize_model(nearest.lin, QtProvider({r}), {nearest.x.value()});
  nearest.run();
  r.bwd_stochastic_rounding = "uniform";
  const auto dx_with_seed = [&](std::uint64_t seed) {
    OneLinear m;
    quantize_model(m.lin, QtProvider({r}, seed), {m.x.value()});
    m.run();
    return m.x.grad();
  };
  EXPECT_EQ(dx_with_seed(42).vec(), dx_with_seed(42).vec());

  OneLinear m;
  const QArray qw = quantize(m.lin.weight().var.value(), {QType::kInt8, {0}, {}, "absmax"});
  const TensorF g = detail::scale_columns(m.r, qw.scale());
  const QArray g_nearest = quantize(g, {QType::kInt4, {0}, {}, "absmax"});
  constexpr int kSeeds = 256;
  std::vector<double> mean(6 * 24, 0.0);
  std::vector<std::vector<float>> first_two;
  for (int s = 1; s <= kSeeds; ++s) {
    const TensorF dx = dx_with_seed(static_cast<std::uint64_t>(s));
    EXPECT_NE(dx.vec(), nearest.x.grad().vec()) << "seed " << s << " rounded every gradient to nearest";
    if (s <= 2) first_two.push_back(dx.vec());
    for (std::size_t i = 0; i < mean.size(); ++i) mean[i] += dx.vec()[i] / kSeeds;
  }
  EXPECT_NE(first_two[0], first_two[1]);
  // Rounding v + U(-0.5, 0.5) to nearest has mean v; only int4's clip of 8 to 7 biases it, by
  // P(v + u >= 7.5) = v - 7 for v > 7 (the row maximum sits at 7.5 steps under absmax).
  const auto expected_code = [](double v) { return v - std::max(0.0, v - 7.0); };
  // Per seed, dx[i,k] - expected = sum_n e[i,n] code[n,k] with independent zero-mean errors
  // |e| < step_i (the int4 scale of gradient row i), so its variance is at most step_i^2/4 ·
  // sum_n code[n,k]^2; the mean over kSeeds lies within 6 of its standard deviations.
  for (std::int64_t i = 0; i < 6; ++i)
    for (std::int64_t k = 0; k < 24; ++k) {
      const double step = g_nearest.scale()[i];
      double exact = 0, codes_sq = 0;
      for (std::int64_t n = 0; n < 12; ++n) {
        const double c = qw.code(n * 24 + k);
        exact += step * expected_code(double(g.at(i, n)) / step) * c;
        codes_sq += c * c;
      }
      const double sigma = std::sqrt(step * step / 4 * codes_sq / kSeeds);
      EXPECT_NEAR(mean[static_cast<std::size_t>(i * 24 + k)], exact, 6 * sigma) << "dx[" << i << "," << k << "]";
    }
}

TEST(Qt, StaticScalesUpdateOnlyWhileTraining) {
  OneLinear m;
  QtRule r = qt_rule(QType::kInt8, QType::kInt8);
  r.act_static_scale = true;
  quantize_model(m.lin, QtProvider({r}), {m.x.value()});
  const auto& sites = dynamic_cast<detail::QtInterceptor&>(*m.lin.interceptor()).sites();
  const auto& stats = sites.begin()->second.stats;
  m.run(true);
  m.run(true);
  EXPECT_EQ(stats.hi.count(), 2);
  m.run(false);
  EXPECT_EQ(stats.hi.count(), 2);
}

TEST(Qt, QatTrainingReducesTheLossOfAQuantizedMlp) {
  nn::Rng rng(9);
  nn::Mlp model({8, 16, 4}, rng);
  const TensorF x = random_tensor({32, 8}, 90);
  std::vector<int> y;
  for (std::int64_t i = 0; i < 32; ++i) y.push_back(x.at(i, 0) > 0 ? (x.at(i, 1) > 0 ? 0 : 1) : (x.at(i, 2) > 0 ? 2 : 3));
  quantize_model(model, QtProvider({qt_rule(QType::kInt4, QType::kInt8, QType::kInt8)}), {x});
  nn::Adam opt(model, 1e-2f);
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    nn::Var loss = nn::softmax_cross_entropy(model(nn::Var(x), true), y);
    nn::backward(loss);
    opt.step();
    (step == 0 ? first : last) = loss.value()[0];
  }
  EXPECT_LT(last, 0.5 * first);
}

}  // namespace
}  // namespace qforge::providers
