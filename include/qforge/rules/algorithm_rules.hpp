// GptqRule, QepRule, JointqRule: QuantizationRule plus the algorithm's parameters, named as in
// Qwix (GptqRule/QepRule) and OneComp (JointQ). quantize_layers() applies them to float weights
// from precomputed per-site statistics (algorithms/statistics.hpp) with no model graph at all:
// the first rule whose module_path fully matches a site wins; a site that no rule matches, or
// whose rule leaves weight_qtype unset, stays in float.
#pragma once

#include <map>
#include <optional>
#include <regex>
#include <string>
#include <variant>
#include <vector>

#include "qforge/algorithms/jointq.hpp"
#include "qforge/algorithms/qep.hpp"
#include "qforge/algorithms/statistics.hpp"
#include "qforge/core/qtype.hpp"
#include "qforge/core/tensor.hpp"
#include "qforge/rules/rule.hpp"

namespace qforge::rules {

struct GptqRule : QuantizationRule {
  double damping_factor = 0.01;
  std::int64_t block_size = 128;
  bool act_order = false;
  bool static_groups = false;
  bool sym = false;
  bool mse = false;
  std::int64_t group_size = 0;  // 0: per-channel; tile_size is not used by the layer algorithms
  std::optional<std::string> grid;  // overrides weight_qtype: "q4_0", "q4_1", "q8_0", "nf4", "int3", ...
};

struct QepRule : GptqRule {
  double correction_factor = 0.5;
  double qep_damping_factor = 0.01;  // Qwix/OneComp QEP percdamp (the NeurIPS CLI used 1.0)
  bool apply_correction = true;
};

struct JointqRule : QuantizationRule {
  double regularization_lambda = 0.1;
  std::string regularization_mode = "diagonal";
  double regularization_gamma = 0.5;
  std::string lambda_mode = "fixed_lambda";
  bool act_order = false;
  bool sym = false;
  std::int64_t group_size = 0;
  int threads = 0;
};

using AlgorithmRule = std::variant<GptqRule, QepRule, JointqRule>;

inline const QuantizationRule& base_rule(const AlgorithmRule& r) {
  return std::visit([](const auto& x) -> const QuantizationRule& { return x; }, r);
}

// QType -> layer grid. Only integer types of 1..8 bits and NF4 have a layer-algorithm grid.
inline algorithms::GridSpec grid_for(const QuantizationRule& r, const std::optional<std::string>& override_name,
                                     std::string_view site) {
  if (override_name) return algorithms::parse_grid(*override_name);
  if (!r.weight_qtype) throw_error(Status::kInvalidArgument, "{}: rule has no weight_qtype", site);
  const QType t = *r.weight_qtype;
  if (t == QType::kNf4) return algorithms::parse_grid("nf4");
  const auto name = std::string(info(t).name);
  if (name.size() == 4 && name.rfind("int", 0) == 0) return algorithms::parse_grid(name);
  throw_error(Status::kUnsupported, "{}: weight_qtype {} has no GPTQ/QEP/JointQ grid (use int2..int8, nf4, or grid)", site, name);
}

struct LayerOutcome {
  std::string site;
  int rule_index = -1;
  std::string method;
  algorithms::QuantizedLayer layer;
};

// weights: site -> float [out, in]; stats: site -> statistics over that site's inputs.
inline std::vector<LayerOutcome> quantize_layers(const std::map<std::string, TensorF>& weights,
                                                 const algorithms::StatisticsSet& stats,
                                                 const std::vector<AlgorithmRule>& rules) {
  std::vector<std::regex> patterns;
  for (std::size_t i = 0; i < rules.size(); ++i) {
    try {
      patterns.emplace_back(base_rule(rules[i]).module_path);
    } catch (const std::regex_error& e) {
      throw_error(Status::kInvalidArgument, "rule {}: module_path '{}' is not a regex: {}", i, base_rule(rules[i]).module_path, e.what());
    }
  }
  std::vector<LayerOutcome> out;
  for (const auto& [site, w] : weights) {
    int idx = -1;
    for (std::size_t i = 0; i < rules.size() && idx < 0; ++i)
      if (std::regex_match(site, patterns[i])) idx = static_cast<int>(i);
    if (idx < 0) continue;
    const auto& rule = rules[static_cast<std::size_t>(idx)];
    if (!base_rule(rule).weight_qtype && !std::holds_alternative<GptqRule>(rule) && !std::holds_alternative<QepRule>(rule)) continue;
    if (w.rank() != 2) throw_error(Status::kShapeMismatch, "{}: weight must be [out, in], has rank {}", site, w.rank());
    const auto it = stats.find(site);
    if (it == stats.end()) throw_error(Status::kNotFound, "{}: no calibration statistics for this site", site);
    const auto& s = it->second;
    const std::int64_t rows = w.dim(0), cols = w.dim(1);
    if (s.cols != cols) throw_error(Status::kShapeMismatch, "{}: statistics are over {} inputs, the weight has {}", site, s.cols, cols);
    LayerOutcome o{site, idx, "", {}};
    std::visit(
        [&](const auto& r) {
          using R = std::decay_t<decltype(r)>;
          if constexpr (std::is_same_v<R, JointqRule>) {
            if (!r.weight_qtype) return;
            algorithms::JointqOptions j;
            j.grid = grid_for(r, std::nullopt, site);
            j.grid.sym = r.sym;
            j.grid.group_size = r.group_size;
            j.regularization_lambda = r.regularization_lambda;
            j.regularization_mode = r.regularization_mode;
            j.regularization_gamma = r.regularization_gamma;
            j.lambda_mode = r.lambda_mode;
            j.act_order = r.act_order;
            j.threads = r.threads;
            o.method = "jointq";
            o.layer = algorithms::jointq(w.data(), rows, cols, s.h.data(), static_cast<double>(std::max<std::int64_t>(s.tokens, 1)), j, site).layer;
          } else {
            if (!r.weight_qtype && !r.grid) return;
            algorithms::GptqOptions g;
            g.grid = grid_for(r, r.grid, site);
            g.grid.sym = r.sym;
            if (!algorithms::is_ggml_grid(g.grid.kind)) g.grid.group_size = r.group_size;
            if (r.mse) g.grid.range = algorithms::RangeMethod::kMse;
            g.percdamp = r.damping_factor;
            g.block_size = r.block_size;
            g.act_order = r.act_order;
            g.static_groups = r.static_groups;
            if constexpr (std::is_same_v<R, QepRule>) {
              algorithms::QepOptions q;
              q.correction_factor = r.correction_factor;
              q.damping_factor = r.qep_damping_factor;
              q.apply_correction = r.apply_correction && !s.h_delta.empty();
              std::vector<double> zero;
              if (s.h_delta.empty()) zero.assign(s.h.size(), 0.0);
              o.method = "qep";
              o.layer = algorithms::qep_gptq(w.data(), rows, cols, s.h.data(), s.h_delta.empty() ? zero.data() : s.h_delta.data(), q, g, site);
            } else {
              o.method = "gptq";
              o.layer = algorithms::gptq(w.data(), rows, cols, s.h.data(), g, site);
            }
          }
        },
        rule);
    if (!o.method.empty()) out.push_back(std::move(o));
  }
  return out;
}

}  // namespace qforge::rules
