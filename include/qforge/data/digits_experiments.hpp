// The digits accuracy experiments: the two reference models (MLP, CNN) trained in float on one
// seeded split, and the helpers that measure what quantization costs them. examples/03 prints
// the table in docs/accuracy.md from these; tests/providers/digits_*_test.cpp check its
// ordering on a shorter schedule.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "qforge/data/digits.hpp"
#include "qforge/nn/nn.hpp"
#include "qforge/nn/zoo.hpp"
#include "qforge/providers/lora.hpp"
#include "qforge/providers/ptq.hpp"
#include "qforge/providers/qt.hpp"

namespace qforge::data {

// The split every digits experiment uses (and the shipped models/digits_mlp was trained on).
constexpr std::uint64_t kSplitSeed = 2026;

enum class DigitsModel { kMlp, kCnn };

inline const char* model_name(DigitsModel m) { return m == DigitsModel::kMlp ? "MLP 64-128-64-10" : "CNN conv16-conv32/2-fc"; }

// Fixed initialisation seeds, so two models of the same kind start identical.
inline std::unique_ptr<nn::Module> make_digits_model(DigitsModel m, std::uint64_t init_seed = 7) {
  nn::Rng rng(init_seed);
  if (m == DigitsModel::kMlp) return std::make_unique<nn::Mlp>(std::vector<std::int64_t>{64, 128, 64, 10}, rng);
  return std::make_unique<nn::DigitsCnn>(rng);
}

// A fresh model of the same kind holding a copy of `src`'s parameters: each experiment starts
// from the same trained float model and cannot disturb the others.
inline std::unique_ptr<nn::Module> clone_digits_model(DigitsModel m, nn::Module& src) {
  auto dst = make_digits_model(m);
  auto from = src.named_parameters();
  auto to = dst->named_parameters();
  if (from.size() != to.size())
    throw_error(Status::kInvalidArgument, "clone: the source has {} parameters, a fresh {} has {}", from.size(),
                model_name(m), to.size());
  for (std::size_t i = 0; i < from.size(); ++i) {
    if (from[i].first != to[i].first)
      throw_error(Status::kInvalidArgument, "clone: parameter {} is '{}' in the source and '{}' in a fresh {}", i,
                  from[i].first, to[i].first, model_name(m));
    to[i].second->var.value() = from[i].second->var.value();
  }
  return dst;
}

// The schedule of one experiment run: full for the documented table, short for the tests.
struct Schedule {
  int fp32_epochs = 40;      // float training from scratch
  int finetune_epochs = 10;  // QAT and LoRA fine-tuning from the float model
  int qt_epochs = 40;        // QT trains from scratch, like the float model
  float lr = 2e-3f;
  float finetune_lr = 5e-4f;
  int lora_epochs = 20;  // adapting to the shifted digits
  float lora_lr = 2e-3f;
};

inline Schedule short_schedule() { return Schedule{15, 4, 15, 2e-3f, 5e-4f, 8, 2e-3f}; }

// The held-out shift the LoRA experiments adapt to: every image moved one pixel right and down.
constexpr int kShiftX = 1, kShiftY = 1;
inline DigitsSplit shifted(const DigitsSplit& s) {
  return {shift_images(s.train, kShiftX, kShiftY), shift_images(s.test, kShiftX, kShiftY)};
}

inline double train_float(nn::Module& model, const LabelledImages& train, int epochs, float lr, std::uint64_t seed = 0) {
  nn::TrainOptions opt;
  opt.epochs = epochs;
  opt.lr = lr;
  opt.seed = seed;
  return nn::train_classifier(model, train, opt);
}

// Both models trained in float on one schedule: the starting point of every experiment.
struct TrainedDigits {
  std::unique_ptr<nn::Module> models[2];
  double fp32_accuracy[2] = {0, 0};
  nn::Module& model(DigitsModel m) { return *models[static_cast<int>(m)]; }
  double fp32(DigitsModel m) const { return fp32_accuracy[static_cast<int>(m)]; }
};

inline TrainedDigits train_digits_models(const DigitsSplit& split, const Schedule& s) {
  TrainedDigits t;
  for (DigitsModel m : {DigitsModel::kMlp, DigitsModel::kCnn}) {
    const int i = static_cast<int>(m);
    t.models[i] = make_digits_model(m);
    train_float(*t.models[i], split.train, s.fp32_epochs, s.lr);
    t.fp32_accuracy[i] = nn::accuracy(*t.models[i], split.test);
  }
  return t;
}

// Calibration batches for static-range PTQ: the first `count` batches of `size` training images.
inline providers::Batches calibration_batches(const LabelledImages& train, int count = 8, std::int64_t size = 64) {
  providers::Batches out;
  for (int b = 0; b < count && (b + 1) * size <= train.size(); ++b) out.push_back(train.slice(b * size, (b + 1) * size).images);
  if (out.empty()) out.push_back(train.images);
  return out;
}

// One rule over every site: weight and activation qtypes, optional tile on the contracting axis.
inline rules::QuantizationRule rule_all(QType weight, std::optional<QType> act, std::optional<std::int64_t> tile = std::nullopt,
                                        bool act_static = false) {
  rules::QuantizationRule r;
  r.weight_qtype = weight;
  r.act_qtype = act;
  if (tile) r.tile_size = TileSize(*tile);
  r.act_static_scale = act_static;
  return r;
}

// Test accuracy of a copy of `trained` after quantize_model(PtqProvider(rules)).
inline double ptq_accuracy(DigitsModel m, nn::Module& trained, const std::vector<rules::QuantizationRule>& rule_list,
                           const DigitsSplit& split, rules::QuantizationReport* report = nullptr) {
  auto model = clone_digits_model(m, trained);
  auto r = providers::quantize_model(*model, providers::PtqProvider(rule_list), calibration_batches(split.train));
  if (report) *report = std::move(r);
  return nn::accuracy(*model, split.test);
}

// A tiled rule for every site. The CNN's first convolution contracts over 1·3·3 = 9 values,
// which no tile of 16 divides, so there it keeps one scale per output channel.
inline std::vector<rules::QuantizationRule> tiled_rules(DigitsModel m, QType weight, std::optional<QType> act, std::int64_t tile) {
  std::vector<rules::QuantizationRule> out;
  if (m == DigitsModel::kCnn) {
    out.push_back(rule_all(weight, act));
    out.back().module_path = "layers\\.0";
  }
  out.push_back(rule_all(weight, act, tile));
  return out;
}

// The inference rules a QAT/QT rule deploys with: its QuantizationRule part.
inline std::vector<rules::QuantizationRule> inference_rules(const std::vector<rules::QtRule>& qt) {
  std::vector<rules::QuantizationRule> out;
  for (const auto& r : qt) out.push_back(static_cast<const rules::QuantizationRule&>(r));
  return out;
}

inline rules::QtRule qt_rule_all(QType weight, std::optional<QType> act, bool act_static = false,
                                 std::optional<QType> bwd = std::nullopt) {
  rules::QtRule r;
  static_cast<rules::QuantizationRule&>(r) = rule_all(weight, act, std::nullopt, act_static);
  r.bwd_qtype = bwd;
  return r;
}

// Trains `model` (already holding its start weights) under QtProvider(rules), then deploys the
// trained float weights with PtqProvider on the same rules, so the accuracy is the integer
// model's, the one that would ship.
inline double train_qt_and_deploy(DigitsModel m, nn::Module& model, const std::vector<rules::QtRule>& rule_list,
                                  const DigitsSplit& split, int epochs, float lr, rules::QuantizationReport* report = nullptr) {
  auto r = providers::quantize_model(model, providers::QtProvider(rule_list), {split.train.slice(0, 64).images});
  if (report) *report = std::move(r);
  train_float(model, split.train, epochs, lr);
  return ptq_accuracy(m, model, inference_rules(rule_list), split);
}

// QAT: fine-tune a copy of the trained float model under fake quantization.
inline double qat_accuracy(DigitsModel m, nn::Module& trained, const std::vector<rules::QtRule>& rule_list,
                           const DigitsSplit& split, const Schedule& s, rules::QuantizationReport* report = nullptr) {
  auto model = clone_digits_model(m, trained);
  return train_qt_and_deploy(m, *model, rule_list, split, s.finetune_epochs, s.finetune_lr, report);
}

// QT: train a fresh model from the float model's initialisation, forward and backward quantized.
inline double qt_from_scratch_accuracy(DigitsModel m, const std::vector<rules::QtRule>& rule_list, const DigitsSplit& split,
                                       const Schedule& s, rules::QuantizationReport* report = nullptr) {
  auto model = make_digits_model(m);
  return train_qt_and_deploy(m, *model, rule_list, split, s.qt_epochs, s.lr, report);
}

inline rules::LoraRule lora_rule_all(int rank, float alpha, std::optional<QType> base) {
  rules::LoraRule r;
  r.rank = rank;
  r.alpha = alpha;
  r.weight_qtype = base;
  return r;
}

// (Q)LoRA: adapters on a copy of the trained float model, trained on the shifted training images
// (only the adapters learn), measured on the shifted test images.
inline double lora_shift_accuracy(DigitsModel m, nn::Module& trained, const std::vector<rules::LoraRule>& rule_list,
                                  const providers::LoraOptions& options, const DigitsSplit& split, const Schedule& s,
                                  rules::QuantizationReport* report = nullptr) {
  const DigitsSplit shift = shifted(split);
  auto model = clone_digits_model(m, trained);
  auto r = providers::quantize_model(*model, providers::LoraProvider(rule_list, options), {shift.train.slice(0, 64).images});
  if (report) *report = std::move(r);
  train_float(*model, shift.train, s.lora_epochs, s.lora_lr);
  return nn::accuracy(*model, shift.test);
}

// The float model on the shifted test images, before and after full fine-tuning (the bounds the
// adapters are measured between).
inline double shifted_accuracy(nn::Module& trained, const DigitsSplit& split) { return nn::accuracy(trained, shifted(split).test); }
inline double full_finetune_shift_accuracy(DigitsModel m, nn::Module& trained, const DigitsSplit& split, const Schedule& s) {
  const DigitsSplit shift = shifted(split);
  auto model = clone_digits_model(m, trained);
  train_float(*model, shift.train, s.lora_epochs, s.lora_lr);
  return nn::accuracy(*model, shift.test);
}

// One row of the accuracy table: run(model kind, trained float model) -> test accuracy.
struct Experiment {
  std::string method;
  std::string setting;
  std::function<double(DigitsModel, nn::Module&)> run;
};

inline std::vector<Experiment> accuracy_rows(const DigitsSplit& split, const Schedule& schedule) {
  using Rules = std::vector<rules::QuantizationRule>;
  auto ptq = [&split](Rules r) {
    return [&split, r](DigitsModel m, nn::Module& trained) { return ptq_accuracy(m, trained, r, split); };
  };
  std::vector<Experiment> rows;
  rows.push_back({"fp32", "Adam, float training", [&split](DigitsModel, nn::Module& t) { return nn::accuracy(t, split.test); }});
  rows.push_back({"PTQ", "w8a8 dynamic, per-channel", ptq({rule_all(QType::kInt8, QType::kInt8)})});
  rows.push_back({"PTQ", "w4a8 dynamic, per-channel", ptq({rule_all(QType::kInt4, QType::kInt8)})});
  rows.push_back({"PTQ", "w4a8 dynamic, tile 16", [&split](DigitsModel m, nn::Module& t) {
                    return ptq_accuracy(m, t, tiled_rules(m, QType::kInt4, QType::kInt8, 16), split);
                  }});
  rows.push_back({"PTQ", "w4a4 static-range (absmax, 8 batches)", ptq({rule_all(QType::kInt4, QType::kInt4, std::nullopt, true)})});
  rows.push_back({"PTQ", "w2a8 dynamic, per-channel", ptq({rule_all(QType::kInt2, QType::kInt8)})});
  using QtRules = std::vector<rules::QtRule>;
  auto qat = [&split, schedule](QtRules r) {
    return [&split, schedule, r](DigitsModel m, nn::Module& trained) { return qat_accuracy(m, trained, r, split, schedule); };
  };
  rows.push_back({"QAT", "w4a4 static-range, fine-tuned", qat({qt_rule_all(QType::kInt4, QType::kInt4, true)})});
  rows.push_back({"QAT", "w2a8 dynamic, fine-tuned", qat({qt_rule_all(QType::kInt2, QType::kInt8)})});
  rows.push_back({"QT", "w8a8, int8 backward, from scratch", [&split, schedule](DigitsModel m, nn::Module&) {
                    return qt_from_scratch_accuracy(m, {qt_rule_all(QType::kInt8, QType::kInt8, false, QType::kInt8)}, split, schedule);
                  }});
  const std::string shift = fmt::format("shift ({},{}) px: ", kShiftX, kShiftY);
  rows.push_back({"fp32", shift + "no adaptation", [&split](DigitsModel, nn::Module& t) { return shifted_accuracy(t, split); }});
  rows.push_back({"fp32", shift + "full fine-tune", [&split, schedule](DigitsModel m, nn::Module& t) {
                    return full_finetune_shift_accuracy(m, t, split, schedule);
                  }});
  rows.push_back({"LoRA", shift + "rank 8, float base", [&split, schedule](DigitsModel m, nn::Module& t) {
                    return lora_shift_accuracy(m, t, {lora_rule_all(8, 16.0f, std::nullopt)}, {}, split, schedule);
                  }});
  rows.push_back({"QLoRA", shift + "rank 8, NF4 base (block 64, double quant)", [&split, schedule](DigitsModel m, nn::Module& t) {
                    providers::LoraOptions o;
                    o.double_quant = true;
                    return lora_shift_accuracy(m, t, {lora_rule_all(8, 16.0f, QType::kNf4)}, o, split, schedule);
                  }});
  return rows;
}

}  // namespace qforge::data
