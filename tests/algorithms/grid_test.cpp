#include <bit>
#include <cstdint>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "qforge/algorithms/layer.hpp"
#include "qforge/formats/gguf_blocks.hpp"

namespace qa = qforge::algorithms;
namespace qf = qforge::formats;

namespace {
std::vector<float> random_row(std::int64_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = d(gen);
  return v;
}

// RTN on a ggml grid must reproduce the block encoder + decoder value for value (exact: both
// compute the same fp32 scale, the same rounding rule, and decode with the same fp16 scale).
void expect_ggml_roundtrip(const char* qtype, qf::GgmlType type) {
  for (unsigned seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(testing::Message() << qtype << " seed " << seed);
    const auto w = random_row(256, seed);
    const auto q = qa::quantize_rtn(w.data(), 2, 128, qa::parse_grid(qtype));
    std::vector<std::uint8_t> blocks(static_cast<std::size_t>(qf::ggml_row_bytes(type, 256)));
    qf::encode_row(type, w.data(), blocks.data(), 256);
    std::vector<float> ref(256);
    qf::decode_row(type, blocks.data(), ref.data(), 256);
    for (std::size_t i = 0; i < 256; ++i) ASSERT_EQ(q.weight[i], ref[i]) << "element " << i;
  }
}
}  // namespace

TEST(Grid, GgmlGridsMatchBlockEncoders) {
  expect_ggml_roundtrip("q8_0", qf::GgmlType::kQ8_0);
  expect_ggml_roundtrip("q4_0", qf::GgmlType::kQ4_0);
  expect_ggml_roundtrip("q4_1", qf::GgmlType::kQ4_1);
}

TEST(Grid, ReferenceMinMaxAsymmetric) {
  // quant.py: range includes 0; s = (max-min)/15, z = round(-min/s).
  const std::vector<float> x = {-1.0f, 0.5f, 2.0f, 3.0f};
  qa::GridSpec g;
  g.bits = 4;
  const auto p = qa::find_params(g, x);
  EXPECT_FLOAT_EQ(p.scale, 4.0f / 15.0f);
  EXPECT_FLOAT_EQ(p.qmin_raw, std::nearbyint(1.0f / (4.0f / 15.0f)));
  EXPECT_EQ(qa::quantize_code(g, p, -1.0f) + 8, 0);
  EXPECT_EQ(qa::quantize_code(g, p, 3.0f) + 8, 15);
}

TEST(Grid, SymmetricNonNegativeQuirkAndFix) {
  // P6: all >= 0 keeps xmin = 0 -> s = max/15 and values above 7s clip; the fix uses [-max, max].
  const std::vector<float> x = {0.0f, 1.0f, 15.0f};
  qa::GridSpec g;
  g.sym = true;
  auto p = qa::find_params(g, x);
  EXPECT_FLOAT_EQ(p.scale, 1.0f);
  EXPECT_FLOAT_EQ(qa::quantize_value(g, p, 15.0f), 7.0f);  // clipped: the reference's flaw
  g.fix_sym_nonnegative = true;
  p = qa::find_params(g, x);
  EXPECT_FLOAT_EQ(p.scale, 2.0f);
  EXPECT_FLOAT_EQ(qa::quantize_value(g, p, 15.0f), 14.0f);
}

TEST(Grid, HalfToEvenRounding) {
  qa::GridSpec g;
  g.sym = true;
  g.fix_sym_nonnegative = true;
  const std::vector<float> x = {-7.5f, 7.5f};  // s = 1
  const auto p = qa::find_params(g, x);
  ASSERT_FLOAT_EQ(p.scale, 1.0f);
  EXPECT_EQ(qa::quantize_code(g, p, 2.5f), 2);  // torch.round: half to even
  EXPECT_EQ(qa::quantize_code(g, p, 3.5f), 4);
}

TEST(Grid, MseNeverWorseThanMinMax) {
  for (unsigned seed : {4u, 5u, 6u}) {
    SCOPED_TRACE(seed);
    auto w = random_row(64, seed);
    w[3] = 9.0f;  // an outlier makes shrinking worthwhile
    for (bool sym : {false, true}) {
      qa::GridSpec g;
      g.sym = sym;
      g.bits = 3;
      const auto a = qa::find_params(g, w);
      g.range = qa::RangeMethod::kMse;
      const auto b = qa::find_params(g, w);
      double ea = 0, eb = 0;
      for (float v : w) {
        ea += std::pow(std::fabs(qa::quantize_value(g, a, v) - v), 2.4);
        eb += std::pow(std::fabs(qa::quantize_value(g, b, v) - v), 2.4);
      }
      EXPECT_LE(eb, ea * (1 + 1e-6));
      EXPECT_LT(b.scale, a.scale);
    }
  }
}

TEST(Grid, Nf4AndAbsmax) {
  const std::vector<float> x = {-2.0f, 0.0f, 1.0f, 2.0f};
  qa::GridSpec g = qa::parse_grid("nf4");
  const auto p = qa::find_params(g, x);
  EXPECT_FLOAT_EQ(qa::quantize_value(g, p, -2.0f), -2.0f);
  EXPECT_FLOAT_EQ(qa::quantize_value(g, p, 2.0f), 2.0f);
  EXPECT_FLOAT_EQ(qa::quantize_value(g, p, 0.0f), 0.0f);
  qa::GridSpec a;
  a.bits = 8;
  a.sym = true;
  a.range = qa::RangeMethod::kAbsMax;
  const auto pa = qa::find_params(a, x);
  EXPECT_FLOAT_EQ(pa.scale, 2.0f / 127.0f);
  EXPECT_EQ(qa::quantize_code(a, pa, 2.0f), 127);
}

TEST(Grid, GroupsAndErrors) {
  const auto w = random_row(4 * 96, 9);
  qa::GridSpec g;
  g.group_size = 32;
  const auto q = qa::quantize_rtn(w.data(), 4, 96, g);
  EXPECT_EQ(q.groups, 3);
  g.group_size = 40;
  EXPECT_THROW(qa::quantize_rtn(w.data(), 4, 96, g, "blk.0"), qforge::Error);
  EXPECT_THROW(qa::parse_grid("int9"), qforge::Error);
  // Every code stays inside the signed b-bit range for every bit width.
  for (int bits = 1; bits <= 8; ++bits) {
    qa::GridSpec gb;
    gb.bits = bits;
    const auto qb = qa::quantize_rtn(w.data(), 4, 96, gb);
    for (auto c : qb.codes) {
      ASSERT_GE(c, -(1 << (bits - 1)));
      ASSERT_LE(c, (1 << (bits - 1)) - 1);
    }
  }
}

TEST(Grid, QuantizeValuesMatchesTheScalarFunctionsBitForBit) {
  // The vectorised integer path rounds with cvtps2dq after clamping to ±2^22; every value must
  // give the scalar quantize_code / dequantize_code result exactly: random values, exact ties
  // (k + 0.5 steps), values far outside the range (ratios beyond 2^22), and every grid kind.
  const unsigned seed = 4242;
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  const std::int64_t n = 1003;  // not a multiple of the vector width
  std::vector<float> x(static_cast<std::size_t>(n));
  qa::ParamColumns pc(n);
  const qa::GridKind kinds[] = {qa::GridKind::kInt, qa::GridKind::kNf4, qa::GridKind::kQ4_0, qa::GridKind::kQ4_1,
                                qa::GridKind::kQ8_0};
  for (const qa::GridKind kind : kinds)
    for (int bits : {2, 4, 8})
      for (bool sym : {false, true}) {
        qa::GridSpec g;
        g.kind = kind;
        g.bits = bits;
        g.sym = sym;
        std::vector<float> group(32);
        for (std::int64_t i = 0; i < n; ++i) {
          for (auto& v : group) v = d(gen);
          const qa::GroupParams p = qa::find_params(g, group);
          pc.set(i, p);
          const float step = p.scale != 0.0f ? p.scale : 1.0f;
          switch (i % 4) {
            case 0: x[static_cast<std::size_t>(i)] = 3.0f * d(gen); break;
            case 1: x[static_cast<std::size_t>(i)] = step * (static_cast<float>(static_cast<int>(i % 9) - 4) + 0.5f); break;
            case 2: x[static_cast<std::size_t>(i)] = (i % 8 < 4 ? 1.0f : -1.0f) * 1e30f; break;
            default: x[static_cast<std::size_t>(i)] = step * 5e6f * d(gen); break;
          }
        }
        std::vector<float> q(static_cast<std::size_t>(n));
        std::vector<std::int8_t> c(static_cast<std::size_t>(n));
        qa::quantize_values(g, pc, 0, n, x.data(), q.data(), c.data());
        for (std::int64_t i = 0; i < n; ++i) {
          const auto k = static_cast<std::size_t>(i);
          const int code = qa::quantize_code(g, pc.p[k], x[k]);
          ASSERT_EQ(c[k], code) << qa::grid_name(g) << " sym " << sym << " x " << x[k];
          ASSERT_EQ(std::bit_cast<std::uint32_t>(q[k]), std::bit_cast<std::uint32_t>(qa::dequantize_code(g, pc.p[k], code)));
        }
      }
}
