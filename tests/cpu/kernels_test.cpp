// Every CPU-backend op against the reference backend, at every ISA level this machine has
// (scalar, AVX2, AVX-512 through set_max_cpu_isa), with odd and prime shapes, tails and
// misaligned pointers. Integer paths and block encoders must match bit for bit; float reductions
// must lie within the rounding bound of their reduction length (see float_bound).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "qforge/backend/cpu_features.hpp"
#include "qforge/backend/registry.hpp"
#include "qforge/backend/threads.hpp"

namespace qb = qforge::backend;
namespace qf = qforge::formats;
using qb::ReferenceBackend;

namespace {

constexpr unsigned kSeed = 20240611;

qb::Backend& cpu() {
  qb::Backend* b = qb::Registry::instance().find("cpu");
  if (!b) throw std::runtime_error("cpu backend not registered");
  return *b;
}

std::vector<qb::CpuIsa> isa_levels() {
  std::vector<qb::CpuIsa> out;
  for (int i = 0; i <= static_cast<int>(qb::cpu_features().best_isa()); ++i) out.push_back(static_cast<qb::CpuIsa>(i));
  return out;
}

// Runs body once per ISA level with the cap set; restores the cap afterwards.
template <class F>
void for_each_isa(F&& body) {
  for (qb::CpuIsa isa : isa_levels()) {
    SCOPED_TRACE(std::string("isa=") + std::string(qb::to_string(isa)));
    qb::set_max_cpu_isa(isa);
    body();
  }
  qb::reset_max_cpu_isa();
}

// Floats in a buffer starting one float past a 64-byte boundary, so kernels see misaligned data.
struct Misaligned {
  std::vector<float> storage;
  float* data;
  explicit Misaligned(std::size_t n) : storage(n + 17) {
    auto addr = reinterpret_cast<std::uintptr_t>(storage.data());
    data = storage.data() + ((64 - addr % 64) % 64) / 4 + 1;
  }
};

void fill(float* x, std::size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  for (std::size_t i = 0; i < n; ++i) x[i] = d(rng);
}

// Float reduction bound: a sum of `terms` products evaluated in float in any order, with up to
// `extra` further roundings per term (scale products), differs from the exact value by at most
// gamma_(terms + extra) * sum |products| (Higham, Accuracy and Stability, eq. 3.5), u = 2^-24.
double float_bound(std::int64_t terms, int extra, double abs_sum) {
  const double u = std::ldexp(1.0, -24), n = static_cast<double>(terms + extra);
  return n * u / (1 - n * u) * abs_sum + 1e-30;
}

// Ops the CPU backend may decline in some builds (oneDNN-backed ones without oneDNN).
#define SKIP_IF_CPU_DECLINES(op)                                          \
  do {                                                                     \
    if (qb::Support s = cpu().supports(op); !s) GTEST_SKIP() << s.reason; \
  } while (0)

std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

}  // namespace

TEST(CpuKernels, QuantizeAndDequantizeRowsExact) {
  SCOPED_TRACE("seed=" + std::to_string(kSeed));
  std::mt19937 rng(kSeed);
  struct Case { qb::RowFormat format; std::int64_t rows, cols, group; };
  const Case cases[] = {{qb::RowFormat::kInt8, 3, 7, 7},      {qb::RowFormat::kInt8, 5, 131, 131},
                        {qb::RowFormat::kInt8, 2, 96, 32},    {qb::RowFormat::kInt4, 3, 130, 130},
                        {qb::RowFormat::kInt4, 4, 256, 128},  {qb::RowFormat::kInt4, 7, 62, 2},
                        {qb::RowFormat::kInt4, 1, 4096, 128}, {qb::RowFormat::kInt8, 1, 1, 1}};
  for (const Case& c : cases) {
    SCOPED_TRACE("rows=" + std::to_string(c.rows) + " cols=" + std::to_string(c.cols) + " group=" + std::to_string(c.group));
    const std::int64_t ldx = c.cols + 3;
    Misaligned x(static_cast<std::size_t>(c.rows * ldx));
    fill(x.data, static_cast<std::size_t>(c.rows * ldx), rng, 3.0f);
    x.data[0] = 0.5f;  // exercise ties
    const std::size_t nbytes = static_cast<std::size_t>(c.rows * qb::row_format_bytes(c.format, c.cols));
    const std::size_t nscales = static_cast<std::size_t>(c.rows * c.cols / c.group);
    std::vector<std::uint8_t> ref_codes(nbytes);
    std::vector<float> ref_scales(nscales), ref_y(static_cast<std::size_t>(c.rows * c.cols));
    ReferenceBackend::run_op(qb::QuantizeRowsOp{c.format, c.rows, c.cols, c.group, x.data, ldx, ref_codes.data(), ref_scales.data()});
    ReferenceBackend::run_op(qb::DequantizeRowsOp{c.format, c.rows, c.cols, c.group, ref_codes.data(), ref_scales.data(), ref_y.data(), c.cols});
    for_each_isa([&] {
      std::vector<std::uint8_t> codes(nbytes + 1);
      std::vector<float> scales(nscales), y(static_cast<std::size_t>(c.rows * c.cols));
      ASSERT_EQ(cpu().run(qb::QuantizeRowsOp{c.format, c.rows, c.cols, c.group, x.data, ldx, codes.data() + 1, scales.data()}),
                qforge::Status::kSuccess);
      EXPECT_EQ(0, std::memcmp(codes.data() + 1, ref_codes.data(), nbytes));
      EXPECT_EQ(scales, ref_scales);
      cpu().run(qb::DequantizeRowsOp{c.format, c.rows, c.cols, c.group, codes.data() + 1, scales.data(), y.data(), c.cols});
      EXPECT_EQ(y, ref_y);
    });
  }
}

TEST(CpuKernels, W8A8AndW4A8AreBitExact) {
  SCOPED_TRACE("seed=" + std::to_string(kSeed));
  std::mt19937 rng(kSeed + 1);
  struct Case { std::int64_t M, N, K, group; };
  // {20, 1100, ...}: W4A8's large-M path cuts N into 512-column panels shared among threads (two
  // full panels and a 76-column tail).
  const Case cases[] = {{1, 1, 2, 2},      {3, 5, 62, 2},      {7, 13, 128, 32}, {1, 31, 384, 128},
                        {17, 19, 256, 128}, {33, 9, 96, 32}, {20, 1100, 256, 128}};
  for (const Case& c : cases) {
    SCOPED_TRACE("M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K));
    const std::int64_t lda = c.K + 1;
    Misaligned a(static_cast<std::size_t>(c.M * lda)), w(static_cast<std::size_t>(c.N * c.K));
    fill(a.data, static_cast<std::size_t>(c.M * lda), rng);
    fill(w.data, static_cast<std::size_t>(c.N * c.K), rng, 0.05f);
    // Weights quantized with the reference: int8 per row, int4 in groups.
    std::vector<std::int8_t> w8(static_cast<std::size_t>(c.N * c.K));
    std::vector<float> s8(static_cast<std::size_t>(c.N)), s4(static_cast<std::size_t>(c.N * c.K / c.group));
    std::vector<std::uint8_t> w4(static_cast<std::size_t>(c.N * c.K / 2));
    ReferenceBackend::run_op(qb::QuantizeRowsOp{qb::RowFormat::kInt8, c.N, c.K, c.K, w.data, c.K, w8.data(), s8.data()});
    ReferenceBackend::run_op(qb::QuantizeRowsOp{qb::RowFormat::kInt4, c.N, c.K, c.group, w.data, c.K, w4.data(), s4.data()});
    const std::size_t nd = static_cast<std::size_t>(c.M * c.N);
    std::vector<float> r8(nd), r4(nd);
    ReferenceBackend::run_op(qb::GemmW8A8Op{c.M, c.N, c.K, a.data, lda, w8.data(), s8.data(), r8.data(), c.N});
    ReferenceBackend::run_op(qb::GemmW4A8Op{c.M, c.N, c.K, c.group, a.data, lda, w4.data(), s4.data(), r4.data(), c.N});
    for (int threads : {1, 2, 3}) {
      qb::set_num_threads(threads);
      SCOPED_TRACE("threads=" + std::to_string(threads));
      for_each_isa([&] {
        std::vector<float> d8(nd), d4(nd);
        cpu().run(qb::GemmW8A8Op{c.M, c.N, c.K, a.data, lda, w8.data(), s8.data(), d8.data(), c.N});
        cpu().run(qb::GemmW4A8Op{c.M, c.N, c.K, c.group, a.data, lda, w4.data(), s4.data(), d4.data(), c.N});
        for (std::size_t i = 0; i < nd; ++i) {
          ASSERT_EQ(bits(d8[i]), bits(r8[i])) << "W8A8 at " << i << ": " << d8[i] << " vs " << r8[i];
          ASSERT_EQ(bits(d4[i]), bits(r4[i])) << "W4A8 at " << i << ": " << d4[i] << " vs " << r4[i];
        }
      });
    }
    qb::set_num_threads(0);
  }
}

TEST(CpuKernels, W4A16WithinReductionBoundAndThreadIndependent) {
  SCOPED_TRACE("seed=" + std::to_string(kSeed));
  std::mt19937 rng(kSeed + 2);
  struct Case { std::int64_t M, N, K, group; };
  const Case cases[] = {{1, 7, 256, 128}, {3, 11, 62, 2}, {2, 5, 96, 32}, {1, 67, 1024, 128}, {4, 3, 48, 48}};
  for (const Case& c : cases) {
    SCOPED_TRACE("M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K));
    Misaligned a(static_cast<std::size_t>(c.M * c.K)), w(static_cast<std::size_t>(c.N * c.K));
    fill(a.data, static_cast<std::size_t>(c.M * c.K), rng);
    fill(w.data, static_cast<std::size_t>(c.N * c.K), rng);
    std::vector<std::uint8_t> w4(static_cast<std::size_t>(c.N * c.K / 2));
    std::vector<float> s4(static_cast<std::size_t>(c.N * c.K / c.group)), deq(static_cast<std::size_t>(c.N * c.K));
    ReferenceBackend::run_op(qb::QuantizeRowsOp{qb::RowFormat::kInt4, c.N, c.K, c.group, w.data, c.K, w4.data(), s4.data()});
    ReferenceBackend::run_op(qb::DequantizeRowsOp{qb::RowFormat::kInt4, c.N, c.K, c.group, w4.data(), s4.data(), deq.data(), c.K});
    const std::size_t nd = static_cast<std::size_t>(c.M * c.N);
    std::vector<float> ref(nd);
    ReferenceBackend::run_op(qb::GemmW4A16Op{c.M, c.N, c.K, c.group, a.data, c.K, w4.data(), s4.data(), ref.data(), c.N});
    for_each_isa([&] {
      std::vector<float> d1(nd), d2(nd);
      qb::set_num_threads(1);
      cpu().run(qb::GemmW4A16Op{c.M, c.N, c.K, c.group, a.data, c.K, w4.data(), s4.data(), d1.data(), c.N});
      qb::set_num_threads(2);
      cpu().run(qb::GemmW4A16Op{c.M, c.N, c.K, c.group, a.data, c.K, w4.data(), s4.data(), d2.data(), c.N});
      qb::set_num_threads(0);
      for (std::int64_t m = 0; m < c.M; ++m)
        for (std::int64_t n = 0; n < c.N; ++n) {
          double abs_sum = 0;
          for (std::int64_t k = 0; k < c.K; ++k) abs_sum += std::fabs(double(a.data[m * c.K + k]) * deq[n * c.K + k]);
          const std::size_t i = static_cast<std::size_t>(m * c.N + n);
          // Products are formed as (a * code) * scale: two roundings beyond the K-term sum.
          EXPECT_NEAR(d1[i], ref[i], float_bound(c.K, 3, abs_sum)) << "m=" << m << " n=" << n;
          EXPECT_EQ(bits(d1[i]), bits(d2[i])) << "thread count changed the result";
        }
    });
  }
}

namespace {
// Blocks that stress the encoders: ties, signed zeros, all-zero, equal +/- extremes, tiny values.
std::vector<float> tricky_rows(std::int64_t rows, std::int64_t cols, std::mt19937& rng) {
  std::vector<float> x(static_cast<std::size_t>(rows * cols));
  fill(x.data(), x.size(), rng, 2.0f);
  auto block = [&](std::int64_t b) { return x.data() + b * 32; };
  const std::int64_t blocks = rows * cols / 32;
  if (blocks > 0) std::fill(block(0), block(0) + 32, 0.0f);
  if (blocks > 1) {
    for (int j = 0; j < 32; ++j) block(1)[j] = static_cast<float>(j - 16) + 0.5f;  // exact .5 after scaling
    block(1)[5] = -127.0f;
    block(1)[9] = 127.0f;  // same magnitude as an earlier one: the first wins
  }
  if (blocks > 2) {
    for (int j = 0; j < 32; ++j) block(2)[j] = (j % 2) ? -0.0f : 0.0f;
    block(2)[7] = 3.0f;
  }
  if (blocks > 3)
    for (int j = 0; j < 32; ++j) block(3)[j] = -1e-30f * static_cast<float>(j);
  if (blocks > 4)
    for (int j = 0; j < 32; ++j) block(4)[j] = -2.5f;
  return x;
}
}  // namespace

TEST(CpuKernels, BlockEncodersAreByteExact) {
  SCOPED_TRACE("seed=" + std::to_string(kSeed));
  std::mt19937 rng(kSeed + 3);
  for (auto type : {qf::GgmlType::kQ8_0, qf::GgmlType::kQ4_0, qf::GgmlType::kQ4_1, qf::GgmlType::kQ8_1}) {
    for (std::int64_t cols : {32, 224, 4096}) {
      const std::int64_t rows = 5;
      SCOPED_TRACE(std::string(qf::ggml_traits(type).name) + " cols=" + std::to_string(cols));
      const std::vector<float> src = tricky_rows(rows, cols, rng);
      Misaligned x(src.size());
      std::copy(src.begin(), src.end(), x.data);
      const std::size_t nbytes = static_cast<std::size_t>(rows * qf::ggml_row_bytes(type, cols));
      std::vector<std::uint8_t> ref(nbytes);
      ReferenceBackend::run_op(qb::EncodeBlocksOp{type, rows, cols, x.data, cols, ref.data()});
      for_each_isa([&] {
        std::vector<std::uint8_t> out(nbytes + 3);
        cpu().run(qb::EncodeBlocksOp{type, rows, cols, x.data, cols, out.data() + 3});
        for (std::size_t i = 0; i < nbytes; ++i) ASSERT_EQ(out[i + 3], ref[i]) << "byte " << i << " (block " << i / (nbytes / static_cast<std::size_t>(rows * cols / 32)) << ")";
      });
    }
  }
}

TEST(CpuKernels, BlockGemvAndGemmWithinReductionBound) {
  SCOPED_TRACE("seed=" + std::to_string(kSeed));
  std::mt19937 rng(kSeed + 4);
  for (auto wt : {qf::GgmlType::kQ4_0, qf::GgmlType::kQ4_1, qf::GgmlType::kQ8_0}) {
    const std::int64_t M = 3, N = 37, K = 32 * 13;
    SCOPED_TRACE(qf::ggml_traits(wt).name);
    std::vector<float> w(static_cast<std::size_t>(N * K)), a(static_cast<std::size_t>(M * K));
    fill(w.data(), w.size(), rng);
    fill(a.data(), a.size(), rng);
    const std::int64_t row_bytes = qf::ggml_row_bytes(wt, K);
    std::vector<std::uint8_t> wq(static_cast<std::size_t>(N * row_bytes));
    ReferenceBackend::run_op(qb::EncodeBlocksOp{wt, N, K, w.data(), K, wq.data()});
    std::vector<float> deq(static_cast<std::size_t>(N * K)), adq(static_cast<std::size_t>(M * K));
    for (std::int64_t n = 0; n < N; ++n) qf::decode_row(wt, wq.data() + n * row_bytes, deq.data() + n * K, K);
    const qf::GgmlType at = ReferenceBackend::activation_type(wt);
    std::vector<std::uint8_t> aq(static_cast<std::size_t>(M * qf::ggml_row_bytes(at, K)));
    for (std::int64_t m = 0; m < M; ++m) {
      qf::encode_row(at, a.data() + m * K, aq.data() + m * qf::ggml_row_bytes(at, K), K);
      qf::decode_row(at, aq.data() + m * qf::ggml_row_bytes(at, K), adq.data() + m * K, K);
    }
    std::vector<float> ref(static_cast<std::size_t>(M * N)), ref_gemv(static_cast<std::size_t>(N));
    ReferenceBackend::run_op(qb::GemmBlocksOp{wt, M, N, K, a.data(), K, wq.data(), ref.data(), N});
    ReferenceBackend::run_op(qb::GemvBlocksOp{wt, N, K, wq.data(), aq.data(), ref_gemv.data()});
    for_each_isa([&] {
      std::vector<float> d(static_cast<std::size_t>(M * N)), y(static_cast<std::size_t>(N));
      cpu().run(qb::GemmBlocksOp{wt, M, N, K, a.data(), K, wq.data(), d.data(), N});
      cpu().run(qb::GemvBlocksOp{wt, N, K, wq.data(), aq.data(), y.data()});
      for (std::int64_t m = 0; m < M; ++m)
        for (std::int64_t n = 0; n < N; ++n) {
          // Both sides sum K/32 block terms (each the product of an exact integer with d_w*d_x,
          // plus Q4_1's min term) in float; the decoded values bound the terms' magnitudes
          // (each decode is itself one rounding, counted in `extra`).
          double abs_sum = 0;
          for (std::int64_t k = 0; k < K; ++k) abs_sum += std::fabs(double(deq[n * K + k]) * adq[m * K + k]);
          const double tol = 2 * float_bound(K / 32 * 2, 4, abs_sum);
          EXPECT_NEAR(d[m * N + n], ref[m * N + n], tol) << "m=" << m << " n=" << n;
          if (m == 0) {
            EXPECT_NEAR(y[n], ref_gemv[n], tol) << "gemv n=" << n;
          }
        }
    });
  }
}

TEST(CpuKernels, Nf4GemvWithinReductionBound) {
  SCOPED_TRACE("seed=" + std::to_string(kSeed));
  std::mt19937 rng(kSeed + 5);
  for (std::int64_t block : {64, 6}) {
    const std::int64_t N = 29, K = block == 64 ? 64 * 7 : 66;
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(N * K / 2));
    for (auto& c : codes) c = static_cast<std::uint8_t>(rng() & 0xFF);
    std::vector<float> absmax(static_cast<std::size_t>(N * K / block)), x(static_cast<std::size_t>(K));
    for (auto& s : absmax) s = std::fabs(std::normal_distribution<float>(0, 1)(rng)) + 0.01f;
    fill(x.data(), x.size(), rng);
    std::vector<float> ref(static_cast<std::size_t>(N));
    const qb::GemvNf4Op op_ref{N, K, block, codes.data(), absmax.data(), x.data(), ref.data()};
    ReferenceBackend::run_op(op_ref);
    for_each_isa([&] {
      std::vector<float> y(static_cast<std::size_t>(N));
      qb::GemvNf4Op op = op_ref;
      op.y = y.data();
      cpu().run(op);
      for (std::int64_t n = 0; n < N; ++n) {
        double abs_sum = 0;
        for (std::int64_t k = 0; k < K; ++k) abs_sum += std::fabs(double(ReferenceBackend::nf4_weight(op, n * K + k)) * x[static_cast<std::size_t>(k)]);
        EXPECT_NEAR(y[static_cast<std::size_t>(n)], ref[static_cast<std::size_t>(n)], float_bound(K, 3, abs_sum)) << "n=" << n;
      }
    });
  }
}

TEST(CpuKernels, GptqBlockUpdateWithinReductionBound) {
  SCOPED_TRACE("seed=" + std::to_string(kSeed));
  std::mt19937 rng(kSeed + 6);
  const std::int64_t rows = 13, cols = 29, B = 7, ldw = 31, lde = 9, ldh = 33;
  std::vector<float> w(static_cast<std::size_t>(rows * ldw)), err(static_cast<std::size_t>(rows * lde)),
      hinv(static_cast<std::size_t>(B * ldh));
  fill(w.data(), w.size(), rng);
  fill(err.data(), err.size(), rng);
  fill(hinv.data(), hinv.size(), rng);
  std::vector<float> ref = w, out = w;
  SKIP_IF_CPU_DECLINES(qb::GptqBlockUpdateOp{});
  ReferenceBackend::run_op(qb::GptqBlockUpdateOp{rows, cols, B, err.data(), lde, hinv.data(), ldh, ref.data(), ldw});
  ASSERT_EQ(cpu().run(qb::GptqBlockUpdateOp{rows, cols, B, err.data(), lde, hinv.data(), ldh, out.data(), ldw}),
            qforge::Status::kSuccess);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < ldw; ++c) {
      const std::size_t i = static_cast<std::size_t>(r * ldw + c);
      if (c >= cols) {
        EXPECT_EQ(out[i], w[i]) << "columns past cols must stay untouched";
        continue;
      }
      double abs_sum = std::fabs(w[i]);
      for (std::int64_t j = 0; j < B; ++j) abs_sum += std::fabs(double(err[r * lde + j]) * hinv[j * ldh + c]);
      EXPECT_NEAR(out[i], ref[i], float_bound(B + 1, 1, abs_sum));
    }
}

TEST(CpuKernels, BackendRunUsesCpuForNewOps) {
  const float x[4] = {1, -2, 3, -4};
  std::int8_t q[4];
  float s;
  const qb::Op op = qb::QuantizeRowsOp{qb::RowFormat::kInt8, 1, 4, 4, x, 4, q, &s};
  EXPECT_EQ(qb::Registry::instance().select(op).name(), "cpu");
  qb::run(op);
  EXPECT_EQ(q[3], -127);
  EXPECT_FLOAT_EQ(s, 4.0f / 127.0f);
}

TEST(CpuKernels, OneDnnGemmF32WithinBoundAndThreadIndependent) {
  SKIP_IF_CPU_DECLINES(qb::GemmF32Op{});
  SCOPED_TRACE("seed=" + std::to_string(kSeed));
  std::mt19937 rng(kSeed + 7);
  struct Case { std::int64_t M, N, K; };
  for (const Case c : {Case{1, 67, 1031}, Case{37, 29, 513}, Case{8, 96, 3000}}) {
    SCOPED_TRACE("M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K));
    std::vector<float> a(static_cast<std::size_t>(c.M * c.K)), b(static_cast<std::size_t>(c.N * c.K));
    fill(a.data(), a.size(), rng);
    fill(b.data(), b.size(), rng);
    const std::size_t nd = static_cast<std::size_t>(c.M * c.N);
    std::vector<float> ref(nd), d1(nd), d2(nd);
    ReferenceBackend::run_op(qb::GemmF32Op{c.M, c.N, c.K, a.data(), c.K, b.data(), c.K, ref.data(), c.N});
    qb::set_num_threads(1);
    cpu().run(qb::GemmF32Op{c.M, c.N, c.K, a.data(), c.K, b.data(), c.K, d1.data(), c.N});
    qb::set_num_threads(2);
    cpu().run(qb::GemmF32Op{c.M, c.N, c.K, a.data(), c.K, b.data(), c.K, d2.data(), c.N});
    qb::set_num_threads(0);
    for (std::int64_t m = 0; m < c.M; ++m)
      for (std::int64_t n = 0; n < c.N; ++n) {
        double abs_sum = 0;
        for (std::int64_t k = 0; k < c.K; ++k) abs_sum += std::fabs(double(a[m * c.K + k]) * b[n * c.K + k]);
        const std::size_t i = static_cast<std::size_t>(m * c.N + n);
        EXPECT_NEAR(d1[i], ref[i], float_bound(c.K, 1, abs_sum));
        EXPECT_EQ(bits(d1[i]), bits(d2[i])) << "oneDNN's result changed with the thread count at m=" << m << " n=" << n;
      }
  }
}

TEST(CpuKernels, OneDnnGemmF32TransposedOperandsScaleAndAccumulate) {
  // a stored [K, M], b stored [K, N], alpha = -0.5 (a power of two: scaling adds no rounding),
  // accumulating onto dst: within the bound of K products plus one addition.
  SKIP_IF_CPU_DECLINES(qb::GemmF32Op{});
  SCOPED_TRACE("seed=" + std::to_string(kSeed));
  std::mt19937 rng(kSeed + 17);
  const std::int64_t M = 23, N = 41, K = 300;
  std::vector<float> a(static_cast<std::size_t>(M * K)), b(static_cast<std::size_t>(N * K)), d0(static_cast<std::size_t>(M * N));
  fill(a.data(), a.size(), rng);
  fill(b.data(), b.size(), rng);
  fill(d0.data(), d0.size(), rng);
  std::vector<float> a_km(a.size()), b_kn(b.size());
  for (std::int64_t k = 0; k < K; ++k) {
    for (std::int64_t m = 0; m < M; ++m) a_km[static_cast<std::size_t>(k * M + m)] = a[static_cast<std::size_t>(m * K + k)];
    for (std::int64_t n = 0; n < N; ++n) b_kn[static_cast<std::size_t>(k * N + n)] = b[static_cast<std::size_t>(n * K + k)];
  }
  for (const bool ta : {false, true})
    for (const bool tb : {false, true}) {
      SCOPED_TRACE(testing::Message() << "a_km " << ta << " b_kn " << tb);
      std::vector<float> ref = d0, out = d0;
      const qb::GemmF32Op op{.M = M, .N = N, .K = K, .a = ta ? a_km.data() : a.data(), .lda = ta ? M : K,
                             .b = tb ? b_kn.data() : b.data(), .ldb = tb ? N : K, .dst = out.data(), .ldd = N,
                             .accumulate = true, .alpha = -0.5f, .a_km = ta, .b_kn = tb};
      qb::GemmF32Op ref_op = op;
      ref_op.dst = ref.data();
      ReferenceBackend::run_op(ref_op);
      ASSERT_EQ(cpu().run(op), qforge::Status::kSuccess);
      for (std::int64_t m = 0; m < M; ++m)
        for (std::int64_t n = 0; n < N; ++n) {
          double abs_sum = std::fabs(d0[static_cast<std::size_t>(m * N + n)]);
          for (std::int64_t k = 0; k < K; ++k)
            abs_sum += 0.5 * std::fabs(double(a[static_cast<std::size_t>(m * K + k)]) * b[static_cast<std::size_t>(n * K + k)]);
          const std::size_t i = static_cast<std::size_t>(m * N + n);
          EXPECT_NEAR(out[i], ref[i], float_bound(K, 2, abs_sum));
        }
    }
}

TEST(CpuKernels, Int8GemmExactOverTheFullInt8Range) {
  SKIP_IF_CPU_DECLINES(qb::GemmS8S8S32Op{});
  SCOPED_TRACE("seed=" + std::to_string(kSeed));
  std::mt19937 rng(kSeed + 8);
  std::uniform_int_distribution<int> byte(-128, 127);
  struct Case { std::int64_t M, N, K; };
  for (const Case c : {Case{1, 1, 1}, Case{3, 7, 13}, Case{33, 17, 257}, Case{64, 64, 1024}}) {
    SCOPED_TRACE("M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K));
    std::vector<std::int8_t> a(static_cast<std::size_t>(c.M * c.K)), b(static_cast<std::size_t>(c.N * c.K));
    for (auto& v : a) v = static_cast<std::int8_t>(byte(rng));
    for (auto& v : b) v = static_cast<std::int8_t>(byte(rng));
    a[0] = b[0] = -128;  // the value a sign trick would get wrong
    const std::size_t nd = static_cast<std::size_t>(c.M * c.N);
    std::vector<std::int32_t> ref(nd), got(nd);
    ReferenceBackend::run_op(qb::GemmS8S8S32Op{c.M, c.N, c.K, a.data(), b.data(), ref.data()});
    ASSERT_EQ(cpu().run(qb::GemmS8S8S32Op{c.M, c.N, c.K, a.data(), b.data(), got.data()}), qforge::Status::kSuccess);
    EXPECT_EQ(got, ref);
  }
}
