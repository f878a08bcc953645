// The rule files shipped with examples/03_digits_accuracy load into the same rules the C++
// experiments build, and quantize the trained digits models to exactly the same accuracy.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "qforge/data/digits_experiments.hpp"
#include "qforge/rules/rule_file.hpp"

namespace {

using namespace qforge;
using data::DigitsModel;

std::string rules_file(const std::string& name) {
  return std::string(QFORGE_SOURCE_DIR) + "/examples/03_digits_accuracy/rules/" + name;
}

class DigitsRuleFile : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto path = data::default_digits_path(QFORGE_SOURCE_DIR);
    if (!std::filesystem::exists(path)) return;
    split_ = std::make_unique<data::DigitsSplit>(data::split_digits(data::load_digits(path), 0.2, data::kSplitSeed));
    // Rule equivalence needs trained weights, not good ones: a few epochs suffice.
    data::Schedule s = data::short_schedule();
    s.fp32_epochs = 3;
    trained_ = std::make_unique<data::TrainedDigits>(data::train_digits_models(*split_, s));
  }
  static void TearDownTestSuite() {
    split_.reset();
    trained_.reset();
  }
  void SetUp() override {
    if (!split_) GTEST_SKIP() << data::default_digits_path(QFORGE_SOURCE_DIR) << " is missing: run scripts/fetch-digits.sh";
  }

  static inline std::unique_ptr<data::DigitsSplit> split_;
  static inline std::unique_ptr<data::TrainedDigits> trained_;
};

TEST_F(DigitsRuleFile, TiledYamlMatchesTheCppRules) {
  const auto from_file = rules::load_rules<rules::QuantizationRule>(rules_file("ptq_w4a8_tile16.yaml"));
  ASSERT_EQ(from_file.size(), 2u);
  for (DigitsModel m : {DigitsModel::kMlp, DigitsModel::kCnn}) {
    SCOPED_TRACE(data::model_name(m));
    rules::QuantizationReport file_report, cpp_report;
    const double file_acc = data::ptq_accuracy(m, trained_->model(m), from_file, *split_, &file_report);
    const double cpp_acc =
        data::ptq_accuracy(m, trained_->model(m), data::tiled_rules(m, QType::kInt4, QType::kInt8, 16), *split_, &cpp_report);
    EXPECT_EQ(file_acc, cpp_acc);  // the same quantized model, so exactly the same predictions
    ASSERT_EQ(file_report.sites.size(), cpp_report.sites.size());
    for (std::size_t i = 0; i < file_report.sites.size(); ++i) {
      EXPECT_EQ(file_report.sites[i].weight_scale_shape, cpp_report.sites[i].weight_scale_shape) << file_report.sites[i].site;
      EXPECT_EQ(file_report.sites[i].bytes_after, cpp_report.sites[i].bytes_after) << file_report.sites[i].site;
    }
    // The conv-only first rule is unused on the MLP, which has no convolution.
    EXPECT_EQ(file_report.unused_rules, m == DigitsModel::kMlp ? std::vector<int>{0} : std::vector<int>{});
  }
}

TEST_F(DigitsRuleFile, StaticJsonMatchesTheCppRule) {
  const auto from_file = rules::load_rules<rules::QuantizationRule>(rules_file("ptq_w4a4_static.json"));
  ASSERT_EQ(from_file.size(), 1u);
  EXPECT_TRUE(from_file[0].act_static_scale);
  for (DigitsModel m : {DigitsModel::kMlp, DigitsModel::kCnn}) {
    SCOPED_TRACE(data::model_name(m));
    EXPECT_EQ(data::ptq_accuracy(m, trained_->model(m), from_file, *split_),
              data::ptq_accuracy(m, trained_->model(m), {data::rule_all(QType::kInt4, QType::kInt4, std::nullopt, true)}, *split_));
  }
}

TEST(DigitsRuleFiles, QatAndQloraFilesHoldTheTableRules) {
  const auto qat = rules::load_rules<rules::QtRule>(rules_file("qat_w2a8.yaml"));
  ASSERT_EQ(qat.size(), 1u);
  EXPECT_EQ(qat[0].module_path, ".*");
  EXPECT_EQ(qat[0].weight_qtype, QType::kInt2);
  EXPECT_EQ(qat[0].act_qtype, QType::kInt8);
  EXPECT_FALSE(qat[0].act_static_scale);
  EXPECT_FALSE(qat[0].bwd_qtype);  // QAT, not QT
  const auto lora = rules::load_rules<rules::LoraRule>(rules_file("qlora_nf4.yaml"));
  ASSERT_EQ(lora.size(), 1u);
  EXPECT_EQ(lora[0].weight_qtype, QType::kNf4);
  EXPECT_EQ(lora[0].rank, 8);
  EXPECT_EQ(lora[0].alpha, 16.0f);
  EXPECT_EQ(lora[0].dropout, 0.0f);
  // A LoRA field is not a QuantizationRule field: loading the file as PTQ rules names it.
  try {
    rules::load_rules<rules::QuantizationRule>(rules_file("qlora_nf4.yaml"));
    FAIL() << "rank accepted in a QuantizationRule";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qlora_nf4.yaml:4: field 'rank'"), std::string::npos) << e.what();
  }
}

}  // namespace
