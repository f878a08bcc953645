// Speed of the scalar reference block encoders and decoders (formats/gguf_blocks.hpp, bnb4.hpp):
// the exact semantics every fast kernel is checked against. Reports float32 input bytes per
// second. Run: build/<dir>/bench/formats_bench --benchmark_out=f.json --benchmark_out_format=json
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "qforge/formats/bnb4.hpp"
#include "qforge/formats/gguf_blocks.hpp"

namespace qf = qforge::formats;

namespace {

constexpr std::int64_t kValues = 1 << 20;  // 4 MB of float32: one row per 4096 values

std::vector<float> gaussian(std::int64_t n) {
  std::vector<float> x(static_cast<std::size_t>(n));
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (auto& v : x) v = dist(rng);
  return x;
}

void BM_EncodeRef(benchmark::State& state) {
  const auto type = static_cast<qf::GgmlType>(state.range(0));
  const std::int64_t row = 4096;
  const auto x = gaussian(kValues);
  const std::int64_t row_bytes = qf::ggml_row_bytes(type, row);
  std::vector<std::uint8_t> out(static_cast<std::size_t>(kValues / row * row_bytes));
  for (auto _ : state) {
    for (std::int64_t r = 0; r < kValues / row; ++r) qf::encode_row(type, x.data() + r * row, out.data() + r * row_bytes, row);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * kValues * 4);
  state.SetLabel(std::string(qf::ggml_traits(type).name) + " reference encoder");
}

void BM_DecodeRef(benchmark::State& state) {
  const auto type = static_cast<qf::GgmlType>(state.range(0));
  const std::int64_t row = 4096;
  const auto x = gaussian(kValues);
  const std::int64_t row_bytes = qf::ggml_row_bytes(type, row);
  std::vector<std::uint8_t> q(static_cast<std::size_t>(kValues / row * row_bytes));
  for (std::int64_t r = 0; r < kValues / row; ++r) qf::encode_row(type, x.data() + r * row, q.data() + r * row_bytes, row);
  std::vector<float> y(static_cast<std::size_t>(kValues));
  for (auto _ : state) {
    for (std::int64_t r = 0; r < kValues / row; ++r) qf::decode_row(type, q.data() + r * row_bytes, y.data() + r * row, row);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * kValues * 4);
  state.SetLabel(std::string(qf::ggml_traits(type).name) + " decoder, float32 bytes written");
}

#define QFORGE_BLOCK_TYPES                                                                                      \
  Arg(static_cast<int>(qf::GgmlType::kQ4_0))->Arg(static_cast<int>(qf::GgmlType::kQ4_1))                          \
      ->Arg(static_cast<int>(qf::GgmlType::kQ8_0))->Arg(static_cast<int>(qf::GgmlType::kQ8_1))                    \
      ->Arg(static_cast<int>(qf::GgmlType::kQ4_K))->Arg(static_cast<int>(qf::GgmlType::kQ6_K))                    \
      ->Arg(static_cast<int>(qf::GgmlType::kF16))->Arg(static_cast<int>(qf::GgmlType::kBF16))
BENCHMARK(BM_EncodeRef)->QFORGE_BLOCK_TYPES->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DecodeRef)->QFORGE_BLOCK_TYPES->Unit(benchmark::kMillisecond);

void BM_Bnb4Encode(benchmark::State& state) {
  const auto x = gaussian(kValues);
  const qf::Bnb4Options opt{.type = state.range(0) ? qf::Bnb4Type::kFp4 : qf::Bnb4Type::kNf4, .double_quant = state.range(1) != 0};
  for (auto _ : state) benchmark::DoNotOptimize(qf::bnb4_quantize(x.data(), {kValues}, opt).packed.data());
  state.SetBytesProcessed(state.iterations() * kValues * 4);
  state.SetLabel(std::string(state.range(0) ? "FP4" : "NF4") + (state.range(1) ? " + double quant" : "") + " blocksize 64");
}
BENCHMARK(BM_Bnb4Encode)->Args({0, 0})->Args({0, 1})->Args({1, 0})->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
