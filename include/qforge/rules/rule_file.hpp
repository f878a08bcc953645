// Rules from files: YAML, or JSON (a subset of YAML, read by the same parser so errors carry
// line numbers either way). One schema whose field names are the C++ field names (docs/rules.md):
//
//   - module_path: 'layers\.[0-9]+'      # regex, full match (default '.*')
//     op_names: [dot_general]            # default: every op
//     weight_qtype: int4                 # unset: the site stays float
//     act_qtype: int8
//     tile_size: 32                      # an element count, or a fraction such as 0.125
//     act_static_scale: true
//     weight_calibration_method: absmax
//     act_calibration_method: 'minmax'
//     act_batch_axes: [0]
//     bwd_qtype: int8                    # QtRule only
//     rank: 8                            # LoraRule only (and alpha, dropout)
//
// The file is a list of rules, or a mapping with a `rules:` list. A mistake — an unknown field,
// a value of the wrong type, a bad qtype, regex or calibration string, act_static_scale without
// act_qtype — is a qforge::Error naming the file, the line and the field.
#pragma once

#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "qforge/rules/rule.hpp"

namespace qforge::rules {

namespace detail {

struct FieldContext {
  const std::string& source;
  int line;
  const std::string& field;
};

[[noreturn]] inline void field_error(const FieldContext& c, std::string_view what) {
  throw_error(Status::kFormatError, "{}:{}: field '{}': {}", c.source, c.line, c.field, what);
}

template <class T>
T scalar_as(const YAML::Node& n, const FieldContext& c, std::string_view expected) {
  if (!n.IsScalar()) field_error(c, fmt::format("expected {}", expected));
  try {
    return n.as<T>();
  } catch (const YAML::Exception&) {
    field_error(c, fmt::format("'{}' is not {}", n.Scalar(), expected));
  }
}

inline QType qtype_field(const YAML::Node& n, const FieldContext& c) {
  const auto text = scalar_as<std::string>(n, c, "a qtype name");
  const auto t = try_parse_qtype(text);
  if (!t) {
    std::string names;
    for (QType q : kAllQTypes) names += (names.empty() ? "" : ", ") + std::string(to_string(q));
    field_error(c, fmt::format("unknown qtype '{}' (one of {})", text, names));
  }
  return *t;
}

inline std::string calibration_field(const YAML::Node& n, const FieldContext& c) {
  const auto text = scalar_as<std::string>(n, c, "a calibration method");
  try {
    parse_calibration_method(text);
  } catch (const Error& e) {
    field_error(c, e.what());
  }
  return text;
}

inline std::vector<int> int_list(const YAML::Node& n, const FieldContext& c) {
  if (!n.IsSequence()) field_error(c, "expected a list of integers");
  std::vector<int> out;
  for (const auto& v : n) out.push_back(scalar_as<int>(v, c, "an integer"));
  return out;
}

// Common QuantizationRule fields; returns false if `key` is not one of them.
inline bool set_base_field(QuantizationRule& r, const std::string& key, const YAML::Node& v, const FieldContext& c) {
  if (key == "module_path") {
    r.module_path = scalar_as<std::string>(v, c, "a regex string");
    try {
      std::regex check(r.module_path);
    } catch (const std::regex_error& e) {
      field_error(c, fmt::format("'{}' is not a valid regex: {}", r.module_path, e.what()));
    }
  } else if (key == "op_names") {
    if (!v.IsSequence()) field_error(c, "expected a list of op names");
    r.op_names.clear();
    for (const auto& o : v) r.op_names.push_back(scalar_as<std::string>(o, c, "an op name"));
  } else if (key == "weight_qtype") {
    if (!v.IsNull()) r.weight_qtype = qtype_field(v, c);
  } else if (key == "act_qtype") {
    if (!v.IsNull()) r.act_qtype = qtype_field(v, c);
  } else if (key == "tile_size") {
    if (v.IsNull()) return true;
    const auto text = scalar_as<std::string>(v, c, "a tile size");
    if (text.find_first_of(".eE") != std::string::npos) {
      const double t = scalar_as<double>(v, c, "a tile fraction");
      if (!(t > 0 && t <= 1)) field_error(c, fmt::format("tile fraction {} is not in (0, 1]", t));
      r.tile_size = t;
    } else {
      const auto t = scalar_as<std::int64_t>(v, c, "a tile size");
      if (t <= 0) field_error(c, fmt::format("tile size {} is not positive", t));
      r.tile_size = t;
    }
  } else if (key == "act_static_scale") {
    r.act_static_scale = scalar_as<bool>(v, c, "true or false");
  } else if (key == "weight_calibration_method") {
    r.weight_calibration_method = calibration_field(v, c);
  } else if (key == "act_calibration_method") {
    if (!v.IsNull()) r.act_calibration_method = calibration_field(v, c);
  } else if (key == "act_batch_axes") {
    r.act_batch_axes = int_list(v, c);
  } else {
    return false;
  }
  return true;
}

inline bool set_field(QuantizationRule& r, const std::string& k, const YAML::Node& v, const FieldContext& c) {
  return set_base_field(r, k, v, c);
}
inline bool set_field(QtRule& r, const std::string& k, const YAML::Node& v, const FieldContext& c) {
  if (set_base_field(r, k, v, c)) return true;
  if (k == "bwd_qtype") {
    if (!v.IsNull()) r.bwd_qtype = qtype_field(v, c);
  } else if (k == "bwd_calibration_method") {
    r.bwd_calibration_method = calibration_field(v, c);
  } else if (k == "bwd_stochastic_rounding") {
    if (v.IsNull()) return true;
    r.bwd_stochastic_rounding = scalar_as<std::string>(v, c, "'uniform'");
    if (*r.bwd_stochastic_rounding != "uniform") field_error(c, fmt::format("'{}' is not supported (only 'uniform')", *r.bwd_stochastic_rounding));
  } else {
    return false;
  }
  return true;
}
inline bool set_field(LoraRule& r, const std::string& k, const YAML::Node& v, const FieldContext& c) {
  if (set_base_field(r, k, v, c)) return true;
  if (k == "rank") {
    r.rank = scalar_as<int>(v, c, "an integer");
    if (r.rank <= 0) field_error(c, fmt::format("rank {} must be positive", r.rank));
  } else if (k == "alpha") {
    r.alpha = scalar_as<float>(v, c, "a number");
  } else if (k == "dropout") {
    r.dropout = scalar_as<float>(v, c, "a number");
    if (!(r.dropout >= 0 && r.dropout < 1)) field_error(c, fmt::format("dropout {} is not in [0, 1)", r.dropout));
  } else {
    return false;
  }
  return true;
}

template <class Rule>
constexpr const char* rule_kind() {
  if constexpr (std::is_same_v<Rule, QtRule>) return "QtRule";
  else if constexpr (std::is_same_v<Rule, LoraRule>) return "LoraRule";
  else return "QuantizationRule";
}

template <class Rule>
std::vector<Rule> rules_from_node(const YAML::Node& root, const std::string& source) {
  YAML::Node list = root;
  if (root.IsMap()) {
    if (!root["rules"]) throw_error(Status::kFormatError, "{}:{}: expected a list of rules or a mapping with 'rules'", source, root.Mark().line + 1);
    list = root["rules"];
  }
  if (!list.IsSequence()) throw_error(Status::kFormatError, "{}:{}: 'rules' must be a list", source, list.Mark().line + 1);
  std::vector<Rule> out;
  for (const auto& node : list) {
    const int line = node.Mark().line + 1;
    if (!node.IsMap()) throw_error(Status::kFormatError, "{}:{}: a rule must be a mapping of fields", source, line);
    Rule r;
    for (const auto& kv : node) {
      const std::string key = kv.first.as<std::string>();
      const FieldContext c{source, kv.first.Mark().line + 1, key};
      if (!set_field(r, key, kv.second, c)) field_error(c, fmt::format("unknown field for a {}", rule_kind<Rule>()));
    }
    if (r.act_static_scale && !r.act_qtype)
      throw_error(Status::kFormatError, "{}:{}: rule {}: act_static_scale is set but act_qtype is not", source, line, out.size());
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace detail

// Rules from YAML or JSON text; `source` names it in errors.
template <class Rule = QuantizationRule>
std::vector<Rule> parse_rules(const std::string& text, const std::string& source = "<rules>") {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw_error(Status::kFormatError, "{}:{}: {}", source, e.mark.line + 1, e.msg);
  }
  return detail::rules_from_node<Rule>(root, source);
}

template <class Rule = QuantizationRule>
std::vector<Rule> load_rules(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw_error(Status::kIoError, "{}: cannot read the rules file", path);
  } catch (const YAML::Exception& e) {
    throw_error(Status::kFormatError, "{}:{}: {}", path, e.mark.line + 1, e.msg);
  }
  return detail::rules_from_node<Rule>(root, path);
}

}  // namespace qforge::rules
