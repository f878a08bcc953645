// End-to-end tests of `qforge analyze` on the built binary: the generated-weights suite and a
// checkpoint, checked against the same theory as tests/analysis.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli/cli_test_util.hpp"
#include "qforge/analysis/weight_suite.hpp"
#include "qforge/formats/safetensors.hpp"

namespace qforge {
namespace {

using testing::run_qforge;
using testing::ScratchDir;

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

// Four families x (int8 at three granularities + Q8_0) = 16 rows. Every int8 row meets the
// scale/2 bound (ratio <= 1 + 1e-4, see tests/analysis), and the uniform family at int8 per
// tensor measures 20 log10(255) = 48.13 dB: 4096 samples give ~0.06 dB of sampling spread.
TEST(AnalyzeCommand, SuiteTableAndJson) {
  ScratchDir dir;
  const std::string json = dir / "suite.json";
  const auto r = run_qforge("analyze --rows 32 --cols 128 --types int8,q8_0 --json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* family : {"gaussian", "uniform", "outliers", "multi-channel"})
    EXPECT_NE(r.output.find(family), std::string::npos) << r.output;
  const auto rows = read_json(json);
  ASSERT_EQ(rows.size(), 16u);
  int checked = 0;
  for (const auto& row : rows) {
    const std::string config = row["config"];
    if (config.rfind("int8", 0) == 0) {
      EXPECT_EQ(row["elements_over_bound"], 0) << row.dump();
      EXPECT_LE(row["bound_ratio"].get<double>(), 1.0 + 1e-4) << row.dump();
      ++checked;
    }
    if (row["name"] == "uniform" && config == "int8 per-tensor") {
      EXPECT_NEAR(row["sqnr_db"].get<double>(), 20 * std::log10(255.0), 0.3) << row.dump();
    }
  }
  EXPECT_EQ(checked, 12);
}

// A checkpoint: only rank >= 2 tensors are analyzed; per-channel outlier and scale lines follow
// the table; scale x2 costs 20 log10(2) = 6.02 dB at int8 (noise ~ step^2), allow 0.5 dB.
TEST(AnalyzeCommand, CheckpointTensors) {
  ScratchDir dir;
  formats::SafetensorsWriter w;
  w.add_f32("proj.weight", analysis::generate_weights(analysis::WeightFamily::kGaussian, 64, 128, 5));
  w.add_f32("proj.bias", TensorF({64}, 0.5f));
  const std::string in = dir / "m.safetensors", json = dir / "m.json";
  w.write(in);
  const auto r = run_qforge("analyze " + in + " --types int8,q4_0 --granularity channel --outliers 4 --scales 1,2 --json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("proj.bias"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("proj.weight  int8 per-channel: top 4 values"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("proj.weight  int8 per-channel: scale x  1:"), std::string::npos) << r.output;
  const auto rows = read_json(json);
  ASSERT_EQ(rows.size(), 2u);  // int8 per-channel and Q4_0
  EXPECT_EQ(rows[0]["config"], "int8 per-channel");
  EXPECT_EQ(rows[1]["config"], "Q4_0");
  EXPECT_DOUBLE_EQ(rows[1]["bits_per_weight"].get<double>(), 4.5);
}

// --granularity filters the table and the JSON alike; GGML types keep their own blocks.
TEST(AnalyzeCommand, GranularityFilter) {
  ScratchDir dir;
  const std::string json = dir / "c.json";
  const auto r = run_qforge("analyze --rows 16 --cols 96 --types int4,q4_0 --granularity channel --family uniform --json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto rows = read_json(json);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["config"], "int4 per-channel");
  EXPECT_EQ(rows[1]["config"], "Q4_0");
  const auto bad = run_qforge("analyze --granularity row");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("--granularity: unknown 'row'"), std::string::npos) << bad.output;
}

TEST(AnalyzeCommand, BadInputIsAClearError) {
  ScratchDir dir;
  const auto bad_type = run_qforge("analyze --types int9");
  EXPECT_EQ(bad_type.exit_code, 1);
  EXPECT_NE(bad_type.output.find("unknown type 'int9'"), std::string::npos) << bad_type.output;
  const auto bad_group = run_qforge("analyze --cols 100 --group 64");
  EXPECT_EQ(bad_group.exit_code, 1);
  EXPECT_NE(bad_group.output.find("--group 64 must divide --cols 100"), std::string::npos) << bad_group.output;
  const auto bad_family = run_qforge("analyze --family cauchy");
  EXPECT_EQ(bad_family.exit_code, 1);
  EXPECT_NE(bad_family.output.find("cauchy"), std::string::npos) << bad_family.output;

  const std::string junk = dir / "junk.safetensors";
  {
    std::ofstream f(junk, std::ios::binary);
    const unsigned char header_len[8] = {16, 0, 0, 0, 0, 0, 0, 0};  // claims 16 header bytes, has 5
    f.write(reinterpret_cast<const char*>(header_len), 8);
    f << "{\"a\":";
  }
  const auto bad_file = run_qforge("analyze " + junk);
  EXPECT_EQ(bad_file.exit_code, 1);
  EXPECT_NE(bad_file.output.find(junk), std::string::npos) << bad_file.output;
}

}  // namespace
}  // namespace qforge
