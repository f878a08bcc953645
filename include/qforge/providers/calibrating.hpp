// GPTQ / QEP / JointQ over a model graph: calibrate, quantize and write back stage by stage, in
// execution order, so each later stage sees the quantized prefix (the reference pipelines'
// sequential mode, algorithms.md §1.5 and §3.2).
//
//   std::vector<rules::AlgorithmRule> rules = {rules::QepRule{...}};
//   auto result = providers::calibrate_and_quantize(model, rules, batches);  // or a callable
//   std::cout << result.report.to_string();
//
// Calibration data is re-iterable: a Batches container, or a callable `void(fn)` that calls fn
// with every batch each time it is invoked.
//
// Stages: one discovery pass lists the sites and fingerprints each site's input. Consecutive
// matched weight sites whose inputs are bit-equal (the query/key/value projections of one
// attention block, the gate/up projections of an MLP) form one stage: per batch, one pass with
// the quantized prefix installed captures their shared input x̂ (H = Σ x̂ x̂ᵀ is shared), and for
// a stage with a QepRule a second pass with the float weights restored captures x
// (H_δ = Σ (x − x̂) x̂ᵀ). A pass stops as soon as the stage's input has been captured. Only the
// stage in flight holds activations, one batch at a time.
//
// Sites: Linear ([out, in]) and Conv2d (its im2col view: weight [out, in·kh·kw], inputs the
// patches [batch·oh·ow, in·kh·kw], as the reference pipelines do). The dequantized weight
// replaces the float one in the model before the next stage. A site whose rule sets act_qtype is
// also installed as an integer site through the PtqProvider machinery (providers/ptq.hpp): the
// algorithm's codes and scales become the site's QArray and the forward quantizes the activation
// (dynamic, or static with act_static_scale) and multiplies in integers through the backend.
// The result carries a QuantizationReport with one entry per site.
//
// Errors name the site and its rule ("site layers.2/dot_general0 (rule 1): …"); any error
// restores every float weight and leaves the model's interceptor as it was.
#pragma once

#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "qforge/algorithms/hessian_error.hpp"
#include "qforge/providers/ptq.hpp"
#include "qforge/providers/sites.hpp"
#include "qforge/rules/algorithm_rules.hpp"

namespace qforge::providers {

using BatchVisitor = std::function<void(const std::function<void(const TensorF&)>&)>;

inline BatchVisitor visit_batches(const Batches& batches) {
  return [&batches](const std::function<void(const TensorF&)>& fn) {
    for (const auto& b : batches) fn(b);
  };
}

struct CalibrateOptions {
  // true: consecutive matched sites with bit-equal inputs share one stage. false: one stage per
  // site — the same result (bit for bit), one pass per site and batch instead of per stage.
  bool group_stages = true;
};

struct CalibratedResult {
  std::vector<rules::LayerOutcome> layers;  // in execution order; site = the statistics key
  algorithms::StatisticsSet stats;          // what quantize_layers() can reuse with no graph
  std::vector<std::vector<std::string>> stages;  // the statistics keys of each stage, in order
  std::int64_t calibration_passes = 0;      // forward passes over one batch, discovery not counted
  rules::QuantizationReport report;         // one entry per site, in execution order
};

// The provider form: quantize_model(model, CalibratingProvider(rules), batches) returns the report.
class CalibratingProvider {
 public:
  explicit CalibratingProvider(std::vector<rules::AlgorithmRule> rules, CalibrateOptions options = {})
      : rules_(std::move(rules)), options_(options) {}
  const std::vector<rules::AlgorithmRule>& rules() const { return rules_; }
  const CalibrateOptions& options() const { return options_; }

 private:
  std::vector<rules::AlgorithmRule> rules_;
  CalibrateOptions options_;
};

namespace detail {
struct StopForward {};  // ends a calibration pass once the stage's input is captured

// Captures the lhs of one site ([tokens, K]) and stops the forward pass there.
class CaptureInterceptor : public nn::Interceptor {
 public:
  explicit CaptureInterceptor(std::string id) : id_(std::move(id)) {}
  std::optional<nn::Var> intercept(nn::Context&, const nn::SiteCall& call) override {
    if (call.site.id() != id_) return std::nullopt;
    captured = call.lhs.value();
    throw StopForward{};
  }
  TensorF captured;

 private:
  std::string id_;
};

inline TensorF capture_site_input(nn::Module& model, const std::string& id, const TensorF& batch) {
  CaptureInterceptor c(id);
  nn::Context ctx(&c, false);
  try {
    model.forward(ctx, nn::Var(batch));
  } catch (const StopForward&) {
    return std::move(c.captured);
  }
  throw_error(Status::kInternal, "site {} did not run on a calibration batch", id);
}

// Discovery plus a fingerprint (FNV-1a over shape and bytes) of every site's first input.
class FingerprintDiscovery : public DiscoveryInterceptor {
 public:
  std::optional<nn::Var> intercept(nn::Context& ctx, const nn::SiteCall& call) override {
    const std::string id = call.site.id();
    if (!fingerprints.count(id)) {
      std::uint64_t h = 1469598103934665603ull;
      auto mix = [&h](const void* p, std::size_t n) {
        const auto* b = static_cast<const unsigned char*>(p);
        for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
      };
      const TensorF& x = call.lhs.value();
      for (std::int64_t d : x.shape()) mix(&d, sizeof d);
      mix(x.data(), static_cast<std::size_t>(x.size()) * sizeof(float));
      fingerprints[id] = h;
    }
    return DiscoveryInterceptor::intercept(ctx, call);
  }
  std::map<std::string, std::uint64_t> fingerprints;
};

inline bool rule_quantizes(const rules::AlgorithmRule& r) {
  return std::visit([](const auto& g) -> bool {
    if constexpr (std::is_same_v<std::decay_t<decltype(g)>, rules::JointqRule>) return g.weight_qtype.has_value();
    else return g.weight_qtype.has_value() || g.grid.has_value();
  }, r);
}

inline QType int_qtype(int bits) {
  static constexpr QType kTypes[] = {QType::kInt2, QType::kInt3, QType::kInt4, QType::kInt5,
                                     QType::kInt6, QType::kInt7, QType::kInt8};
  if (bits < 2 || bits > 8) throw_error(Status::kUnsupported, "an integer site needs 2..8 bits, the grid has {}", bits);
  return kTypes[bits - 2];
}

// Bytes of the quantized layer: packed codes plus fp32 scales (and zero points, Q4_1 minima).
inline std::uint64_t layer_bytes(const algorithms::QuantizedLayer& l) {
  const std::int64_t n = l.rows * l.cols, g = l.rows * l.groups;
  std::uint64_t b = 0;
  switch (l.grid.kind) {
    case algorithms::GridKind::kInt: b = QArray::storage_bytes_for(int_qtype(std::max(l.grid.bits, 2)), n); break;
    case algorithms::GridKind::kQ8_0: b = static_cast<std::uint64_t>(n); break;
    default: b = static_cast<std::uint64_t>((n + 1) / 2);
  }
  b += static_cast<std::uint64_t>(g) * 4;
  if (l.grid.kind == algorithms::GridKind::kInt && !l.grid.sym) b += static_cast<std::uint64_t>(g);
  if (l.grid.kind == algorithms::GridKind::kQ4_1) b += static_cast<std::uint64_t>(g) * 4;
  return b;
}

// The layer's codes and scales as a QArray over the site's [N, K] view, for an integer site:
// integer grid, contiguous groups (no act-order with dynamic groups), integral zero points, and
// K tiles the activation layout can multiply against.
inline QArray to_site_qarray(const algorithms::QuantizedLayer& l, const SiteInfo& s) {
  if (l.grid.kind != algorithms::GridKind::kInt)
    throw_error(Status::kUnsupported, "an integer site needs an integer grid, not {} (leave act_qtype unset for a weight-only site)",
                algorithms::grid_name(l.grid));
  for (std::int64_t j = 0; j < l.cols; ++j)
    if (l.group_index[static_cast<std::size_t>(j)] != j / l.group_size)
      throw_error(Status::kUnsupported,
                  "act_order with dynamic groups leaves column {} in group {}; an integer site needs contiguous groups "
                  "(set static_groups, or group_size 0)", j, l.group_index[static_cast<std::size_t>(j)]);
  const QType t = int_qtype(l.grid.bits);
  TensorF scale({l.rows, l.groups});
  Tensor<std::int32_t> zp({l.rows, l.groups});
  bool any_zero = false;
  for (std::int64_t i = 0; i < l.rows * l.groups; ++i) {
    const auto& p = l.params[static_cast<std::size_t>(i)];
    if (p.zero != std::nearbyint(p.zero)) throw_error(Status::kInternal, "zero point {} is not an integer", p.zero);
    scale[i] = p.scale;
    zp[i] = static_cast<std::int32_t>(p.zero);
    any_zero = any_zero || zp[i] != 0;
  }
  if (any_zero && !parse_calibration_method(s.config.act_calibration_method).symmetric())
    throw_error(Status::kUnsupported, "an asymmetric weight (zero points) needs a symmetric act_calibration_method, not '{}'",
                s.config.act_calibration_method);
  HowToQuantize how;
  how.qtype = t;
  how.channelwise_axes = {0};
  if (l.groups > 1) how.tiled_axes[1] = l.group_size;
  if (s.config.tile_size) {
    const QuantLayout act(Shape{1, l.cols}, act_how(s.config, Shape{1, l.cols}, 1), s.site.id());
    const std::int64_t tiles = act.scale_shape()[1];
    if (tiles != 1 && l.groups != 1 && tiles != l.groups)
      throw_error(Status::kInvalidArgument, "tile_size gives the activation {} K tiles but the weight has {} groups", tiles, l.groups);
  }
  QArray q(t, {l.rows, l.cols}, std::move(scale), any_zero ? std::optional(std::move(zp)) : std::nullopt, how, s.weight_name);
  for (std::int64_t i = 0; i < l.rows * l.cols; ++i) q.set_code(i, l.codes[static_cast<std::size_t>(i)]);
  return q;
}
}  // namespace detail

inline CalibratedResult calibrate_and_quantize(nn::Module& model, const std::vector<rules::AlgorithmRule>& rules,
                                               const BatchVisitor& data, const CalibrateOptions& options = {}) {
  TensorF sample;
  data([&](const TensorF& b) {
    if (sample.empty()) sample = b;
  });
  if (sample.empty()) throw_error(Status::kInvalidArgument, "calibrating provider: the calibration data yielded no batch");
  detail::FingerprintDiscovery discovery;
  {
    nn::Context ctx(&discovery, false);
    model.forward(ctx, nn::Var(sample));
  }
  std::vector<SiteInfo> sites = std::move(discovery.sites_);
  std::vector<rules::QuantizationRule> base;
  for (const auto& r : rules) base.push_back(rules::base_rule(r));
  const std::vector<int> unused = resolve_rules(sites, base);

  // Plan the stages. Statistics are keyed by module path (by site id where a module has several
  // algorithm sites).
  std::vector<std::vector<std::size_t>> stages;
  std::map<std::size_t, std::string> notes;  // sites a rule matched that stay as they are
  std::set<nn::Parameter*> planned_weights;
  std::map<std::string, int> per_module;
  std::uint64_t prev_fp = 0;
  Shape prev_shape;
  for (std::size_t i = 0; i < sites.size(); ++i) {
    const SiteInfo& s = sites[i];
    if (!s.rule_index || !detail::rule_quantizes(rules[static_cast<std::size_t>(*s.rule_index)])) continue;
    if (!s.weight) {
      notes[i] = "product of two activations stays float";
      continue;
    }
    if (s.rhs_shape.size() != 2 || s.kind == nn::SiteKind::kEinsum) {
      notes[i] = "batched weight product: the layer algorithms take [out, in]; stays float";
      continue;
    }
    if (!planned_weights.insert(s.weight).second) {
      notes[i] = "weight already quantized at an earlier site";
      continue;
    }
    ++per_module[s.site.module_path];
    const std::uint64_t fp = discovery.fingerprints.at(s.site.id());
    if (options.group_stages && !stages.empty() && fp == prev_fp && s.lhs_shape == prev_shape) stages.back().push_back(i);
    else stages.push_back({i});
    prev_fp = fp;
    prev_shape = s.lhs_shape;
  }
  auto key = [&](const SiteInfo& s) { return per_module[s.site.module_path] > 1 ? s.site.id() : s.site.module_path; };

  CalibratedResult result;
  std::map<nn::Parameter*, TensorF> float_weights;  // originals of weights already replaced
  std::map<std::size_t, std::size_t> outcome_of;     // site index -> index in result.layers
  auto swap_float = [&] {
    for (auto& [p, f] : float_weights) std::swap(p->var.value(), f);
  };
  try {
    for (const auto& stage : stages) {
      const SiteInfo& first = sites[stage.front()];
      bool qep = false;
      for (std::size_t i : stage) qep = qep || std::holds_alternative<rules::QepRule>(rules[static_cast<std::size_t>(*sites[i].rule_index)]);
      const std::int64_t cols = first.rhs_shape[1];
      const std::string id = first.site.id(), name = key(first);
      algorithms::LayerStatistics stats(cols, qep);
      at_site(first, [&] {
        std::int64_t b = 0;
        data([&](const TensorF& batch) {
          try {
            const TensorF xq = detail::capture_site_input(model, id, batch);
            ++result.calibration_passes;
            if (!qep) {
              stats.add(xq.data(), nullptr, xq.size() / cols, name);
            } else {
              swap_float();  // the float pass: original weights in for this batch only
              TensorF x;
              try {
                x = detail::capture_site_input(model, id, batch);
              } catch (...) {
                swap_float();
                throw;
              }
              swap_float();
              ++result.calibration_passes;
              stats.add(x.data(), xq.data(), x.size() / cols, name);
            }
          } catch (const Error& e) {
            throw Error(e.status(), fmt::format("calibration batch {}: {}", b, e.what()));
          }
          ++b;
        });
      });
      std::vector<std::string> stage_keys;
      for (std::size_t k = 0; k < stage.size(); ++k) {
        const SiteInfo& s = sites[stage[k]];
        stage_keys.push_back(key(s));
        if (k + 1 < stage.size()) result.stats.insert_or_assign(key(s), stats);
        else result.stats.insert_or_assign(key(s), std::move(stats));
      }
      // Quantize every member, then write the stage back (members do not feed each other).
      for (std::size_t i : stage) {
        const SiteInfo& s = sites[i];
        const int idx = *s.rule_index;
        const TensorF w(s.rhs_shape, s.weight->var.value().vec());
        auto out = at_site(s, [&] { return rules::quantize_layers({{key(s), w}}, result.stats, {rules[static_cast<std::size_t>(idx)]}); });
        if (out.empty()) throw_error(Status::kInternal, "{}: the rule quantized nothing", site_label(s));
        out[0].rule_index = idx;
        outcome_of[i] = result.layers.size();
        result.layers.push_back(std::move(out[0]));
      }
      for (std::size_t i : stage) {
        TensorF& w = sites[i].weight->var.value();
        float_weights.emplace(sites[i].weight, w);
        const auto& q = result.layers[outcome_of.at(i)].layer.weight;
        std::copy(q.begin(), q.end(), w.data());
      }
      result.stages.push_back(std::move(stage_keys));
    }

    // Integer sites: the rules with act_qtype, installed through the PTQ interceptor.
    std::vector<SiteInfo> installed = sites;
    QuantizedParams params;
    bool any_int = false, any_static = false;
    for (auto& s : installed) s.config = rules::SiteConfig{};
    for (const auto& [i, o] : outcome_of) {
      const auto& rule = base[static_cast<std::size_t>(*sites[i].rule_index)];
      if (!rule.act_qtype) continue;
      SiteInfo& s = installed[i];
      s.config = sites[i].config;
      params.weights.insert_or_assign(s.weight_name, at_site(s, [&] { return detail::to_site_qarray(result.layers[o].layer, s); }));
      s.config.weight_qtype = params.weights.at(s.weight_name).qtype();
      any_int = true;
      any_static = any_static || rule.act_static_scale;
    }
    if (any_static) {
      // Static activation scales from the quantized model (the dequantized weights), all batches.
      detail::CalibrationInterceptor c(installed);
      data([&](const TensorF& batch) {
        nn::Context ctx(&c, false);
        model.forward(ctx, nn::Var(batch));
      });
      std::map<std::string, TensorF> current;
      for (const auto& s : installed)
        if (s.config.weight_qtype) current.emplace(s.weight_name, s.weight->var.value());
      params.act_scales = quantize_params(current, installed, c.stats).act_scales;
    }

    // The report: every site, algorithm sites with their method, loss and damping.
    rules::QuantizationReport& report = result.report;
    report.provider = "calibrating";
    report.unused_rules = unused;
    for (std::size_t i = 0; i < sites.size(); ++i) {
      const SiteInfo& s = sites[i];
      const auto oi = outcome_of.find(i);
      if (oi == outcome_of.end()) {
        report.sites.push_back(site_report(s, nullptr, "float"));
        if (const auto n = notes.find(i); n != notes.end()) report.sites.back().note = n->second;
        continue;
      }
      const auto& o = result.layers[oi->second];
      const auto& l = o.layer;
      const rules::SiteConfig& ic = installed[i].config;
      rules::SiteReport r = site_report(s, nullptr, !ic.weight_qtype ? "weight-only" : ic.act_static_scale ? "static-range" : "dynamic-range");
      const TensorF& wf = float_weights.at(s.weight);
      r.weight_qtype = algorithms::grid_name(l.grid);
      r.weight_scale_shape = {l.rows, l.groups};
      r.weight_error = analysis::compare(wf.data(), l.weight.data(), wf.size());
      r.bytes_after = detail::layer_bytes(l);
      r.method = o.method;
      r.loss = l.loss;
      r.damping = l.damp_used;
      r.hessian_rel_err =
          algorithms::hessian_rel_err(result.stats.at(o.site).h.data(), wf.data(), l.weight.data(), l.rows, l.cols);
      for (const auto& n : l.notes) r.note += (r.note.empty() ? "" : "; ") + n;
      report.sites.push_back(std::move(r));
    }
    if (any_int) install_quantized(model, installed, std::move(params));
  } catch (...) {
    swap_float();  // all or nothing: the model keeps its float weights
    throw;
  }
  return result;
}

inline CalibratedResult calibrate_and_quantize(nn::Module& model, const std::vector<rules::AlgorithmRule>& rules,
                                               const Batches& batches, const CalibrateOptions& options = {}) {
  return calibrate_and_quantize(model, rules, visit_batches(batches), options);
}

inline rules::QuantizationReport quantize_model(nn::Module& model, const CalibratingProvider& provider, const Batches& batches) {
  return calibrate_and_quantize(model, provider.rules(), batches, provider.options()).report;
}

}  // namespace qforge::providers
