// GGUF v3 reader/writer: round trips, the layout rules ggml's reader enforces, malformed files,
// and a seeded mutation fuzz.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "qforge/formats/gguf_file.hpp"

namespace qforge::formats {
namespace {

namespace fs = std::filesystem;

struct TempFile {
  std::string path = (fs::temp_directory_path() / ("qforge-gguf-" + std::to_string(::getpid()) + "-" +
                                                   std::to_string(reinterpret_cast<std::uintptr_t>(this)) + ".gguf"))
                         .string();
  ~TempFile() { fs::remove(path); }
};

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TensorF ramp(Shape shape) {
  TensorF t(std::move(shape));
  for (std::int64_t i = 0; i < t.size(); ++i) t[i] = std::sin(0.1f * static_cast<float>(i)) * 3;
  return t;
}

void write_sample(const std::string& path, std::uint32_t alignment = 32) {
  GgufWriter w;
  w.set("general.name", GgufValue::string("sample"));
  w.set("general.file_type", GgufValue::u32(2));
  w.set("sample.layers", GgufValue::i32(-3));
  w.set("sample.eps", GgufValue::f32(1e-5f));
  w.set("sample.flag", GgufValue::boolean(true));
  w.set("tokenizer.tokens", GgufValue::strings({"a", "bc", ""}));
  if (alignment != 32) w.set("general.alignment", GgufValue::u32(alignment));
  w.add_float("blk.0.attn_q.weight", GgmlType::kQ4_0, ramp({3, 64}));
  w.add_float("blk.0.ffn.weight", GgmlType::kQ8_0, ramp({2, 32}));
  w.add_float("output_norm.weight", GgmlType::kF32, ramp({5}));
  w.add_float("tok_embd.weight", GgmlType::kF16, ramp({2, 3}));
  w.write(path);
}

TEST(Gguf, RoundTripsMetadataAndTensors) {
  TempFile f;
  write_sample(f.path);
  GgufFile g(f.path);
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.find_kv("general.architecture")->to_display(), "qforge");
  EXPECT_EQ(std::get<std::uint64_t>(g.find_kv("general.quantization_version")->scalar), 2u);
  EXPECT_EQ(std::get<std::int64_t>(g.find_kv("sample.layers")->scalar), -3);
  EXPECT_EQ(g.find_kv("sample.flag")->to_display(), "true");
  EXPECT_EQ(g.find_kv("tokenizer.tokens")->array.size(), 3u);
  ASSERT_EQ(g.tensors().size(), 4u);
  const auto& q = g.at("blk.0.attn_q.weight");
  EXPECT_EQ(q.type, GgmlType::kQ4_0);
  EXPECT_EQ(q.shape, (Shape{3, 64}));
  EXPECT_EQ(q.nbytes, 3u * 2 * 18);
  // Tensor data equals what the block encoder produces, and offsets are padded to 32.
  for (const auto& t : g.tensors()) EXPECT_EQ(t.offset % 32, 0u) << t.name;
  std::vector<std::uint8_t> want(q.nbytes);
  const TensorF src = ramp({3, 64});
  for (int r = 0; r < 3; ++r) quantize_row_q4_0_ref(src.data() + r * 64, want.data() + r * 36, 64);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), g.bytes(q).begin()));
  const TensorF norm = g.to_float("output_norm.weight");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(norm[i], src[i]);
  // The file ends with the last tensor's padding, as ggml's reader requires.
  EXPECT_EQ(fs::file_size(f.path) % 32, 0u);
}

TEST(Gguf, FileTypeDefaultsToTheTypeHoldingMostValues) {
  const std::pair<GgmlType, std::uint64_t> cases[] = {
      {GgmlType::kQ8_0, 7}, {GgmlType::kQ4_0, 2}, {GgmlType::kQ4_1, 3}, {GgmlType::kF16, 1}, {GgmlType::kF32, 0}};
  for (const auto& [type, ftype] : cases) {
    TempFile f;
    GgufWriter w;
    w.add_float("big.weight", type, ramp({4, 64}));
    w.add_float("norm.weight", GgmlType::kF32, ramp({64}));  // fewer values than big.weight
    w.write(f.path);
    const GgufFile g(f.path);
    EXPECT_EQ(std::get<std::uint64_t>(g.find_kv("general.file_type")->scalar), ftype) << ggml_traits(type).name;
  }
  TempFile f;
  write_sample(f.path);  // sets general.file_type = 2 itself: kept
  EXPECT_EQ(std::get<std::uint64_t>(GgufFile(f.path).find_kv("general.file_type")->scalar), 2u);
}

TEST(Gguf, HonoursACustomAlignment) {
  TempFile f;
  write_sample(f.path, 64);
  GgufFile g(f.path);
  EXPECT_EQ(g.alignment(), 64u);
  for (const auto& t : g.tensors()) EXPECT_EQ(t.offset % 64, 0u);
}

// Byte surgery on a valid file: each broken rule must be an error naming file and tensor.
class GgufMalformed : public ::testing::Test {
 protected:
  void SetUp() override {
    write_sample(good.path);
    bytes = slurp(good.path);
  }
  std::size_t find(const std::string& needle) const { return bytes.find(needle); }
  void expect_error(const std::string& mutated, std::initializer_list<std::string> needles) {
    { std::ofstream(bad.path, std::ios::binary) << mutated; }
    try {
      GgufFile g(bad.path);
      ADD_FAILURE() << "accepted a malformed file";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(bad.path), std::string::npos) << e.what();
      for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << n << " not in " << e.what();
    }
  }
  // Offset of the u32 type id of tensor `name` in the tensor infos.
  std::size_t type_pos(const std::string& name, int n_dims) const { return find(name) + name.size() + 4 + 8 * n_dims; }
  TempFile good, bad;
  std::string bytes;
};

TEST_F(GgufMalformed, RemovedAndUnknownTypeIds) {
  std::string m = bytes;
  const std::uint32_t removed = 4;
  std::memcpy(&m[type_pos("blk.0.attn_q.weight", 2)], &removed, 4);
  expect_error(m, {"blk.0.attn_q.weight", "type id 4"});
  const std::uint32_t unknown = 77;
  std::memcpy(&m[type_pos("blk.0.attn_q.weight", 2)], &unknown, 4);
  expect_error(m, {"blk.0.attn_q.weight", "type id 77"});
}

TEST_F(GgufMalformed, TruncationDuplicatesOffsetsAndVersions) {
  expect_error(bytes.substr(0, bytes.size() - 40), {"truncated"});
  expect_error(bytes.substr(0, 30), {"past the end"});
  std::string off = bytes;
  const std::size_t off_pos = type_pos("blk.0.ffn.weight", 2) + 4;
  const std::uint64_t wrong = 8;
  std::memcpy(&off[off_pos], &wrong, 8);
  expect_error(off, {"blk.0.ffn.weight", "data offset 8 should be"});
  std::string ver = bytes;
  const std::uint32_t v1 = 1;
  std::memcpy(&ver[4], &v1, 4);
  expect_error(ver, {"version 1"});
  std::string magic = bytes;
  magic[0] = 'X';
  expect_error(magic, {"magic"});
}

TEST_F(GgufMalformed, RowLengthNotAMultipleOfTheBlock) {
  std::string m = bytes;
  const std::size_t ne0 = find("blk.0.ffn.weight") + 16 + 4;  // ne[0] = 32 for a Q8_0 row
  const std::int64_t bad_row = 48;
  std::memcpy(&m[ne0], &bad_row, 8);
  expect_error(m, {"blk.0.ffn.weight", "row length 48 is not a multiple of the Q8_0 block size 32"});
}

TEST(Gguf, WidenedCopyKeepsMetadataAndTheDecodedValues) {
  TempFile src, dst;
  write_sample(src.path);
  const GgufFile in(src.path);
  write_gguf_widened(in, dst.path, GgmlType::kF32);
  const GgufFile out(dst.path);
  EXPECT_EQ(out.find_kv("general.name")->to_display(), "sample");
  EXPECT_EQ(out.find_kv("tokenizer.tokens")->array.size(), 3u);
  EXPECT_EQ(std::get<std::uint64_t>(out.find_kv("general.file_type")->scalar), 0u);  // recomputed: all F32
  EXPECT_EQ(out.find_kv("general.quantization_version"), nullptr);
  ASSERT_EQ(out.tensors().size(), in.tensors().size());
  for (const auto& t : in.tensors()) {
    const auto& w = out.at(t.name);
    EXPECT_EQ(w.shape, t.shape) << t.name;
    // Quantized tensors become F32 holding exactly their decoded values; float ones are copied.
    EXPECT_EQ(w.type, ggml_traits(t.type).quantized ? GgmlType::kF32 : t.type) << t.name;
    EXPECT_EQ(out.to_float(t.name).vec(), in.to_float(t.name).vec()) << t.name;
  }
  try {
    write_gguf_widened(in, dst.path, GgmlType::kQ8_0);
    ADD_FAILURE() << "widening to Q8_0 should be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("widening writes F32"), std::string::npos) << e.what();
  }
}

TEST(Gguf, DuplicateTensorNamesAreRejected) {
  TempFile f, bad;
  GgufWriter w;
  w.add_float("a.weight", GgmlType::kF32, ramp({4}));
  w.add_float("b.weight", GgmlType::kF32, ramp({4}));
  w.write(f.path);
  std::string m = slurp(f.path);
  m.replace(m.find("b.weight"), 8, "a.weight");
  { std::ofstream(bad.path, std::ios::binary) << m; }
  try {
    GgufFile g(bad.path);
    ADD_FAILURE() << "accepted duplicate names";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'a.weight': name appears twice"), std::string::npos) << e.what();
  }
}

TEST(Gguf, WriterRejectsBadTensors) {
  GgufWriter w;
  EXPECT_THROW(w.add_float("x", GgmlType::kQ4_0, ramp({2, 48})), Error);
  w.add_float("x", GgmlType::kF32, ramp({2}));
  EXPECT_THROW(w.add_float("x", GgmlType::kF32, ramp({2})), Error);
  EXPECT_THROW(w.add_float(std::string(64, 'n'), GgmlType::kF32, ramp({2})), Error);
}

TEST(Gguf, MutationFuzzNeverCrashes) {
  TempFile good, bad;
  write_sample(good.path);
  const std::string original = slurp(good.path);
  const std::uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  int rejected = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string m = original;
    switch (rng() % 3) {
      case 0: m.resize(rng() % m.size()); break;
      case 1: for (int k = 0; k < 4; ++k) m[rng() % m.size()] = static_cast<char>(rng()); break;
      default: {  // a plausible-looking but wrong 64-bit length or count somewhere in the header
        const std::uint64_t v = rng() % 4 == 0 ? ~0ull - rng() % 8 : rng() % 100000;
        std::memcpy(&m[rng() % 400], &v, 8);
      }
    }
    { std::ofstream(bad.path, std::ios::binary) << m; }
    try {
      GgufFile g(bad.path);
      for (const auto& t : g.tensors()) (void)g.to_float(t.name);
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 500);
}

}  // namespace
}  // namespace qforge::formats
