// `qforge layer` and `qforge stats merge` end to end: JSON fields, output tensors, errors.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_test_util.hpp"
#include "qforge/algorithms/statistics.hpp"
#include "qforge/formats/safetensors.hpp"

namespace qf = qforge::formats;
using qforge::testing::run_qforge;
using qforge::testing::ScratchDir;

namespace {
void write_f32(const std::string& path, const std::string& name, std::vector<float> v, qforge::Shape shape) {
  qf::SafetensorsWriter w;
  w.add_f32(name, qforge::TensorF(std::move(shape), std::move(v)));
  w.write(path);
}

// Correlated inputs (AR(1) across features) so that GPTQ has something to exploit.
void make_layer(const ScratchDir& dir, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  const int rows = 16, cols = 64, tokens = 256;
  std::vector<float> w(rows * cols), x(tokens * cols), xq(tokens * cols);
  for (auto& v : w) v = 0.1f * n(gen);
  for (int t = 0; t < tokens; ++t) {
    float prev = n(gen);
    for (int j = 0; j < cols; ++j) {
      prev = j == 0 ? prev : 0.9f * prev + 0.43f * n(gen);
      x[static_cast<std::size_t>(t * cols + j)] = prev;
      xq[static_cast<std::size_t>(t * cols + j)] = prev + 0.05f * n(gen);
    }
  }
  write_f32(dir / "w.safetensors", "weight", w, {rows, cols});
  write_f32(dir / "x.safetensors", "x", x, {tokens, cols});
  write_f32(dir / "xq.safetensors", "x", xq, {tokens, cols});
}

nlohmann::json run_json(const std::string& args) {
  const auto r = run_qforge(args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return nlohmann::json::parse(r.output);
}
}  // namespace

TEST(LayerCommand, MethodsWriteTheContractTensorsAndGptqBeatsRtn) {
  ScratchDir dir;
  make_layer(dir, 7);
  const std::string common = "--weight " + dir / "w.safetensors" + " --inputs " + dir / "x.safetensors" + " --qtype int3 --group-size 32 ";
  const auto rtn = run_json("layer --method rtn " + common + "-o " + dir / "rtn.safetensors");
  const auto gptq = run_json("layer --method gptq " + common + "--act-order -o " + dir / "gptq.safetensors");
  EXPECT_EQ(rtn["method"], "rtn");
  EXPECT_EQ(gptq["group_size"], 32);
  EXPECT_LT(gptq["output_rel_err"].get<double>(), rtn["output_rel_err"].get<double>());
  qf::SafetensorsFile f(dir / "gptq.safetensors");
  EXPECT_EQ(f.at("weight").shape, (qforge::Shape{16, 64}));
  EXPECT_EQ(f.at("qvalue").dtype, qf::Dtype::kI8);
  EXPECT_EQ(f.at("scale").shape, (qforge::Shape{16, 2}));
  EXPECT_EQ(f.at("zero_point").dtype, qf::Dtype::kI8);
  EXPECT_EQ(f.at("perm").shape, (qforge::Shape{64}));
  EXPECT_EQ(qf::SafetensorsFile(dir / "rtn.safetensors").find("perm"), nullptr);

  const auto qep = run_json("layer --method qep " + common + "--inputs-quantized " + dir / "xq.safetensors" + " -o " + dir / "qep.safetensors");
  EXPECT_TRUE(qep["output_rel_err"].is_number());
  const auto jq = run_json("layer --method jointq " + common + "--sym --regularization-lambda 0 --threads 1 -o " + dir / "jq.safetensors");
  EXPECT_EQ(qf::SafetensorsFile(dir / "jq.safetensors").find("zero_point"), nullptr);  // symmetric
  const auto q40 = run_json("layer --method gptq --weight " + dir / "w.safetensors" + " --inputs " + dir / "x.safetensors" + " --qtype q4_0 -o " + dir / "q40.safetensors");
  EXPECT_EQ(q40["group_size"], 32);
}

TEST(LayerCommand, HessianInputMatchesInputsPath) {
  ScratchDir dir;
  make_layer(dir, 8);
  // H = XᵀX written as F64; GPTQ from it must give the same codes as from X itself.
  qf::SafetensorsFile xf(dir / "x.safetensors");
  const auto x = xf.to_float("x");
  qforge::algorithms::LayerStatistics s(64);
  s.add(x.data(), nullptr, 256);
  qforge::algorithms::save_statistics({{"site", s}}, dir / "stats.safetensors");
  const std::string common = "layer --method gptq --weight " + dir / "w.safetensors" + ":weight --qtype int4 ";
  run_json(common + "--inputs " + dir / "x.safetensors:x -o " + dir / "a.safetensors");
  const auto b = run_json(common + "--hessian " + dir / "stats.safetensors:site.hessian -o " + dir / "b.safetensors");
  EXPECT_TRUE(b["output_rel_err"].is_number());
  qf::SafetensorsFile fa(dir / "a.safetensors"), fb(dir / "b.safetensors");
  EXPECT_EQ(fa.to_float("qvalue").vec(), fb.to_float("qvalue").vec());
}

// The command's cost guard: from a Hessian file at n = 1024 (W 4 MB, H 8 MB), reading, the error
// metric and writing together may cost at most kOverheadRatio times what GPTQ itself takes. A
// ratio inside one run, so a busy machine slows both sides. The metric is two n³ float32 GEMMs
// (GPTQ about 1.4 of them at n = 4096, relatively more at 1024); the scalar double metric it
// replaced took 20-40x GPTQ's time here.
TEST(LayerCommand, HessianRunCostsAFewTimesTheAlgorithm) {
  constexpr double kOverheadRatio = 3.0;
  const unsigned seed = 31;
  std::printf("[ seed %u ]\n", seed);
  ScratchDir dir;
  const std::int64_t n = 1024, tokens = 2 * n;
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> w(static_cast<std::size_t>(n * n)), x(static_cast<std::size_t>(tokens * n));
  for (auto& v : w) v = 0.02f * nd(gen);
  for (std::int64_t t = 0; t < tokens; ++t) {
    float prev = nd(gen);
    for (std::int64_t j = 0; j < n; ++j) x[static_cast<std::size_t>(t * n + j)] = prev = 0.9f * prev + 0.43f * nd(gen);
  }
  write_f32(dir / "w.safetensors", "weight", w, {n, n});
  qforge::algorithms::LayerStatistics s(n);
  s.add(x.data(), nullptr, tokens);
  qforge::algorithms::save_statistics({{"site", s}}, dir / "stats.safetensors");
  const auto j = run_json("layer --method gptq --weight " + dir / "w.safetensors" + " --hessian " + dir / "stats.safetensors:site.hessian" +
                          " --qtype int4 --group-size 128 --asym --act-order -o " + dir / "out.safetensors");
  const double seconds = j["seconds"].get<double>(), total = j["total_seconds"].get<double>();
  std::printf("[ n %lld ] gptq %.4f s, command %.4f s (%.2fx), output_rel_err %.4g\n", static_cast<long long>(n), seconds,
              total, total / seconds, j["output_rel_err"].get<double>());
  EXPECT_GT(seconds, 0.0);
  EXPECT_LE(seconds, total);
  EXPECT_LE(total, kOverheadRatio * seconds);
}

TEST(LayerCommand, BadInputFailsWithOneLineAndNoOutput) {
  ScratchDir dir;
  make_layer(dir, 9);
  const auto base = "layer --method gptq --weight " + dir / "w.safetensors" + " --inputs " + dir / "x.safetensors";
  for (const std::string& bad : {base + " --qtype int4 --group-size 24", base + " --qtype int9",
                                 "layer --method gptq --weight " + dir / "w.safetensors:nope --inputs " + dir / "x.safetensors --qtype int4",
                                 "layer --method gptq --weight " + dir / "w.safetensors --hessian " + dir / "w.safetensors --qtype int4"}) {
    const auto r = run_qforge(bad + " -o " + dir / "out.safetensors");
    EXPECT_NE(r.exit_code, 0) << bad;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_FALSE(std::filesystem::exists(dir / "out.safetensors")) << bad;
  }
}

TEST(LayerCommand, StatsMergeAddsShards) {
  ScratchDir dir;
  qforge::algorithms::LayerStatistics a(4), b(4);
  std::vector<float> x = {1, 2, 3, 4, 0.5f, -1, 2, 0};
  a.add(x.data(), nullptr, 1);
  b.add(x.data() + 4, nullptr, 1);
  qforge::algorithms::save_statistics({{"s", a}}, dir / "a.safetensors");
  qforge::algorithms::save_statistics({{"s", b}}, dir / "b.safetensors");
  const auto r = run_qforge("stats merge " + dir / "a.safetensors" + " " + dir / "b.safetensors" + " -o " + dir / "c.safetensors");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  qforge::algorithms::LayerStatistics one(4);
  one.add(x.data(), nullptr, 2);
  const auto c = qforge::algorithms::load_statistics(dir / "c.safetensors");
  EXPECT_EQ(c.at("s").h, one.h);
  EXPECT_EQ(c.at("s").tokens, 2);
}
