// Rule files: YAML and JSON give the same rules as C++; every mistake names file, line, field.
#include <gtest/gtest.h>

#include "qforge/rules/rule_file.hpp"

namespace qforge::rules {
namespace {

template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error containing " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(RuleFile, YamlAndJsonReadTheSameRules) {
  const auto yaml = parse_rules<QuantizationRule>(R"(
- module_path: 'layers\.[0-9]+'
  op_names: [dot_general]
  weight_qtype: int4
  act_qtype: int8
  tile_size: 32
  act_static_scale: true
  act_calibration_method: minmax
- module_path: '.*'
  weight_qtype: int8
  tile_size: 0.125
)", "rules.yaml");
  const auto json = parse_rules<QuantizationRule>(R"({"rules": [
  {"module_path": "layers\\.[0-9]+", "op_names": ["dot_general"], "weight_qtype": "int4", "act_qtype": "int8",
   "tile_size": 32, "act_static_scale": true, "act_calibration_method": "minmax"},
  {"module_path": ".*", "weight_qtype": "int8", "tile_size": 0.125}]})", "rules.json");
  for (const auto* rules : {&yaml, &json}) {
    ASSERT_EQ(rules->size(), 2u);
    const auto& r = (*rules)[0];
    EXPECT_EQ(r.module_path, "layers\\.[0-9]+");
    EXPECT_EQ(r.op_names, (std::vector<std::string>{"dot_general"}));
    EXPECT_EQ(r.weight_qtype, QType::kInt4);
    EXPECT_EQ(r.act_qtype, QType::kInt8);
    EXPECT_EQ(std::get<std::int64_t>(*r.tile_size), 32);
    EXPECT_TRUE(r.act_static_scale);
    EXPECT_EQ(r.act_calibration_method, "minmax");
    EXPECT_DOUBLE_EQ(std::get<double>(*(*rules)[1].tile_size), 0.125);
    EXPECT_FALSE((*rules)[1].act_qtype);
  }
}

TEST(RuleFile, QtAndLoraFields) {
  const auto qt = parse_rules<QtRule>("- weight_qtype: int8\n  act_qtype: int8\n  bwd_qtype: int8\n  bwd_stochastic_rounding: uniform\n");
  EXPECT_EQ(qt[0].bwd_qtype, QType::kInt8);
  EXPECT_EQ(qt[0].bwd_stochastic_rounding, "uniform");
  const auto lora = parse_rules<LoraRule>("- module_path: 'fc.*'\n  rank: 8\n  alpha: 16\n  dropout: 0.1\n  weight_qtype: nf4\n");
  EXPECT_EQ(lora[0].rank, 8);
  EXPECT_FLOAT_EQ(lora[0].alpha, 16);
  EXPECT_EQ(lora[0].weight_qtype, QType::kNf4);
}

TEST(RuleFile, MistakesNameFileLineAndField) {
  expect_error([] { parse_rules<QuantizationRule>("- weight_qtype: int4\n  wieght_qtype: int8\n", "r.yaml"); },
               "r.yaml:2: field 'wieght_qtype': unknown field for a QuantizationRule");
  expect_error([] { parse_rules<QuantizationRule>("- weight_qtype: int9\n", "r.yaml"); }, "r.yaml:1: field 'weight_qtype': unknown qtype 'int9'");
  expect_error([] { parse_rules<QuantizationRule>("- module_path: 'a(b'\n", "r.yaml"); }, "r.yaml:1: field 'module_path': 'a(b' is not a valid regex");
  expect_error([] { parse_rules<QuantizationRule>("- weight_qtype: int8\n  act_calibration_method: rms\n", "r.yaml"); },
               "r.yaml:2: field 'act_calibration_method'");
  expect_error([] { parse_rules<QuantizationRule>("- weight_qtype: int8\n\n  act_qtype: int8\n  tile_size: -4\n", "r.yaml"); },
               "r.yaml:4: field 'tile_size': tile size -4 is not positive");
  expect_error([] { parse_rules<QuantizationRule>("- weight_qtype: int8\n  act_static_scale: yes please\n", "r.yaml"); },
               "r.yaml:2: field 'act_static_scale'");
  expect_error([] { parse_rules<QuantizationRule>("- weight_qtype: int8\n- weight_qtype: int4\n  act_static_scale: true\n", "r.yaml"); },
               "r.yaml:2: rule 1: act_static_scale is set but act_qtype is not");
  expect_error([] { parse_rules<QuantizationRule>("- weight_qtype: [int8\n", "r.yaml"); }, "r.yaml:");
  expect_error([] { parse_rules<LoraRule>("- rank: 0\n", "l.yaml"); }, "l.yaml:1: field 'rank': rank 0 must be positive");
  expect_error([] { parse_rules<QuantizationRule>("- rank: 4\n", "q.yaml"); }, "q.yaml:1: field 'rank': unknown field");
  expect_error([] { load_rules<QuantizationRule>("/nonexistent/rules.yaml"); }, "/nonexistent/rules.yaml: cannot read");
}

TEST(RuleFile, FirstFullMatchWinsAsInQwix) {
  const auto rules = parse_rules<QuantizationRule>("- module_path: 'layers/\\d+'\n  weight_qtype: int8\n- module_path: 'LIN\\d+'\n  weight_qtype: int4\n");
  EXPECT_EQ(first_match(rules, "layers/0", "dot_general"), 0);
  EXPECT_FALSE(first_match(rules, "layers/0/x", "dot_general"));
  EXPECT_FALSE(first_match(rules, "lin1", "dot_general"));  // case-sensitive: reported unused
}

}  // namespace
}  // namespace qforge::rules
