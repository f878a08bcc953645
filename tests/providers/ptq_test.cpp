// PtqProvider over a model graph: the integer forward equals the fake-quantized float forward,
// rules resolve as Qwix's do, static scales come from calibration, quantize_params reproduces
// quantize_model, and errors leave the model unchanged.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "qforge/nn/zoo.hpp"
#include "qforge/providers/ptq.hpp"

namespace qforge::providers {
namespace {

using rules::QuantizationRule;

TensorF random_batch(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  TensorF t({rows, cols});
  nn::Rng rng(seed);
  std::uniform_real_distribution<float> d(0.0f, 1.0f);
  for (auto& v : t.vec()) v = d(rng);
  return t;
}

QuantizationRule rule(std::string path, std::optional<QType> w, std::optional<QType> a = std::nullopt) {
  QuantizationRule r;
  r.module_path = std::move(path);
  r.weight_qtype = w;
  r.act_qtype = a;
  return r;
}

// Relative closeness measured against the largest output: the integer path differs from the
// float product of dequantized operands only by float32 rounding of K-term sums (K <= 128 here:
// about K * 2^-24 relative), far inside 1e-5.
void expect_close(const TensorF& got, const TensorF& want, double rel = 1e-5) {
  ASSERT_EQ(got.shape(), want.shape());
  double scale = 0;
  for (float v : want.vec()) scale = std::max(scale, double(std::fabs(v)));
  for (std::int64_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], rel * scale) << "element " << i;
}

// The MLP forward computed by hand with fake-quantized operands (the QAT forward).
TensorF fake_quant_mlp(nn::Mlp& model, const TensorF& x, const std::function<TensorF(const TensorF&, int)>& fq_act,
                       const std::function<TensorF(const TensorF&, int)>& fq_w) {
  TensorF h = x;
  int layer = 0;
  for (const auto& [path, m] : model.named_modules()) {
    auto* lin = dynamic_cast<nn::Linear*>(m);
    if (!lin) continue;
    const TensorF a = fq_act(h, layer), w = fq_w(lin->weight().var.value(), layer);
    TensorF y({h.shape()[0], w.shape()[0]});
    for (std::int64_t r = 0; r < y.shape()[0]; ++r)
      for (std::int64_t n = 0; n < y.shape()[1]; ++n) {
        double acc = 0;
        for (std::int64_t k = 0; k < w.shape()[1]; ++k) acc += double(a.at(r, k)) * w.at(n, k);
        y.at(r, n) = static_cast<float>(acc + lin->bias()->var.value()[n]);
      }
    const bool last = layer == 2;
    if (!last)
      for (auto& v : y.vec()) v = std::max(v, 0.0f);
    h = y;
    ++layer;
  }
  return h;
}

std::unique_ptr<nn::Mlp> make_mlp(std::uint64_t seed = 1) {
  nn::Rng rng(seed);
  return std::make_unique<nn::Mlp>(std::vector<std::int64_t>{64, 48, 32, 10}, rng);
}

TEST(Ptq, DynamicRangeW8A8EqualsFakeQuantForward) {
  auto model = make_mlp();
  const TensorF x = random_batch(7, 64, 11);
  const auto report = quantize_model(*model, PtqProvider({rule("layers\\.[0-9]+", QType::kInt8, QType::kInt8)}), {x});
  ASSERT_EQ(report.sites.size(), 3u);
  EXPECT_EQ(report.sites[0].mode, "dynamic-range");
  EXPECT_EQ(report.sites[0].weight_scale_shape, (Shape{48, 1}));
  const TensorF got = (*model)(nn::Var(x)).value();
  const TensorF want = fake_quant_mlp(
      *model, x, [](const TensorF& a, int) { return fake_quantize(a, {QType::kInt8, {0}, {}, "absmax"}); },
      [](const TensorF& w, int) { return fake_quantize(w, {QType::kInt8, {0}, {}, "absmax"}); });
  expect_close(got, want);
}

TEST(Ptq, TiledW4A8AndWeightOnlyW4EqualFakeQuantForward) {
  for (bool weight_only : {false, true}) {
    SCOPED_TRACE(weight_only ? "weight-only" : "w4a8 tile 16");
    auto model = make_mlp();
    const TensorF x = random_batch(5, 64, 12);
    QuantizationRule r = rule(".*", QType::kInt4, weight_only ? std::nullopt : std::optional(QType::kInt8));
    r.tile_size = std::int64_t{16};
    const auto report = quantize_model(*model, PtqProvider({r}), {x});
    EXPECT_EQ(report.sites[0].weight_scale_shape, (Shape{48, 4}));
    const HowToQuantize wh{QType::kInt4, {0}, {{1, std::int64_t{16}}}, "absmax"};
    const HowToQuantize ah{QType::kInt8, {0}, {{1, std::int64_t{16}}}, "absmax"};
    const TensorF want = fake_quant_mlp(
        *model, x, [&](const TensorF& a, int) { return weight_only ? a : fake_quantize(a, ah); },
        [&](const TensorF& w, int) { return fake_quantize(w, wh); });
    expect_close((*model)(nn::Var(x)).value(), want);
  }
}

TEST(Ptq, StaticRangeUsesFrozenCalibratedScales) {
  auto model = make_mlp();
  const Batches calib = {random_batch(8, 64, 21), random_batch(8, 64, 22), random_batch(8, 64, 23)};
  QuantizationRule r = rule(".*", QType::kInt8, QType::kInt8);
  r.act_static_scale = true;
  const auto report = quantize_model(*model, PtqProvider({r}), calib);
  EXPECT_EQ(report.sites[0].mode, "static-range");
  // First layer: the frozen absmax is the mean over batches of the mean over rows of each row's
  // absmax (Qwix's SimpleMovingAverage over act_batch_axes).
  double mean_absmax = 0;
  for (const auto& b : calib)
    for (std::int64_t r0 = 0; r0 < 8; ++r0) {
      float m = 0;
      for (std::int64_t k = 0; k < 64; ++k) m = std::max(m, std::fabs(b.at(r0, k)));
      mean_absmax += m / 24.0;
    }
  const auto& site = dynamic_cast<detail::PtqInterceptor&>(*model->interceptor()).sites().at("layers.0/dot_general0");
  ASSERT_TRUE(site.act_scale);
  EXPECT_NEAR(site.act_scale->scale[0], mean_absmax / 127.5, 1e-6);
  // The forward uses that scale for every batch (values above it saturate).
  const TensorF x = random_batch(4, 64, 24);
  const float s0 = site.act_scale->scale[0];
  const TensorF got = (*model)(nn::Var(x)).value();
  const TensorF first = fake_quant_mlp(*model, x, [&](const TensorF& a, int layer) {
    const auto& st = dynamic_cast<detail::PtqInterceptor&>(*model->interceptor()).sites();
    const char* ids[] = {"layers.0/dot_general0", "layers.2/dot_general0", "layers.4/dot_general0"};
    const auto& sc = st.at(ids[layer]).act_scale->scale;
    return dequantize(quantize_with_scale(a, {QType::kInt8, {}, {}, "absmax"}, {TensorF({1, 1}, {sc[0]}), std::nullopt}));
  }, [](const TensorF& w, int) { return fake_quantize(w, {QType::kInt8, {0}, {}, "absmax"}); });
  expect_close(got, first);
  EXPECT_GT(s0, 0.0f);
}

TEST(Ptq, RulesFirstMatchWinsUnusedAreListedAndUnsetWeightStaysFloat) {
  auto model = make_mlp();
  auto reference = make_mlp();
  const TensorF x = random_batch(3, 64, 31);
  const auto report = quantize_model(*model,
                                     PtqProvider({rule("layers\\.0", std::nullopt, QType::kInt8),  // float
                                                  rule("layers\\.[0-9]", QType::kInt8),
                                                  rule("layers\\.2", QType::kInt4),              // shadowed
                                                  rule("LAYERS.*", QType::kInt4)}),
                                     {x});
  EXPECT_EQ(report.sites[0].rule_index, 0);
  EXPECT_EQ(report.sites[0].mode, "float");
  EXPECT_EQ(report.sites[1].rule_index, 1);
  EXPECT_EQ(report.sites[1].weight_qtype, "int8");
  EXPECT_EQ(report.unused_rules, (std::vector<int>{2, 3}));
  // Only layers.0 in float: quantizing nothing must reproduce the float model bit for bit.
  auto plain = make_mlp();
  quantize_model(*plain, PtqProvider({rule(".*", std::nullopt)}), {x});
  const TensorF a = (*plain)(nn::Var(x)).value(), b = (*reference)(nn::Var(x)).value();
  for (std::int64_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]);
}

TEST(Ptq, ABadRuleIsAnErrorAndLeavesTheModelUnchanged) {
  auto model = make_mlp();
  const TensorF x = random_batch(2, 64, 41);
  const TensorF before = (*model)(nn::Var(x)).value();
  QuantizationRule bad = rule(".*", QType::kInt8);
  bad.act_static_scale = true;  // without act_qtype
  try {
    quantize_model(*model, PtqProvider({rule("layers\\.0", QType::kInt8), bad}), {x});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rule 1: act_static_scale is set but act_qtype is not"), std::string::npos) << e.what();
  }
  EXPECT_EQ(model->interceptor(), nullptr);
  QuantizationRule bad_tile = rule(".*", QType::kInt4);
  bad_tile.tile_size = std::int64_t{20};  // does not divide 64
  EXPECT_THROW(quantize_model(*model, PtqProvider({bad_tile}), {x}), Error);
  EXPECT_EQ(model->interceptor(), nullptr);
  const TensorF after = (*model)(nn::Var(x)).value();
  for (std::int64_t i = 0; i < before.size(); ++i) EXPECT_EQ(before[i], after[i]);
}

TEST(Ptq, QuantizeParamsOfflineEqualsQuantizeModel) {
  auto model = make_mlp();
  const Batches calib = {random_batch(6, 64, 51), random_batch(6, 64, 52)};
  QuantizationRule r = rule(".*", QType::kInt8, QType::kInt8);
  r.act_static_scale = true;
  quantize_model(*model, PtqProvider({r}), calib);
  // Offline: sites from the structure, statistics from calibration, float parameters from a map.
  auto fresh = make_mlp();
  std::vector<SiteInfo> sites = discover_sites(*fresh, calib[0]);
  resolve_rules(sites, std::vector<QuantizationRule>{r});
  const CalibrationStats stats = calibrate_model(*fresh, sites, calib);
  std::map<std::string, TensorF> fp;
  for (auto& [name, p] : fresh->named_parameters()) fp.emplace(name, p->var.value());
  const QuantizedParams params = quantize_params(fp, sites, stats);
  const auto& prepared = dynamic_cast<detail::PtqInterceptor&>(*model->interceptor()).sites();
  for (const auto& [id, p] : prepared) {
    const QArray& offline = params.weights.at(p.info.weight_name);
    EXPECT_TRUE(std::equal(offline.storage().begin(), offline.storage().end(), p.weight->storage().begin())) << id;
    EXPECT_EQ(params.act_scales.at(id).scale[0], p.act_scale->scale[0]) << id;
  }
  fp.erase("layers.2.weight");
  EXPECT_THROW(quantize_params(fp, sites, stats), Error);
}

TEST(Ptq, ConvolutionGetsPerOutputChannelScalesAndPerImageActivations) {
  nn::Rng rng(3);
  nn::DigitsCnn model(rng);
  const TensorF x = random_batch(3, 64, 61);
  const auto report = quantize_model(model, PtqProvider({rule(".*", QType::kInt8, QType::kInt8)}), {x});
  ASSERT_EQ(report.sites.size(), 3u);
  EXPECT_EQ(report.sites[0].op_name, "conv_general_dilated");
  EXPECT_EQ(report.sites[0].weight_scale_shape, (Shape{16, 1}));
  EXPECT_EQ(report.sites[1].weight_scale_shape, (Shape{32, 1}));
  // Quantized logits stay close to float ones (int8 everywhere: a few percent at most).
  nn::Rng rng2(3);
  nn::DigitsCnn reference(rng2);
  const TensorF q = model(nn::Var(x)).value(), f = reference(nn::Var(x)).value();
  double err = 0, ref = 0;
  for (std::int64_t i = 0; i < q.size(); ++i) {
    err += (q[i] - f[i]) * (q[i] - f[i]);
    ref += f[i] * f[i];
  }
  EXPECT_LT(std::sqrt(err / ref), 0.05);
}

TEST(Ptq, ReferenceAndCpuBackendsAgree) {
  const TensorF x = random_batch(9, 64, 71);
  TensorF outputs[2];
  const char* backends[] = {"reference", "cpu"};
  for (int i = 0; i < 2; ++i) {
    auto model = make_mlp();
    quantize_model(*model, PtqProvider({rule(".*", QType::kInt8, QType::kInt8)}), {x});
    ::setenv("QFORGE_BACKEND", backends[i], 1);
    try {
      outputs[i] = (*model)(nn::Var(x)).value();
    } catch (const Error& e) {
      ::unsetenv("QFORGE_BACKEND");
      GTEST_SKIP() << "backend " << backends[i] << " unavailable: " << e.what();
    }
    ::unsetenv("QFORGE_BACKEND");
  }
  // Integer products are exact on both; the float GEMM for biases differs only in rounding.
  expect_close(outputs[1], outputs[0], 1e-6);
}

}  // namespace
}  // namespace qforge::providers
