// The CPU backend's kernels measured against this machine's own limits, in the same run:
//  - read_bw_1t / read_bw_all: a streaming read of 256 MB on one thread / on every thread;
//  - oneDNN's float32 GEMM on the same shape as each compute-bound kernel.
// Each kernel reports its throughput (GB/s for memory-bound kernels, counting the bytes named
// in the counter's description; GOPS for products) and its ratio to the matching limit, plus the
// two-thread speed-up for compute-bound kernels. scripts/bench.sh turns the JSON into
// docs/performance.md.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "qforge/backend/registry.hpp"
#include "qforge/backend/threads.hpp"

namespace qb = qforge::backend;
namespace qf = qforge::formats;

namespace {

constexpr std::int64_t kStreamBytes = 256ll << 20;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int all_threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

// Deterministic pseudo-random floats in [-1, 1) (fast enough for 256 MB).
void fill_random(float* x, std::int64_t n, std::uint64_t seed) {
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::int64_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = static_cast<float>(static_cast<std::int64_t>(s >> 40) - (1ll << 23)) / static_cast<float>(1 << 23);
  }
}

// ---- limits ----------------------------------------------------------------------------------
// Four independent sums, with software prefetch 1 KB ahead like the kernels use, so the limit is
// what a streaming read can reach on this machine, not what a naive loop reaches.
std::uint64_t read_range(const std::uint64_t* p, std::int64_t n) {
  std::uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (std::int64_t i = 0; i + 4 <= n; i += 4) {
    if (i % 8 == 0) __builtin_prefetch(p + i + 128);
    s0 += p[i];
    s1 += p[i + 1];
    s2 += p[i + 2];
    s3 += p[i + 3];
  }
  return s0 ^ s1 ^ s2 ^ s3;
}

// Best-of-5 streaming read bandwidth of a 256 MB buffer, in GB/s, measured once per thread count.
double read_bandwidth(int threads) {
  static std::map<int, double> cache;
  if (auto it = cache.find(threads); it != cache.end()) return it->second;
  const std::int64_t words = kStreamBytes / 8;
  std::vector<std::uint64_t> buf(static_cast<std::size_t>(words), 1);
  for (std::int64_t i = 0; i < words; i += 512) buf[static_cast<std::size_t>(i)] = static_cast<std::uint64_t>(i);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<std::uint64_t> sums(static_cast<std::size_t>(threads));
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    const std::int64_t part = words / threads;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] { sums[static_cast<std::size_t>(t)] = read_range(buf.data() + t * part, part); });
    for (auto& th : pool) th.join();
    const double s = seconds_since(t0);
    benchmark::DoNotOptimize(sums.data());
    best = std::max(best, static_cast<double>(kStreamBytes) / s / 1e9);
  }
  return cache[threads] = best;
}

// oneDNN float32 GEMM throughput (GFLOP/s) on one shape, measured once per (shape, threads).
double f32_gemm_gflops(std::int64_t M, std::int64_t N, std::int64_t K, int threads) {
  static std::map<std::string, double> cache;
  const std::string key = std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) + "t" + std::to_string(threads);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  std::vector<float> a(static_cast<std::size_t>(M * K)), b(static_cast<std::size_t>(N * K)), d(static_cast<std::size_t>(M * N));
  fill_random(a.data(), M * K, 1);
  fill_random(b.data(), N * K, 2);
  qb::set_num_threads(threads);
  const qb::GemmF32Op op{M, N, K, a.data(), K, b.data(), K, d.data(), N};
  qb::run(op);  // warm-up
  double best = 0, spent = 0;
  for (int rep = 0; rep < 20 && (rep < 3 || spent < 1.0); ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    qb::run(op);
    const double s = seconds_since(t0);
    spent += s;
    best = std::max(best, 2.0 * static_cast<double>(M * N * K) / s / 1e9);
  }
  qb::set_num_threads(0);
  return cache[key] = best;
}

// One-thread throughputs by kernel name, so the two-thread run can report its speed-up.
std::map<std::string, double>& single_thread_results() {
  static std::map<std::string, double> m;
  return m;
}

// Times the benchmark loop itself and returns seconds per iteration.
template <class F>
double timed_loop(benchmark::State& state, F&& body) {
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) body();
  return seconds_since(t0) / static_cast<double>(std::max<benchmark::IterationCount>(1, state.iterations()));
}

void report_memory_bound(benchmark::State& state, double bytes, double sec, int threads) {
  const double gbps = bytes / sec / 1e9;
  const double limit = read_bandwidth(threads);
  state.counters["GBps"] = gbps;
  state.counters["limit_read_GBps"] = limit;
  state.counters["ratio_to_read_bw"] = gbps / limit;
  state.counters["threads"] = threads;
}

void report_compute_bound(benchmark::State& state, const std::string& name, double ops, double sec, int threads,
                          std::int64_t M, std::int64_t N, std::int64_t K) {
  const double gops = ops / sec / 1e9;
  const double limit = f32_gemm_gflops(M, N, K, threads);
  state.counters["GOPS"] = gops;
  state.counters["limit_f32_gemm_GFLOPS"] = limit;
  state.counters["ratio_to_f32_gemm"] = gops / limit;
  state.counters["threads"] = threads;
  if (threads == 1) single_thread_results()[name] = gops;
  else if (auto it = single_thread_results().find(name); it != single_thread_results().end())
    state.counters["speedup_vs_1_thread"] = gops / it->second;
}

// ---- limits as benchmarks (so the JSON carries them) -----------------------------------------
void BM_ReadBandwidth(benchmark::State& state) {
  const int threads = state.range(0) == 0 ? all_threads() : static_cast<int>(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(read_bandwidth(threads));
  state.counters["GBps"] = read_bandwidth(threads);
  state.counters["threads"] = threads;
}
BENCHMARK(BM_ReadBandwidth)->Arg(1)->Arg(0)->Iterations(1)->Unit(benchmark::kMillisecond);

void BM_GemmF32OneDnn(benchmark::State& state) {
  const std::int64_t M = state.range(0), N = state.range(1), K = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  for (auto _ : state) benchmark::DoNotOptimize(f32_gemm_gflops(M, N, K, threads));
  state.counters["GFLOPS"] = f32_gemm_gflops(M, N, K, threads);
  state.counters["threads"] = threads;
}
BENCHMARK(BM_GemmF32OneDnn)
    ->Args({128, 4096, 4096, 1})
    ->Args({1024, 1024, 1024, 1})
    ->Args({128, 4096, 4096, 2})
    ->Args({1024, 1024, 1024, 2})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

// ---- memory-bound kernels (256 MB of input) ---------------------------------------------------
void BM_EncodeBlocks(benchmark::State& state) {
  const auto type = static_cast<qf::GgmlType>(state.range(0));
  const int threads = state.range(1) == 0 ? all_threads() : static_cast<int>(state.range(1));
  const std::int64_t n = kStreamBytes / 4;
  std::vector<float> x(static_cast<std::size_t>(n));
  fill_random(x.data(), n, 3);
  std::vector<std::uint8_t> out(static_cast<std::size_t>(qf::ggml_row_bytes(type, n)));
  qb::set_num_threads(threads);
  const qb::EncodeBlocksOp op{type, 1, n, x.data(), n, out.data()};
  qb::run(op);
  const double sec = timed_loop(state, [&] { qb::run(op); });
  qb::set_num_threads(0);
  report_memory_bound(state, static_cast<double>(n) * 4, sec, threads);  // float32 bytes read
  state.SetLabel(std::string(qf::ggml_traits(type).name) + " encode, float32 bytes read");
}
BENCHMARK(BM_EncodeBlocks)
    ->Args({static_cast<int>(qf::GgmlType::kQ8_0), 1})
    ->Args({static_cast<int>(qf::GgmlType::kQ4_0), 1})
    ->Args({static_cast<int>(qf::GgmlType::kQ4_1), 1})
    ->Args({static_cast<int>(qf::GgmlType::kQ8_0), 0})
    ->Args({static_cast<int>(qf::GgmlType::kQ4_0), 0})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_GemvQ4_0xQ8_0(benchmark::State& state) {
  const int threads = state.range(0) == 0 ? all_threads() : static_cast<int>(state.range(0));
  const std::int64_t K = 4096, row_bytes = qf::ggml_row_bytes(qf::GgmlType::kQ4_0, K), N = kStreamBytes / row_bytes;
  std::vector<std::uint8_t> w(static_cast<std::size_t>(N * row_bytes));
  {
    std::vector<float> row(static_cast<std::size_t>(K));
    for (std::int64_t n = 0; n < N; n += 1) {
      if (n < 64) fill_random(row.data(), K, static_cast<std::uint64_t>(n));
      qf::quantize_row_q4_0_ref(row.data(), w.data() + n * row_bytes, K);
    }
  }
  std::vector<float> x(static_cast<std::size_t>(K)), y(static_cast<std::size_t>(N));
  fill_random(x.data(), K, 7);
  std::vector<std::uint8_t> xq(static_cast<std::size_t>(qf::ggml_row_bytes(qf::GgmlType::kQ8_0, K)));
  qf::quantize_row_q8_0_ref(x.data(), xq.data(), K);
  qb::set_num_threads(threads);
  const qb::GemvBlocksOp op{qf::GgmlType::kQ4_0, N, K, w.data(), xq.data(), y.data()};
  qb::run(op);
  const double sec = timed_loop(state, [&] { qb::run(op); });
  qb::set_num_threads(0);
  report_memory_bound(state, static_cast<double>(N * row_bytes), sec, threads);  // weight bytes
  state.SetLabel("Q4_0 weights x Q8_0 activations, weight bytes");
}
BENCHMARK(BM_GemvQ4_0xQ8_0)->Arg(1)->Arg(0)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_GemvInt4G128xF32(benchmark::State& state) {
  const int threads = state.range(0) == 0 ? all_threads() : static_cast<int>(state.range(0));
  const std::int64_t K = 4096, group = 128;
  const std::int64_t row_bytes = K / 2 + K / group * 4;  // codes + float scales
  const std::int64_t N = kStreamBytes / row_bytes;
  std::vector<std::uint8_t> w(static_cast<std::size_t>(N * K / 2));
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<std::uint8_t>(i * 2654435761u >> 13);
  std::vector<float> scales(static_cast<std::size_t>(N * K / group), 0.01f), x(static_cast<std::size_t>(K)),
      y(static_cast<std::size_t>(N));
  fill_random(x.data(), K, 9);
  qb::set_num_threads(threads);
  const qb::GemmW4A16Op op{1, N, K, group, x.data(), K, w.data(), scales.data(), y.data(), N};
  qb::run(op);
  const double sec = timed_loop(state, [&] { qb::run(op); });
  qb::set_num_threads(0);
  report_memory_bound(state, static_cast<double>(N * row_bytes), sec, threads);
  state.SetLabel("int4 g128 weights x float32 activations (fused dequantize-GEMV), weight+scale bytes");
}
BENCHMARK(BM_GemvInt4G128xF32)->Arg(1)->Arg(0)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_GemvNf4xF32(benchmark::State& state) {
  const int threads = state.range(0) == 0 ? all_threads() : static_cast<int>(state.range(0));
  const std::int64_t K = 4096, block = 64, row_bytes = K / 2 + K / block * 4;
  const std::int64_t N = (kStreamBytes / 4) / row_bytes;  // 64 MB: NF4 is a secondary path
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(N * K / 2));
  for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<std::uint8_t>(i * 2654435761u >> 11);
  std::vector<float> absmax(static_cast<std::size_t>(N * K / block), 0.5f), x(static_cast<std::size_t>(K)),
      y(static_cast<std::size_t>(N));
  fill_random(x.data(), K, 11);
  qb::set_num_threads(threads);
  const qb::GemvNf4Op op{N, K, block, codes.data(), absmax.data(), x.data(), y.data()};
  qb::run(op);
  const double sec = timed_loop(state, [&] { qb::run(op); });
  qb::set_num_threads(0);
  report_memory_bound(state, static_cast<double>(N * row_bytes), sec, threads);
  state.SetLabel("NF4 (block 64) weights x float32, weight+absmax bytes, 64 MB");
}
BENCHMARK(BM_GemvNf4xF32)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---- compute-bound products -------------------------------------------------------------------
void BM_GemmW4A8(benchmark::State& state) {
  const std::int64_t M = state.range(0), N = state.range(1), K = state.range(2), group = 128;
  const int threads = static_cast<int>(state.range(3));
  std::vector<float> a(static_cast<std::size_t>(M * K)), d(static_cast<std::size_t>(M * N));
  fill_random(a.data(), M * K, 12);
  std::vector<std::uint8_t> w(static_cast<std::size_t>(N * K / 2));
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<std::uint8_t>(i * 2654435761u >> 9);
  std::vector<float> scales(static_cast<std::size_t>(N * K / group), 0.01f);
  qb::set_num_threads(threads);
  const qb::GemmW4A8Op op{M, N, K, group, a.data(), K, w.data(), scales.data(), d.data(), N};
  qb::run(op);
  const double sec = timed_loop(state, [&] { qb::run(op); });
  qb::set_num_threads(0);
  report_compute_bound(state, "w4a8", 2.0 * static_cast<double>(M * N * K), sec, threads, M, N, K);
  state.SetLabel("W4A8 int4 g128 x int8 (activations quantized per row on the fly)");
}
BENCHMARK(BM_GemmW4A8)->Args({128, 4096, 4096, 1})->Args({128, 4096, 4096, 2})->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_GemmW8A8(benchmark::State& state) {
  const std::int64_t M = state.range(0), N = state.range(1), K = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  std::vector<float> a(static_cast<std::size_t>(M * K)), d(static_cast<std::size_t>(M * N)), sw(static_cast<std::size_t>(N), 0.01f);
  fill_random(a.data(), M * K, 13);
  std::vector<std::int8_t> w(static_cast<std::size_t>(N * K));
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<std::int8_t>(static_cast<int>(i * 2654435761u >> 24) % 127);
  qb::set_num_threads(threads);
  const qb::GemmW8A8Op op{M, N, K, a.data(), K, w.data(), sw.data(), d.data(), N};
  qb::run(op);
  const double sec = timed_loop(state, [&] { qb::run(op); });
  qb::set_num_threads(0);
  report_compute_bound(state, "w8a8", 2.0 * static_cast<double>(M * N * K), sec, threads, M, N, K);
  state.SetLabel("W8A8 int8 x int8 -> int32 (activations quantized per row on the fly)");
}
BENCHMARK(BM_GemmW8A8)->Args({1024, 1024, 1024, 1})->Args({1024, 1024, 1024, 2})->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
