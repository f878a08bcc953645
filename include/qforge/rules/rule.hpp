// What a provider needs to know about one matched op site, independent of how rules are written.
//
// Rules (QuantizationRule, QtRule, LoraRule) are matched against sites by module path (full
// regex match) and op name; the first full match wins (Qwix qconfig). The rule types here are the
// minimal set the providers need; SiteConfig is the resolved form the providers consume, so the
// rule front end (C++ structs, YAML/JSON files) can change without touching the providers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "qforge/core/calibration.hpp"
#include "qforge/core/layout.hpp"
#include "qforge/core/qtype.hpp"

namespace qforge::rules {

// Qwix QuantizationRule fields and defaults.
struct QuantizationRule {
  std::string module_path = ".*";
  std::vector<std::string> op_names;   // empty: every op
  std::optional<QType> weight_qtype;   // unset: the site stays in float
  std::optional<QType> act_qtype;
  std::optional<TileSize> tile_size;   // tile of the last contracting axis
  bool act_static_scale = false;
  std::string weight_calibration_method = "absmax";
  std::optional<std::string> act_calibration_method;  // unset: absmax
  std::vector<int> act_batch_axes = {0};
};

// Qwix QtRule: QuantizationRule plus the backward-pass settings (QT when bwd_qtype is set).
struct QtRule : QuantizationRule {
  std::optional<QType> bwd_qtype;
  std::string bwd_calibration_method = "absmax";
  std::optional<std::string> bwd_stochastic_rounding;  // "uniform"
};

// Qwix LoraRule: adapters of `rank` on matched Linear sites; weight_qtype set = QLoRA base.
struct LoraRule : QuantizationRule {
  int rank = 0;
  float alpha = 1.0f;
  float dropout = 0.0f;
};

// The resolved settings of one site.
struct SiteConfig {
  int rule_index = -1;
  std::optional<QType> weight_qtype;
  std::optional<QType> act_qtype;
  std::optional<TileSize> tile_size;
  bool act_static_scale = false;
  std::string weight_calibration_method = "absmax";
  std::string act_calibration_method = "absmax";
  std::vector<int> act_batch_axes = {0};
  std::optional<QType> bwd_qtype;
  std::string bwd_calibration_method = "absmax";
  bool bwd_stochastic_rounding = false;
  int lora_rank = 0;
  float lora_alpha = 1.0f;
  float lora_dropout = 0.0f;
};

namespace detail {
// Parses a calibration-method field, re-raising a bad one with the rule index and field name.
inline void check_method_field(std::string_view text, std::size_t index, std::string_view field) {
  try {
    parse_calibration_method(text);
  } catch (const Error& e) {
    throw_error(Status::kInvalidArgument, "rule {}: {}: {}", index, field, e.what());
  }
}
}  // namespace detail

// Checks one rule on its own (no model needed); every message starts with "rule <index>:".
inline void validate_rule(const QuantizationRule& r, std::size_t index) {
  if (r.act_static_scale && !r.act_qtype)
    throw_error(Status::kInvalidArgument, "rule {}: act_static_scale is set but act_qtype is not", index);
  try {
    std::regex check(r.module_path);
  } catch (const std::regex_error& e) {
    throw_error(Status::kInvalidArgument, "rule {}: module_path '{}' is not a valid regex: {}", index, r.module_path, e.what());
  }
  for (const auto& op : r.op_names)
    if (op.empty()) throw_error(Status::kInvalidArgument, "rule {}: op_names holds an empty name", index);
  if (r.tile_size) {
    if (const auto* t = std::get_if<std::int64_t>(&*r.tile_size); t && *t <= 0)
      throw_error(Status::kInvalidArgument, "rule {}: tile_size {} must be positive", index, *t);
    if (const auto* f = std::get_if<double>(&*r.tile_size); f && !(*f > 0.0 && *f <= 1.0))
      throw_error(Status::kInvalidArgument, "rule {}: tile_size fraction {} must be in (0, 1]", index, *f);
  }
  for (int axis : r.act_batch_axes)
    if (axis < 0) throw_error(Status::kInvalidArgument, "rule {}: act_batch_axes holds negative axis {}", index, axis);
  detail::check_method_field(r.weight_calibration_method, index, "weight_calibration_method");
  if (r.act_calibration_method) detail::check_method_field(*r.act_calibration_method, index, "act_calibration_method");
}
inline void validate_rule(const QtRule& r, std::size_t index) {
  validate_rule(static_cast<const QuantizationRule&>(r), index);
  detail::check_method_field(r.bwd_calibration_method, index, "bwd_calibration_method");
  if (r.bwd_stochastic_rounding && *r.bwd_stochastic_rounding != "uniform")
    throw_error(Status::kInvalidArgument, "rule {}: bwd_stochastic_rounding '{}' is not supported (only 'uniform')", index,
                *r.bwd_stochastic_rounding);
}
inline void validate_rule(const LoraRule& r, std::size_t index) {
  validate_rule(static_cast<const QuantizationRule&>(r), index);
  if (r.rank <= 0) throw_error(Status::kInvalidArgument, "rule {}: LoRA rank {} must be positive", index, r.rank);
  if (!(r.dropout >= 0.0f && r.dropout < 1.0f))
    throw_error(Status::kInvalidArgument, "rule {}: LoRA dropout {} must be in [0, 1)", index, r.dropout);
  if (!std::isfinite(r.alpha)) throw_error(Status::kInvalidArgument, "rule {}: LoRA alpha {} is not finite", index, r.alpha);
}

inline bool rule_matches(const QuantizationRule& r, const std::string& module_path, const std::string& op_name) {
  if (!std::regex_match(module_path, std::regex(r.module_path))) return false;
  if (r.op_names.empty()) return true;
  for (const auto& n : r.op_names)
    if (n == op_name) return true;
  return false;
}

// Index of the first rule that fully matches, if any.
template <class Rule>
std::optional<int> first_match(const std::vector<Rule>& rules, const std::string& module_path, const std::string& op_name) {
  for (std::size_t i = 0; i < rules.size(); ++i)
    if (rule_matches(rules[i], module_path, op_name)) return static_cast<int>(i);
  return std::nullopt;
}

inline SiteConfig to_site_config(const QuantizationRule& r, int index) {
  SiteConfig c;
  c.rule_index = index;
  c.weight_qtype = r.weight_qtype;
  c.act_qtype = r.act_qtype;
  c.tile_size = r.tile_size;
  c.act_static_scale = r.act_static_scale;
  c.weight_calibration_method = r.weight_calibration_method;
  c.act_calibration_method = r.act_calibration_method.value_or("absmax");
  c.act_batch_axes = r.act_batch_axes;
  return c;
}
inline SiteConfig to_site_config(const QtRule& r, int index) {
  SiteConfig c = to_site_config(static_cast<const QuantizationRule&>(r), index);
  c.bwd_qtype = r.bwd_qtype;
  c.bwd_calibration_method = r.bwd_calibration_method;
  if (r.bwd_stochastic_rounding && *r.bwd_stochastic_rounding != "uniform")
    throw_error(Status::kInvalidArgument, "rule {}: bwd_stochastic_rounding '{}' is not supported (only 'uniform')", index,
                *r.bwd_stochastic_rounding);
  c.bwd_stochastic_rounding = r.bwd_stochastic_rounding.has_value();
  return c;
}
inline SiteConfig to_site_config(const LoraRule& r, int index) {
  SiteConfig c = to_site_config(static_cast<const QuantizationRule&>(r), index);
  if (r.rank <= 0) throw_error(Status::kInvalidArgument, "rule {}: LoRA rank {} must be positive", index, r.rank);
  if (!(r.dropout >= 0.0f && r.dropout < 1.0f))
    throw_error(Status::kInvalidArgument, "rule {}: LoRA dropout {} must be in [0, 1)", index, r.dropout);
  c.lora_rank = r.rank;
  c.lora_alpha = r.alpha;
  c.lora_dropout = r.dropout;
  return c;
}

// Matches sites against a rule list the way Qwix's qconfig does — the first rule whose
// module_path regex fully matches and whose op_names (empty: any) contain the op wins — and
// remembers which rules ever matched, so that rules which never matched anything can be listed
// once the first run over a model is complete (a typo in a module_path otherwise goes unseen).
// The constructor validates every rule; regexes are compiled once.
//
//   RuleMatcher<QuantizationRule> m(rules);
//   for (auto& site : sites) if (auto i = m.match(site.module_path, site.op_name)) ...
//   for (int r : m.finish_run()) log("rule {} matched no site", r);
template <class Rule>
class RuleMatcher {
 public:
  explicit RuleMatcher(std::vector<Rule> rules) : rules_(std::move(rules)), used_(rules_.size(), false) {
    for (std::size_t i = 0; i < rules_.size(); ++i) {
      validate_rule(rules_[i], i);
      patterns_.emplace_back(rules_[i].module_path);
    }
  }

  // The index of the first matching rule, recorded as used; nullopt: no rule, the site stays float.
  std::optional<int> match(const std::string& module_path, const std::string& op_name) {
    for (std::size_t i = 0; i < rules_.size(); ++i) {
      if (!std::regex_match(module_path, patterns_[i])) continue;
      const auto& ops = rules_[i].op_names;
      if (!ops.empty() && std::find(ops.begin(), ops.end(), op_name) == ops.end()) continue;
      used_[i] = true;
      return static_cast<int>(i);
    }
    return std::nullopt;
  }

  // Ends a run over the model. Returns the rules that matched nothing the first time it is
  // called and an empty list afterwards, so they are reported once.
  std::vector<int> finish_run() {
    if (runs_++ > 0) return {};
    return unused_rules();
  }

  std::vector<int> unused_rules() const {
    std::vector<int> out;
    for (std::size_t i = 0; i < used_.size(); ++i)
      if (!used_[i]) out.push_back(static_cast<int>(i));
    return out;
  }
  bool used(int index) const { return used_.at(static_cast<std::size_t>(index)); }
  int completed_runs() const { return runs_; }
  const std::vector<Rule>& rules() const { return rules_; }
  const Rule& rule(int index) const { return rules_.at(static_cast<std::size_t>(index)); }
  SiteConfig config(int index) const { return to_site_config(rule(index), index); }

 private:
  std::vector<Rule> rules_;
  std::vector<std::regex> patterns_;
  std::vector<bool> used_;
  int runs_ = 0;
};

}  // namespace qforge::rules
