// The digits loader the accuracy tests stand on: the real file's shape and label balance, the
// seeded split, and errors that name the file and line of a malformed row.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "qforge/data/digits.hpp"

namespace {

using qforge::data::LabelledImages;

std::string digits_path() { return qforge::data::default_digits_path(QFORGE_SOURCE_DIR); }

#define SKIP_WITHOUT_DIGITS()                                                                       \
  if (!std::filesystem::exists(digits_path()))                                                      \
  GTEST_SKIP() << digits_path() << " is missing: run scripts/fetch-digits.sh (scripts/test.sh does)"

std::string write_temp(const std::string& name, const std::string& text) {
  const auto path = (std::filesystem::temp_directory_path() / name).string();
  std::ofstream(path) << text;
  return path;
}

std::string row(int label, int pixel = 3) {
  std::string s;
  for (int i = 0; i < 64; ++i) s += std::to_string(pixel) + ",";
  return s + std::to_string(label) + "\n";
}

// The error text for loading `text`, or "" if it loads.
std::string load_error(const std::string& name, const std::string& text) {
  const auto path = write_temp(name, text);
  try {
    qforge::data::load_digits(path);
  } catch (const qforge::Error& e) {
    std::filesystem::remove(path);
    return e.what();
  }
  std::filesystem::remove(path);
  return "";
}

TEST(DigitsDataset, RealFileHas1797ImagesOf64PixelsAndEveryDigit) {
  SKIP_WITHOUT_DIGITS();
  const LabelledImages d = qforge::data::load_digits(digits_path());
  ASSERT_EQ(d.size(), 1797);
  ASSERT_EQ(d.images.shape(), (std::vector<std::int64_t>{1797, 64}));
  std::array<int, 10> per_class{};
  for (int y : d.labels) ++per_class[static_cast<std::size_t>(y)];
  // sklearn's digits hold 174..183 images per class.
  for (int c = 0; c < 10; ++c) {
    EXPECT_GE(per_class[static_cast<std::size_t>(c)], 174) << "digit " << c;
    EXPECT_LE(per_class[static_cast<std::size_t>(c)], 183) << "digit " << c;
  }
  float lo = 1, hi = 0;
  for (std::int64_t i = 0; i < d.images.size(); ++i) {
    lo = std::min(lo, d.images.data()[i]);
    hi = std::max(hi, d.images.data()[i]);
  }
  EXPECT_EQ(lo, 0.0f);
  EXPECT_EQ(hi, 1.0f);  // 16/16: the full pixel range occurs
  // The first row of the file is a 0 (the UCI optdigits order sklearn keeps).
  EXPECT_EQ(d.labels[0], 0);
}

TEST(DigitsDataset, SplitIsSeededDisjointAndComplete) {
  SKIP_WITHOUT_DIGITS();
  const LabelledImages d = qforge::data::load_digits(digits_path());
  const auto a = qforge::data::split_digits(d, 0.2, 2026);
  const auto b = qforge::data::split_digits(d, 0.2, 2026);
  const auto c = qforge::data::split_digits(d, 0.2, 2027);
  EXPECT_EQ(a.train.size(), 1438);
  EXPECT_EQ(a.test.size(), 359);
  EXPECT_EQ(a.test.labels, b.test.labels);
  EXPECT_EQ(a.test.images.vec(), b.test.images.vec());
  EXPECT_NE(a.test.labels, c.test.labels);
  // Train and test together are a permutation of the data: the pixel sums and label counts agree.
  double sum_all = 0, sum_split = 0;
  for (std::int64_t i = 0; i < d.images.size(); ++i) sum_all += d.images.data()[i];
  for (const auto* part : {&a.train, &a.test})
    for (std::int64_t i = 0; i < part->images.size(); ++i) sum_split += part->images.data()[i];
  EXPECT_DOUBLE_EQ(sum_all, sum_split);
}

TEST(DigitsDataset, SliceCopiesRows) {
  const auto path = write_temp("qforge_digits_slice.csv", row(1, 0) + row(2, 16) + row(3, 8));
  const LabelledImages d = qforge::data::load_digits(path);
  std::filesystem::remove(path);
  const LabelledImages s = d.slice(1, 3);
  ASSERT_EQ(s.size(), 2);
  EXPECT_EQ(s.labels, (std::vector<int>{2, 3}));
  EXPECT_EQ(s.images.data()[0], 1.0f);
  EXPECT_EQ(s.images.data()[64], 0.5f);
}

TEST(DigitsDataset, MalformedRowsNameFileAndLine) {
  EXPECT_NE(load_error("qforge_digits_bad1.csv", row(1) + "1,2,3\n").find("qforge_digits_bad1.csv:2:"), std::string::npos);
  const std::string pixel = load_error("qforge_digits_bad2.csv", row(1) + row(2) + row(3, 17));
  EXPECT_NE(pixel.find(":3:"), std::string::npos) << pixel;
  EXPECT_NE(pixel.find("not in 0..16"), std::string::npos) << pixel;
  const std::string label = load_error("qforge_digits_bad3.csv", row(12));
  EXPECT_NE(label.find(":1:"), std::string::npos) << label;
  const std::string text = load_error("qforge_digits_bad4.csv", row(1) + "x" + row(1));
  EXPECT_NE(text.find(":2: 'x3'"), std::string::npos) << text;
  EXPECT_NE(load_error("qforge_digits_empty.csv", "").find("no samples"), std::string::npos);
  EXPECT_EQ(load_error("qforge_digits_good.csv", row(4)), "");
}

TEST(DigitsDataset, ShiftMovesPixelsAndZeroFillsTheVacatedEdge) {
  LabelledImages d{qforge::TensorF({1, 64}), {5}};
  for (int i = 0; i < 64; ++i) d.images.data()[i] = static_cast<float>(i + 1);
  const LabelledImages s = qforge::data::shift_images(d, 1, 2);  // right 1, down 2
  EXPECT_EQ(s.labels, d.labels);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x) {
      const float expected = (x >= 1 && y >= 2) ? static_cast<float>((y - 2) * 8 + (x - 1) + 1) : 0.0f;
      EXPECT_EQ(s.images.data()[y * 8 + x], expected) << "x " << x << " y " << y;
    }
  const LabelledImages back = qforge::data::shift_images(qforge::data::shift_images(d, -1, 0), 1, 0);
  for (int y = 0; y < 8; ++y) EXPECT_EQ(back.images.data()[y * 8], 0.0f);  // column 0 was lost
  EXPECT_EQ(back.images.data()[1], d.images.data()[1]);
}

TEST(DigitsDataset, MissingFileSaysHowToFetchIt) {
  try {
    qforge::data::load_digits("/nonexistent/digits.csv");
    FAIL() << "no error";
  } catch (const qforge::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/digits.csv"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("fetch-digits.sh"), std::string::npos);
  }
}

}  // namespace
