// What a provider needs to know about one matched op site, independent of how rules are written.
//
// Rules (QuantizationRule, QtRule, LoraRule) are matched against sites by module path (full
// regex match) and op name; the first full match wins (Qwix qconfig). The rule types here are the
// minimal set the providers need; SiteConfig is the resolved form the providers consume, so the
// rule front end (C++ structs, YAML/JSON files) can change without touching the providers.
#pragma once

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
  std::optional<QType> bwd_qtype;
  std::string bwd_calibration_method = "absmax";
  bool bwd_stochastic_rounding = false;
  int lora_rank = 0;
  float lora_alpha = 1.0f;
  float lora_dropout = 0.0f;
};

inline void validate_rule(const QuantizationRule& r, std::size_t index) {
  if (r.act_static_scale && !r.act_qtype)
    throw_error(Status::kInvalidArgument, "rule {}: act_static_scale is set but act_qtype is not", index);
  try {
    std::regex check(r.module_path);
  } catch (const std::regex_error& e) {
    throw_error(Status::kInvalidArgument, "rule {}: module_path '{}' is not a valid regex: {}", index, r.module_path, e.what());
  }
  parse_calibration_method(r.weight_calibration_method);
  if (r.act_calibration_method) parse_calibration_method(*r.act_calibration_method);
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

}  // namespace qforge::rules
