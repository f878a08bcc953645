#include <gtest/gtest.h>

#include "qforge/qforge.hpp"

namespace qforge {
namespace {

// qwix-semantics.md §5 item 3.
TEST(QArraySmoke, Int8PerTensorMatchesQwix) {
  TensorF x({5}, {-2, -1, 0, 1, 2});
  QArray q = quantize(x, {QType::kInt8, {}, {}, "absmax"});
  EXPECT_FLOAT_EQ(q.scale()[0], 2.0f / 127.5f);
  std::vector<int> codes;
  for (int i = 0; i < 5; ++i) codes.push_back(q.code(i));
  EXPECT_EQ(codes, (std::vector<int>{-128, -64, 0, 64, 127}));
}

TEST(QArraySmoke, ReferenceBackendRunsThroughRegistry) {
  std::vector<float> a = {1, 2, 3, 4}, b = {1, 0, 0, 1}, d(4);
  backend::run(backend::GemmF32Op{2, 2, 2, a.data(), 2, b.data(), 2, d.data(), 2});
  EXPECT_EQ(d, (std::vector<float>{1, 2, 3, 4}));
}

}  // namespace
}  // namespace qforge
