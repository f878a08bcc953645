// The thread count backends use for one op. Default: QFORGE_THREADS if set, else every core
// (core/parallel.hpp's default_threads). Kernels split work into chunks whose boundaries do not
// depend on the thread count, and each output element is reduced by one thread in a fixed order,
// so results are bit-identical for any thread count.
#pragma once

#include <atomic>

#include "qforge/core/error.hpp"
#include "qforge/core/parallel.hpp"

namespace qforge::backend {

namespace detail {
inline std::atomic<int>& thread_override() {
  static std::atomic<int> n{0};
  return n;
}
}  // namespace detail

// Sets the number of threads for subsequent ops (0 returns to the default).
inline void set_num_threads(int n) {
  if (n < 0) throw_error(Status::kInvalidArgument, "set_num_threads({}): thread count must be >= 0", n);
  detail::thread_override().store(n);
}

inline int num_threads() {
  const int n = detail::thread_override().load();
  return n > 0 ? n : default_threads();
}

}  // namespace qforge::backend
