// Products of two activations (einsum sites: attention's q·kᵀ and probs·v) under PTQ (dynamic
// and static range, integer products) and QAT/QT (fake quant on both operands, Qwix's masked
// straight-through backward), the report entries, and the errors of rules that cannot apply.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "qforge/nn/zoo.hpp"
#include "qforge/providers/qt.hpp"
#include "providers/provider_test_util.hpp"

namespace qforge::providers {
namespace {

using test_util::check_backward;
using test_util::Check;
using test_util::max_rel_diff;
using test_util::random_tensor;

template <class Rule>
Rule einsum_rule(QType act, std::optional<TileSize> tile = std::nullopt) {
  Rule r;
  r.op_names = {"einsum"};
  r.weight_qtype = QType::kInt8;  // Qwix: unset leaves the site in float, even an einsum
  r.act_qtype = act;
  r.tile_size = tile;
  return r;
}

// One einsum site between the input x [G, M, K] and a second activation y [G, N, K] (held by the
// module, not a parameter: the site has no weight), so both gradients can be checked.
class Scores : public nn::Module {
 public:
  explicit Scores(TensorF y) : y_(std::move(y), true) {}
  std::string type_name() const override { return "Scores"; }
  nn::Var forward(nn::Context& ctx, const nn::Var& x) override { return site(ctx, nn::SiteKind::kEinsum, x, y_, nullptr); }
  nn::Var& y() { return y_; }

 private:
  nn::Var y_;
};

// dq(a)[G, M, K] · dq(b)[G, N, K]ᵀ in double: the fake-quant reference.
TensorF batched_reference(const TensorF& a, const TensorF& b) {
  const std::int64_t G = a.shape()[0], M = a.shape()[1], N = b.shape()[1], K = a.shape()[2];
  TensorF y({G, M, N});
  for (std::int64_t g = 0; g < G; ++g)
    for (std::int64_t m = 0; m < M; ++m)
      for (std::int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (std::int64_t k = 0; k < K; ++k) acc += double(a[(g * M + m) * K + k]) * b[(g * N + n) * K + k];
        y[(g * M + m) * N + n] = static_cast<float>(acc);
      }
  return y;
}

// Qwix's einsum layout: channelwise on G and the row, tiled on K.
HowToQuantize operand_how(QType t, std::optional<std::int64_t> tile, std::string method = "absmax") {
  HowToQuantize h{t, {0, 1}, {}, std::move(method)};
  if (tile) h.tiled_axes[2] = *tile;
  return h;
}

// The integer PTQ forward of an attention block (q·kᵀ, softmax, ·v) equals the QAT fake-quant
// forward of the same rule, per row and with tiles along K.
TEST(ActivationProduct, PtqIntegerForwardMatchesFakeQuantForward) {
  for (std::optional<TileSize> tile : {std::optional<TileSize>{}, std::optional<TileSize>{TileSize{std::int64_t{4}}}}) {
    nn::Rng rng(3);
    nn::SelfAttention ptq(8, rng);
    nn::Rng rng2(3);
    nn::SelfAttention qat(8, rng2);
    nn::Rng rng3(3);
    nn::SelfAttention fp(8, rng3);
    const TensorF x = random_tensor({3, 8, 8}, 11);
    const auto report = quantize_model(ptq, PtqProvider({einsum_rule<rules::QuantizationRule>(QType::kInt8, tile)}), {x});
    quantize_model(qat, QtProvider({einsum_rule<rules::QtRule>(QType::kInt8, tile)}), {x});
    const TensorF yp = ptq(nn::Var(x)).value(), yq = qat(nn::Var(x)).value(), yf = fp(nn::Var(x)).value();
    const double integer_vs_fake = max_rel_diff(yp, yq), quantized_vs_float = max_rel_diff(yp, yf);
    std::printf("tile %s: integer vs fake quant %.3g, quantized vs float %.3g\n", tile ? "4" : "none", integer_vs_fake,
                quantized_vs_float);
    EXPECT_LT(integer_vs_fake, 1e-5);
    EXPECT_GT(quantized_vs_float, 1e-4);  // the einsum sites really were quantized
    ASSERT_NE(report.find("/einsum0"), nullptr);
    EXPECT_EQ(report.find("/einsum0")->mode, "dynamic-range");
    EXPECT_EQ(report.find("/einsum1")->mode, "dynamic-range");
    EXPECT_EQ(report.find("query/dot_general0")->mode, "float");  // op_names: [einsum] selects only these
    EXPECT_NE(report.find("/einsum1")->note.find(tile ? "lhs scale [3, 8, 2]" : "lhs scale [3, 8, 1]"), std::string::npos)
        << report.find("/einsum1")->note;
  }
}

// The per-group integer product is Qwix's einsum layout on the whole [G, M, K] operand.
TEST(ActivationProduct, DynamicRangeUsesQwixEinsumLayout) {
  Scores m(random_tensor({2, 5, 8}, 21));
  const TensorF x = random_tensor({2, 4, 8}, 22);
  quantize_model(m, PtqProvider({einsum_rule<rules::QuantizationRule>(QType::kInt4, std::int64_t{4})}), {x});
  const TensorF want = batched_reference(fake_quantize(x, operand_how(QType::kInt4, 4)),
                                         fake_quantize(m.y().value(), operand_how(QType::kInt4, 4)));
  EXPECT_LT(max_rel_diff(m(nn::Var(x)).value(), want), 1e-5);
}

TEST(ActivationProduct, StaticRangeFreezesCalibratedOperandScales) {
  Scores m(random_tensor({2, 5, 8}, 31));
  const Batches batches{random_tensor({2, 4, 8}, 32), random_tensor({2, 4, 8}, 33, -2, 2), random_tensor({2, 4, 8}, 34)};
  auto rule = einsum_rule<rules::QuantizationRule>(QType::kInt8);
  rule.act_static_scale = true;  // act_batch_axes [0]: one scale per row position, averaged over G
  const auto report = quantize_model(m, PtqProvider({rule}), batches);
  EXPECT_EQ(report.find("/einsum0")->mode, "static-range");
  EXPECT_NE(report.find("/einsum0")->note.find("lhs scale [1, 4, 1], rhs scale [1, 5, 1]"), std::string::npos)
      << report.find("/einsum0")->note;
  // The statistics: the cumulative mean over batches of the per-batch mean over G of each row's absmax.
  const CalibrationStats stats = calibrate_model(m, quantized_sites(m), batches);
  ASSERT_TRUE(stats.count("/einsum0_lhs") && stats.count("/einsum0_rhs"));
  TensorF absmax({1, 4, 1});
  for (const auto& b : batches)
    for (std::int64_t g = 0; g < 2; ++g)
      for (std::int64_t r = 0; r < 4; ++r) {
        float mx = 0;
        for (std::int64_t k = 0; k < 8; ++k) mx = std::max(mx, std::fabs(b[(g * 4 + r) * 8 + k]));
        absmax[r] += mx / 2.0f / 3.0f;
      }
  EXPECT_EQ(stats.at("/einsum0_lhs").hi.count(), 3);
  EXPECT_LT(max_rel_diff(stats.at("/einsum0_lhs").hi.value(), absmax), 1e-6);
  // The forward quantizes with the frozen scale, whatever the batch's own range.
  const TensorF x = random_tensor({2, 4, 8}, 35, -3, 3);
  TensorF xq(x.shape());
  for (std::int64_t i = 0; i < x.size(); ++i) {
    const float s = absmax[(i / 8) % 4] / 127.5f;
    xq[i] = static_cast<float>(std::clamp(std::nearbyint(x[i] / s), -128.0f, 127.0f) * s);
  }
  const QuantizedParams params = quantize_params({}, m, stats);
  const TensorF y_scale = params.act_scales.at("/einsum0_rhs").scale;
  TensorF yq(m.y().value().shape());
  for (std::int64_t i = 0; i < yq.size(); ++i) {
    const float s = y_scale[(i / 8) % 5];
    yq[i] = static_cast<float>(std::clamp(std::nearbyint(m.y().value()[i] / s), -128.0f, 127.0f) * s);
  }
  EXPECT_LT(max_rel_diff(m(nn::Var(x)).value(), batched_reference(xq, yq)), 1e-5);
}

TEST(ActivationProduct, StaticRangeOverBatchAndRowAxesIsPerTensor) {
  nn::Rng rng(4);
  nn::SelfAttention attention(8, rng);
  auto rule = einsum_rule<rules::QuantizationRule>(QType::kInt8, std::int64_t{4});
  rule.act_static_scale = true;
  rule.act_batch_axes = {0, 1};
  const auto report =
      quantize_model(attention, PtqProvider({rule}), {random_tensor({2, 8, 8}, 42), random_tensor({3, 8, 8}, 43)});
  EXPECT_NE(report.find("/einsum1")->note.find("lhs scale [1, 1, 2], rhs scale [1, 1, 2]"), std::string::npos)
      << report.find("/einsum1")->note;
  EXPECT_EQ(attention(nn::Var(random_tensor({5, 8, 8}, 44))).shape(), (Shape{5, 8, 8}));  // any batch size
}

// QAT: the straight-through gradients of both operands, zeroed where the operand was clipped
// (absmax,0.5 clips: Qwix's mask), computed with the float residuals.
TEST(ActivationProduct, QatGradientsAreMaskedStraightThrough) {
  Scores m(random_tensor({2, 5, 8}, 51));
  nn::Var x(random_tensor({2, 4, 8}, 52), true);
  auto rule = einsum_rule<rules::QtRule>(QType::kInt8);
  rule.act_calibration_method = "absmax,0.5";
  quantize_model(m, QtProvider({rule}), {x.value()});
  const TensorF r = random_tensor({2, 4, 5}, 53);
  nn::Context ctx(m.interceptor().get(), true);
  nn::backward(m.forward(ctx, x), r);
  const TensorF& a = x.value();
  const TensorF& b = m.y().value();
  auto mask = [](const TensorF& t) {  // 1 where |t| <= half its row's absmax
    TensorF out(t.shape());
    const std::int64_t K = t.shape()[2];
    for (std::int64_t row = 0; row < t.size() / K; ++row) {
      float mx = 0;
      for (std::int64_t k = 0; k < K; ++k) mx = std::max(mx, std::fabs(t[row * K + k]));
      for (std::int64_t k = 0; k < K; ++k) out[row * K + k] = std::fabs(t[row * K + k]) <= 0.5f * mx * (1 + 1e-6f) ? 1.0f : 0.0f;
    }
    return out;
  };
  const TensorF ma = mask(a), mb = mask(b);
  TensorF da({2, 4, 8}), db({2, 5, 8});
  for (std::int64_t g = 0; g < 2; ++g)
    for (std::int64_t i = 0; i < 4; ++i)
      for (std::int64_t j = 0; j < 5; ++j)
        for (std::int64_t k = 0; k < 8; ++k) {
          const float rg = r[(g * 4 + i) * 5 + j];
          da[(g * 4 + i) * 8 + k] += rg * b[(g * 5 + j) * 8 + k];
          db[(g * 5 + j) * 8 + k] += rg * a[(g * 4 + i) * 8 + k];
        }
  int zeros = 0;
  for (std::int64_t i = 0; i < da.size(); ++i) zeros += ma[i] == 0.0f, da[i] *= ma[i];
  for (std::int64_t i = 0; i < db.size(); ++i) db[i] *= mb[i];
  EXPECT_GT(zeros, 10);
  EXPECT_LT(max_rel_diff(x.grad(), da), 1e-5);
  EXPECT_LT(max_rel_diff(m.y().grad(), db), 1e-5);
  for (std::int64_t i = 0; i < da.size(); ++i)
    if (ma[i] == 0.0f) {
      EXPECT_EQ(x.grad()[i], 0.0f);
    }
}

// QAT static range: each operand's statistics update (cumulative mean) only while training.
TEST(ActivationProduct, QatStaticOperandScalesUpdateOnlyWhileTraining) {
  Scores m(random_tensor({2, 5, 8}, 56));
  auto rule = einsum_rule<rules::QtRule>(QType::kInt8);
  rule.act_static_scale = true;
  quantize_model(m, QtProvider({rule}), {random_tensor({2, 4, 8}, 57)});
  const auto& st = dynamic_cast<detail::QtInterceptor&>(*m.interceptor()).sites().at("/einsum0");
  for (bool training : {true, true, false}) {
    nn::Context ctx(m.interceptor().get(), training);
    m.forward(ctx, nn::Var(random_tensor({2, 4, 8}, 58)));
  }
  EXPECT_EQ(st.operand_stats[0].hi.count(), 2);
  EXPECT_EQ(st.operand_stats[1].hi.count(), 2);
  EXPECT_EQ(st.operand_stats[0].hi.value().shape(), (Shape{1, 4, 1}));
}

// QT on a product of two activations: both backward products in integers on the forward codes,
// per group g exactly QT's per-tile scheme (the gradient scale-shifted and quantized per row once
// per K tile, times the other operand's codes), and within that rounding's bound of the float
// product of the dequantized operands — which a backward without gradient quantization, or QAT's
// float straight-through product, would match instead of the integer scheme.
TEST(ActivationProduct, QtBackwardIsTheIntegerPerTileScheme) {
  constexpr std::int64_t G = 2, M = 4, N = 5, K = 8;
  Scores m(random_tensor({G, N, K}, 61));
  nn::Var x(random_tensor({G, M, K}, 62), true);
  auto rule = einsum_rule<rules::QtRule>(QType::kInt8, std::int64_t{4});
  rule.bwd_qtype = QType::kInt8;
  const auto report = quantize_model(m, QtProvider({rule}), {x.value()});
  EXPECT_EQ(report.find("/einsum0")->mode, "qt");
  const TensorF r = random_tensor({G, M, N}, 63);
  nn::Context ctx(m.interceptor().get(), true);
  nn::backward(m.forward(ctx, x), r);
  const auto slice = [](const TensorF& t, std::int64_t g) {
    const std::int64_t rows = t.shape()[1], cols = t.shape()[2];
    TensorF out({rows, cols});
    std::copy_n(t.data() + g * rows * cols, rows * cols, out.data());
    return out;
  };
  // Per group the operands carry Qwix's einsum layout: a scale per row and K tile of 4.
  const HowToQuantize per_group{QType::kInt8, {0}, {{1, std::int64_t{4}}}, "absmax"};
  for (std::int64_t g = 0; g < G; ++g) {
    SCOPED_TRACE(::testing::Message() << "group " << g);
    const TensorF rg = slice(r, g);
    const Check dx = check_backward(rg, quantize(slice(m.y().value(), g), per_group), slice(x.grad(), g));
    const Check dy = check_backward(detail::transpose2(rg), quantize(slice(x.value(), g), per_group),
                                    slice(m.y().grad(), g));
    std::printf("group %lld: dlhs exact/ulps %.2g, err/bound %.3f, rel %.4f | drhs exact/ulps %.2g, err/bound %.3f\n",
                static_cast<long long>(g), dx.exact_ratio, dx.bound_ratio, dx.float_rel, dy.exact_ratio, dy.bound_ratio);
    EXPECT_LE(dx.exact_ratio, 1.0);
    EXPECT_LE(dy.exact_ratio, 1.0);
    EXPECT_LE(dx.bound_ratio, 1.0);
    EXPECT_LE(dy.bound_ratio, 1.0);
    EXPECT_GT(dx.float_rel, 0.0);  // not the float product of the dequantized operands
  }
}

// ---- errors: site and rule named, the model left as it was ------------------------------------
template <class Provider>
void expect_rejected(const Provider& provider, const Batches& batches, std::string_view want) {
  nn::Rng rng(7);
  nn::SelfAttention attention(8, rng);
  try {
    quantize_model(attention, provider, batches);
    ADD_FAILURE() << "no error; wanted " << want;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
  EXPECT_EQ(attention.interceptor(), nullptr);  // all or nothing
}

TEST(ActivationProduct, ChannelwiseContractingAxisIsAnError) {
  const Batches x{random_tensor({2, 8, 8}, 71)};
  rules::QuantizationRule skip;
  skip.module_path = "query";
  auto one = einsum_rule<rules::QuantizationRule>(QType::kInt8, std::int64_t{1});  // tile 1 = channelwise on K
  expect_rejected(PtqProvider({skip, one}), x, "site /einsum0 (rule 1): tile_size 1 makes the contracting axis 2 (size 8) channelwise");
  auto frac = einsum_rule<rules::QtRule>(QType::kInt8, 0.125);  // 8 · 0.125 = 1
  expect_rejected(QtProvider({frac}), x, "site /einsum0 (rule 0): tile_size 0.125 makes the contracting axis 2");
  auto axes = einsum_rule<rules::QuantizationRule>(QType::kInt8);
  axes.act_static_scale = true;
  axes.act_batch_axes = {0, 2};
  expect_rejected(PtqProvider({axes}), x, "site /einsum0 (rule 0): act_batch_axes holds axis 2");
  auto asym = einsum_rule<rules::QuantizationRule>(QType::kInt8);
  asym.act_calibration_method = "minmax";
  expect_rejected(PtqProvider({asym}), x, "site /einsum0 (rule 0): act_calibration_method 'minmax' is asymmetric");
}

TEST(ActivationProduct, NonFiniteCalibrationActivationNamesTheSite) {
  auto rule = einsum_rule<rules::QuantizationRule>(QType::kInt8);
  rule.act_static_scale = true;
  TensorF bad = random_tensor({2, 8, 8}, 81);
  bad[5] = std::nanf("");
  expect_rejected(PtqProvider({rule}), {random_tensor({2, 8, 8}, 82), bad}, "calibration batch 1:");
}

TEST(ActivationProduct, ActQtypeUnsetLeavesTheProductFloat) {
  nn::Rng rng(9);
  nn::SelfAttention attention(8, rng);
  rules::QuantizationRule r;
  r.op_names = {"einsum"};
  r.weight_qtype = QType::kInt8;
  const auto report = quantize_model(attention, PtqProvider({r}), {random_tensor({2, 8, 8}, 91)});
  EXPECT_EQ(report.find("/einsum0")->mode, "float");
  EXPECT_NE(report.find("/einsum0")->note.find("act_qtype unset"), std::string::npos);
}

}  // namespace
}  // namespace qforge::providers
