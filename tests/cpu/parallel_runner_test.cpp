// core/parallel.hpp's loops run on the CPU backend's OpenMP team once the backend exists: every
// index exactly once, and an exception thrown inside still reaches the caller.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "qforge/backend/registry.hpp"
#include "qforge/core/parallel.hpp"

namespace {
void construct_backends() {
  // Any op makes the registry build its backends; the CPU one installs its runner then.
  float a = 1.0f, b = 2.0f, c = 0.0f;
  qforge::backend::run(qforge::backend::GemmF32Op{.M = 1, .N = 1, .K = 1, .a = &a, .lda = 1, .b = &b, .ldb = 1, .dst = &c, .ldd = 1});
  ASSERT_EQ(c, 2.0f);
}
}  // namespace

TEST(ParallelRunner, EveryIndexRunsOnce) {
  construct_backends();
#if defined(QFORGE_HAS_CPU_BACKEND)
  EXPECT_NE(qforge::detail::parallel_runner().load(), nullptr) << "the CPU backend did not install its runner";
#endif
  std::vector<std::atomic<int>> hits(1000);
  qforge::parallel_for_each(1000, 4, [&](std::int64_t i) { hits[static_cast<std::size_t>(i)]++; });
  for (std::size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i].load(), 1) << "index " << i;
}

TEST(ParallelRunner, ExceptionReachesTheCaller) {
  construct_backends();
  EXPECT_THROW(qforge::parallel_for_each(100, 3,
                                         [](std::int64_t i) {
                                           if (i == 37) throw std::runtime_error("index 37");
                                         }),
               std::runtime_error);
  // The pool is still usable afterwards.
  std::atomic<int> sum{0};
  qforge::parallel_for_each(10, 3, [&](std::int64_t i) { sum += static_cast<int>(i); });
  EXPECT_EQ(sum.load(), 45);
}
