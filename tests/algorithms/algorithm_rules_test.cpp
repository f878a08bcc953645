#include <gtest/gtest.h>

#include "qforge/rules/algorithm_rules.hpp"
#include "test_util.hpp"

namespace qa = qforge::algorithms;
namespace qr = qforge::rules;

TEST(AlgorithmRules, QuantizeLayersFromStatisticsWithoutAGraph) {
  const auto l1 = qa::testing::correlated_layer(8, 32, 200, 201);
  const auto l2 = qa::testing::correlated_layer(8, 32, 200, 202);
  std::map<std::string, qforge::TensorF> weights = {{"layers.0", qforge::TensorF({8, 32}, l1.w)},
                                                    {"layers.1", qforge::TensorF({8, 32}, l2.w)},
                                                    {"head", qforge::TensorF({8, 32}, l2.w)}};
  qa::StatisticsSet stats;
  for (const auto& [name, x] : std::map<std::string, const std::vector<float>*>{{"layers.0", &l1.x}, {"layers.1", &l2.x}}) {
    qa::LayerStatistics s(32);
    s.add(x->data(), nullptr, 200);
    stats.emplace(name, std::move(s));
  }
  qr::GptqRule g;
  g.module_path = "layers\\.0";
  g.weight_qtype = qforge::QType::kInt4;
  g.group_size = 16;
  qr::JointqRule j;
  j.module_path = "layers\\.[0-9]+";
  j.weight_qtype = qforge::QType::kInt3;
  j.threads = 1;
  const auto out = qr::quantize_layers(weights, stats, {g, j});
  ASSERT_EQ(out.size(), 2u);  // "head" matches no rule and stays float
  EXPECT_EQ(out[0].site, "layers.0");
  EXPECT_EQ(out[0].method, "gptq");
  EXPECT_EQ(out[0].layer.groups, 2);
  // Same as calling GPTQ directly.
  qa::GptqOptions o;
  o.grid.bits = 4;
  o.grid.group_size = 16;
  EXPECT_EQ(out[0].layer.codes, qa::gptq(l1.w.data(), 8, 32, stats.at("layers.0").h.data(), o).codes);
  EXPECT_EQ(out[1].method, "jointq");
  EXPECT_EQ(out[1].rule_index, 1);
  // A matched site without statistics names the site.
  weights.emplace("layers.7", qforge::TensorF({8, 32}, l1.w));
  try {
    qr::quantize_layers(weights, stats, {g, j});
    FAIL();
  } catch (const qforge::Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.7"), std::string::npos);
  }
}
