// QuantizationReport: totals, the printed table and the JSON form carry every per-site field.
#include <gtest/gtest.h>

#include <limits>

#include "qforge/rules/report.hpp"

namespace qforge::rules {
namespace {

QuantizationReport two_site_report() {
  QuantizationReport r;
  r.provider = "ptq";
  SiteReport a;
  a.site = "layers.0/dot_general0";
  a.module_path = "layers.0";
  a.op_name = "dot_general";
  a.weight = "layers.0.weight";
  a.rule_index = 1;
  a.mode = "dynamic-range";
  a.weight_qtype = "int8";
  a.act_qtype = "int8";
  a.weight_scale_shape = {48, 1};
  const float w[4] = {1, -2, 3, -4}, dq[4] = {1, -2, 3, -3.5f};
  a.weight_error = analysis::compare(w, dq, 4);
  a.bytes_before = 12288;
  a.bytes_after = 3264;
  SiteReport b;
  b.site = "head/dot_general0";
  b.module_path = "head";
  b.op_name = "dot_general";
  b.weight = "head.weight";
  b.mode = "float";
  b.bytes_before = b.bytes_after = 1280;
  r.sites = {a, b};
  r.unused_rules = {2};
  return r;
}

TEST(Report, TotalsAndLookup) {
  const QuantizationReport r = two_site_report();
  EXPECT_EQ(r.bytes_before(), 12288u + 1280u);
  EXPECT_EQ(r.bytes_after(), 3264u + 1280u);
  ASSERT_NE(r.find("head/dot_general0"), nullptr);
  EXPECT_EQ(r.find("head/dot_general0")->rule_index, -1);
  EXPECT_EQ(r.find("missing/dot_general0"), nullptr);
}

TEST(Report, JsonCarriesEveryField) {
  const nlohmann::json j = nlohmann::json::parse(two_site_report().to_json().dump());
  EXPECT_EQ(j["provider"], "ptq");
  EXPECT_EQ(j["unused_rules"], nlohmann::json::array({2}));
  EXPECT_EQ(j["bytes_before"], 13568);
  EXPECT_EQ(j["bytes_after"], 4544);
  ASSERT_EQ(j["sites"].size(), 2u);
  const auto& s = j["sites"][0];
  EXPECT_EQ(s["site"], "layers.0/dot_general0");
  EXPECT_EQ(s["rule_index"], 1);
  EXPECT_EQ(s["mode"], "dynamic-range");
  EXPECT_EQ(s["weight_qtype"], "int8");
  EXPECT_EQ(s["act_qtype"], "int8");
  EXPECT_EQ(s["weight_scale_shape"], nlohmann::json::array({48, 1}));
  // Error 0.5 on one of four values: relative RMSE 0.5 / sqrt(30), SQNR 10 log10(30 / 0.25).
  EXPECT_NEAR(s["weight_error"]["relative_rmse"].get<double>(), 0.5 / std::sqrt(30.0), 1e-12);
  EXPECT_NEAR(s["weight_error"]["sqnr_db"].get<double>(), 10 * std::log10(120.0), 1e-9);
  EXPECT_EQ(j["sites"][1]["weight_error"]["mse"], 0.0);
  EXPECT_EQ(j["sites"][1]["rule_index"], -1);
}

TEST(Report, ExactQuantizationHasNullSqnrInJson) {
  QuantizationReport r = two_site_report();
  const float w[2] = {1, -1};
  r.sites[0].weight_error = analysis::compare(w, w, 2);  // exact: SQNR is +inf
  const nlohmann::json j = nlohmann::json::parse(r.to_json().dump());
  EXPECT_TRUE(j["sites"][0]["weight_error"]["sqnr_db"].is_null());
  EXPECT_EQ(j["sites"][0]["weight_error"]["relative_rmse"], 0.0);
}

TEST(Report, TableHasOneLinePerSiteAndNamesUnusedRules) {
  const std::string t = two_site_report().to_string();
  EXPECT_NE(t.find("ptq report: 2 sites"), std::string::npos) << t;
  const auto line_of = [&](std::string_view key) {
    const auto at = t.find(key);
    EXPECT_NE(at, std::string::npos) << key << "\n" << t;
    return t.substr(at, t.find('\n', at) - at);
  };
  const std::string first = line_of("layers.0/dot_general0");
  for (const char* field : {"dynamic-range", "int8", "[48, 1]", "12288", "3264"})
    EXPECT_NE(first.find(field), std::string::npos) << field << " missing in: " << first;
  EXPECT_NE(first.find(fmt::format("{:.4f}", 0.5 / std::sqrt(30.0))), std::string::npos) << first;
  const std::string second = line_of("head/dot_general0");
  EXPECT_NE(second.find("float"), std::string::npos) << second;
  EXPECT_NE(t.find("rule 2 matched no site"), std::string::npos);
  EXPECT_NE(t.find("weights: 13568 -> 4544 bytes"), std::string::npos);
}

}  // namespace
}  // namespace qforge::rules
