// Per-tensor rules for `qforge quantize --rules FILE` (YAML or JSON, one schema):
//
//   - match: "blk\\.0\\..*"      # regex, must match the whole tensor name
//     type: q8_0                 # q4_0 | q4_1 | q8_0 | f16 | f32 | any qtype (int4, nf4, fp8_e4m3, ...)
//     group_size: 64             # optional, qtypes only (0 = per row)
//     calibration: minmax        # optional, qtypes only (absmax, minmax, percentile,99.9, mse, ...)
//   - match: ".*norm.*"
//     type: float                # keep the tensor as it is
//
// The first rule whose regex fully matches a tensor name decides its type; tensors no rule
// matches get the command's --type (2-D and larger) or stay float (1-D), as llama-quantize does.
//
// The providers' rule files (include/qforge/rules/rule_file.hpp: module_path, weight_qtype,
// tile_size, weight_calibration_method; a list or a mapping with `rules:`) are accepted too: their
// module_path is matched against the weight's module path (the tensor name without ".weight") of
// tensors of rank >= 2, weight_qtype unset keeps the weight float, tile_size is the group size.
#pragma once

#include <optional>
#include <regex>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "qforge/core/error.hpp"
#include "qforge/rules/rule_file.hpp"

namespace qforge::cli {

struct TensorRule {
  std::string match;
  std::regex regex;
  std::string type;
  std::optional<std::int64_t> group_size;
  std::optional<std::string> calibration;
  int line = 0;  // 1-based line in the rules file
  int hits = 0;
  // A rule from a Qwix-style file matches the module path (the tensor name without ".weight")
  // of weights of rank >= 2, as rules match op sites in the in-process providers.
  bool module_rule = false;

  // The name the rule's regex is matched against, or nullopt when the rule does not apply.
  std::optional<std::string> subject(const std::string& tensor_name, std::size_t rank) const {
    if (!module_rule) return tensor_name;
    if (rank < 2) return std::nullopt;
    constexpr std::string_view kSuffix = ".weight";
    if (tensor_name.size() > kSuffix.size() && tensor_name.ends_with(kSuffix))
      return tensor_name.substr(0, tensor_name.size() - kSuffix.size());
    return tensor_name;
  }
};

namespace detail {

// The rule nodes of a rules file: a list, or a mapping with a `rules:` list (the Qwix-style form).
inline YAML::Node rule_list(const YAML::Node& root) {
  if (root.IsMap() && root["rules"]) return root["rules"];
  return root;
}

// True when the file uses the providers' rule schema (include/qforge/rules/rule_file.hpp).
inline bool is_qwix_style(const YAML::Node& root) {
  static const std::set<std::string> kQwixFields = {"module_path", "op_names", "weight_qtype", "act_qtype", "tile_size",
                                                    "weight_calibration_method", "act_calibration_method",
                                                    "act_static_scale", "act_batch_axes"};
  const YAML::Node list = rule_list(root);
  if (!list.IsSequence()) return root.IsMap() && root["rules"];
  for (const auto& node : list)
    if (node.IsMap())
      for (const auto& kv : node)
        if (kQwixFields.count(kv.first.as<std::string>())) return true;
  return false;
}

// Qwix-style rules (module_path, weight_qtype, tile_size, weight_calibration_method) as tensor
// rules: weight_qtype unset keeps the weight float; activation settings do not apply to a file
// and are reported once; a tile fraction is not supported here.
inline std::vector<TensorRule> qwix_tensor_rules(const YAML::Node& root, const std::string& path) {
  const auto parsed = rules::load_rules<rules::QuantizationRule>(path);  // validates, names file:line:field
  std::vector<int> lines;
  for (const auto& node : rule_list(root)) lines.push_back(node.Mark().line + 1);
  std::vector<TensorRule> out;
  bool warned = false;
  for (std::size_t i = 0; i < parsed.size(); ++i) {
    const auto& q = parsed[i];
    TensorRule r;
    r.line = lines[i];
    r.match = q.module_path;
    r.regex = std::regex(q.module_path);
    r.module_rule = true;
    r.type = q.weight_qtype ? std::string(to_string(*q.weight_qtype)) : "float";
    if (q.tile_size) {
      if (!std::holds_alternative<std::int64_t>(*q.tile_size))
        throw_error(Status::kUnsupported, "{}:{}: tile_size {} is a fraction; qforge quantize takes a group size in elements",
                    path, r.line, std::get<double>(*q.tile_size));
      r.group_size = std::get<std::int64_t>(*q.tile_size);
    }
    r.calibration = q.weight_calibration_method;
    if (!warned && (q.act_qtype || !q.op_names.empty() || q.act_static_scale)) {
      fmt::print(stderr, "qforge: warning: {}:{}: act_qtype, act_static_scale and op_names apply to a model graph, not to "
                 "a checkpoint file; only the weight settings are used\n", path, r.line);
      warned = true;
    }
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace detail

inline std::vector<TensorRule> load_tensor_rules(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw_error(Status::kIoError, "{}: cannot read the rules file", path);
  } catch (const YAML::Exception& e) {
    throw_error(Status::kFormatError, "{}:{}: {}", path, e.mark.line + 1, e.msg);
  }
  if (detail::is_qwix_style(root)) return detail::qwix_tensor_rules(root, path);
  if (!root.IsSequence()) throw_error(Status::kFormatError, "{}: the rules file must be a list of rules", path);
  std::vector<TensorRule> rules;
  for (const auto& node : root) {
    const int line = node.Mark().line + 1;
    if (!node.IsMap()) throw_error(Status::kFormatError, "{}:{}: a rule must be a mapping with 'match' and 'type'", path, line);
    TensorRule r;
    r.line = line;
    for (const auto& kv : node) {
      const std::string key = kv.first.as<std::string>();
      const int kline = kv.first.Mark().line + 1;
      try {
        if (key == "match") r.match = kv.second.as<std::string>();
        else if (key == "type") r.type = kv.second.as<std::string>();
        else if (key == "group_size") r.group_size = kv.second.as<std::int64_t>();
        else if (key == "calibration") r.calibration = kv.second.as<std::string>();
        else throw_error(Status::kFormatError, "{}:{}: unknown field '{}' (expected match, type, group_size, calibration)", path, kline, key);
      } catch (const YAML::Exception& e) {
        throw_error(Status::kFormatError, "{}:{}: field '{}': {}", path, kline, key, e.msg);
      }
    }
    if (r.match.empty()) throw_error(Status::kFormatError, "{}:{}: rule has no 'match'", path, line);
    if (r.type.empty()) throw_error(Status::kFormatError, "{}:{}: rule has no 'type'", path, line);
    if (r.group_size && *r.group_size < 0)
      throw_error(Status::kFormatError, "{}:{}: group_size {} must be >= 0 (0 = one scale per row)", path, line, *r.group_size);
    try {
      r.regex = std::regex(r.match);
    } catch (const std::regex_error& e) {
      throw_error(Status::kFormatError, "{}:{}: field 'match': '{}' is not a valid regex: {}", path, line, r.match, e.what());
    }
    rules.push_back(std::move(r));
  }
  return rules;
}

}  // namespace qforge::cli
