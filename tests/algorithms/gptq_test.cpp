#include <cmath>
#include <limits>
#include <vector>

#include <Eigen/LU>
#include <Eigen/Eigenvalues>
#include <gtest/gtest.h>

#include "qforge/algorithms/gptq.hpp"
#include "test_util.hpp"

namespace qa = qforge::algorithms;
using qa::testing::correlated_layer;
using qa::testing::gram;
using qa::testing::output_error;

TEST(Gptq, UpperCholeskyOfInverseMatchesReferenceExample) {
  // algorithms.md §1.2: for H^-1 = M = [[4,2,6],[2,5,7],[6,7,22]], U = [[2,1,3],[0,2,2],[0,0,3]].
  Eigen::Matrix3d m;
  m << 4, 2, 6, 2, 5, 7, 6, 7, 22;
  qa::MatrixXdR h = m.inverse();
  double damp = 0;
  std::vector<std::string> notes;
  const auto uv = qa::inverse_cholesky_upper(h, 0.0, 0, "test", damp, notes);
  const Eigen::Matrix3d u = Eigen::Map<const Eigen::Matrix<float, 3, 3, Eigen::RowMajor>>(uv.data()).cast<double>();
  Eigen::Matrix3d expect;
  expect << 2, 1, 3, 0, 2, 2, 0, 0, 3;
  // Float32 factorisation: relative error up to cond(H) · n · ε_f32 (H rounded to float, then
  // factored and inverted, each backward stable), on entries of size max|U|.
  const Eigen::SelfAdjointEigenSolver<Eigen::Matrix3d> eig(m);  // ascending eigenvalues
  const double cond = eig.eigenvalues()(2) / eig.eigenvalues()(0);
  const double tol = 4.0 * 3 * cond * std::numeric_limits<float>::epsilon() * expect.cwiseAbs().maxCoeff();
  EXPECT_LT((u - expect).cwiseAbs().maxCoeff(), tol) << "cond " << cond;
}

TEST(Gptq, DiagonalHessianEqualsRtnCodeForCode) {
  // With a diagonal H, U is diagonal: no error is propagated, so every code is RTN's.
  for (unsigned seed : {11u, 12u, 13u}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    const auto l = correlated_layer(8, 64, 4, seed);
    std::vector<double> h(64 * 64, 0.0);
    for (int j = 0; j < 64; ++j) h[static_cast<std::size_t>(j * 64 + j)] = 1.0 + j % 5;
    for (std::int64_t gs : {0, 16}) {
      for (const char* qt : {"int4", "int3", "q4_0", "nf4"}) {
        qa::GptqOptions o;
        o.grid = qa::parse_grid(qt);
        if (!qa::is_ggml_grid(o.grid.kind)) o.grid.group_size = gs;
        o.block_size = 24;
        const auto g = qa::gptq(l.w.data(), 8, 64, h.data(), o);
        const auto r = qa::quantize_rtn(l.w.data(), 8, 64, o.grid);
        EXPECT_EQ(g.codes, r.codes) << qt << " g" << gs;
        EXPECT_EQ(g.weight, r.weight) << qt << " g" << gs;
      }
    }
  }
}

TEST(Gptq, BeatsRtnOnCorrelatedInputs) {
  for (unsigned seed : {21u, 22u, 23u, 24u}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    const auto l = correlated_layer(16, 64, 512, seed);
    const auto h = gram(l.x, l.tokens, l.cols);
    for (bool act_order : {false, true}) {
      for (const char* qt : {"int4", "int3", "q4_0"}) {
        qa::GptqOptions o;
        o.grid = qa::parse_grid(qt);
        if (!qa::is_ggml_grid(o.grid.kind)) o.grid.group_size = 32;
        o.act_order = act_order;
        const auto g = qa::gptq(l.w.data(), l.rows, l.cols, h.data(), o);
        const auto r = qa::quantize_rtn(l.w.data(), l.rows, l.cols, o.grid);
        const double eg = output_error(l.w, g.weight, l.x, nullptr, l.rows, l.cols, l.tokens);
        const double er = output_error(l.w, r.weight, l.x, nullptr, l.rows, l.cols, l.tokens);
        EXPECT_LT(eg, er) << qt << " act_order " << act_order;
      }
    }
  }
}

TEST(Gptq, BlockSizeDoesNotChangeTheResult) {
  // Lazy batching is an exact reordering of the same updates; only float round-off differs, which
  // can flip a code sitting on a rounding boundary. Allow < 1% flips and a 1e-3 relative change.
  // Per-channel, and groups with fresh_group_params: the reference's stale group params (P5)
  // make grouped results depend on the block size by design, which the last check shows.
  for (unsigned seed : {31u, 32u}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    const auto l = correlated_layer(16, 96, 400, seed);
    const auto h = gram(l.x, l.tokens, l.cols);
    for (std::int64_t gs : {0, 32}) {
    qa::GptqOptions o;
    o.grid.group_size = gs;
    o.grid.bits = 4;
    o.fresh_group_params = true;
    o.block_size = 128;
    const auto a = qa::gptq(l.w.data(), l.rows, l.cols, h.data(), o);
    o.block_size = 7;
    const auto b = qa::gptq(l.w.data(), l.rows, l.cols, h.data(), o);
    int flips = 0;
    for (std::size_t i = 0; i < a.codes.size(); ++i) flips += a.codes[i] != b.codes[i];
    EXPECT_LT(flips, static_cast<int>(a.codes.size() / 100));
    EXPECT_NEAR(a.loss, b.loss, 1e-3 * a.loss) << "g" << gs;
    if (gs == 32) {
      o.block_size = 32;  // blocks aligned with groups: nothing pending when a group starts
      const auto fresh32 = qa::gptq(l.w.data(), l.rows, l.cols, h.data(), o);
      o.fresh_group_params = false;
      const auto stale32 = qa::gptq(l.w.data(), l.rows, l.cols, h.data(), o);
      EXPECT_EQ(stale32.codes, fresh32.codes);  // B = g: the reference equals the fix
      o.block_size = 128;
      const auto stale128 = qa::gptq(l.w.data(), l.rows, l.cols, h.data(), o);
      EXPECT_NE(stale128.codes, a.codes);  // B > g: P5's stale params change codes
    }
    }
  }
}

TEST(Gptq, StaticGroupsActOrderAndFreshParams) {
  const auto l = correlated_layer(8, 64, 300, 41);
  const auto h = gram(l.x, l.tokens, l.cols);
  qa::GptqOptions o;
  o.grid.group_size = 16;
  o.act_order = true;
  o.static_groups = true;
  const auto s = qa::gptq(l.w.data(), l.rows, l.cols, h.data(), o);
  ASSERT_EQ(s.perm.size(), 64u);
  for (std::int64_t j = 0; j < 64; ++j) EXPECT_EQ(s.group_index[static_cast<std::size_t>(j)], j / 16);  // monotone g_idx
  // Static params are the RTN params of the original groups.
  const auto r = qa::quantize_rtn(l.w.data(), l.rows, l.cols, o.grid);
  for (std::size_t i = 0; i < r.params.size(); ++i) EXPECT_EQ(s.params[i].scale, r.params[i].scale);
  // Dequantized weight is consistent with codes and params under every option.
  o.static_groups = false;
  o.fresh_group_params = true;
  o.block_size = 32;
  auto d = qa::gptq(l.w.data(), l.rows, l.cols, h.data(), o);
  const auto w = d.weight;
  d.dequantize_all();
  EXPECT_EQ(w, d.weight);
  const double ed = output_error(l.w, w, l.x, nullptr, l.rows, l.cols, l.tokens);
  const double er = output_error(l.w, r.weight, l.x, nullptr, l.rows, l.cols, l.tokens);
  EXPECT_LT(ed, er);
}

TEST(Gptq, NonPositiveDefiniteHessianRetriesThenFailsNamingTheSite) {
  // [[1,3],[3,1]] has eigenvalues -2 and 4: damping must exceed 2 x mean(diag) to fix it.
  std::vector<float> w = {0.3f, -0.2f, 0.1f, 0.5f};
  std::vector<double> h = {1, 3, 3, 1};
  qa::GptqOptions o;
  const auto q = qa::gptq(w.data(), 2, 2, h.data(), o, "blk.3.ffn_up");
  ASSERT_FALSE(q.notes.empty());
  EXPECT_NE(q.notes[0].find("blk.3.ffn_up"), std::string::npos);
  EXPECT_GT(q.damp_used, 2.0);
  o.max_damp_retries = 1;
  try {
    qa::gptq(w.data(), 2, 2, h.data(), o, "blk.3.ffn_up");
    FAIL() << "expected an error";
  } catch (const qforge::Error& e) {
    EXPECT_EQ(e.status(), qforge::Status::kNumericalError);
    EXPECT_NE(std::string(e.what()).find("blk.3.ffn_up"), std::string::npos);
  }
}

TEST(Gptq, NanInStatisticsIsAnErrorNamingTheSite) {
  std::vector<float> w = {0.3f, -0.2f, 0.1f, 0.5f};
  std::vector<double> h = {1, 0, 0, std::nan("")};
  try {
    qa::gptq(w.data(), 2, 2, h.data(), qa::GptqOptions{}, "attn.q");
    FAIL() << "expected an error";
  } catch (const qforge::Error& e) {
    EXPECT_NE(std::string(e.what()).find("attn.q"), std::string::npos);
  }
}

TEST(Gptq, DeadColumnsAreZeroedAndAllDeadIsRtn) {
  const auto l = correlated_layer(4, 32, 50, 51);
  auto h = gram(l.x, l.tokens, l.cols);
  for (int j = 0; j < 32; ++j) {
    h[static_cast<std::size_t>(5 * 32 + j)] = 0;
    h[static_cast<std::size_t>(j * 32 + 5)] = 0;
  }
  const auto q = qa::gptq(l.w.data(), 4, 32, h.data(), qa::GptqOptions{});
  for (int r = 0; r < 4; ++r) EXPECT_EQ(q.weight[static_cast<std::size_t>(r * 32 + 5)], 0.0f);
  std::vector<double> zero(32 * 32, 0.0);
  const auto z = qa::gptq(l.w.data(), 4, 32, zero.data(), qa::GptqOptions{});
  EXPECT_FALSE(z.notes.empty());
  // No calibration signal at all: the layer keeps its round-to-nearest codes, weights and params
  // (the reference would zero every column and return a zero layer).
  const auto rtn = qa::quantize_rtn(l.w.data(), 4, 32, qa::GptqOptions{}.grid);
  EXPECT_EQ(z.codes, rtn.codes);
  EXPECT_EQ(z.weight, rtn.weight);
  EXPECT_NE(z.notes.front().find("all columns dead"), std::string::npos) << z.notes.front();
}

TEST(Gptq, UpperFactorTimesDampedHessianIsIdentity) {
  // Uᵀ U (H + λI) = I up to float32 round-off scaled by the size and the condition number.
  const auto l = correlated_layer(1, 48, 300, 55);
  const auto hv = gram(l.x, l.tokens, l.cols);
  const qa::MatrixXdR h = Eigen::Map<const qa::MatrixXdR>(hv.data(), 48, 48);
  double damp = 0;
  std::vector<std::string> notes;
  const auto uv = qa::inverse_cholesky_upper(h, 0.01, 0, "test", damp, notes);
  const qa::MatrixXdR u = Eigen::Map<const Eigen::Matrix<float, 48, 48, Eigen::RowMajor>>(uv.data()).cast<double>();
  qa::MatrixXdR hd = h;
  hd.diagonal().array() += damp;
  const qa::MatrixXdR id = u.transpose() * u * hd;
  const Eigen::SelfAdjointEigenSolver<qa::MatrixXdR> eig(hd);
  const double cond = eig.eigenvalues()(47) / eig.eigenvalues()(0);
  const double tol = 4.0 * 48 * cond * std::numeric_limits<float>::epsilon();
  EXPECT_LT((id - qa::MatrixXdR::Identity(48, 48)).cwiseAbs().maxCoeff(), tol) << "cond " << cond;
  EXPECT_EQ(u.triangularView<Eigen::StrictlyLower>().toDenseMatrix().cwiseAbs().maxCoeff(), 0.0);
  EXPECT_GT(u.diagonal().minCoeff(), 0.0);
}

namespace {
// gptq.py's fasterquant() written the plain way, in double: explicit inverse, the upper Cholesky
// factor of it, and every column's update applied to a full copy of W as well as lazily (so the
// reference's stale group params, read from the lazily updated W, and the fresh fix, read from
// the eager copy, are both available). Returns codes in original column order.
std::vector<std::int8_t> reference_gptq(const std::vector<float>& w_in, std::int64_t rows, std::int64_t cols,
                                        std::vector<double> hv, const qa::GptqOptions& o) {
  using qa::MatrixXdR;
  const std::int64_t g = o.grid.group_size == 0 ? cols : o.grid.group_size;
  const bool per_channel = g == cols;
  MatrixXdR w = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(w_in.data(), rows, cols).cast<double>();
  MatrixXdR h = Eigen::Map<const MatrixXdR>(hv.data(), cols, cols);
  const auto params_of = [&](const MatrixXdR& m, std::int64_t r, std::int64_t c0, std::int64_t n) {
    std::vector<float> v(static_cast<std::size_t>(n));
    for (std::int64_t k = 0; k < n; ++k) v[static_cast<std::size_t>(k)] = static_cast<float>(m(r, c0 + k));
    return qa::find_params(o.grid, v);
  };
  std::vector<qa::GroupParams> row_params(static_cast<std::size_t>(rows)), static_params;
  if (per_channel && !o.static_groups)
    for (std::int64_t r = 0; r < rows; ++r) row_params[static_cast<std::size_t>(r)] = params_of(w, r, 0, cols);
  for (std::int64_t j = 0; j < cols; ++j)
    if (h(j, j) == 0.0) {
      h(j, j) = 1.0;
      w.col(j).setZero();
    }
  if (o.static_groups)
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t t = 0; t < cols / g; ++t) static_params.push_back(params_of(w, r, t * g, g));
  std::vector<std::int64_t> perm(static_cast<std::size_t>(cols));
  std::iota(perm.begin(), perm.end(), 0);
  if (o.act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](std::int64_t a, std::int64_t b) { return h(a, a) > h(b, b); });
  MatrixXdR wp(rows, cols), hp(cols, cols);
  for (std::int64_t j = 0; j < cols; ++j) {
    wp.col(j) = w.col(perm[static_cast<std::size_t>(j)]);
    for (std::int64_t i = 0; i < cols; ++i) hp(i, j) = h(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
  }
  hp.diagonal().array() += o.percdamp * hp.diagonal().mean();
  const MatrixXdR hinv = hp.inverse();
  const MatrixXdR u = Eigen::LLT<MatrixXdR>(hinv).matrixU();
  MatrixXdR lazy = wp, eager = wp;
  std::vector<qa::GroupParams> cur = row_params;
  std::vector<std::int8_t> codes(static_cast<std::size_t>(rows * cols));
  for (std::int64_t i1 = 0; i1 < cols; i1 += o.block_size) {
    const std::int64_t i2 = std::min(i1 + o.block_size, cols);
    MatrixXdR block = lazy.middleCols(i1, i2 - i1), err(rows, i2 - i1);
    for (std::int64_t j = i1; j < i2; ++j) {
      for (std::int64_t r = 0; r < rows; ++r) {
        auto& p = cur[static_cast<std::size_t>(r)];
        if (o.static_groups) p = static_params[static_cast<std::size_t>(r * (cols / g) + perm[static_cast<std::size_t>(j)] / g)];
        else if (!per_channel && j % g == 0) p = params_of(o.fresh_group_params ? eager : lazy, r, j, g);
        const double x = block(r, j - i1);
        const int c = qa::quantize_code(o.grid, p, static_cast<float>(x));
        codes[static_cast<std::size_t>(r * cols + perm[static_cast<std::size_t>(j)])] = static_cast<std::int8_t>(c);
        const double e = (x - qa::dequantize_code(o.grid, p, c)) / u(j, j);
        block.row(r).segment(j - i1, i2 - j) -= e * u.row(j).segment(j, i2 - j);
        eager.row(r).segment(j, cols - j) -= e * u.row(j).segment(j, cols - j);
        err(r, j - i1) = e;
      }
    }
    lazy.middleCols(i2, cols - i2) -= err * u.block(i1, i2, i2 - i1, cols - i2);
  }
  return codes;
}
}  // namespace

TEST(Gptq, MatchesAnUnblockedDoubleReference) {
  // The implementation regroups the reference's arithmetic (no inverse, float32 GEMMs): codes may
  // differ only where float round-off moves a value across a rounding boundary.
  struct Config {
    const char* name;
    std::int64_t group, block;
    bool act_order, static_groups, fresh, sym;
  };
  const Config configs[] = {{"per-channel", 0, 32, false, false, false, false},
                            {"g16 B32 stale", 16, 32, false, false, false, false},
                            {"g16 B32 fresh act-order", 16, 32, true, false, true, true},
                            {"g32 B7 stale act-order", 32, 7, true, false, false, false},
                            {"g32 B7 fresh", 32, 7, false, false, true, false},
                            {"g48 B32 stale", 48, 32, false, false, false, true},
                            {"g16 static act-order", 16, 32, true, true, false, false}};
  for (unsigned seed : {71u, 72u}) {
    const auto l = correlated_layer(12, 96, 400, seed);
    auto h = gram(l.x, l.tokens, l.cols);
    for (std::int64_t j : {5, 40}) {  // dead columns
      for (std::int64_t i = 0; i < l.cols; ++i) h[static_cast<std::size_t>(i * l.cols + j)] = h[static_cast<std::size_t>(j * l.cols + i)] = 0.0;
    }
    for (const Config& c : configs) {
      SCOPED_TRACE(testing::Message() << c.name << " seed " << seed);
      qa::GptqOptions o;
      o.grid.bits = 4;
      o.grid.group_size = c.group;
      o.grid.sym = c.sym;
      o.block_size = c.block;
      o.act_order = c.act_order;
      o.static_groups = c.static_groups;
      o.fresh_group_params = c.fresh;
      const auto q = qa::gptq(l.w.data(), l.rows, l.cols, h.data(), o);
      const auto ref = reference_gptq(l.w, l.rows, l.cols, h, o);
      int flips = 0;
      for (std::size_t i = 0; i < ref.size(); ++i) flips += q.codes[i] != ref[i];
      EXPECT_LE(flips, static_cast<int>(ref.size() / 100)) << flips << " of " << ref.size() << " codes differ";
    }
  }
}
