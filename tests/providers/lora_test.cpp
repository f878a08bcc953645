// LoraProvider: adapters start as a no-op, only adapters train, QLoRA bases are quantized once
// (optionally with double-quantized scales), and bad rules change nothing.
#include <gtest/gtest.h>

#include <cmath>

#include "qforge/nn/zoo.hpp"
#include "qforge/providers/lora.hpp"

namespace qforge::providers {
namespace {

rules::LoraRule lora_rule(int rank, std::optional<QType> base = std::nullopt) {
  rules::LoraRule r;
  r.module_path = "layers\\.[0-9]+";
  r.rank = rank;
  r.alpha = 2.0f * static_cast<float>(rank);
  r.weight_qtype = base;
  return r;
}

TensorF random_tensor(Shape shape, std::uint64_t seed) {
  TensorF t(std::move(shape));
  nn::Rng rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (auto& v : t.vec()) v = d(rng);
  return t;
}

std::unique_ptr<nn::Mlp> make_mlp() {
  nn::Rng rng(4);
  return std::make_unique<nn::Mlp>(std::vector<std::int64_t>{64, 32, 10}, rng);
}

TEST(Lora, AdaptersStartAsANoOpAndUseThePeftLayout) {
  auto model = make_mlp(), reference = make_mlp();
  const TensorF x = random_tensor({5, 64}, 1);
  const auto report = quantize_model(*model, LoraProvider({lora_rule(4)}), {x});
  EXPECT_EQ(report.sites[0].mode, "lora");
  auto* a = model->parameter("layers.0.weight_lora_a");
  auto* b = model->parameter("layers.0.weight_lora_b");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->var.value().shape(), (Shape{4, 64}));
  EXPECT_EQ(b->var.value().shape(), (Shape{32, 4}));
  // B = 0, so the adapted model computes exactly what the float model does, up to summation order.
  const TensorF y = (*model)(nn::Var(x)).value(), want = (*reference)(nn::Var(x)).value();
  for (std::int64_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], want[i], 1e-5f * (1 + std::fabs(want[i])));
  std::vector<std::string> trainable;
  for (auto& [name, p] : model->named_parameters())
    if (p->trainable) trainable.push_back(name);
  EXPECT_EQ(trainable, (std::vector<std::string>{"layers.0.weight_lora_a", "layers.0.weight_lora_b",
                                                  "layers.2.weight_lora_a", "layers.2.weight_lora_b"}));
}

TEST(Lora, QloraTrainsOnlyTheAdaptersAndReducesTheLoss) {
  auto model = make_mlp();
  const TensorF x = random_tensor({64, 64}, 2);
  std::vector<int> labels;
  for (std::int64_t i = 0; i < 64; ++i) labels.push_back(static_cast<int>((x.at(i, 0) > 0) + 2 * (x.at(i, 1) > 0)));
  const auto report = quantize_model(*model, LoraProvider({lora_rule(8, QType::kNf4)}), {x});
  EXPECT_EQ(report.sites[0].mode, "qlora");
  EXPECT_EQ(report.sites[0].weight_scale_shape, (Shape{32}));  // 32·64 values in blocks of 64
  std::map<std::string, TensorF> frozen;
  for (auto& [name, p] : model->named_parameters())
    if (!p->trainable) frozen.emplace(name, p->var.value());
  nn::Adam opt(*model, 1e-2f);
  double first = 0, last = 0;
  for (int step = 0; step < 100; ++step) {
    nn::Var loss = nn::softmax_cross_entropy((*model)(nn::Var(x), true), labels);
    nn::backward(loss);
    opt.step();
    (step == 0 ? first : last) = loss.value()[0];
  }
  EXPECT_LT(last, 0.5 * first);
  for (auto& [name, value] : frozen) EXPECT_EQ(model->parameter(name)->var.value().vec(), value.vec()) << name << " changed";
}

// The NF4 base is bitsandbytes' Linear4bit weight: the layer computes x·dequant(bnb4(W))ᵀ + b
// while B = 0, and qlora_bases() returns the very tensors bitsandbytes would store.
TEST(Lora, QloraBaseIsTheBitsandbytesNf4Weight) {
  for (bool nested : {false, true}) {
    SCOPED_TRACE(nested ? "double quantization" : "plain absmax");
    auto model = make_mlp();
    const TensorF x = random_tensor({3, 64}, 3);
    const auto report = quantize_model(*model, LoraProvider({lora_rule(2, QType::kNf4)}, {7, nested, 64}), {x});
    const auto bases = qlora_bases(*model);
    ASSERT_EQ(bases.size(), 2u);
    for (const char* name : {"layers.0.weight", "layers.2.weight"}) {
      SCOPED_TRACE(name);
      const TensorF& w = model->parameter(name)->var.value();
      formats::Bnb4Options o;
      o.double_quant = nested;
      const formats::Bnb4Tensor want = formats::bnb4_quantize(w, o);
      const formats::Bnb4Tensor& got = bases.at(name);
      EXPECT_EQ(got.packed, want.packed);
      EXPECT_EQ(got.block_absmax(), want.block_absmax());
      EXPECT_EQ(got.nested, nested);
    }
    // layers.2 ([10, 32]): blocks of 64 span two rows of the flattened weight, as in bitsandbytes.
    EXPECT_EQ(report.sites[1].weight_scale_shape, (Shape{5}));
    // Layer 0 by hand: the float product with the dequantized base (B = 0: no adapter term).
    nn::Context ctx(model->interceptor().get(), false);
    nn::Linear* first = nullptr;
    for (auto& [path, m] : model->named_modules())
      if (path == "layers.0") first = dynamic_cast<nn::Linear*>(m);
    ASSERT_NE(first, nullptr);
    const TensorF y = first->forward(ctx, nn::Var(x)).value();
    const TensorF base = formats::bnb4_dequantize(bases.at("layers.0.weight"));
    for (std::int64_t i = 0; i < 3; ++i)
      for (std::int64_t n = 0; n < 32; ++n) {
        double acc = first->bias()->var.value()[n];
        for (std::int64_t k = 0; k < 64; ++k) acc += double(x.at(i, k)) * base.at(n, k);
        EXPECT_NEAR(y.at(i, n), acc, 1e-5 * (1 + std::fabs(acc)));
      }
  }
}

// bitsandbytes' nested quantization of the absmax values: each reconstructed scale lies within
// half of the dynamic map's widest gap (times the nested block's absmax) of the original.
TEST(Lora, DoubleQuantizationUsesTheDynamicMapAroundTheMean) {
  TensorF scales({1000});
  nn::Rng rng(5);
  std::uniform_real_distribution<float> d(0.01f, 0.05f);
  for (auto& v : scales.vec()) v = d(rng);
  auto [back, bytes] = double_quantize_scales(scales);
  EXPECT_EQ(bytes, 1000u + 4u * 4 + 4);  // a code per scale, an fp32 absmax per 256, the offset
  const auto& map = formats::bnb_dynamic_map();
  double gap = 0;
  for (std::size_t i = 1; i < map.size(); ++i) gap = std::max(gap, double(map[i] - map[i - 1]));
  double mean = 0;
  for (float v : scales.vec()) mean += v / 1000.0;
  for (std::int64_t b = 0; b < 1000; b += 256) {
    double amax = 0;
    for (std::int64_t i = b; i < std::min<std::int64_t>(1000, b + 256); ++i) amax = std::max(amax, std::fabs(scales[i] - mean));
    for (std::int64_t i = b; i < std::min<std::int64_t>(1000, b + 256); ++i)
      ASSERT_NEAR(back[i], scales[i], gap / 2 * amax * 1.001 + 1e-7) << i;
  }
  // Identical to bitsandbytes' own nesting of the absmax of a 4-bit tensor.
  TensorF w({1000 * 64});
  for (std::int64_t i = 0; i < w.size(); ++i) w[i] = scales[i / 64] * (i % 64 == 0 ? 1.0f : 0.5f);
  formats::Bnb4Options o;
  o.double_quant = true;
  const auto nested = formats::bnb4_quantize(w, o).block_absmax();
  for (std::int64_t i = 0; i < 1000; ++i) ASSERT_FLOAT_EQ(nested[static_cast<std::size_t>(i)], back[i]) << i;
}

TEST(Lora, BadRulesChangeNothing) {
  auto model = make_mlp();
  const TensorF x = random_tensor({2, 64}, 6);
  const auto before = model->named_parameters().size();
  EXPECT_THROW(quantize_model(*model, LoraProvider({lora_rule(0)}), {x}), Error);
  rules::LoraRule bad = lora_rule(4);
  bad.dropout = 1.5f;
  EXPECT_THROW(quantize_model(*model, LoraProvider({bad}), {x}), Error);
  EXPECT_EQ(model->named_parameters().size(), before);
  EXPECT_EQ(model->interceptor(), nullptr);
  for (auto& [name, p] : model->named_parameters()) EXPECT_TRUE(p->trainable) << name;
}

}  // namespace
}  // namespace qforge::providers
