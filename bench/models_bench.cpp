// Llama forward speed on a real GGUF, as llama-bench measures it: prompt processing (pp: 512
// tokens in one batch from an empty cache) and generation (tg: 128 tokens one at a time, each
// step returning the last position's logits). Reports tokens/s; 1 and 2 threads.
// Models: QFORGE_BENCH_GGUF (several, separated by ':'), else build/models/SmolLM2-135M-Instruct.Q4_1.gguf
// and, when the reference test has made it, its F32 widening in the build tree.
// Run: build/<dir>/bench/models_bench --benchmark_out=m.json --benchmark_out_format=json
#include <benchmark/benchmark.h>

#include <filesystem>
#include <map>
#include <random>
#include <sstream>

#include "qforge/backend/threads.hpp"
#include "qforge/models/llama.hpp"

namespace qm = qforge::models;
namespace fs = std::filesystem;

namespace {

const qm::LlamaModel& model_at(const std::string& path) {
  static std::map<std::string, qm::LlamaModel> models;
  auto it = models.find(path);
  if (it == models.end()) it = models.emplace(path, qm::LlamaModel::from_gguf(path)).first;
  return it->second;
}

std::vector<std::int32_t> random_tokens(std::int64_t n, std::int64_t vocab) {
  std::mt19937 rng(1);
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (auto& v : t) v = static_cast<std::int32_t>(rng() % static_cast<std::uint32_t>(vocab));
  return t;
}

void BM_LlamaPrompt(benchmark::State& state, const std::string& path) {
  qforge::backend::set_num_threads(static_cast<int>(state.range(0)));
  const auto& model = model_at(path);
  const auto tokens = random_tokens(512, model.config().n_vocab);
  auto cache = model.make_cache(512);
  for (auto _ : state) {
    cache.clear();
    benchmark::DoNotOptimize(model.forward(tokens, cache, /*all_logits=*/false));
  }
  state.counters["tokens_per_s"] = benchmark::Counter(512.0 * static_cast<double>(state.iterations()),
                                                      benchmark::Counter::kIsRate);
  qforge::backend::set_num_threads(0);
}

void BM_LlamaGenerate(benchmark::State& state, const std::string& path) {
  qforge::backend::set_num_threads(static_cast<int>(state.range(0)));
  const auto& model = model_at(path);
  const auto tokens = random_tokens(128, model.config().n_vocab);
  auto cache = model.make_cache(128);
  for (auto _ : state) {
    cache.clear();
    for (std::int32_t t : tokens) benchmark::DoNotOptimize(model.forward({&t, 1}, cache, false));
  }
  state.counters["tokens_per_s"] = benchmark::Counter(128.0 * static_cast<double>(state.iterations()),
                                                      benchmark::Counter::kIsRate);
  qforge::backend::set_num_threads(0);
}

std::vector<std::string> bench_models() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("QFORGE_BENCH_GGUF"); env && *env) {
    std::stringstream ss(env);
    for (std::string p; std::getline(ss, p, ':');)
      if (!p.empty()) out.push_back(p);
    return out;
  }
  const fs::path q41 = fs::path(QFORGE_SOURCE_DIR) / "build/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  const fs::path f32 = fs::path(QFORGE_BINARY_DIR) / "models/SmolLM2-135M-Instruct.Q4_1.F32.gguf";
  for (const auto& p : {q41, f32})
    if (fs::exists(p)) out.push_back(p.string());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  for (const auto& path : bench_models()) {
    const std::string name = fs::path(path).filename().string();
    benchmark::RegisterBenchmark(("BM_LlamaPrompt512/" + name).c_str(), BM_LlamaPrompt, path)
        ->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
    benchmark::RegisterBenchmark(("BM_LlamaGenerate128/" + name).c_str(), BM_LlamaGenerate, path)
        ->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
