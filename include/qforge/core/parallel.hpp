// A minimal fork-join parallel_for with static chunking. Work is split into the same chunks for
// a given (n, threads), and each index's result is written to its own slot by the caller, so
// results never depend on the thread count or on scheduling.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace qforge {

// Default thread count: QFORGE_THREADS if set, else every core.
inline int default_threads() {
  if (const char* env = std::getenv("QFORGE_THREADS"); env && *env) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

namespace detail {
// A compiled backend with its own thread pool (the CPU backend's OpenMP team, which oneDNN also
// runs on) installs a runner here, so that header-only loops run on the kernels' threads: a
// second pool on the same cores would compete with the first one's threads, which keep spinning
// for a while after every kernel call. The runner calls call(ctx, i) once for each i in [0, n).
using ParallelRunner = void (*)(std::int64_t n, int threads, void* ctx, void (*call)(void* ctx, std::int64_t i));
inline std::atomic<ParallelRunner>& parallel_runner() {
  static std::atomic<ParallelRunner> runner{nullptr};
  return runner;
}

template <class F>
struct RunnerJob {
  F* fn = nullptr;
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex mutex;
  static void call(void* ctx, std::int64_t i) {
    auto* job = static_cast<RunnerJob*>(ctx);
    if (job->failed.load(std::memory_order_relaxed)) return;  // stop handing out work after an error
    try {
      (*job->fn)(i);
    } catch (...) {
      std::lock_guard lock(job->mutex);
      if (!job->error) job->error = std::current_exception();
      job->failed = true;
    }
  }
};
}  // namespace detail

// Calls fn(i) for i in [0, n) on up to `threads` threads. Items are handed out one at a time
// (a shared counter), which balances uneven items; the first exception is rethrown after all
// threads join. Runs on the installed runner's pool when there is one.
template <class F>
void parallel_for_each(std::int64_t n, int threads, F&& fn) {
  threads = static_cast<int>(std::clamp<std::int64_t>(threads, 1, std::max<std::int64_t>(n, 1)));
  if (threads == 1) {
    for (std::int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  if (const detail::ParallelRunner runner = detail::parallel_runner().load()) {
    using Fn = std::remove_reference_t<F>;
    detail::RunnerJob<Fn> job;
    job.fn = &fn;
    runner(n, threads, &job, &detail::RunnerJob<Fn>::call);
    if (job.error) std::rethrow_exception(job.error);
    return;
  }
  std::mutex mutex;
  std::int64_t next = 0;
  std::exception_ptr error;
  auto worker = [&] {
    while (true) {
      std::int64_t i;
      {
        std::lock_guard lock(mutex);
        if (error || next >= n) return;
        i = next++;
      }
      try {
        fn(i);
      } catch (...) {
        std::lock_guard lock(mutex);
        if (!error) error = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace qforge
