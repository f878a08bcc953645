// bitsandbytes NF4/FP4 blockwise quantization, double quantization, packing and serialized keys;
// FP8 tensors with a per-tensor scale.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "qforge/formats/bnb4.hpp"
#include "qforge/formats/checkpoint.hpp"

namespace qforge::formats {
namespace {

namespace fs = std::filesystem;

std::string temp_file(const std::string& name) {
  return (fs::temp_directory_path() / fs::path("qforge-bnb4-" + std::to_string(::getpid()) + "-" + name)).string();
}

TensorF gaussian(Shape shape, std::uint64_t seed, float sigma = 1.0f) {
  TensorF t(std::move(shape));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  for (std::int64_t i = 0; i < t.size(); ++i) t[i] = dist(rng);
  return t;
}

// Nearest entry by brute force; among equally near entries the smallest value wins, which is
// bitsandbytes' strict '>' at the midpoints.
float nearest_value(const std::array<float, 16>& book, float x) {
  float best = book[0];
  for (float v : book)
    if (std::fabs(x - v) < std::fabs(x - best) || (std::fabs(x - v) == std::fabs(x - best) && v < best)) best = v;
  return best;
}

TEST(Bnb4, CodebookEntriesEncodeToThemselves) {
  for (int c = 0; c < 16; ++c) EXPECT_EQ(nf4_encode(kNf4Codebook[c]), c);
  for (int c = 1; c < 8; ++c) {
    EXPECT_EQ(bnb_fp4_encode(kBnbFp4Codebook[c]), c);
    EXPECT_EQ(bnb_fp4_encode(-kBnbFp4Codebook[c]), c | 8) << "negatives set the sign bit";
  }
  EXPECT_EQ(bnb_fp4_encode(0.0f), 0);
  EXPECT_EQ(bnb_fp4_encode(-1e-6f), 8) << "sign bit whenever x < 0, as bitsandbytes does";
  // Exact midpoints go to the lower code.
  EXPECT_EQ(nf4_encode((kNf4Codebook[8] + kNf4Codebook[9]) * 0.5f), 8);
  EXPECT_EQ(bnb_fp4_encode((kBnbFp4Codebook[4] + kBnbFp4Codebook[5]) * 0.5f), 4);
}

TEST(Bnb4, PacksTheEvenElementInTheHighNibble) {
  // NF4: 1.0 -> 15, -1.0 -> 0, 0 -> 7; one block, absmax 1.
  const TensorF x({5}, {1.0f, -1.0f, 0.0f, 1.0f, -1.0f});
  const auto t = bnb4_quantize(x);
  ASSERT_EQ(t.packed.size(), 3u);
  EXPECT_EQ(t.packed[0], 0xF0);
  EXPECT_EQ(t.packed[1], 0x7F);
  EXPECT_EQ(t.packed[2], 0x00) << "odd count: the last low nibble is zero padding";
  ASSERT_EQ(t.absmax.size(), 1u);
  EXPECT_EQ(t.absmax[0], 1.0f);
}

TEST(Bnb4, EveryCodeIsTheNearestCodebookEntryAndTailBlocksHaveTheirOwnAbsmax) {
  for (Bnb4Type type : {Bnb4Type::kNf4, Bnb4Type::kFp4}) {
    for (std::int64_t blocksize : {32, 64, 128}) {
      const std::uint64_t seed = 1234 + static_cast<std::uint64_t>(blocksize);
      SCOPED_TRACE(::testing::Message() << to_string(type) << " block " << blocksize << " seed " << seed);
      const TensorF x = gaussian({7, 45}, seed);  // 315 values: a tail block and an odd count
      const auto t = bnb4_quantize(x, {.type = type, .blocksize = blocksize});
      ASSERT_EQ(t.blocks(), (315 + blocksize - 1) / blocksize);
      ASSERT_EQ(t.packed.size(), 158u);
      const TensorF y = bnb4_dequantize(t);
      const auto& book = bnb4_codebook(type);
      for (std::int64_t i = 0; i < x.size(); ++i) {
        const std::int64_t b = i / blocksize;
        float amax = 0.0f;
        for (std::int64_t k = b * blocksize; k < std::min<std::int64_t>(x.size(), (b + 1) * blocksize); ++k)
          amax = std::max(amax, std::fabs(x[k]));
        ASSERT_EQ(t.absmax[static_cast<std::size_t>(b)], amax);
        // Decoding is exactly codebook value * absmax; the code is the argmin (exact comparison).
        const float xn = x[i] * (1.0f / amax);
        ASSERT_EQ(y[i], nearest_value(book, xn) * amax) << "element " << i;
      }
    }
  }
}

TEST(Bnb4, AnAllZeroBlockDecodesToZero) {
  const TensorF x({64}, 0.0f);
  for (Bnb4Type type : {Bnb4Type::kNf4, Bnb4Type::kFp4}) {
    const auto y = bnb4_dequantize(bnb4_quantize(x, {.type = type}));
    for (std::int64_t i = 0; i < 64; ++i) EXPECT_EQ(y[i], 0.0f);
  }
}

TEST(Bnb4, DynamicMapHasBitsandbytesShape) {
  const auto& map = bnb_dynamic_map();
  EXPECT_TRUE(std::is_sorted(map.begin(), map.end()));
  EXPECT_EQ(map[255], 1.0f);
  EXPECT_EQ(std::count(map.begin(), map.end(), 0.0f), 1);
  EXPECT_EQ(std::count_if(map.begin(), map.end(), [](float v) { return v < 0; }), 127);
  // The largest fraction of the top decade: mean of the last two of linspace(0.1, 1, 65).
  EXPECT_NEAR(map[254], (1.0f + (1.0f - 0.9f / 64.0f)) / 2.0f, 1e-6f);
  // The smallest magnitude: 1e-6 * mean(0.1, 1).
  EXPECT_NEAR(map[128], 0.55e-6f, 1e-12f);
  EXPECT_NEAR(map[126], -0.55e-6f, 1e-12f);
  EXPECT_FLOAT_EQ(map[0], -map[254]);
}

TEST(Bnb4, DoubleQuantizedAbsmaxIsTheNearestDynamicCode) {
  const std::uint64_t seed = 99;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  // 64 * 600 values -> 600 absmax values -> 3 nested blocks, the last a tail of 88.
  const TensorF x = gaussian({600, 64}, seed, 0.02f);
  const auto plain = bnb4_quantize(x);
  const auto dq = bnb4_quantize(x, {.double_quant = true});
  ASSERT_TRUE(dq.nested);
  ASSERT_EQ(dq.absmax_codes.size(), 600u);
  ASSERT_EQ(dq.nested_absmax.size(), 3u);
  EXPECT_EQ(dq.packed, plain.packed) << "double quantization changes only the absmax storage";
  double mean = 0.0;
  for (float a : plain.absmax) mean += a;
  EXPECT_FLOAT_EQ(dq.nested_offset, static_cast<float>(mean / 600.0));
  const auto decoded = dq.block_absmax();
  const auto& map = bnb_dynamic_map();
  for (std::size_t i = 0; i < 600; ++i) {
    const float a2 = dq.nested_absmax[i / 256];
    const float v = (plain.absmax[i] - dq.nested_offset) * (1.0f / a2);
    // The chosen code is at least as near as every other code.
    const float err = std::fabs(v - map[dq.absmax_codes[i]]);
    for (float m : map) ASSERT_LE(err, std::fabs(v - m)) << "absmax " << i;
    // Decoded absmax: the dynamic map's largest gap in [-1, 1] is 0.9 / 64, so the error is at
    // most half of it times the nested absmax (plus float rounding).
    ASSERT_NEAR(decoded[i], plain.absmax[i], a2 * (0.9f / 128.0f) * 1.001f + 1e-7f) << "absmax " << i;
  }
}

TEST(Bnb4, SerializedKeysAndQuantStateMatchBitsandbytes) {
  const TensorF x = gaussian({4, 64}, 7);
  const auto t = bnb4_quantize(x, {.type = Bnb4Type::kNf4, .blocksize = 64, .double_quant = true, .dtype = "float16"});
  const std::string json = bnb4_state_json(t);
  const std::string prefix = R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [4, 64], )"
                             R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": )";
  ASSERT_EQ(json.substr(0, prefix.size()), prefix);
  EXPECT_EQ(std::stof(json.substr(prefix.size())), t.nested_offset);

  const std::string path = temp_file("keys.safetensors");
  SafetensorsWriter w;
  add_bnb4(w, "layer.weight", t);
  w.write(path);
  const SafetensorsFile f(path);
  EXPECT_EQ(f.at("layer.weight").dtype, Dtype::kU8);
  EXPECT_EQ(f.at("layer.weight").shape, (Shape{128, 1}));
  EXPECT_EQ(f.at("layer.weight.absmax").dtype, Dtype::kU8);
  EXPECT_EQ(f.at("layer.weight.nested_absmax").shape, (Shape{1}));
  EXPECT_EQ(f.at("layer.weight.nested_quant_map").shape, (Shape{256}));
  EXPECT_EQ(f.at("layer.weight.quant_map").shape, (Shape{16}));
  const auto state = f.bytes(f.at("layer.weight.quant_state.bitsandbytes__nf4"));
  EXPECT_EQ(std::string(state.begin(), state.end()), json);
  EXPECT_TRUE(has_bnb4(f, "layer.weight"));
  EXPECT_FALSE(has_bnb4(f, "other.weight"));
  fs::remove(path);
}

TEST(Bnb4, SaveLoadRoundTripsExactly) {
  const std::string path = temp_file("roundtrip.safetensors");
  const TensorF x = gaussian({3, 100}, 11);
  const auto nf4 = bnb4_quantize(x, {.type = Bnb4Type::kNf4, .blocksize = 32, .double_quant = true});
  const auto fp4 = bnb4_quantize(x, {.type = Bnb4Type::kFp4, .blocksize = 128});
  SafetensorsWriter w;
  add_bnb4(w, "a.weight", nf4);
  add_bnb4(w, "b.weight", fp4);
  w.write(path);
  const SafetensorsFile f(path);
  for (const auto& [name, want] : {std::pair{"a.weight", &nf4}, std::pair{"b.weight", &fp4}}) {
    const auto got = load_bnb4(f, name);
    EXPECT_EQ(got.type, want->type);
    EXPECT_EQ(got.shape, want->shape);
    EXPECT_EQ(got.packed, want->packed);
    EXPECT_EQ(got.absmax, want->absmax);
    EXPECT_EQ(got.absmax_codes, want->absmax_codes);
    EXPECT_EQ(got.nested_absmax, want->nested_absmax);
    EXPECT_EQ(got.nested_offset, want->nested_offset);
    EXPECT_EQ(bnb4_dequantize(got).vec(), bnb4_dequantize(*want).vec());
  }
  fs::remove(path);
}

TEST(Bnb4, CheckpointShowsABitsandbytesWeightAsOneTensor) {
  const std::string path = temp_file("checkpoint.safetensors");
  const TensorF x = gaussian({4, 64}, 21);
  const auto t = bnb4_quantize(x, {.double_quant = true});
  SafetensorsWriter w;
  add_bnb4(w, "fc.weight", t);
  w.add_f32("fc.bias", gaussian({4}, 22));
  w.write(path);
  const Checkpoint c(path);
  ASSERT_EQ(c.tensors().size(), 2u);
  const auto* fc = c.find("fc.weight");
  ASSERT_NE(fc, nullptr);
  EXPECT_EQ(fc->type, "nf4 (bitsandbytes)");
  EXPECT_EQ(fc->shape, (Shape{4, 64}));
  EXPECT_TRUE(fc->quantized);
  EXPECT_EQ(c.to_float("fc.weight").vec(), bnb4_dequantize(t).vec());
  EXPECT_NE(c.find("fc.bias"), nullptr);
  fs::remove(path);
}

TEST(Bnb4, InconsistentFilesAreErrorsNamingFileAndTensor) {
  const std::string path = temp_file("bad.safetensors");
  const auto t = bnb4_quantize(gaussian({2, 64}, 5));
  {
    SafetensorsWriter w;
    add_bnb4(w, "w", t);
    w.write(path);
  }
  {  // absmax of the wrong length
    SafetensorsWriter w;
    w.add("w", Dtype::kU8, {64, 1}, t.packed);
    w.add("w.absmax", Dtype::kF32, {1}, std::vector<std::uint8_t>(4));
    w.add("w.quant_map", Dtype::kF32, {16}, detail::raw_bytes(t.quant_map.data(), 16));
    const std::string json = bnb4_state_json(t);
    w.add("w.quant_state.bitsandbytes__nf4", Dtype::kU8, {static_cast<std::int64_t>(json.size())},
          std::vector<std::uint8_t>(json.begin(), json.end()));
    w.write(path);
    const SafetensorsFile f(path);
    try {
      load_bnb4(f, "w");
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("w.absmax"), std::string::npos) << e.what();
    }
  }
  {  // broken JSON quant_state
    SafetensorsWriter w;
    w.add("w", Dtype::kU8, {64, 1}, t.packed);
    w.add("w.quant_state.bitsandbytes__fp4", Dtype::kU8, {3}, {'{', '"', 'x'});
    w.write(path);
    const SafetensorsFile f(path);
    EXPECT_THROW(load_bnb4(f, "w"), Error);
    EXPECT_THROW(load_bnb4(f, "missing"), Error);
  }
  {  // a shape whose element count overflows int64
    SafetensorsWriter w;
    w.add("w", Dtype::kU8, {64, 1}, t.packed);
    const std::string json = R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4294967296, 4294967296, 8]})";
    w.add("w.quant_state.bitsandbytes__nf4", Dtype::kU8, {static_cast<std::int64_t>(json.size())},
          std::vector<std::uint8_t>(json.begin(), json.end()));
    w.write(path);
    const SafetensorsFile f(path);
    EXPECT_THROW(load_bnb4(f, "w"), Error);
  }
  EXPECT_THROW(bnb4_quantize(gaussian({64}, 1), {.blocksize = 48}), Error);
  fs::remove(path);
}

TEST(Fp8, PerTensorScaleRoundTripAndSaturation) {
  const TensorF x = gaussian({16, 16}, 3, 3.0f);
  for (Fp8Format format : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    const auto& spec = fp8_spec(format);
    const auto t = fp8_quantize(x, format);
    float amax = 0.0f;
    for (std::int64_t i = 0; i < x.size(); ++i) amax = std::max(amax, std::fabs(x[i]));
    EXPECT_FLOAT_EQ(t.scale, static_cast<float>(amax / spec.max_finite));
    const TensorF y = fp8_dequantize(t);
    // Relative error of a normal value is at most half an ulp: 2^-(man_bits+1); subnormals are
    // off by at most half the smallest subnormal step times the scale.
    const double rel = std::ldexp(1.0, -(spec.man_bits + 1));
    const double abs_floor = std::ldexp(1.0, 1 - spec.bias - spec.man_bits) / 2 * t.scale;
    for (std::int64_t i = 0; i < x.size(); ++i)
      ASSERT_LE(std::fabs(y[i] - x[i]), std::max(rel * std::fabs(x[i]), abs_floor) * 1.0001) << "element " << i;
    // A given scale that puts values past the range saturates to +/-max_finite.
    const auto sat = fp8_dequantize(fp8_quantize(TensorF({2}, {1e6f, -1e6f}), format, 1.0f));
    EXPECT_EQ(sat[0], static_cast<float>(spec.max_finite));
    EXPECT_EQ(sat[1], -static_cast<float>(spec.max_finite));

    const std::string path = temp_file("fp8.safetensors");
    SafetensorsWriter w;
    add_fp8(w, "w", t);
    w.write(path);
    const SafetensorsFile f(path);
    EXPECT_EQ(f.at("w").dtype, format == Fp8Format::kE4M3 ? Dtype::kF8E4M3 : Dtype::kF8E5M2);
    const auto back = load_fp8(f, "w");
    EXPECT_EQ(back.codes, t.codes);
    EXPECT_EQ(back.scale, t.scale);
    EXPECT_THROW(load_fp8(f, "w_scale"), Error);
    fs::remove(path);
  }
  EXPECT_THROW(fp8_quantize(x, Fp8Format::kE4M3, -1.0f), Error);
}

}  // namespace
}  // namespace qforge::formats
