// End-to-end tests of `qforge quantize / inspect / dequantize / compare` on the built binary.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "cli/cli_test_util.hpp"
#include "qforge/formats/checkpoint.hpp"

namespace qforge {
namespace {

using testing::run_qforge;
using testing::ScratchDir;

TensorF normal(Shape shape, std::uint64_t seed, float sigma) {
  TensorF t(std::move(shape));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  for (std::int64_t i = 0; i < t.size(); ++i) t[i] = d(rng);
  return t;
}

// A small checkpoint: two Linear weights, a bias, a norm, and a weight whose rows are not a
// whole number of 32-blocks.
std::string write_model(const ScratchDir& dir, float poison = 0.0f) {
  formats::SafetensorsWriter w;
  TensorF w0 = normal({64, 128}, 1, 0.05f);
  if (poison != 0.0f) w0[77] = poison;
  w.add_f32("layers.0.weight", w0);
  w.add_f32("layers.0.bias", normal({64}, 2, 0.1f));
  w.add_f32("layers.1.weight", normal({10, 64}, 3, 0.05f));
  w.add_f32("norm.weight", TensorF({64}, std::vector<float>(64, 1.0f)));
  w.add_f32("odd.weight", normal({3, 100}, 4, 1.0f));
  const std::string path = dir / "model.safetensors";
  w.write(path);
  return path;
}

TEST(QuantizeCommand, GgufQ4_0OutputIsByteExactAndKeepsOneDimensionalTensorsFloat) {
  ScratchDir dir;
  const std::string in = write_model(dir), out = dir / "model.q4_0.gguf";
  const auto r = run_qforge(in + " -o " + out + " --type q4_0 --threads 2");
  EXPECT_NE(r.exit_code, 0) << "a usage error is expected without the subcommand";
  EXPECT_NE(r.output.find("subcommand is required"), std::string::npos) << r.output;
  const auto q = run_qforge("quantize " + in + " -o " + out + " --type q4_0 --threads 2");
  ASSERT_EQ(q.exit_code, 0) << q.output;
  EXPECT_NE(q.output.find("wrote " + out), std::string::npos) << q.output;
  const formats::GgufFile g(out);
  EXPECT_EQ(std::get<std::uint64_t>(g.find_kv("general.file_type")->scalar), 2u);
  const formats::SafetensorsFile src(in);
  const auto& t = g.at("layers.0.weight");
  ASSERT_EQ(t.type, formats::GgmlType::kQ4_0);
  EXPECT_EQ(t.shape, (Shape{64, 128}));
  const TensorF x = src.to_float("layers.0.weight");
  std::vector<std::uint8_t> want(t.nbytes);
  for (int row = 0; row < 64; ++row) formats::quantize_row_q4_0_ref(x.data() + row * 128, want.data() + row * 72, 128);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), g.bytes(t).begin()));
  EXPECT_EQ(g.at("layers.0.bias").type, formats::GgmlType::kF32);
  EXPECT_EQ(g.at("odd.weight").type, formats::GgmlType::kF32);  // 100 is not a multiple of 32
  const TensorF bias = g.to_float("layers.0.bias"), bias_src = src.to_float("layers.0.bias");
  for (int i = 0; i < 64; ++i) EXPECT_EQ(bias[i], bias_src[i]);
}

TEST(QuantizeCommand, SafetensorsQTypeOutputRoundTripsAndDequantizes) {
  ScratchDir dir;
  const std::string in = write_model(dir), out = dir / "model.int4.safetensors", deq = dir / "deq.safetensors";
  ASSERT_EQ(run_qforge("quantize " + in + " -o " + out + " --type int4 --group-size 32").exit_code, 0);
  const formats::Checkpoint c(out);
  ASSERT_NE(c.find("layers.0.weight"), nullptr);
  EXPECT_EQ(c.find("layers.0.weight")->type, "int4");
  const QArray q = formats::load_qarray(*c.safetensors(), "layers.0.weight");
  EXPECT_EQ(q.scale().shape(), (Shape{64, 4}));
  // The stored codes are exactly what the library's quantize gives.
  const TensorF x = formats::SafetensorsFile(in).to_float("layers.0.weight");
  const QArray ref = quantize(x, {QType::kInt4, {0}, {{1, std::int64_t{32}}}, "absmax"});
  EXPECT_TRUE(std::equal(ref.storage().begin(), ref.storage().end(), q.storage().begin()));
  ASSERT_EQ(run_qforge("dequantize " + out + " -o " + deq).exit_code, 0);
  const TensorF back = formats::SafetensorsFile(deq).to_float("layers.0.weight"), want = dequantize(ref);
  for (std::int64_t i = 0; i < back.size(); ++i) ASSERT_EQ(back[i], want[i]);
  const auto cmp = run_qforge("compare " + in + " " + out);
  EXPECT_EQ(cmp.exit_code, 0);
  EXPECT_NE(cmp.output.find("5 tensors compared"), std::string::npos) << cmp.output;
}

TEST(QuantizeCommand, RulesOverridePerTensorAndDryRunWritesNothing) {
  ScratchDir dir;
  const std::string in = write_model(dir), out = dir / "model.gguf", rules = dir / "rules.yaml";
  testing::write_text(rules, "- match: 'layers\\.1\\..*'\n  type: q8_0\n- match: 'layers\\.0\\.bias'\n  type: f16\n"
                             "- match: 'never\\..*'\n  type: q4_1\n");
  const auto dry = run_qforge("quantize " + in + " -o " + out + " --type q4_0 --rules " + rules + " --dry-run");
  ASSERT_EQ(dry.exit_code, 0) << dry.output;
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_NE(dry.output.find("rule line 1 'layers\\.1\\..*'"), std::string::npos) << dry.output;
  EXPECT_NE(dry.output.find("rule 'never\\..*' matched no tensor"), std::string::npos) << dry.output;
  ASSERT_EQ(run_qforge("quantize " + in + " -o " + out + " --type q4_0 --rules " + rules).exit_code, 0);
  const formats::GgufFile g(out);
  EXPECT_EQ(g.at("layers.1.weight").type, formats::GgmlType::kQ8_0);
  EXPECT_EQ(g.at("layers.0.weight").type, formats::GgmlType::kQ4_0);
  EXPECT_EQ(g.at("layers.0.bias").type, formats::GgmlType::kF16);
}

TEST(QuantizeCommand, BadInputFailsCleanlyAndLeavesNoOutput) {
  ScratchDir dir;
  const std::string in = write_model(dir, NAN), out = dir / "out.gguf";
  // NaN in a weight is an error naming the tensor and the element, for block types and qtypes.
  const auto r = run_qforge("quantize " + in + " -o " + out + " --type q4_0");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("'layers.0.weight': non-finite value nan at index [0, 77]"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(out));
  const auto r2 = run_qforge("quantize " + in + " -o " + (dir / "out.safetensors") + " --type int4");
  EXPECT_NE(r2.exit_code, 0);
  EXPECT_NE(r2.output.find("layers.0.weight"), std::string::npos) << r2.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "out.safetensors"));
  const std::string rules = dir / "bad.yaml";
  testing::write_text(rules, "- match: 'a'\n  type: q4_0\n- match: 'b'\n  typo: q8_0\n");
  const auto bad_rules = run_qforge("quantize " + in + " -o " + (dir / "x.gguf") + " --rules " + rules);
  EXPECT_NE(bad_rules.exit_code, 0);
  EXPECT_NE(bad_rules.output.find(rules + ":4: unknown field 'typo'"), std::string::npos) << bad_rules.output;
  const auto same = run_qforge("quantize " + in + " -o " + in);
  EXPECT_NE(same.exit_code, 0);
  EXPECT_NE(same.output.find("refusing to overwrite"), std::string::npos) << same.output;
  const auto wrong_type = run_qforge("quantize " + in + " -o " + (dir / "y.gguf") + " --type nf4");
  EXPECT_NE(wrong_type.exit_code, 0);
  EXPECT_NE(wrong_type.output.find("nf4"), std::string::npos);
  // Only the input, the rules file and (from the first run) out.gguf may exist: no temporaries.
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::path(in).parent_path()))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
}

TEST(InspectCommand, ListsTensorsAndRejectsATruncatedFile) {
  ScratchDir dir;
  const std::string in = write_model(dir);
  const auto r = run_qforge("inspect " + in);
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("layers.0.weight  F32       [64, 128]"), std::string::npos) << r.output;
  std::filesystem::resize_file(in, std::filesystem::file_size(in) - 100);
  const auto bad = run_qforge("inspect " + in);
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find(in), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("truncated"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace qforge
