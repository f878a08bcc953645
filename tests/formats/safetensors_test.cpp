// safetensors reader/writer and qforge's quantized layout: round trips, every malformed-file
// case the reference reader rejects, and a seeded mutation fuzz that must never crash.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "qforge/formats/qarray_io.hpp"

namespace qforge::formats {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / fs::path("qforge-st-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  static int& counter() {
    static int c = 0;
    return c;
  }
  fs::path path_;
};

void write_raw(const std::string& path, const std::string& header, std::size_t buffer_bytes) {
  std::ofstream out(path, std::ios::binary);
  const std::uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header;
  out << std::string(buffer_bytes, '\0');
}

template <class F>
void expect_format_error(F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "expected a qforge::Error";
  } catch (const Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << n << " not in: " << e.what();
  }
}

TEST(Safetensors, RoundTripsTensorsAndMetadata) {
  TempDir dir;
  SafetensorsWriter w;
  TensorF a({2, 3}, {1, 2, 3, 4, 5, 6});
  w.add_f32("layers.0.weight", a);
  w.add("ids", Dtype::kI64, {2}, std::vector<std::uint8_t>(16, 1));
  w.add("half", Dtype::kF16, {1}, {0x00, 0x3C});  // 1.0
  w.set_metadata("format", "pt");
  w.write(dir.file("m.safetensors"));
  SafetensorsFile f(dir.file("m.safetensors"));
  EXPECT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const TensorF back = f.to_float("layers.0.weight");
  EXPECT_EQ(back.shape(), a.shape());
  for (int i = 0; i < 6; ++i) EXPECT_EQ(back[i], a[i]);
  EXPECT_EQ(f.to_float("half")[0], 1.0f);
  // Header padded to 8 and the data aligned: the first tensor (I64, widest) starts 8-aligned.
  std::ifstream in(dir.file("m.safetensors"), std::ios::binary);
  std::uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(Safetensors, EveryQTypeRoundTripsThroughTheQforgeLayout) {
  TempDir dir;
  TensorF x({4, 64});
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (std::int64_t i = 0; i < x.size(); ++i) x[i] = nd(rng);
  SafetensorsWriter w;
  std::vector<QArray> originals;
  for (QType t : kAllQTypes) {
    const bool asym = is_integer(t) && !info(t).is_signed;
    originals.push_back(quantize(x, {t, {0}, {{1, std::int64_t{16}}}, asym ? "minmax" : "absmax"}));
    add_qarray(w, std::string("w.") + std::string(to_string(t)), originals.back());
  }
  w.write(dir.file("q.safetensors"));
  SafetensorsFile f(dir.file("q.safetensors"));
  EXPECT_EQ(qarray_names(f).size(), kAllQTypes.size());
  for (std::size_t i = 0; i < kAllQTypes.size(); ++i) {
    const QArray& q = originals[i];
    SCOPED_TRACE(to_string(q.qtype()));
    const QArray back = load_qarray(f, std::string("w.") + std::string(to_string(q.qtype())));
    EXPECT_EQ(back.qtype(), q.qtype());
    EXPECT_EQ(back.shape(), q.shape());
    EXPECT_EQ(back.scale().shape(), q.scale().shape());
    EXPECT_TRUE(std::equal(q.storage().begin(), q.storage().end(), back.storage().begin()));
    EXPECT_EQ(back.zero_point().has_value(), q.zero_point().has_value());
    const TensorF a = dequantize(q), b = dequantize(back);
    for (std::int64_t k = 0; k < a.size(); ++k) ASSERT_EQ(a[k], b[k]);
  }
}

TEST(Safetensors, MalformedFilesAreErrorsNamingFileAndTensor) {
  TempDir dir;
  const std::string p = dir.file("bad.safetensors");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4);
  expect_format_error([&] { SafetensorsFile f(p); }, {p, "truncated"});
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,12]}})", 12);
  expect_format_error([&] { SafetensorsFile f(p); }, {p, "'b'", "4 bytes but F32 [2] needs 8"});
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})", 6);
  expect_format_error([&] { SafetensorsFile f(p); }, {p, "'b'", "overlaps"});
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8);
  expect_format_error([&] { SafetensorsFile f(p); }, {p, "'a'", "gap"});
  write_raw(p, R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", 1);
  expect_format_error([&] { SafetensorsFile f(p); }, {p, "'a'", "unknown dtype 'Q4'"});
  write_raw(p, R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", 2);
  expect_format_error([&] { SafetensorsFile f(p); }, {p, "'a'", "twice"});
  write_raw(p, R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", 1);
  expect_format_error([&] { SafetensorsFile f(p); }, {p, "'a'", "shape"});
  write_raw(p, R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 3);
  expect_format_error([&] { SafetensorsFile f(p); }, {p, "trailing"});
  {
    std::ofstream out(p, std::ios::binary);
    const std::uint64_t n = 1u << 20;  // header length past the end of the file
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << "{}";
  }
  expect_format_error([&] { SafetensorsFile f(p); }, {p, "past the end"});
  { std::ofstream out(p, std::ios::binary); out << "abc"; }
  expect_format_error([&] { SafetensorsFile f(p); }, {p, "shorter than"});
  expect_format_error([&] { SafetensorsFile f(dir.file("missing.safetensors")); }, {"missing.safetensors", "cannot open"});
  // A quantized tensor's metadata whose tiled_axes key is not a number (found by the fuzzer:
  // it used to escape as std::invalid_argument).
  write_raw(p, R"({"__metadata__":{"w.qforge":"{\"qtype\":\"int8\",\"shape\":[2],\"channelwise_axes\":[],\"tiled_axes\":{\"x\":1},\"calibration_method\":\"absmax\"}"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1);
  const SafetensorsFile meta_file(p);
  expect_format_error([&] { load_qarray(meta_file, "w"); }, {p, "'w'", "tiled_axes key 'x'"});
}

TEST(Safetensors, AFailedWriteLeavesNoFileAndKeepsTheOldOne) {
  TempDir dir;
  const std::string p = dir.file("out.safetensors");
  { std::ofstream(p) << "previous contents"; }
  {
    AtomicFile f(p);
    f.write("partial", 7);
    // destroyed without commit(): an error happened mid-write
  }
  std::ifstream in(p);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(s, "previous contents");
  int others = 0;
  for (const auto& e : fs::directory_iterator(fs::path(p).parent_path())) others += e.path() != fs::path(p);
  EXPECT_EQ(others, 0) << "a temporary file was left behind";
  SafetensorsWriter w;
  w.add_f32("a", TensorF({1}, {1}));
  EXPECT_THROW(w.add_f32("a", TensorF({1}, {1})), Error);
}

// Mutations of a valid file (truncation, byte flips, bogus lengths): the reader either accepts
// the file or throws qforge::Error; it never crashes or reads out of bounds (ASan builds check).
TEST(Safetensors, MutationFuzzNeverCrashes) {
  TempDir dir;
  SafetensorsWriter w;
  w.add_f32("a", TensorF({3, 5}, std::vector<float>(15, 0.5f)));
  w.add("b", Dtype::kI8, {7}, std::vector<std::uint8_t>(7, 3));
  w.set_metadata("k", "v");
  const std::string good = dir.file("good.safetensors");
  w.write(good);
  std::ifstream in(good, std::ios::binary);
  const std::string original((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::uint64_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const std::string p = dir.file("fuzz.safetensors");
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bytes = original;
    switch (rng() % 4) {
      case 0: bytes.resize(rng() % bytes.size()); break;
      case 1: for (int k = 0; k < 3; ++k) bytes[rng() % bytes.size()] = static_cast<char>(rng()); break;
      case 2: { const std::uint64_t n = rng() % (bytes.size() * 2); std::memcpy(bytes.data(), &n, 8); break; }
      default: bytes[8 + rng() % (bytes.size() - 8)] = "0123456789[]{},:\"-"[rng() % 18]; break;
    }
    { std::ofstream(p, std::ios::binary) << bytes; }
    try {
      SafetensorsFile f(p);
      for (const auto& e : f.tensors()) (void)f.to_float(e.name);
      ++accepted;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 1000) << "accepted " << accepted;
}

}  // namespace
}  // namespace qforge::formats
