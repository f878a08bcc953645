// Bad input to the providers — tiles that do not divide a weight, calibration data of the wrong
// shape, NaN in calibration or training, LoRA rules on sites without a weight, LoRA applied
// twice — is an error that names the site and the rule, and leaves the model as it was.
// Also: all-zero weights, and quantize_params against a quantized model's structure.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "qforge/nn/zoo.hpp"
#include "qforge/providers/lora.hpp"
#include "qforge/providers/ptq.hpp"
#include "qforge/providers/qt.hpp"

namespace qforge::providers {
namespace {

TensorF random_batch(Shape shape, std::uint64_t seed) {
  TensorF t(std::move(shape));
  nn::Rng rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  for (auto& v : t.vec()) v = d(rng);
  return t;
}

std::unique_ptr<nn::Mlp> make_mlp(std::uint64_t seed = 1) {
  nn::Rng rng(seed);
  return std::make_unique<nn::Mlp>(std::vector<std::int64_t>{64, 48, 32, 10}, rng);
}

TensorF& param(nn::Module& m, std::string_view path) {
  for (auto& [name, p] : m.named_parameters())
    if (name == path) return p->var.value();
  throw std::logic_error("no parameter " + std::string(path));
}

template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_contains(const std::string& text, std::string_view part) {
  EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

rules::QuantizationRule ptq_rule(std::string path, QType w, std::optional<QType> a = std::nullopt) {
  rules::QuantizationRule r;
  r.module_path = std::move(path);
  r.weight_qtype = w;
  r.act_qtype = a;
  return r;
}

TEST(ProviderErrors, TileThatDoesNotDivideAWeightNamesSiteAndRule) {
  auto model = make_mlp();
  const TensorF x = random_batch({4, 64}, 1);
  rules::QuantizationRule first = ptq_rule("layers\\.0", QType::kInt4);
  first.tile_size = std::int64_t{64};  // K = 64: fine
  rules::QuantizationRule rest = ptq_rule(".*", QType::kInt4);
  rest.tile_size = std::int64_t{64};  // layers.2 has K = 48
  const std::string e = error_of([&] { quantize_model(*model, PtqProvider({first, rest}), {x}); });
  expect_contains(e, "site layers.2/dot_general0 (rule 1)");
  expect_contains(e, "tile 64 does not divide axis 1 of size 48");
  EXPECT_EQ(model->interceptor(), nullptr);
  // The same for QAT and QLoRA.
  rules::QtRule qt;
  qt.weight_qtype = QType::kInt4;
  qt.tile_size = std::int64_t{64};
  expect_contains(error_of([&] { quantize_model(*model, QtProvider({qt}), {x}); }), "site layers.2/dot_general0 (rule 0)");
  rules::LoraRule lora;
  lora.rank = 2;
  lora.weight_qtype = QType::kInt4;  // a QArray base, tiled along K
  lora.tile_size = std::int64_t{64};
  expect_contains(error_of([&] { quantize_model(*model, LoraProvider({lora}), {x}); }), "site layers.2/dot_general0 (rule 0)");
  // An NF4 base uses bitsandbytes' flattened blocks: any power of two in [32, 4096] works, others do not.
  lora.weight_qtype = QType::kNf4;
  lora.tile_size = std::int64_t{48};
  expect_contains(error_of([&] { quantize_model(*model, LoraProvider({lora}), {x}); }),
                  "site layers.0/dot_general0 (rule 0): bnb4 quantize: blocksize 48 is not a power of two");
  EXPECT_EQ(model->interceptor(), nullptr);
  for (auto& [name, p] : model->named_parameters()) EXPECT_TRUE(p->trainable) << name;
}

TEST(ProviderErrors, CalibrationBatchOfTheWrongShape) {
  auto model = make_mlp();
  rules::QuantizationRule r = ptq_rule(".*", QType::kInt8, QType::kInt8);
  r.act_static_scale = true;
  const std::string e =
      error_of([&] { quantize_model(*model, PtqProvider({r}), {random_batch({8, 64}, 2), random_batch({8, 63}, 3)}); });
  EXPECT_EQ(e, "calibration batch 1 has shape [8, 63], but batch 0 has [8, 64] (only the leading batch axis may differ)");
  // A different batch size is fine.
  EXPECT_NO_THROW(quantize_model(*model, PtqProvider({r}), {random_batch({8, 64}, 2), random_batch({3, 64}, 3)}));
}

TEST(ProviderErrors, NanInCalibrationDataNamesTheSite) {
  auto model = make_mlp();
  rules::QuantizationRule r = ptq_rule(".*", QType::kInt8, QType::kInt8);
  r.act_static_scale = true;
  TensorF bad = random_batch({4, 64}, 4);
  bad.at(2, 5) = std::numeric_limits<float>::quiet_NaN();
  const std::string e = error_of([&] { quantize_model(*model, PtqProvider({r}), {random_batch({4, 64}, 5), bad}); });
  expect_contains(e, "calibration batch 1: site layers.0/dot_general0 (rule 0): calibration activation holds a non-finite value");
  expect_contains(e, "flat index 133");
  EXPECT_EQ(model->interceptor(), nullptr);
}

TEST(ProviderErrors, NanDuringQuantizedTrainingNamesTheSite) {
  auto model = make_mlp();
  rules::QtRule r;
  r.module_path = "layers\\.[24]";
  r.weight_qtype = QType::kInt8;
  r.act_qtype = QType::kInt8;
  r.bwd_qtype = QType::kInt8;
  quantize_model(*model, QtProvider({r}), {random_batch({4, 64}, 6)});
  // A weight that diverged: the first quantized site that sees it reports it.
  param(*model, "layers.2.weight")[7] = std::numeric_limits<float>::infinity();
  expect_contains(error_of([&] { (*model)(nn::Var(random_batch({4, 64}, 7)), true); }),
                  "site layers.2/dot_general0 (rule 0): the weight holds a non-finite value (inf) at flat index 7");
  // A gradient that diverged.
  auto fresh = make_mlp();
  quantize_model(*fresh, QtProvider({r}), {random_batch({4, 64}, 6)});
  const nn::Var y = (*fresh)(nn::Var(random_batch({4, 64}, 8)), true);
  TensorF g(y.shape(), 1.0f);
  g[3] = std::numeric_limits<float>::quiet_NaN();
  expect_contains(error_of([&] { nn::backward(y, g); }), "site layers.4/dot_general0 (rule 0): the incoming gradient holds a non-finite value");
}

TEST(ProviderErrors, LoraRuleOnAProductOfActivationsIsTheWrongOpKind) {
  nn::Rng rng(3);
  nn::SelfAttention attention(8, rng);
  const TensorF x = random_batch({2, 5, 8}, 9);
  rules::LoraRule any;
  any.rank = 2;
  const std::string e = error_of([&] { quantize_model(attention, LoraProvider({any}), {x}); });
  expect_contains(e, "site /einsum0 (rule 0): a LoRA rule matched a einsum site without a weight matrix");
  EXPECT_EQ(attention.interceptor(), nullptr);
  EXPECT_EQ(attention.named_parameters().size(), 8u);  // nothing added
  rules::LoraRule linear_only = any;
  linear_only.op_names = {"dot_general"};
  const auto report = quantize_model(attention, LoraProvider({linear_only}), {x});
  EXPECT_EQ(attention.named_parameters().size(), 16u);  // four A/B pairs
  EXPECT_EQ(report.sites.size(), 6u);
}

TEST(ProviderErrors, LoraAppliedTwiceIsRefusedBeforeAnythingChanges) {
  auto model = make_mlp();
  const TensorF x = random_batch({4, 64}, 10);
  rules::LoraRule r;
  r.rank = 4;
  quantize_model(*model, LoraProvider({r}), {x});
  const auto* first = model->interceptor().get();
  const std::size_t params = model->named_parameters().size();
  expect_contains(error_of([&] { quantize_model(*model, LoraProvider({r}), {x}); }),
                  "parameter 'layers.0.weight_lora_a' already exists");
  EXPECT_EQ(model->interceptor().get(), first);
  EXPECT_EQ(model->named_parameters().size(), params);
}

// All-zero weights: scale guarded (no NaN), codes zero, the site outputs exactly the bias, and
// the report shows an exact quantization (zero error, SQNR +inf).
TEST(ProviderErrors, AllZeroWeightsQuantizeToExactZeros) {
  for (QType t : {QType::kInt8, QType::kInt4}) {
    SCOPED_TRACE(std::string(to_string(t)));
    auto model = make_mlp();
    TensorF& w = param(*model, "layers.0.weight");
    std::fill(w.vec().begin(), w.vec().end(), 0.0f);
    const TensorF x = random_batch({3, 64}, 11);
    const TensorF before = (*model)(nn::Var(x)).value();
    const auto report = quantize_model(*model, PtqProvider({ptq_rule("layers\\.0", t, QType::kInt8)}), {x});
    const auto& site = report.sites.at(0);
    EXPECT_EQ(site.weight_error.mse, 0.0);
    EXPECT_EQ(site.weight_error.relative, 0.0);
    EXPECT_TRUE(std::isinf(site.weight_error.sqnr_db));
    const TensorF after = (*model)(nn::Var(x)).value();
    // layers.0 is exact (0 · anything = 0), the other layers run in float: identical outputs.
    for (std::int64_t i = 0; i < after.size(); ++i) ASSERT_EQ(after[i], before[i]) << i;
  }
  auto model = make_mlp();
  TensorF& w = param(*model, "layers.2.weight");
  std::fill(w.vec().begin(), w.vec().end(), 0.0f);
  rules::LoraRule q;
  q.rank = 2;
  q.weight_qtype = QType::kNf4;
  const TensorF x = random_batch({3, 64}, 12);
  quantize_model(*model, LoraProvider({q}, {0, true, 64}), {x});
  const nn::Var y = (*model)(nn::Var(x));  // kept alive: a range-for over a temporary's member dangles
  for (float v : y.value().vec()) ASSERT_TRUE(std::isfinite(v));
}

// quantize_params(fp, quantized_model, stats): new float weights quantized offline by the model's
// rules, installed, give the same model as quantizing those weights from the start.
TEST(ProviderErrors, QuantizeParamsAgainstAQuantizedModel) {
  const Batches calib = {random_batch({6, 64}, 13), random_batch({6, 64}, 14)};
  rules::QuantizationRule r = ptq_rule(".*", QType::kInt8, QType::kInt8);
  r.act_static_scale = true;
  auto model = make_mlp(1);
  quantize_model(*model, PtqProvider({r}), calib);
  auto other = make_mlp(2);  // "a checkpoint trained elsewhere"
  std::map<std::string, TensorF> fp;
  for (auto& [name, p] : other->named_parameters()) fp.emplace(name, p->var.value());
  const CalibrationStats stats = calibrate_model(*other, quantized_sites(*model), calib);
  const QuantizedParams params = quantize_params(fp, *model, stats);
  EXPECT_EQ(params.weights.size(), 3u);
  EXPECT_EQ(params.act_scales.size(), 3u);
  install_quantized(*model, quantized_sites(*model), params);
  quantize_model(*other, PtqProvider({r}), calib);
  const auto& a = dynamic_cast<detail::PtqInterceptor&>(*model->interceptor()).sites();
  const auto& b = dynamic_cast<detail::PtqInterceptor&>(*other->interceptor()).sites();
  for (const auto& [id, site] : a) {
    SCOPED_TRACE(id);
    EXPECT_TRUE(std::equal(site.weight->storage().begin(), site.weight->storage().end(), b.at(id).weight->storage().begin()));
    EXPECT_EQ(site.act_scale->scale.vec(), b.at(id).act_scale->scale.vec());
  }
  // Missing pieces are errors naming the site.
  QuantizedParams partial = params;
  partial.act_scales.erase("layers.2/dot_general0");
  expect_contains(error_of([&] { install_quantized(*model, quantized_sites(*model), partial); }),
                  "site layers.2/dot_general0 (rule 0) needs a static activation scale");
  auto plain = make_mlp();
  expect_contains(error_of([&] { quantize_params(fp, *plain, stats); }), "not quantized by a PtqProvider");
}

}  // namespace
}  // namespace qforge::providers
