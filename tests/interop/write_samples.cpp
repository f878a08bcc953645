// Writes the files the Python interop checks read (tests/interop/check_*.py):
//   sample.gguf            Q4_0, Q4_1, Q8_0, Q4_K, Q6_K (and F32/F16) tensors plus typed metadata
//   sample_align64.gguf    the same data with general.alignment = 64
//   sample.safetensors     plain dtypes, qforge's quantized layout (int8 per channel, int4 tiled,
//                          uint8 with zero points) and a bitsandbytes NF4 weight
//   expected.safetensors   F32 values qforge decodes from each of them (ours, to compare with),
//                          plus the expected metadata as __metadata__
// Usage: qforge_interop_writer OUT_DIR
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <tuple>
#include <vector>

#include "qforge/core/qarray.hpp"
#include "qforge/formats/bnb4.hpp"
#include "qforge/formats/gguf_file.hpp"
#include "qforge/formats/qarray_io.hpp"
#include "qforge/formats/safetensors.hpp"

namespace qf = qforge::formats;
using qforge::Shape;
using qforge::TensorF;

namespace {

// llama.cpp's test-quantize-fns data, x = 0.1 + 2 cos(i + offset), with a per-row twist so rows
// differ; values at block edges and outliers exercise the encoders' corner cases.
TensorF pattern(Shape shape, float offset) {
  TensorF t(std::move(shape));
  for (std::int64_t i = 0; i < t.size(); ++i)
    t[i] = 0.1f + 2.0f * std::cos(static_cast<float>(i) + offset) + (i % 97 == 0 ? 7.5f : 0.0f);
  return t;
}

void write_gguf(const std::string& path, const std::string& alignment_note, std::uint32_t alignment,
                qf::SafetensorsWriter* expected) {
  qf::GgufWriter w;
  w.set("general.name", qf::GgufValue::string("qforge interop sample"));
  w.set("general.file_type", qf::GgufValue::u32(2));  // MOSTLY_Q4_0
  w.set("qforge.test.u32", qf::GgufValue::u32(4000000000u));
  w.set("qforge.test.i32", qf::GgufValue::i32(-12345));
  w.set("qforge.test.f32", qf::GgufValue::f32(0.25f));
  w.set("qforge.test.bool", qf::GgufValue::boolean(true));
  w.set("qforge.test.strings", qf::GgufValue::strings({"alpha", "beta", ""}));
  w.set("qforge.test.note", qf::GgufValue::string(alignment_note));
  if (alignment != 32) w.set("general.alignment", qf::GgufValue::u32(alignment));
  const std::vector<std::tuple<std::string, qf::GgmlType, TensorF>> tensors = {
      {"blk.0.attn_q.weight", qf::GgmlType::kQ4_0, pattern({8, 64}, 0.0f)},
      {"blk.0.attn_k.weight", qf::GgmlType::kQ4_1, pattern({3, 96}, 1.0f)},
      {"blk.0.ffn_up.weight", qf::GgmlType::kQ8_0, pattern({5, 128}, 2.0f)},
      {"blk.0.cube.weight", qf::GgmlType::kQ8_0, pattern({2, 3, 32}, 3.0f)},  // 3-D: dims reversed
      {"output_norm.weight", qf::GgmlType::kF32, pattern({7}, 4.0f)},         // odd size: padding
      {"blk.0.f16.weight", qf::GgmlType::kF16, pattern({3, 5}, 5.0f)},
      {"blk.0.ffn_down.weight", qf::GgmlType::kQ4_K, pattern({2, 256}, 6.0f)},
      {"blk.0.attn_v.weight", qf::GgmlType::kQ6_K, pattern({3, 512}, 7.0f)},
  };
  for (const auto& [name, type, values] : tensors) w.add_float(name, type, values);
  w.write(path);
  if (!expected) return;
  // The source floats (the Python side re-quantizes them with gguf's own encoders) and what
  // qforge's decoders read back from the file.
  const qf::GgufFile back(path);
  for (const auto& [name, type, values] : tensors) {
    expected->add_f32("src/" + name, values);
    expected->add_f32("gguf/" + name, back.to_float(name));
  }
}

qforge::QArray quantize_as(const TensorF& x, qforge::QType qtype, std::vector<int> channelwise,
                           std::map<int, qforge::TileSize> tiles, std::string method) {
  qforge::HowToQuantize how;
  how.qtype = qtype;
  how.channelwise_axes = std::move(channelwise);
  how.tiled_axes = std::move(tiles);
  how.calibration_method = std::move(method);
  return qforge::quantize(x, how);
}

void write_safetensors(const std::string& path, qf::SafetensorsWriter& expected) {
  qf::SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("qforge.interop", "sample");
  const TensorF f32 = pattern({4, 6}, 0.5f);
  w.add_f32("plain.f32", f32);
  expected.add_f32("st/plain.f32", f32);
  {  // F16: the stored halves, decoded by qforge
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(f32.size()) * 2);
    for (std::int64_t i = 0; i < f32.size(); ++i) {
      const std::uint16_t h = qforge::fp32_to_fp16(f32[i]);
      std::memcpy(&bytes[static_cast<std::size_t>(i) * 2], &h, 2);
    }
    w.add("plain.f16", qf::Dtype::kF16, f32.shape(), std::move(bytes));
  }
  {  // I8, U8, I32, I64: small integers
    std::vector<std::uint8_t> i8(10), u8(10), i32(40), i64(80);
    for (int i = 0; i < 10; ++i) {
      i8[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(static_cast<std::int8_t>(i * 25 - 128));
      u8[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(i * 28);
      const std::int32_t v32 = -100000 * i + 7;
      const std::int64_t v64 = -(std::int64_t{1} << 40) + i;
      std::memcpy(&i32[static_cast<std::size_t>(i) * 4], &v32, 4);
      std::memcpy(&i64[static_cast<std::size_t>(i) * 8], &v64, 8);
    }
    w.add("plain.i8", qf::Dtype::kI8, {2, 5}, i8);
    w.add("plain.u8", qf::Dtype::kU8, {10}, u8);
    w.add("plain.i32", qf::Dtype::kI32, {5, 2}, i32);
    w.add("plain.i64", qf::Dtype::kI64, {10}, i64);
    w.add("plain.empty", qf::Dtype::kF32, {0, 3}, {});
  }
  // qforge's quantized layout.
  const TensorF weight = pattern({6, 32}, 1.5f);
  const auto q_int8 = quantize_as(weight, qforge::QType::kInt8, {0}, {}, "absmax");
  const auto q_int4 = quantize_as(weight, qforge::QType::kInt4, {0}, {{1, std::int64_t{8}}}, "absmax");
  const auto q_uint8 = quantize_as(pattern({5, 7}, 2.5f), qforge::QType::kUInt8, {0}, {}, "minmax");
  const auto q_uint4 = quantize_as(pattern({3, 9}, 3.5f), qforge::QType::kUInt4, {1}, {}, "minmax");
  qf::add_qarray(w, "q.int8", q_int8);
  qf::add_qarray(w, "q.int4", q_int4);
  qf::add_qarray(w, "q.uint8", q_uint8);
  qf::add_qarray(w, "q.uint4", q_uint4);
  // bitsandbytes NF4 (double-quantized) and FP4.
  const TensorF big = pattern({40, 64}, 4.5f);
  qf::add_bnb4(w, "bnb.nf4.weight", qf::bnb4_quantize(big, {.double_quant = true, .dtype = "float16"}));
  qf::add_bnb4(w, "bnb.fp4.weight", qf::bnb4_quantize(pattern({3, 50}, 5.5f), {.type = qf::Bnb4Type::kFp4, .blocksize = 32}));
  w.write(path);

  // What qforge reads back from its own file.
  const qf::SafetensorsFile back(path);
  expected.add_f32("st/plain.f16", back.to_float("plain.f16"));
  for (const char* name : {"q.int8", "q.int4", "q.uint8", "q.uint4"})
    expected.add_f32(std::string("st/") + name, qforge::dequantize(qf::load_qarray(back, name)));
  for (const char* name : {"bnb.nf4.weight", "bnb.fp4.weight"})
    expected.add_f32(std::string("st/") + name, qf::bnb4_dequantize(qf::load_bnb4(back, name)));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  try {
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    qf::SafetensorsWriter expected;
    write_gguf((dir / "sample.gguf").string(), "default alignment", 32, &expected);
    write_gguf((dir / "sample_align64.gguf").string(), "alignment 64", 64, nullptr);
    write_safetensors((dir / "sample.safetensors").string(), expected);
    expected.write((dir / "expected.safetensors").string());
    std::printf("wrote interop samples to %s\n", dir.string().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qforge_interop_writer: %s\n", e.what());
    return 1;
  }
}
