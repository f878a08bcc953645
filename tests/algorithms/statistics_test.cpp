#include <cstdio>
#include <filesystem>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "qforge/algorithms/statistics.hpp"
#include "test_util.hpp"

namespace qa = qforge::algorithms;

namespace {
// Dyadic values (k/8, |k| <= 64): every product and every partial sum is exact in float and
// double, so shards merged must equal one pass bit for bit.
std::vector<float> dyadic(std::int64_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> d(-64, 64);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<float>(d(gen)) / 8.0f;
  return v;
}
}  // namespace

TEST(Statistics, ShardsMergedEqualOnePassBitForBit) {
  for (unsigned seed : {101u, 102u}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    const std::int64_t cols = 24, tokens = 700;
    const auto x = dyadic(tokens * cols, seed);
    auto xq = dyadic(tokens * cols, seed + 7);
    qa::LayerStatistics one(cols, true);
    one.add(x.data(), xq.data(), tokens);
    qa::LayerStatistics a(cols, true), b(cols, true);
    a.add(x.data(), xq.data(), 512);  // shard boundary on a chunk boundary
    b.add(x.data() + 512 * cols, xq.data() + 512 * cols, tokens - 512);
    a.merge(b);
    EXPECT_EQ(a.tokens, one.tokens);
    EXPECT_EQ(a.h, one.h);
    EXPECT_EQ(a.h_delta, one.h_delta);
  }
}

TEST(Statistics, MatchDirectSumsAndRoundTripThroughAFile) {
  const auto l = qa::testing::correlated_layer(4, 16, 300, 111);
  auto xq = l.x;
  for (auto& v : xq) v = std::round(v * 4.0f) / 4.0f;
  qa::LayerStatistics s(16);
  s.add(l.x.data(), xq.data(), 300);
  const auto ref = qa::testing::gram(xq, 300, 16);
  for (std::size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(s.h[i], ref[i], 1e-5 * (std::fabs(ref[i]) + 1.0));
  double d01 = 0;
  for (std::int64_t t = 0; t < 300; ++t) d01 += (static_cast<double>(l.x[static_cast<std::size_t>(t * 16)]) - xq[static_cast<std::size_t>(t * 16)]) * xq[static_cast<std::size_t>(t * 16 + 1)];
  EXPECT_NEAR(s.h_delta[1], d01, 1e-5 * (std::fabs(d01) + 1.0));
  const auto path = (std::filesystem::temp_directory_path() / "qforge_alg_stats_test.safetensors").string();
  qa::save_statistics({{"blk.0.attn_q", s}}, path);
  const auto back = qa::load_statistics(path);
  ASSERT_EQ(back.count("blk.0.attn_q"), 1u);
  EXPECT_EQ(back.at("blk.0.attn_q").h, s.h);
  EXPECT_EQ(back.at("blk.0.attn_q").h_delta, s.h_delta);
  EXPECT_EQ(back.at("blk.0.attn_q").tokens, 300);
  const auto merged = qa::merge_statistics(back, back);
  EXPECT_EQ(merged.at("blk.0.attn_q").tokens, 600);
  std::filesystem::remove(path);
}

TEST(Statistics, BadInputsNameTheSite) {
  qa::LayerStatistics s(4);
  std::vector<float> x = {1, 2, 3, std::nanf("")};
  try {
    s.add(x.data(), nullptr, 1, "blk.2.ffn_down");
    FAIL();
  } catch (const qforge::Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.2.ffn_down"), std::string::npos);
  }
  qa::LayerStatistics t(5);
  EXPECT_THROW(s.merge(t, "x"), qforge::Error);
}
