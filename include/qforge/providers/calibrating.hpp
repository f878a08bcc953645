// GPTQ / QEP / JointQ over a model graph: calibrate, quantize and write back site by site, in
// execution order, so each later site sees the quantized prefix (the reference pipelines'
// sequential mode, algorithms.md §1.5 and §3.2).
//
//   std::vector<rules::AlgorithmRule> rules = {rules::QepRule{...}};
//   auto result = providers::calibrate_and_quantize(model, rules, batches);  // or a callable
//
// Calibration data is re-iterable: a Batches container, or a callable `void(fn)` that calls fn
// with every batch each time it is invoked. For each weight site with a matching rule, one pass
// over the data feeds the site's inputs from the partially quantized model into its statistics
// (H = Σ x̂ x̂ᵀ); QepRule adds, per batch, a float-model pass that captures x (H_δ = Σ (x − x̂) x̂ᵀ).
// Only the site in flight holds activations, one batch at a time, so memory stays bounded by
// one batch's inputs to one site. The quantized weight replaces the float one in the model
// (dequantized, in float), and the float weights are restored only for the QEP float passes.
// Not done: sites that read the same input are separate stages (same result, more passes);
// convolution sites stay float (the layer algorithms take [out, in] matrices).
#pragma once

#include <functional>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "qforge/providers/sites.hpp"
#include "qforge/rules/algorithm_rules.hpp"

namespace qforge::providers {

using BatchVisitor = std::function<void(const std::function<void(const TensorF&)>&)>;

inline BatchVisitor visit_batches(const Batches& batches) {
  return [&batches](const std::function<void(const TensorF&)>& fn) {
    for (const auto& b : batches) fn(b);
  };
}

struct CalibratedResult {
  std::vector<rules::LayerOutcome> layers;  // in execution order
  algorithms::StatisticsSet stats;          // what quantize_layers() can reuse with no graph
};

namespace detail {
// Captures the lhs of one site ([tokens, K]) during a forward pass; computes nothing itself.
class CaptureInterceptor : public nn::Interceptor {
 public:
  explicit CaptureInterceptor(std::string id) : id_(std::move(id)) {}
  std::optional<nn::Var> intercept(nn::Context&, const nn::SiteCall& call) override {
    if (call.site.id() == id_) captured = call.lhs.value();
    return std::nullopt;
  }
  TensorF captured;

 private:
  std::string id_;
};

inline TensorF capture_site_input(nn::Module& model, const std::string& id, const TensorF& batch) {
  CaptureInterceptor c(id);
  nn::Context ctx(&c, false);
  model.forward(ctx, nn::Var(batch));
  if (c.captured.empty()) throw_error(Status::kInternal, "site {} did not run on a calibration batch", id);
  return c.captured;
}
}  // namespace detail

inline CalibratedResult calibrate_and_quantize(nn::Module& model, const std::vector<rules::AlgorithmRule>& rules,
                                               const BatchVisitor& data) {
  TensorF sample;
  data([&](const TensorF& b) {
    if (sample.empty()) sample = b;
  });
  if (sample.empty()) throw_error(Status::kInvalidArgument, "calibrating provider: the calibration data yielded no batch");
  const auto sites = discover_sites(model, sample);
  std::vector<std::regex> patterns;
  for (const auto& r : rules) patterns.emplace_back(rules::base_rule(r).module_path);
  std::map<nn::Parameter*, TensorF> float_weights;  // originals of weights already replaced
  CalibratedResult result;
  for (const auto& s : sites) {
    if (!s.weight || s.kind != nn::SiteKind::kDotGeneral || s.weight->var.value().rank() != 2) continue;
    const std::string name = s.module->path();
    int idx = -1;
    for (std::size_t i = 0; i < rules.size() && idx < 0; ++i)
      if (std::regex_match(name, patterns[i])) idx = static_cast<int>(i);
    if (idx < 0) continue;
    const auto& rule = rules[static_cast<std::size_t>(idx)];
    const bool qep = std::holds_alternative<rules::QepRule>(rule);
    TensorF& w = s.weight->var.value();
    const std::int64_t cols = w.dim(1);
    algorithms::LayerStatistics stats(cols, qep);
    const std::string id = s.site.id();
    data([&](const TensorF& batch) {
      const TensorF xq = detail::capture_site_input(model, id, batch);
      if (!qep) {
        stats.add(xq.data(), nullptr, xq.size() / cols, name);
        return;
      }
      // Float pass: swap the original weights back in for this batch only.
      for (auto& [p, f] : float_weights) std::swap(p->var.value(), f);
      TensorF x;
      try {
        x = detail::capture_site_input(model, id, batch);
      } catch (...) {
        for (auto& [p, f] : float_weights) std::swap(p->var.value(), f);
        throw;
      }
      for (auto& [p, f] : float_weights) std::swap(p->var.value(), f);
      stats.add(x.data(), xq.data(), x.size() / cols, name);
    });
    auto outcome = rules::quantize_layers({{name, w}}, {{name, stats}}, {rule});
    result.stats.emplace(name, std::move(stats));
    if (outcome.empty()) continue;
    float_weights.emplace(s.weight, w);
    std::copy(outcome[0].layer.weight.begin(), outcome[0].layer.weight.end(), w.data());
    outcome[0].rule_index = idx;
    result.layers.push_back(std::move(outcome[0]));
  }
  return result;
}

inline CalibratedResult calibrate_and_quantize(nn::Module& model, const std::vector<rules::AlgorithmRule>& rules,
                                               const Batches& batches) {
  return calibrate_and_quantize(model, rules, visit_batches(batches));
}

}  // namespace qforge::providers
