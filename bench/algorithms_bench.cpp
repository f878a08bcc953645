// GPTQ, QEP and JointQ timing on one synthetic correlated layer, next to one float32 GEMM of the
// same size on the same backend. Counters: output_rel_err of each method on held-in data, so a
// run also gives the RTN / GPTQ / QEP / JointQ error table of docs/algorithms.md.
// Size: QFORGE_ALG_BENCH_N (default 512: n x n weight, 2n tokens); 4096 is the configuration.
// Each method runs once untimed before its timed iteration, as Google Benchmark's own first
// trial run warms the GEMM it is compared with: oneDNN generates its kernels for a shape on first
// use, which a model's later layers of the same shape never pay again. Every call still
// allocates and first-touches its own output and scratch, as it would in a real run.
//
// BM_GptqTorch: the peer. GPTQ as a PyTorch user runs it (tools/gptq_torch.py, written from the
// paper, float32 on the CPU) on the same W and H, written to files by this benchmark, next to
// qforge's GPTQ timed in the same run with the same threads; its row's time is PyTorch's, its
// counters qforge's time, the ratio and the fraction of codes that differ. The interpreter is
// QFORGE_TORCH_PYTHON, else $QFORGE_PYENV/bin/python, else the checkout's build/pyenv
// (scripts/torch-env.sh installs torch there); without torch the row is skipped with the reason.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <utility>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include "qforge/algorithms/jointq.hpp"
#include "qforge/algorithms/qep.hpp"
#include "qforge/algorithms/statistics.hpp"
#include "qforge/formats/safetensors.hpp"

namespace qa = qforge::algorithms;

namespace {
struct Problem {
  std::int64_t n = 0, tokens = 0;
  std::vector<float> w, x, xq;
  qa::LayerStatistics stats;
};

// AR(1) features (rho 0.9) with heavy-tailed token scales and outlier channels; the quantized
// stream adds correlated noise of 5% (as an upstream quantized layer would).
const Problem& problem(std::int64_t n) {
  static std::map<std::int64_t, Problem> cache;
  auto it = cache.find(n);
  if (it != cache.end()) return it->second;
  Problem p;
  p.n = n;
  p.tokens = 2 * n;
  std::mt19937 gen(1234);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::chi_squared_distribution<float> chi(3.0f);
  p.w.resize(static_cast<std::size_t>(n * n));
  for (auto& v : p.w) v = 0.02f * d(gen);
  p.x.resize(static_cast<std::size_t>(p.tokens * n));
  p.xq.resize(p.x.size());
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    const float tail = std::sqrt(3.0f / std::max(chi(gen), 0.05f));
    float prev = d(gen), noise = 0.0f;
    for (std::int64_t j = 0; j < n; ++j) {
      prev = j == 0 ? prev : 0.9f * prev + 0.436f * d(gen);
      noise = 0.8f * noise + 0.6f * d(gen);
      const float v = prev * tail * (j % 97 == 5 ? 10.0f : 1.0f);
      p.x[static_cast<std::size_t>(t * n + j)] = v;
      p.xq[static_cast<std::size_t>(t * n + j)] = v + 0.05f * noise * tail;
    }
  }
  p.stats = qa::LayerStatistics(n, true);
  p.stats.add(p.x.data(), p.xq.data(), p.tokens);
  return cache.emplace(n, std::move(p)).first->second;
}

// ‖X Wᵀ − X̂ Ŵᵀ‖² / ‖X Wᵀ‖² through the backend GEMM.
double rel_err(const Problem& p, const std::vector<float>& wq) {
  std::vector<float> y(static_cast<std::size_t>(p.tokens * p.n)), yq(y.size());
  using qforge::backend::GemmF32Op;
  qforge::backend::run(GemmF32Op{.M = p.tokens, .N = p.n, .K = p.n, .a = p.x.data(), .lda = p.n, .b = p.w.data(), .ldb = p.n, .dst = y.data(), .ldd = p.n});
  qforge::backend::run(GemmF32Op{.M = p.tokens, .N = p.n, .K = p.n, .a = p.xq.data(), .lda = p.n, .b = wq.data(), .ldb = p.n, .dst = yq.data(), .ldd = p.n});
  double num = 0, den = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    num += (static_cast<double>(y[i]) - yq[i]) * (static_cast<double>(y[i]) - yq[i]);
    den += static_cast<double>(y[i]) * y[i];
  }
  return num / den;
}

qa::GridSpec grid(int bits) {
  qa::GridSpec g;
  g.bits = bits;
  g.group_size = 128;
  return g;
}

void BM_Gemm(benchmark::State& s) {
  const auto& p = problem(s.range(0));
  std::vector<float> c(static_cast<std::size_t>(p.n * p.n));
  for (auto _ : s)
    qforge::backend::run(qforge::backend::GemmF32Op{.M = p.n, .N = p.n, .K = p.n, .a = p.w.data(), .lda = p.n, .b = p.w.data(), .ldb = p.n, .dst = c.data(), .ldd = p.n});
}

void BM_Rtn(benchmark::State& s) {
  const auto& p = problem(s.range(0));
  qa::QuantizedLayer q;
  q = qa::quantize_rtn(p.w.data(), p.n, p.n, grid(static_cast<int>(s.range(1))));  // warm-up
  for (auto _ : s) q = qa::quantize_rtn(p.w.data(), p.n, p.n, grid(static_cast<int>(s.range(1))));
  s.counters["output_rel_err"] = rel_err(p, q.weight);
}

qa::GptqOptions gptq_options(int bits) {
  qa::GptqOptions o;
  o.grid = grid(bits);
  o.act_order = true;
  return o;
}

void BM_Gptq(benchmark::State& s) {
  const auto& p = problem(s.range(0));
  const auto o = gptq_options(static_cast<int>(s.range(1)));
  qa::QuantizedLayer q;
  q = qa::gptq(p.w.data(), p.n, p.n, p.stats.h.data(), o);  // warm-up
  for (auto _ : s) q = qa::gptq(p.w.data(), p.n, p.n, p.stats.h.data(), o);
  s.counters["output_rel_err"] = rel_err(p, q.weight);
}

struct CommandOutput {
  int exit_code = -1;
  std::string out;
};

CommandOutput run_command(const std::string& command) {
  CommandOutput r;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, pipe)) r.out += buf;
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string torch_python() {
  if (const char* p = std::getenv("QFORGE_TORCH_PYTHON"); p && *p) return p;
  if (const char* v = std::getenv("QFORGE_PYENV"); v && *v) return std::string(v) + "/bin/python";
  return std::string(QFORGE_SOURCE_DIR) + "/build/pyenv/bin/python";
}

void BM_GptqTorch(benchmark::State& s) {
  const auto& p = problem(s.range(0));
  const int bits = static_cast<int>(s.range(1));
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("qforge-gptq-torch-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  qforge::formats::SafetensorsWriter ww, hw;
  ww.add_f32("weight", qforge::TensorF({p.n, p.n}, p.w));
  std::vector<std::uint8_t> hb(p.stats.h.size() * sizeof(double));
  std::memcpy(hb.data(), p.stats.h.data(), hb.size());
  hw.add("h", qforge::formats::Dtype::kF64, {p.n, p.n}, std::move(hb));
  ww.write((dir / "w.safetensors").string());
  hw.write((dir / "h.safetensors").string());
  const std::string command = torch_python() + " " + QFORGE_SOURCE_DIR + "/tools/gptq_torch.py --weight " +
                              (dir / "w.safetensors").string() + " --hessian " + (dir / "h.safetensors").string() +
                              " --codes " + (dir / "codes.safetensors").string() + " --bits " + std::to_string(bits) +
                              " --group-size 128 --act-order --threads " +
                              std::to_string(qforge::backend::num_threads()) + " 2>&1";
  const auto o = gptq_options(bits);
  qa::QuantizedLayer q = qa::gptq(p.w.data(), p.n, p.n, p.stats.h.data(), o);  // warm-up, as BM_Gptq
  double qforge_seconds = 0;
  for (auto _ : s) {
    const auto t0 = std::chrono::steady_clock::now();
    q = qa::gptq(p.w.data(), p.n, p.n, p.stats.h.data(), o);
    qforge_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto r = run_command(command);
    if (r.exit_code != 0) {
      std::string why = (r.exit_code == 77 ? "PyTorch peer skipped: " : "PyTorch peer failed: ") + r.out;
      while (!why.empty() && std::isspace(static_cast<unsigned char>(why.back()))) why.pop_back();
      std::fprintf(stderr, "%s\n", why.c_str());
      s.SkipWithError(why.c_str());
      break;
    }
    const auto j = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
    s.SetIterationTime(j["seconds"].get<double>());
    s.counters["torch_first_call_s"] = j["first_call_seconds"].get<double>();
    const auto torch_codes = qforge::formats::SafetensorsFile((dir / "codes.safetensors").string()).to_float("qvalue");
    std::int64_t differ = 0, max_diff = 0;
    for (std::size_t i = 0; i < q.codes.size(); ++i) {
      const auto d = std::llabs(static_cast<long long>(torch_codes[static_cast<std::int64_t>(i)]) - q.codes[i]);
      differ += d != 0;
      max_diff = std::max<std::int64_t>(max_diff, d);
    }
    s.counters["qforge_s"] = qforge_seconds;
    s.counters["qforge_over_torch"] = qforge_seconds / j["seconds"].get<double>();
    s.counters["codes_differ"] = static_cast<double>(differ) / static_cast<double>(q.codes.size());
    s.counters["max_code_diff"] = static_cast<double>(max_diff);
    s.counters["threads"] = qforge::backend::num_threads();
  }
  fs::remove_all(dir);
}

void BM_Qep(benchmark::State& s) {
  const auto& p = problem(s.range(0));
  const auto o = gptq_options(static_cast<int>(s.range(1)));
  qa::QuantizedLayer q;
  q = qa::qep_gptq(p.w.data(), p.n, p.n, p.stats.h.data(), p.stats.h_delta.data(), qa::QepOptions{}, o);  // warm-up
  for (auto _ : s) q = qa::qep_gptq(p.w.data(), p.n, p.n, p.stats.h.data(), p.stats.h_delta.data(), qa::QepOptions{}, o);
  s.counters["output_rel_err"] = rel_err(p, q.weight);
}

void BM_Jointq(benchmark::State& s) {
  const auto& p = problem(s.range(0));
  qa::JointqOptions o;
  o.grid = grid(static_cast<int>(s.range(1)));
  o.regularization_lambda = 0.0;
  o.max_sweeps = 3;
  qa::JointqResult r;
  r = qa::jointq(p.w.data(), p.n, p.n, p.stats.h.data(), static_cast<double>(p.tokens), o);  // warm-up
  for (auto _ : s) r = qa::jointq(p.w.data(), p.n, p.n, p.stats.h.data(), static_cast<double>(p.tokens), o);
  s.counters["output_rel_err"] = rel_err(p, r.layer.weight);
}

}  // namespace

// Size from QFORGE_ALG_BENCH_N (default 512; the configuration is 4096).
int main(int argc, char** argv) {
  const char* env = std::getenv("QFORGE_ALG_BENCH_N");
  const std::int64_t n = env && *env ? std::atoll(env) : 512;
  benchmark::RegisterBenchmark("BM_Gemm", BM_Gemm)->Arg(n)->Unit(benchmark::kMillisecond);
  using Fn = void (*)(benchmark::State&);
  const std::pair<const char*, Fn> methods[] = {{"BM_Rtn", BM_Rtn}, {"BM_Gptq", BM_Gptq}, {"BM_Qep", BM_Qep}, {"BM_Jointq", BM_Jointq}};
  for (const auto& [name, fn] : methods)
    benchmark::RegisterBenchmark(name, fn)->Args({n, 4})->Args({n, 3})->Unit(benchmark::kMillisecond)->Iterations(1)->UseRealTime();
  benchmark::RegisterBenchmark("BM_GptqTorch", BM_GptqTorch)->Args({n, 4})->Unit(benchmark::kMillisecond)->Iterations(1)->UseManualTime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
