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
#pragma once

#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "qforge/core/error.hpp"

namespace qforge::cli {

struct TensorRule {
  std::string match;
  std::regex regex;
  std::string type;
  std::optional<std::int64_t> group_size;
  std::optional<std::string> calibration;
  int line = 0;  // 1-based line in the rules file
  int hits = 0;
};

inline std::vector<TensorRule> load_tensor_rules(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw_error(Status::kIoError, "{}: cannot read the rules file", path);
  } catch (const YAML::Exception& e) {
    throw_error(Status::kFormatError, "{}:{}: {}", path, e.mark.line + 1, e.msg);
  }
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
