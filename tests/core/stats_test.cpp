// Static-range statistics: Qwix's cumulative mean (§5 item 10), merging of shards, and the EMA.
#include <gtest/gtest.h>

#include "core/test_util.hpp"

namespace qforge {
namespace {

using testing::expect_error;

TEST(RunningMean, AveragesLikeQwixSimpleMovingAverage) {
  RunningMean m;
  m.update(TensorF({2}, {1, 2}));
  m.update(TensorF({2}, {3, 4}));
  EXPECT_EQ(m.count(), 2);
  const TensorF v = m.value();
  EXPECT_FLOAT_EQ(v[0], 2);
  EXPECT_FLOAT_EQ(v[1], 3);
  expect_error([&] { m.update(TensorF({3}), "layer0.act"); }, {"layer0.act", "[3]", "[2]"});
}

TEST(RunningMean, ShardsMergeToTheSameStatisticsAsOnePass) {
  RunningMean one, shard_a, shard_b;
  for (int i = 0; i < 10; ++i) {
    // Integers keep every partial sum exact, so the two orders must agree bit for bit.
    const TensorF batch({3}, {float(i), float(2 * i), float(i * i)});
    one.update(batch);
    (i < 4 ? shard_a : shard_b).update(batch);
  }
  shard_a.merge(shard_b);
  EXPECT_EQ(shard_a.count(), one.count());
  for (int j = 0; j < 3; ++j) EXPECT_EQ(shard_a.sum()[j], one.sum()[j]);
  RunningMean empty;
  empty.merge(one);
  EXPECT_EQ(empty.count(), 10);
  RunningMean other({2});
  other.update(TensorF({2}, {1, 1}));
  expect_error([&] { one.merge(other, "site fc1"); }, {"site fc1"});
}

TEST(RunningMean, EmptyHasNoValue) { expect_error([] { RunningMean().value(); }, {"no samples"}); }

TEST(ExponentialMovingAverage, DecaysTowardNewValues) {
  ExponentialMovingAverage ema(0.5);
  ema.update(TensorF({1}, {4}));
  ema.update(TensorF({1}, {0}));
  EXPECT_FLOAT_EQ(ema.value()[0], 2);
  ema.update(TensorF({1}, {2}));
  EXPECT_FLOAT_EQ(ema.value()[0], 2);
  expect_error([] { ExponentialMovingAverage(1.0); }, {"decay"});
}

}  // namespace
}  // namespace qforge
