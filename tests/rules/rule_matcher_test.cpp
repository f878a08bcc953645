// RuleMatcher: Qwix's first-full-match resolution, the op_names filter, the list of rules that
// never matched (reported once, after the first run), and validation errors that name the rule.
#include <gtest/gtest.h>

#include <string>

#include "qforge/rules/rule.hpp"

namespace qforge::rules {
namespace {

QuantizationRule path_rule(std::string path, std::vector<std::string> ops = {}) {
  QuantizationRule r;
  r.module_path = std::move(path);
  r.op_names = std::move(ops);
  r.weight_qtype = QType::kInt8;
  return r;
}

// The message of the error `fn` throws ("" when it throws none).
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(RuleMatcher, FirstFullMatchWinsAndOpNamesFilter) {
  RuleMatcher<QuantizationRule> m({path_rule("encoder\\.layer\\.[0-9]+\\.attention", {"einsum"}),
                                   path_rule("encoder\\.layer\\.[0-9]+\\..*"), path_rule(".*")});
  // The regex must match the whole path: "layer.1" alone is no match for rule 1's pattern.
  EXPECT_EQ(m.match("encoder.layer.1.attention", "einsum"), 0);
  EXPECT_EQ(m.match("encoder.layer.1.attention", "dot_general"), 1);
  EXPECT_EQ(m.match("encoder.layer.12.output.dense", "dot_general"), 1);
  EXPECT_EQ(m.match("xencoder.layer.1.attention", "einsum"), 2);
  EXPECT_EQ(m.match("", "dot_general"), 2);
  RuleMatcher<QuantizationRule> narrow({path_rule("fc1")});
  EXPECT_EQ(narrow.match("fc10", "dot_general"), std::nullopt);  // a prefix is not a full match
  EXPECT_EQ(narrow.match("fc1", "dot_general"), 0);
}

TEST(RuleMatcher, UnusedRulesAreListedOnceAfterTheFirstRun) {
  RuleMatcher<QuantizationRule> m({path_rule("layers\\.0"), path_rule("layers\\.0"), path_rule("head"),
                                   path_rule("layers\\.[0-9]+", {"conv_general_dilated"})});
  m.match("layers.0", "dot_general");
  m.match("layers.1", "dot_general");  // matches nothing: stays float
  EXPECT_TRUE(m.used(0));
  EXPECT_FALSE(m.used(1));  // shadowed by rule 0
  EXPECT_EQ(m.unused_rules(), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(m.finish_run(), (std::vector<int>{1, 2, 3}));
  // Later runs report nothing new, even if a rule stays unused.
  m.match("head", "dot_general");
  EXPECT_TRUE(m.finish_run().empty());
  EXPECT_EQ(m.unused_rules(), (std::vector<int>{1, 3}));
  EXPECT_EQ(m.completed_runs(), 2);
}

TEST(RuleMatcher, ResolvedConfigCarriesTheRuleAndItsDefaults) {
  QtRule r;
  r.weight_qtype = QType::kInt4;
  r.act_qtype = QType::kInt8;
  r.bwd_qtype = QType::kInt8;
  r.bwd_stochastic_rounding = "uniform";
  QtRule none;
  none.module_path = "none";
  RuleMatcher<QtRule> m({none, r});
  ASSERT_EQ(m.match("fc", "dot_general"), 1);
  const SiteConfig c = m.config(1);
  EXPECT_EQ(c.rule_index, 1);
  EXPECT_EQ(c.weight_qtype, QType::kInt4);
  EXPECT_EQ(c.act_calibration_method, "absmax");  // unset act_calibration_method: absmax
  EXPECT_EQ(c.bwd_qtype, QType::kInt8);
  EXPECT_TRUE(c.bwd_stochastic_rounding);
  EXPECT_FALSE(c.act_static_scale);
}

TEST(RuleMatcher, ValidationErrorsNameTheRuleIndexAndField) {
  auto first_error = [](QuantizationRule bad) {
    return error_of([&] { RuleMatcher<QuantizationRule>({path_rule(".*"), path_rule("x"), bad}); });
  };
  QuantizationRule r = path_rule(".*");
  r.act_static_scale = true;
  EXPECT_EQ(first_error(r), "rule 2: act_static_scale is set but act_qtype is not");
  r = path_rule("layers[");
  EXPECT_NE(first_error(r).find("rule 2: module_path 'layers[' is not a valid regex"), std::string::npos);
  r = path_rule(".*");
  r.weight_calibration_method = "absmin";
  EXPECT_NE(first_error(r).find("rule 2: weight_calibration_method"), std::string::npos) << first_error(r);
  r = path_rule(".*");
  r.act_qtype = QType::kInt8;
  r.act_calibration_method = "percentile,200";
  EXPECT_NE(first_error(r).find("rule 2: act_calibration_method"), std::string::npos) << first_error(r);
  r = path_rule(".*");
  r.tile_size = std::int64_t{0};
  EXPECT_EQ(first_error(r), "rule 2: tile_size 0 must be positive");
  r.tile_size = 1.5;
  EXPECT_EQ(first_error(r), "rule 2: tile_size fraction 1.5 must be in (0, 1]");
  r = path_rule(".*", {""});
  EXPECT_EQ(first_error(r), "rule 2: op_names holds an empty name");
  r = path_rule(".*");
  r.act_batch_axes = {-1};
  EXPECT_EQ(first_error(r), "rule 2: act_batch_axes holds negative axis -1");
  // A valid list builds.
  EXPECT_EQ(first_error(path_rule("fc[0-9]", {"dot_general"})), "");
}

TEST(RuleMatcher, QtAndLoraRulesAreValidatedEvenWhenTheyMatchNothing) {
  QtRule qt;
  qt.bwd_stochastic_rounding = "nearest";
  EXPECT_EQ(error_of([&] { RuleMatcher<QtRule>({QtRule{}, qt}); }),
            "rule 1: bwd_stochastic_rounding 'nearest' is not supported (only 'uniform')");
  qt = QtRule{};
  qt.bwd_calibration_method = "rms,";
  EXPECT_NE(error_of([&] { RuleMatcher<QtRule>({qt}); }).find("rule 0: bwd_calibration_method"), std::string::npos);
  LoraRule lora;
  lora.module_path = "never";
  EXPECT_EQ(error_of([&] { RuleMatcher<LoraRule>({lora}); }), "rule 0: LoRA rank 0 must be positive");
  lora.rank = 4;
  lora.dropout = 1.0f;
  EXPECT_EQ(error_of([&] { RuleMatcher<LoraRule>({lora}); }), "rule 0: LoRA dropout 1 must be in [0, 1)");
  lora.dropout = 0.1f;
  EXPECT_EQ(error_of([&] { RuleMatcher<LoraRule>({lora}); }), "");
}

}  // namespace
}  // namespace qforge::rules
