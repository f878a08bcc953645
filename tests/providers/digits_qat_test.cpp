// QAT and QT on real data: fine-tuning the float digits models under fake quantization recovers
// what PTQ loses, and training from scratch with an int8 backward matches float training. Floors
// come from measured runs (docs/accuracy.md); one of the 359 test images is 0.28 points.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "qforge/data/digits_experiments.hpp"

namespace {

using namespace qforge;
using data::DigitsModel;

constexpr double kImage = 1.0 / 359.0;

class DigitsQat : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto path = data::default_digits_path(QFORGE_SOURCE_DIR);
    if (!std::filesystem::exists(path)) return;
    split_ = std::make_unique<data::DigitsSplit>(data::split_digits(data::load_digits(path), 0.2, data::kSplitSeed));
    trained_ = std::make_unique<data::TrainedDigits>(data::train_digits_models(*split_, schedule()));
  }
  static void TearDownTestSuite() {
    split_.reset();
    trained_.reset();
  }
  void SetUp() override {
    if (!split_) GTEST_SKIP() << data::default_digits_path(QFORGE_SOURCE_DIR) << " is missing: run scripts/fetch-digits.sh";
  }
  static data::Schedule schedule() { return data::short_schedule(); }
  static double fp32(DigitsModel m) { return trained_->fp32(m); }

  static inline std::unique_ptr<data::DigitsSplit> split_;
  static inline std::unique_ptr<data::TrainedDigits> trained_;
};

TEST_F(DigitsQat, QatW2A8RecoversWhatPtqLoses) {
  for (DigitsModel m : {DigitsModel::kMlp, DigitsModel::kCnn}) {
    SCOPED_TRACE(data::model_name(m));
    const std::vector<rules::QtRule> rule{data::qt_rule_all(QType::kInt2, QType::kInt8)};
    const double ptq = data::ptq_accuracy(m, trained_->model(m), data::inference_rules(rule), *split_);
    rules::QuantizationReport report;
    const double qat = data::qat_accuracy(m, trained_->model(m), rule, *split_, schedule(), &report);
    // Measured: PTQ 90.0% / 87.2%, QAT 96.1% / 94.4%. QAT must beat PTQ by a clear margin and
    // land within 2 points of float.
    EXPECT_GT(qat, ptq + 10 * kImage) << "qat " << qat << " ptq " << ptq;
    EXPECT_GE(qat, fp32(m) - 0.02) << "qat " << qat << " fp32 " << fp32(m);
    ASSERT_EQ(report.sites.size(), 3u);
    for (const auto& s : report.sites) EXPECT_EQ(s.mode, "qat") << s.site;
  }
}

TEST_F(DigitsQat, QatW4A4StaticIsAtLeastAsGoodAsPtq) {
  for (DigitsModel m : {DigitsModel::kMlp, DigitsModel::kCnn}) {
    SCOPED_TRACE(data::model_name(m));
    const std::vector<rules::QtRule> rule{data::qt_rule_all(QType::kInt4, QType::kInt4, /*act_static=*/true)};
    const double ptq = data::ptq_accuracy(m, trained_->model(m), data::inference_rules(rule), *split_);
    const double qat = data::qat_accuracy(m, trained_->model(m), rule, *split_, schedule());
    // Measured: PTQ 95.8% / 93.9%, QAT 95.0% / 95.3%. "Not worse beyond the test set's noise":
    // two classifiers at ~95% on 359 images differ by a few images from rounding alone (one
    // ulp of scale arithmetic moved the MLP's PTQ and QAT by three images each), so the slack is
    // one point (3.6 images), not one image.
    EXPECT_GE(qat, ptq - 0.01) << "qat " << qat << " ptq " << ptq;
  }
}

TEST_F(DigitsQat, QtInt8ForwardAndBackwardTrainsLikeFloat) {
  // QT and its float baseline train from the same initialisation, data order and epochs. Six
  // epochs (not the suite's fifteen) keep the integer backward of the CNN affordable; measured:
  // QT 92.8% / 94.7% against float 92.5% / 94.7%. The bar is 1 point.
  data::Schedule s = schedule();
  s.fp32_epochs = s.qt_epochs = 6;
  for (DigitsModel m : {DigitsModel::kMlp, DigitsModel::kCnn}) {
    SCOPED_TRACE(data::model_name(m));
    auto baseline = data::make_digits_model(m);
    data::train_float(*baseline, split_->train, s.fp32_epochs, s.lr);
    const double fp = nn::accuracy(*baseline, split_->test);
    rules::QuantizationReport report;
    const double qt = data::qt_from_scratch_accuracy(
        m, {data::qt_rule_all(QType::kInt8, QType::kInt8, false, QType::kInt8)}, *split_, s, &report);
    EXPECT_GE(qt, fp - 0.01) << "qt " << qt << " fp32 " << fp;
    ASSERT_EQ(report.sites.size(), 3u);
    for (const auto& site : report.sites) EXPECT_EQ(site.mode, "qt") << site.site;
  }
}

}  // namespace
