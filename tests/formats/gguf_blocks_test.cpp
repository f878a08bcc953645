// GGUF block encoders against ggml's own output (tests/data/ggml-vectors): every byte of every
// file must match. Decoders are checked against the encoders and against each block's grid.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "qforge/formats/gguf_blocks.hpp"

namespace qforge::formats {
namespace {

const char* const kInputs[] = {"gauss", "outliers", "small", "large", "sparse", "positive", "negative", "ties", "tiny"};
constexpr std::int64_t kRows = 16, kCols = 256;

std::vector<char> read_file(const std::string& name) {
  const std::string path = std::string(QFORGE_TEST_DATA_DIR) + "/ggml-vectors/" + name;
  std::ifstream in(path, std::ios::binary);
  if (!in) ADD_FAILURE() << "cannot open " << path;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<float> read_input(const std::string& name) {
  const auto bytes = read_file(name + ".f32");
  std::vector<float> x(bytes.size() / 4);
  std::memcpy(x.data(), bytes.data(), x.size() * 4);
  return x;
}

struct EncoderCase {
  const char* suffix;
  GgmlType type;
};

class GgmlVectors : public ::testing::TestWithParam<EncoderCase> {};

TEST_P(GgmlVectors, EncoderMatchesGgmlByteForByte) {
  const auto& c = GetParam();
  for (const char* input : kInputs) {
    SCOPED_TRACE(std::string(input) + "." + c.suffix);
    const std::vector<float> x = read_input(input);
    ASSERT_EQ(x.size(), static_cast<std::size_t>(kRows * kCols));
    const std::vector<char> want = read_file(std::string(input) + "." + c.suffix);
    const std::int64_t row_bytes = ggml_row_bytes(c.type, kCols);
    ASSERT_EQ(want.size(), static_cast<std::size_t>(kRows * row_bytes));
    std::vector<char> got(want.size());
    for (std::int64_t r = 0; r < kRows; ++r) encode_row(c.type, x.data() + r * kCols, got.data() + r * row_bytes, kCols);
    for (std::size_t i = 0; i < want.size(); ++i)
      ASSERT_EQ(static_cast<unsigned char>(got[i]), static_cast<unsigned char>(want[i]))
          << "first differing byte " << i << " (row " << i / static_cast<std::size_t>(row_bytes) << ", block "
          << (i % static_cast<std::size_t>(row_bytes)) / static_cast<std::size_t>(ggml_traits(c.type).block_bytes) << ")";
  }
}

INSTANTIATE_TEST_SUITE_P(Encoders, GgmlVectors,
                         ::testing::Values(EncoderCase{"q4_0", GgmlType::kQ4_0}, EncoderCase{"q8_0", GgmlType::kQ8_0},
                                           EncoderCase{"q4_1", GgmlType::kQ4_1}, EncoderCase{"q4_K", GgmlType::kQ4_K},
                                           EncoderCase{"q6_K", GgmlType::kQ6_K}),
                         [](const auto& p) { return std::string(p.param.suffix); });

// Decoding ggml's bytes lands every element within half a step of its input (Q8_0: d/2; Q4_1:
// d/2 as min maps to code 0; Q4_0: d/2 except the opposite-sign extreme, which clamps to code
// 15 and is a full step off), plus what storing d (and m) in fp16 moves the grid: up to
// |levels| * |fp16(d) - d| + |fp16(m) - m|, and float rounding of the products (2^-20 |x|).
TEST(GgmlDecoders, DecodeGgmlBytesWithinHalfAStep) {
  for (const char* input : kInputs) {
    SCOPED_TRACE(input);
    const std::vector<float> x = read_input(input);
    for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1}) {
      const std::string suffix = t == GgmlType::kQ8_0 ? "q8_0" : t == GgmlType::kQ4_0 ? "q4_0" : "q4_1";
      const std::vector<char> bytes = read_file(std::string(input) + "." + suffix);
      std::vector<float> y(x.size());
      decode_row(t, bytes.data(), y.data(), static_cast<std::int64_t>(x.size()));
      const std::size_t block_bytes = static_cast<std::size_t>(ggml_traits(t).block_bytes);
      for (std::size_t b = 0; b < x.size() / 32; ++b) {
        float lo = x[b * 32], hi = x[b * 32], amax = 0;
        for (int j = 0; j < 32; ++j) {
          lo = std::min(lo, x[b * 32 + j]);
          hi = std::max(hi, x[b * 32 + j]);
          amax = std::max(amax, std::fabs(x[b * 32 + j]));
        }
        const float step = t == GgmlType::kQ8_0 ? amax / 127 : t == GgmlType::kQ4_0 ? amax / 8 : (hi - lo) / 15;
        const float levels = t == GgmlType::kQ8_0 ? 127 : t == GgmlType::kQ4_0 ? 8 : 15;
        std::uint16_t d16, m16 = 0;
        std::memcpy(&d16, bytes.data() + b * block_bytes, 2);
        if (t == GgmlType::kQ4_1) std::memcpy(&m16, bytes.data() + b * block_bytes + 2, 2);
        const float grid_shift = levels * std::fabs(std::fabs(fp16_to_fp32(d16)) - step) +
                                 (t == GgmlType::kQ4_1 ? std::fabs(fp16_to_fp32(m16) - lo) : 0.0f);
        for (int j = 0; j < 32; ++j) {
          const float xv = x[b * 32 + j], yv = y[b * 32 + j];
          const bool clamped_q4_0 = t == GgmlType::kQ4_0 && std::fabs(xv) > 7.5f * step;
          const float bound = (clamped_q4_0 ? step : step / 2) + grid_shift + std::ldexp(std::fabs(xv) + amax, -20);
          ASSERT_LE(std::fabs(xv - yv), bound) << suffix << " block " << b << " element " << j;
        }
      }
    }
  }
}

// K-quant decoders: every decoded value lies on its sub-block's grid, so it is within half a
// step of the input unless the input lies outside the grid's range (the encoder may clip).
TEST(GgmlDecoders, KQuantsDecodeOntoTheirGrids) {
  for (const char* input : kInputs) {
    SCOPED_TRACE(input);
    const std::vector<float> x = read_input(input);
    const auto q4k = read_file(std::string(input) + ".q4_K");
    const auto q6k = read_file(std::string(input) + ".q6_K");
    ASSERT_EQ(q4k.size(), static_cast<std::size_t>(kRows * 144));
    ASSERT_EQ(q6k.size(), static_cast<std::size_t>(kRows * 210));
    std::vector<float> y4(x.size()), y6(x.size());
    decode_row(GgmlType::kQ4_K, q4k.data(), y4.data(), static_cast<std::int64_t>(x.size()));
    decode_row(GgmlType::kQ6_K, q6k.data(), y6.data(), static_cast<std::int64_t>(x.size()));
    const auto* b4 = reinterpret_cast<const BlockQ4_K*>(q4k.data());
    const auto* b6 = reinterpret_cast<const BlockQ6_K*>(q6k.data());
    for (std::size_t i = 0; i < x.size(); ++i) {
      const std::size_t blk = i / 256, in_blk = i % 256;
      {  // Q4_K: sub-blocks of 32, value = d*sc*q - dmin*m, q in [0, 15]
        std::uint8_t sc, m;
        q4_k_scale_min(static_cast<int>(in_blk / 32), b4[blk].scales, sc, m);
        const float step = fp16_to_fp32(b4[blk].d) * sc, off = fp16_to_fp32(b4[blk].dmin) * m;
        const float tol = 1e-5f * (std::fabs(off) + 15 * step);
        const float q = (y4[i] + off) / (step == 0 ? 1 : step);
        if (step != 0) {
          EXPECT_NEAR(q, std::round(q), 1e-3) << "Q4_K element " << i << " off grid";
        }
        const float lo = -off, hi = 15 * step - off;
        if (x[i] >= lo && x[i] <= hi) {
          EXPECT_LE(std::fabs(x[i] - y4[i]), step / 2 + tol) << "Q4_K element " << i;
        }
      }
      {  // Q6_K: sub-blocks of 16, value = d*sc*(q - 32), q in [0, 63]
        const float step = fp16_to_fp32(b6[blk].d) * b6[blk].scales[in_blk / 16];
        const float tol = 1e-5f * 32 * std::fabs(step);
        const float lo = std::min(-32 * step, 31 * step), hi = std::max(-32 * step, 31 * step);
        if (x[i] >= lo && x[i] <= hi) {
          EXPECT_LE(std::fabs(x[i] - y6[i]), std::fabs(step) / 2 + tol) << "Q6_K element " << i;
        }
      }
    }
  }
}

// fp16: our bit-by-bit conversion equals the compiler's _Float16 (round to nearest even) on a
// strided sweep of all 2^32 float bit patterns plus every boundary we know of.
TEST(Half, Fp16MatchesCompilerConversion) {
  auto check = [](std::uint32_t bits) {
    const float f = float_from_bits(bits);
    const _Float16 h = static_cast<_Float16>(f);
    std::uint16_t want;
    std::memcpy(&want, &h, 2);
    const std::uint16_t got = fp32_to_fp16(f);
    if (std::isnan(f)) {
      ASSERT_EQ(got & 0x7C00, 0x7C00) << std::hex << bits;
      ASSERT_NE(got & 0x3FF, 0) << std::hex << bits;
    } else {
      ASSERT_EQ(got, want) << "float bits 0x" << std::hex << bits;
    }
  };
  for (std::uint64_t bits = 0; bits <= 0xFFFFFFFFull; bits += 997) check(static_cast<std::uint32_t>(bits));
  for (float f : {65504.0f, 65519.99f, 65520.0f, 0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-14f, 0x1.ffcp-15f, 0.0f, -0.0f})
    check(float_bits(f));
  for (std::uint32_t h = 0; h < 0x10000; ++h) {  // every fp16 value decodes and re-encodes to itself
    const float f = fp16_to_fp32(static_cast<std::uint16_t>(h));
    if (!std::isnan(f)) {
      ASSERT_EQ(fp32_to_fp16(f), h);
    }
  }
}

TEST(Half, Bf16RoundsHalfToEven) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(fp32_to_bf16(float_from_bits(0x3F808000u)), 0x3F80);  // tie, even stays
  EXPECT_EQ(fp32_to_bf16(float_from_bits(0x3F818000u)), 0x3F82);  // tie, odd rounds up
  EXPECT_EQ(bf16_to_fp32(0xC000), -2.0f);
}

TEST(GgmlTypes, RemovedAndUnknownIdsAreRejected) {
  for (std::uint32_t removed : {4u, 5u, 31u, 32u, 33u, 36u, 37u, 38u, 1000u}) EXPECT_FALSE(find_ggml_type(removed));
  EXPECT_EQ(find_ggml_type(2)->name, "Q4_0");
  EXPECT_EQ(parse_ggml_type("q8_0"), GgmlType::kQ8_0);
  EXPECT_EQ(ggml_row_bytes(GgmlType::kQ4_0, 4096), 4096 / 32 * 18);
  EXPECT_THROW(ggml_row_bytes(GgmlType::kQ4_0, 100, "blk.0.attn_q.weight"), Error);
  try {
    ggml_row_bytes(GgmlType::kQ8_0, 100, "blk.0.attn_q.weight");
    FAIL() << "a row of 100 values is not a whole number of Q8_0 blocks, yet no error was raised";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.attn_q.weight"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qforge::formats
