// QAT's straight-through gradient masks checked three ways: Qwix's mask vectors (qwix-semantics
// §5 item 12, tiled and asymmetric cases), a closed form of the masked STE gradients with
// clipping calibrations on both operands, and finite differences showing the forward really is
// flat where the mask is zero. Plus QT's weight gradient as an integer product.
#include <gtest/gtest.h>

#include <cmath>

#include "qforge/nn/zoo.hpp"
#include "qforge/providers/qt.hpp"

namespace qforge::providers {
namespace {

TensorF random_tensor(Shape shape, std::uint64_t seed) {
  TensorF t(std::move(shape));
  nn::Rng rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);  // heavy enough tails that clipping bites
  for (auto& v : t.vec()) v = d(rng);
  return t;
}

TEST(QtMasks, QwixMaskVectorsTiledAndAsymmetric) {
  const TensorF tiled({1, 4}, {10, 10, 2, 2});
  const HowToQuantize fixed_tiles{QType::kInt8, {}, {{1, std::int64_t{2}}}, "fixed,2.5"};
  EXPECT_EQ(detail::gradient_mask(tiled, fixed_tiles, quantize(tiled, fixed_tiles)).vec(), (std::vector<float>{0, 0, 1, 1}));
  const TensorF x({1, 3}, {-2, 0, 2});
  const HowToQuantize asym{QType::kInt8, {}, {}, "fixed,-1,1"};
  EXPECT_EQ(detail::gradient_mask(x, asym, quantize(x, asym)).vec(), (std::vector<float>{0, 1, 0}));
  const HowToQuantize big_factor{QType::kInt8, {}, {}, "absmax,1.5"};  // factor >= 1: no mask
  EXPECT_EQ(detail::gradient_mask(x, big_factor, quantize(x, big_factor)).vec(), (std::vector<float>{1, 1, 1}));
}

struct ClippedLinear {
  static constexpr float kClip = 0.6f;
  nn::Rng rng{21};
  nn::Linear lin{32, 16, rng};
  TensorF g = random_tensor({8, 16}, 22);
  nn::Var x = nn::Var(random_tensor({8, 32}, 23), true);
  ClippedLinear() {
    rules::QtRule r;
    r.weight_qtype = QType::kInt8;
    r.act_qtype = QType::kInt8;
    r.weight_calibration_method = "absmax,0.6";
    r.act_calibration_method = "absmax,0.6";
    quantize_model(lin, QtProvider({r}), {x.value()});
  }
  TensorF forward(const TensorF& input) {
    nn::Context ctx(lin.interceptor().get(), true);
    return lin.forward(ctx, nn::Var(input)).value();
  }
};

// Per-row clip masks: |v| <= kClip · max_row|v| keeps the gradient (the clip range as it lands
// on the grid is B·scale = kClip·absmax up to one float ulp of the scale; no value here lies
// within 1e-4 of a boundary, checked below).
TensorF row_clip_mask(const TensorF& v, float clip, int& zeros) {
  TensorF m(v.shape(), 1.0f);
  const std::int64_t R = v.shape()[0], C = v.shape()[1];
  for (std::int64_t r = 0; r < R; ++r) {
    float amax = 0;
    for (std::int64_t c = 0; c < C; ++c) amax = std::max(amax, std::fabs(v.at(r, c)));
    for (std::int64_t c = 0; c < C; ++c) {
      const float bound = clip * amax;
      EXPECT_GT(std::fabs(std::fabs(v.at(r, c)) - bound), 1e-4f * amax) << "too close to the clip bound";
      if (std::fabs(v.at(r, c)) > bound) {
        m.at(r, c) = 0;
        ++zeros;
      }
    }
  }
  return m;
}

// QAT STE (qwix-semantics §4): dx = mask_x ⊙ (g·W) and dW = mask_w ⊙ (gᵀ·x) with the float
// operands. Double-precision closed form vs the provider's float GEMMs: 32- or 8-term sums,
// within 1e-5 of the largest gradient.
TEST(QtMasks, MaskedStraightThroughGradientsMatchTheClosedForm) {
  ClippedLinear m;
  nn::Context ctx(m.lin.interceptor().get(), true);
  nn::backward(m.lin.forward(ctx, m.x), m.g);
  const TensorF& W = m.lin.weight().var.value();
  const TensorF& X = m.x.value();
  int zeros_x = 0, zeros_w = 0;
  const TensorF mx = row_clip_mask(X, ClippedLinear::kClip, zeros_x), mw = row_clip_mask(W, ClippedLinear::kClip, zeros_w);
  ASSERT_GT(zeros_x, 0);
  ASSERT_GT(zeros_w, 0);
  double scale_x = 0, scale_w = 0;
  TensorF want_dx({8, 32}), want_dw({16, 32});
  for (std::int64_t i = 0; i < 8; ++i)
    for (std::int64_t k = 0; k < 32; ++k) {
      double acc = 0;
      for (std::int64_t n = 0; n < 16; ++n) acc += double(m.g.at(i, n)) * W.at(n, k);
      want_dx.at(i, k) = static_cast<float>(acc * mx.at(i, k));
      scale_x = std::max(scale_x, std::fabs(acc));
    }
  for (std::int64_t n = 0; n < 16; ++n)
    for (std::int64_t k = 0; k < 32; ++k) {
      double acc = 0;
      for (std::int64_t i = 0; i < 8; ++i) acc += double(m.g.at(i, n)) * X.at(i, k);
      want_dw.at(n, k) = static_cast<float>(acc * mw.at(n, k));
      scale_w = std::max(scale_w, std::fabs(acc));
    }
  for (std::int64_t e = 0; e < want_dx.size(); ++e) ASSERT_NEAR(m.x.grad()[e], want_dx[e], 1e-5 * scale_x) << "dx " << e;
  const TensorF& dw = m.lin.weight().var.grad();
  for (std::int64_t e = 0; e < want_dw.size(); ++e) ASSERT_NEAR(dw[e], want_dw[e], 1e-5 * scale_w) << "dW " << e;
}

// Finite differences: nudging an input element that the mask zeroes (outside the clip range,
// and not its row's absmax, which sets the scale) leaves the fake-quantized forward bit for bit
// unchanged — the true derivative there is 0, as the mask says.
TEST(QtMasks, ForwardIsFlatWhereTheMaskIsZero) {
  ClippedLinear m;
  const TensorF X = m.x.value();
  const TensorF y0 = m.forward(X);
  int checked = 0;
  for (std::int64_t i = 0; i < 8; ++i) {
    float amax = 0;
    for (std::int64_t k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(X.at(i, k)));
    for (std::int64_t k = 0; k < 32; ++k) {
      const float v = X.at(i, k);
      if (std::fabs(v) <= ClippedLinear::kClip * amax || std::fabs(v) == amax) continue;
      for (float step : {-1e-3f, 1e-3f}) {
        TensorF nudged = X;
        nudged.at(i, k) = std::copysign(std::min(std::fabs(v) + step, amax * 0.999f), v);
        if (std::fabs(nudged.at(i, k)) <= ClippedLinear::kClip * amax) continue;
        const TensorF y1 = m.forward(nudged);
        ASSERT_EQ(y1.vec(), y0.vec()) << "row " << i << " col " << k << " step " << step;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 4);
}

// QT's weight gradient: gᵀ with x's per-row scale folded in, quantized per row to bwd_qtype,
// times x's forward codes in int32 — equal to the double product of those dequantized operands
// up to the float32 rounding of the final scaling (1e-6 relative).
TEST(QtMasks, QtWeightGradientIsTheIntegerProductWithActivationCodes) {
  nn::Rng rng(31);
  nn::Linear lin(24, 12, rng);
  const TensorF g = random_tensor({6, 12}, 32);
  nn::Var x(random_tensor({6, 24}, 33), true);
  rules::QtRule r;
  r.weight_qtype = QType::kInt8;
  r.act_qtype = QType::kInt8;
  r.bwd_qtype = QType::kInt8;
  quantize_model(lin, QtProvider({r}), {x.value()});
  nn::Context ctx(lin.interceptor().get(), true);
  nn::backward(lin.forward(ctx, x), g);
  const HowToQuantize per_row{QType::kInt8, {0}, {}, "absmax"};
  const QArray qx = quantize(x.value(), per_row);
  const QArray g2 = quantize(detail::scale_columns(detail::transpose2(g), qx.scale()), per_row);
  const TensorF g2f = dequantize(g2);
  double scale = 0, diff = 0;
  for (std::int64_t n = 0; n < 12; ++n)
    for (std::int64_t k = 0; k < 24; ++k) {
      double acc = 0;
      for (std::int64_t i = 0; i < 6; ++i) acc += double(g2f.at(n, i)) * qx.code(i * 24 + k);
      scale = std::max(scale, std::fabs(acc));
      diff = std::max(diff, std::fabs(acc - lin.weight().var.grad().at(n, k)));
    }
  EXPECT_LT(diff, 1e-6 * scale);
}

}  // namespace
}  // namespace qforge::providers
