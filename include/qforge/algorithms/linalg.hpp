// Blocked Cholesky factorisation and triangular inverse in float32 for the layer algorithms.
// The O(n³) work is GEMMs on the backend, so it runs at GEMM speed on every core; only the
// diagonal blocks (O(n·b²)) are factored and inverted in double with Eigen. Eigen's own LLT is
// single-threaded and runs its updates in scalar-blocked double, which made the factorisation the
// largest part of GPTQ; float32 is also what the reference GPTQ factors in.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "qforge/backend/registry.hpp"
#include "qforge/backend/threads.hpp"
#include "qforge/core/parallel.hpp"

namespace qforge::algorithms {
using MatrixXdR = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
}  // namespace qforge::algorithms

namespace qforge::algorithms::linalg {

inline constexpr std::int64_t kBlock = 128;      // diagonal block size
inline constexpr std::int64_t kPanelRows = 512;  // rows per trailing-update GEMM

// dst[M, N] (+)= a[M, K] · b[N, K]ᵀ on the backend (row-major, leading dimensions as given).
inline void gemm_nt(std::int64_t M, std::int64_t N, std::int64_t K, const float* a, std::int64_t lda, const float* b,
                    std::int64_t ldb, float* dst, std::int64_t ldd, bool accumulate) {
  if (M == 0 || N == 0) return;
  backend::run(backend::GemmF32Op{.M = M, .N = N, .K = K, .a = a, .lda = lda, .b = b, .ldb = ldb, .dst = dst,
                                  .ldd = ldd, .accumulate = accumulate});
}

// The lower triangle of (A + shift I) in float32, n×n row-major, from a(i, j) for i >= j (the
// strict upper triangle is left zero): the input cholesky_lower reads.
template <class Entry>
std::vector<float> lower_triangle(std::int64_t n, Entry&& a, double shift) {
  std::vector<float> out(static_cast<std::size_t>(n * n), 0.0f);
  parallel_for_each(n, backend::num_threads(), [&](std::int64_t i) {
    for (std::int64_t j = 0; j <= i; ++j)
      out[static_cast<std::size_t>(i * n + j)] = static_cast<float>(a(i, j) + (i == j ? shift : 0.0));
  });
  return out;
}

// The lower Cholesky factor L of a symmetric positive-definite n×n row-major matrix (only its
// lower triangle is read) and the inverses of L's diagonal blocks, which the triangular inverse
// reuses.
struct LowerCholesky {
  std::int64_t n = 0;
  std::vector<float> l;         // n×n row-major, strict upper triangle zero
  std::vector<float> diag_inv;  // per diagonal block of kBlock: its inverse, b×b row-major
  std::vector<std::int64_t> diag_offset;
};

// Factors a (consumed). Returns false when a pivot is not positive or not finite: the matrix is
// not (numerically) positive definite.
inline bool cholesky_lower(std::vector<float> a, std::int64_t n, LowerCholesky& out) {
  out.n = n;
  out.diag_inv.clear();
  out.diag_offset.clear();
  std::vector<float> panel, neg_panel;
  for (std::int64_t k = 0; k < n; k += kBlock) {
    const std::int64_t kb = std::min(kBlock, n - k), m = n - k - kb;
    MatrixXdR d(kb, kb);
    for (std::int64_t i = 0; i < kb; ++i)
      for (std::int64_t j = 0; j <= i; ++j) d(i, j) = d(j, i) = a[static_cast<std::size_t>((k + i) * n + k + j)];
    const Eigen::LLT<MatrixXdR> llt(d);
    if (llt.info() != Eigen::Success) return false;
    const MatrixXdR l11 = llt.matrixL();
    const MatrixXdR l11_inv = l11.triangularView<Eigen::Lower>().solve(MatrixXdR::Identity(kb, kb));
    if (!l11.allFinite() || !l11_inv.allFinite() || (l11.diagonal().array() <= 0.0).any()) return false;
    out.diag_offset.push_back(static_cast<std::int64_t>(out.diag_inv.size()));
    for (std::int64_t i = 0; i < kb; ++i)
      for (std::int64_t j = 0; j < kb; ++j) {
        a[static_cast<std::size_t>((k + i) * n + k + j)] = j <= i ? static_cast<float>(l11(i, j)) : 0.0f;
        out.diag_inv.push_back(j <= i ? static_cast<float>(l11_inv(i, j)) : 0.0f);
      }
    if (m == 0) break;
    // L21 = A21 · L11⁻ᵀ.
    const float* l11_inv_f = out.diag_inv.data() + out.diag_offset.back();
    panel.resize(static_cast<std::size_t>(m * kb));
    gemm_nt(m, kb, kb, &a[static_cast<std::size_t>((k + kb) * n + k)], n, l11_inv_f, kb, panel.data(), kb, false);
    neg_panel.resize(panel.size());
    for (std::int64_t r = 0; r < m; ++r)
      for (std::int64_t j = 0; j < kb; ++j) {
        const float v = panel[static_cast<std::size_t>(r * kb + j)];
        a[static_cast<std::size_t>((k + kb + r) * n + k + j)] = v;
        neg_panel[static_cast<std::size_t>(r * kb + j)] = -v;
      }
    // A22 -= L21 L21ᵀ on the lower triangle, in row panels (each also touches a little of the
    // upper triangle inside its diagonal band, which is never read).
    for (std::int64_t r0 = 0; r0 < m; r0 += kPanelRows) {
      const std::int64_t r1 = std::min(r0 + kPanelRows, m);
      gemm_nt(r1 - r0, r1, kb, &neg_panel[static_cast<std::size_t>(r0 * kb)], kb, panel.data(), kb,
              &a[static_cast<std::size_t>((k + kb + r0) * n + k + kb)], n, true);
    }
  }
  for (std::int64_t i = 0; i < n; ++i)
    std::fill(a.begin() + i * n + i + 1, a.begin() + (i + 1) * n, 0.0f);
  out.l = std::move(a);
  return true;
}

// Y = (L⁻¹)ᵀ, upper triangular, n×n row-major, by block rows of L⁻¹:
// X[i, :i] = −X_ii · L[i, :i] · X[:i, :i], computed transposed so that every product is a GEMM
// in the backend's a·bᵀ form.
inline std::vector<float> inverse_lower_transposed(const LowerCholesky& f) {
  const std::int64_t n = f.n;
  std::vector<float> y(static_cast<std::size_t>(n * n), 0.0f), t, neg_xii;
  for (std::size_t blk = 0; blk < f.diag_offset.size(); ++blk) {
    const std::int64_t ib = static_cast<std::int64_t>(blk) * kBlock, kb = std::min(kBlock, n - ib);
    const float* xii = f.diag_inv.data() + f.diag_offset[blk];
    for (std::int64_t i = 0; i < kb; ++i)
      for (std::int64_t j = 0; j < kb; ++j) y[static_cast<std::size_t>((ib + j) * n + ib + i)] = xii[i * kb + j];
    if (ib == 0) continue;
    // Tᵀ[0:ib, 0:kb] = Y[0:ib, 0:ib] · L[ib:ib+kb, 0:ib]ᵀ. Y is upper triangular, so a panel of
    // rows from m0 on needs only the columns from m0 on: half the flops of the full product.
    t.resize(static_cast<std::size_t>(ib * kb));
    for (std::int64_t m0 = 0; m0 < ib; m0 += kPanelRows) {
      const std::int64_t m1 = std::min(m0 + kPanelRows, ib);
      gemm_nt(m1 - m0, kb, ib - m0, &y[static_cast<std::size_t>(m0 * n + m0)], n,
              &f.l[static_cast<std::size_t>(ib * n + m0)], n, &t[static_cast<std::size_t>(m0 * kb)], kb, false);
    }
    // Y[0:ib, ib:ib+kb] = −Tᵀ · X_iiᵀ.
    neg_xii.assign(xii, xii + kb * kb);
    for (auto& v : neg_xii) v = -v;
    gemm_nt(ib, kb, kb, t.data(), kb, neg_xii.data(), kb, &y[static_cast<std::size_t>(ib)], n, false);
  }
  return y;
}

// out[j, i] = in[map(i, j)] for an n×n row-major matrix, in cache-sized tiles, tile rows in
// parallel: a plain transpose, or one with both axes also reversed.
template <bool kReverse>
std::vector<float> transpose_tiled(const std::vector<float>& in, std::int64_t n) {
  constexpr std::int64_t kTile = 64;
  std::vector<float> out(in.size());
  parallel_for_each((n + kTile - 1) / kTile, backend::num_threads(), [&](std::int64_t tile_row) {
    const std::int64_t j0 = tile_row * kTile, j1 = std::min(j0 + kTile, n);
    for (std::int64_t i0 = 0; i0 < n; i0 += kTile)
      for (std::int64_t i = i0; i < std::min(i0 + kTile, n); ++i)
        for (std::int64_t j = j0; j < j1; ++j) {
          const std::int64_t src = kReverse ? (n - 1 - i) * n + (n - 1 - j) : i * n + j;
          out[static_cast<std::size_t>(j * n + i)] = in[static_cast<std::size_t>(src)];
        }
  });
  return out;
}

inline std::vector<float> transpose(const std::vector<float>& in, std::int64_t n) { return transpose_tiled<false>(in, n); }

// out[j, k] = in[n-1-k, n-1-j]: the transpose about the anti-diagonal.
inline std::vector<float> reversed_transpose(const std::vector<float>& in, std::int64_t n) {
  return transpose_tiled<true>(in, n);
}

}  // namespace qforge::algorithms::linalg
