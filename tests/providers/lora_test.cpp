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
  EXPECT_EQ(report.sites[0].weight_scale_shape, (Shape{32, 1}));  // blocks of 64 along K = 64
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

TEST(Lora, QloraBaseIsTheDequantizedNf4Weight) {
  auto model = make_mlp();
  const TensorF x = random_tensor({3, 64}, 3);
  quantize_model(*model, LoraProvider({lora_rule(2, QType::kNf4)}), {x});
  // With B = 0 the output is the weight-only NF4 model: compare with PTQ's weight-only path.
  auto ptq = make_mlp();
  // LoRA blocks 64 along K where K allows (layers.0, K = 64) and one scale per row otherwise
  // (layers.2, K = 32).
  rules::QuantizationRule r0, r2;
  r0.module_path = "layers\\.0";
  r0.weight_qtype = QType::kNf4;
  r0.tile_size = std::int64_t{64};
  r2.module_path = "layers\\.2";
  r2.weight_qtype = QType::kNf4;
  quantize_model(*ptq, PtqProvider({r0, r2}), {x});
  const TensorF a = (*model)(nn::Var(x)).value(), b = (*ptq)(nn::Var(x)).value();
  for (std::int64_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5f * (1 + std::fabs(b[i])));
}

TEST(Lora, DoubleQuantizationShrinksScalesWithinTheirOwnStep) {
  TensorF scales({1000});
  nn::Rng rng(5);
  std::uniform_real_distribution<float> d(0.01f, 0.05f);
  for (auto& v : scales.vec()) v = d(rng);
  auto [back, bytes] = double_quantize_scales(scales);
  EXPECT_LT(bytes, 1000u * 4 / 3);  // ~8 bits per scale plus one float per 256
  double mean = 0;
  for (float v : scales.vec()) mean += v / 1000.0;
  double max_dev = 0;
  for (float v : scales.vec()) max_dev = std::max(max_dev, std::fabs(v - mean));
  // Each reconstructed scale is within half an int8 step of the block's centred absmax.
  for (std::int64_t i = 0; i < 1000; ++i) EXPECT_NEAR(back[i], scales[i], max_dev / 127.5 / 2 * 1.001 + 1e-9);
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
