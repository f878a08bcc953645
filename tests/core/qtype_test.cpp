#include <gtest/gtest.h>

#include "qforge/core/qtype.hpp"

namespace qforge {
namespace {

// qwix-semantics.md §5 item 1: symmetric bounds.
TEST(QType, SymmetricBoundsFollowQwix) {
  EXPECT_DOUBLE_EQ(info(QType::kInt8).symmetric_bound, 127.5);
  EXPECT_DOUBLE_EQ(info(QType::kInt4).symmetric_bound, 7.5);
  EXPECT_DOUBLE_EQ(info(QType::kInt6).symmetric_bound, 31.5);
  EXPECT_DOUBLE_EQ(info(QType::kInt2).symmetric_bound, 1.5);
  EXPECT_DOUBLE_EQ(info(QType::kInt16).symmetric_bound, 32768.0);
  EXPECT_DOUBLE_EQ(info(QType::kUInt8).symmetric_bound, 255.5);
  EXPECT_DOUBLE_EQ(info(QType::kNf4).symmetric_bound, 1.0);
  EXPECT_DOUBLE_EQ(info(QType::kFp8E4M3).symmetric_bound, 448.0);
}

TEST(QType, ParsesEveryNameAndRoundTrips) {
  for (QType t : kAllQTypes) EXPECT_EQ(parse_qtype(to_string(t)), t);
  EXPECT_EQ(parse_qtype("fp8"), QType::kFp8E4M3);
  EXPECT_EQ(parse_qtype("e5m2"), QType::kFp8E5M2);
}

TEST(QType, UnknownNameIsAnErrorThatListsTheValidNames) {
  try {
    parse_qtype("int9");
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("int9"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("nf4"), std::string::npos);
  }
}

}  // namespace
}  // namespace qforge
