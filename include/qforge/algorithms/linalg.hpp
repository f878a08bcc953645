// Recursive Cholesky factorisation and triangular solves in float32 for the layer algorithms.
// The O(n³) work is GEMMs on the backend (halving recursions, so most of it runs as large GEMMs
// at close to GEMM speed on every core); only the kBlock leaves (O(n·b²)) are factored and
// inverted in double with Eigen. Eigen's own LLT is single-threaded and runs its updates in
// scalar-blocked double, which made the factorisation the largest part of GPTQ; float32 is also
// what the reference GPTQ factors in.
//
// The factor is the "reverse" Cholesky factor: A = Ũ Ũᵀ with Ũ upper triangular (equivalently
// the ordinary lower factor of A with rows and columns reversed). It is the factor GPTQ needs
// directly: Ũ⁻¹ is the upper Cholesky factor of A⁻¹ (see gptq.hpp), so no inverse is formed.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
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

inline constexpr std::int64_t kBlock = 64;       // leaf block: factored and inverted in double
inline constexpr std::int64_t kPanelRows = 512;  // diagonal blocks of a symmetric update done whole

// A float32 GEMM on the backend (backend::GemmF32Op's semantics); empty products are skipped.
inline void gemm(const backend::GemmF32Op& op) {
  if (op.M > 0 && op.N > 0) backend::run(op);
}

// dst[M, N] (+)= a[M, K] · b[N, K]ᵀ on the backend (row-major, leading dimensions as given).
inline void gemm_nt(std::int64_t M, std::int64_t N, std::int64_t K, const float* a, std::int64_t lda, const float* b,
                    std::int64_t ldb, float* dst, std::int64_t ldd, bool accumulate) {
  gemm({.M = M, .N = N, .K = K, .a = a, .lda = lda, .b = b, .ldb = ldb, .dst = dst, .ldd = ldd, .accumulate = accumulate});
}

// A float buffer that is not zero-filled when allocated. A factor's first touch is then the
// parallel write that fills it: zero-filling a 4096² matrix first faults in all of its pages on
// one thread, which cost about as much as a twentieth of a GPTQ of that size.
class FloatBuffer {
 public:
  FloatBuffer() = default;
  explicit FloatBuffer(std::size_t size) : data_(std::make_unique_for_overwrite<float[]>(size)), size_(size) {}
  explicit FloatBuffer(const std::vector<float>& v) : FloatBuffer(v.size()) { std::copy(v.begin(), v.end(), data_.get()); }
  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  std::size_t size() const { return size_; }
  float& operator[](std::size_t i) { return data_[i]; }
  const float& operator[](std::size_t i) const { return data_[i]; }

 private:
  std::unique_ptr<float[]> data_;
  std::size_t size_ = 0;
};

// The upper triangle of (A + shift I) in float32, n×n row-major, from a(i, j) for i <= j (the
// strict lower triangle is zero): the input cholesky_upper reads. Rows are filled in parallel.
template <class Entry>
FloatBuffer upper_triangle(std::int64_t n, Entry&& a, double shift) {
  FloatBuffer out(static_cast<std::size_t>(n * n));
  parallel_for_each(n, backend::num_threads(), [&](std::int64_t i) {
    float* row = out.data() + i * n;
    std::fill_n(row, i, 0.0f);
    for (std::int64_t j = i; j < n; ++j) row[j] = static_cast<float>(a(i, j) + (i == j ? shift : 0.0));
  });
  return out;
}

// A = Ũ Ũᵀ, Ũ upper triangular with a positive diagonal, n×n row-major (strict lower triangle
// zero), and the inverse of each kBlock diagonal block ("leaf"), which the solves apply.
struct UpperCholesky {
  std::int64_t n = 0;
  FloatBuffer u;
  std::vector<std::vector<float>> leaf_inv;  // leaf t covers [t·kBlock, min(n, (t+1)·kBlock))
  float at(std::int64_t i, std::int64_t j) const { return u[static_cast<std::size_t>(i * n + j)]; }
};

// Ũ₂₂ with Ũ₂₂ Ũ₂₂ᵀ = d for a small symmetric block, in double: the lower factor of d with both
// axes reversed. Returns false when d is not (numerically) positive definite.
inline bool factor_diagonal_block(const MatrixXdR& d, MatrixXdR& u) {
  const MatrixXdR reversed = d.reverse();  // both axes
  const Eigen::LLT<MatrixXdR> llt(reversed);
  if (llt.info() != Eigen::Success) return false;
  u = MatrixXdR(llt.matrixL()).reverse();
  return u.allFinite() && (u.diagonal().array() > 0.0).all();
}

// The inverse of the upper-triangular diagonal block Ũ[i0:i1, i0:i1], in double: (Ũ⁻¹)'s own
// diagonal block over the same range, since Ũ is triangular.
inline MatrixXdR inverse_of_diagonal_block(const UpperCholesky& f, std::int64_t i0, std::int64_t i1) {
  const std::int64_t b = i1 - i0;
  MatrixXdR d = MatrixXdR::Zero(b, b);
  for (std::int64_t i = 0; i < b; ++i)
    for (std::int64_t j = i; j < b; ++j) d(i, j) = f.at(i0 + i, i0 + j);
  return d.triangularView<Eigen::Upper>().solve(MatrixXdR::Identity(b, b));
}

inline std::vector<float> to_float(const MatrixXdR& m) {
  std::vector<float> out(static_cast<std::size_t>(m.size()));
  for (Eigen::Index i = 0; i < m.size(); ++i) out[static_cast<std::size_t>(i)] = static_cast<float>(m.data()[i]);
  return out;
}

namespace detail {
// Every recursion below splits a range at a multiple of kBlock from its start, so the leaves of
// the factorisation and of the solves are the same kBlock blocks.
inline std::int64_t split_point(std::int64_t i0, std::int64_t i1) {
  const std::int64_t blocks = (i1 - i0 + kBlock - 1) / kBlock;
  return i0 + blocks / 2 * kBlock;
}
inline bool is_leaf(std::int64_t i0, std::int64_t i1) { return i1 - i0 <= kBlock; }

// x[rows, c0:c1] (row stride ld) ← x · (Ũ_cc)⁻¹ or x · (Ũ_cc)⁻ᵀ for the diagonal block over
// [c0, c1), recursively: the off-diagonal part is one GEMM whose inner size is half the range,
// so nearly all the work runs as large GEMMs.
inline void solve_range(const UpperCholesky& f, float* x, std::int64_t rows, std::int64_t ld, std::int64_t c0,
                        std::int64_t c1, bool transposed, std::vector<float>& scratch) {
  const std::int64_t n = f.n;
  if (is_leaf(c0, c1)) {
    const std::int64_t b = c1 - c0;
    scratch.resize(static_cast<std::size_t>(rows * b));
    for (std::int64_t r = 0; r < rows; ++r) std::copy_n(x + r * ld + c0, b, &scratch[static_cast<std::size_t>(r * b)]);
    const std::vector<float>& inv = f.leaf_inv[static_cast<std::size_t>(c0 / kBlock)];
    gemm({.M = rows, .N = b, .K = b, .a = scratch.data(), .lda = b, .b = inv.data(), .ldb = b, .dst = x + c0,
          .ldd = ld, .b_kn = !transposed});
    return;
  }
  const std::int64_t cm = split_point(c0, c1);
  if (!transposed) {  // [Xa Xb] [Ũa Ũab; 0 Ũb] = [Ba Bb]: Xa first, then Bb −= Xa Ũab
    solve_range(f, x, rows, ld, c0, cm, false, scratch);
    gemm({.M = rows, .N = c1 - cm, .K = cm - c0, .a = x + c0, .lda = ld, .b = &f.u[static_cast<std::size_t>(c0 * n + cm)],
          .ldb = n, .dst = x + cm, .ldd = ld, .accumulate = true, .alpha = -1.0f, .b_kn = true});
    solve_range(f, x, rows, ld, cm, c1, false, scratch);
  } else {  // [Xa Xb] [Ũa Ũab; 0 Ũb]ᵀ = [Ba Bb]: Xb first, then Ba −= Xb Ũabᵀ
    solve_range(f, x, rows, ld, cm, c1, true, scratch);
    gemm({.M = rows, .N = cm - c0, .K = c1 - cm, .a = x + cm, .lda = ld, .b = &f.u[static_cast<std::size_t>(c0 * n + cm)],
          .ldb = n, .dst = x + c0, .ldd = ld, .accumulate = true, .alpha = -1.0f});
    solve_range(f, x, rows, ld, c0, cm, true, scratch);
  }
}

// a[r0:r1, r0:r1] −= p[r0:r1] p[r0:r1]ᵀ on the upper triangle, p with k columns (row stride ldp),
// recursively: off-diagonal quadrants are plain GEMMs, diagonal ones small enough are computed
// whole (their lower part is never read).
inline void syrk_upper(float* a, std::int64_t n, std::int64_t r0, std::int64_t r1, const float* p, std::int64_t ldp,
                       std::int64_t k) {
  if (r1 - r0 <= kPanelRows) {
    gemm({.M = r1 - r0, .N = r1 - r0, .K = k, .a = p + r0 * ldp, .lda = ldp, .b = p + r0 * ldp, .ldb = ldp,
          .dst = a + r0 * n + r0, .ldd = n, .accumulate = true, .alpha = -1.0f});
    return;
  }
  const std::int64_t rm = split_point(r0, r1);
  syrk_upper(a, n, r0, rm, p, ldp, k);
  gemm({.M = rm - r0, .N = r1 - rm, .K = k, .a = p + r0 * ldp, .lda = ldp, .b = p + rm * ldp, .ldb = ldp,
        .dst = a + r0 * n + rm, .ldd = n, .accumulate = true, .alpha = -1.0f});
  syrk_upper(a, n, rm, r1, p, ldp, k);
}

// Factors the diagonal block a[i0:i1, i0:i1] (upper triangle, already updated by everything
// after i1) in place:
//   [A₁₁ A₁₂; · A₂₂] = [Ũ₁₁ Ũ₁₂; 0 Ũ₂₂] [Ũ₁₁ Ũ₁₂; 0 Ũ₂₂]ᵀ  gives  Ũ₂₂Ũ₂₂ᵀ = A₂₂,
//   Ũ₁₂ = A₁₂ Ũ₂₂⁻ᵀ,  and A₁₁ − Ũ₁₂Ũ₁₂ᵀ = Ũ₁₁Ũ₁₁ᵀ to factor next.
inline bool factor_range(UpperCholesky& f, std::int64_t i0, std::int64_t i1, std::vector<float>& scratch) {
  const std::int64_t n = f.n;
  float* a = f.u.data();
  if (is_leaf(i0, i1)) {
    const std::int64_t b = i1 - i0;
    MatrixXdR d(b, b), u;
    for (std::int64_t i = 0; i < b; ++i)
      for (std::int64_t j = i; j < b; ++j) d(i, j) = d(j, i) = a[(i0 + i) * n + i0 + j];
    if (!factor_diagonal_block(d, u)) return false;
    for (std::int64_t i = 0; i < b; ++i)
      for (std::int64_t j = i; j < b; ++j) a[(i0 + i) * n + i0 + j] = static_cast<float>(u(i, j));
    f.leaf_inv[static_cast<std::size_t>(i0 / kBlock)] =
        to_float(u.triangularView<Eigen::Upper>().solve(MatrixXdR::Identity(b, b)));
    return true;
  }
  const std::int64_t mid = split_point(i0, i1);
  if (!factor_range(f, mid, i1, scratch)) return false;
  // Ũ₁₂ = A₁₂ Ũ₂₂⁻ᵀ in place on rows [i0, mid), columns [mid, i1).
  solve_range(f, a + i0 * n, mid - i0, n, mid, i1, true, scratch);
  syrk_upper(a + i0 * n + i0, n, 0, mid - i0, a + i0 * n + mid, n, i1 - mid);
  return factor_range(f, i0, mid, scratch);
}
}  // namespace detail

// Factors a (its upper triangle; consumed) recursively from the bottom-right block up. Returns
// false when a pivot block is not positive definite or a result is not finite.
inline bool cholesky_upper(FloatBuffer a, std::int64_t n, UpperCholesky& out) {
  out.n = n;
  out.u = std::move(a);
  out.leaf_inv.assign(static_cast<std::size_t>((n + kBlock - 1) / kBlock), {});
  std::vector<float> scratch;
  if (n > 0 && !detail::factor_range(out, 0, n, scratch)) return false;
  std::atomic<bool> finite{true};
  parallel_for_each(n, backend::num_threads(), [&](std::int64_t i) {
    float* row = out.u.data() + i * n;
    std::fill_n(row, i, 0.0f);
    for (std::int64_t j = i; j < n; ++j)
      if (!std::isfinite(row[j])) finite = false;
  });
  return finite;
}

inline bool cholesky_upper(const std::vector<float>& a, std::int64_t n, UpperCholesky& out) {
  return cholesky_upper(FloatBuffer(a), n, out);
}

// x[rows, n] (row stride ld) ← x · Ũ⁻¹ (transposed = false) or x · Ũ⁻ᵀ (transposed = true).
inline void solve_right(const UpperCholesky& f, float* x, std::int64_t rows, std::int64_t ld, bool transposed) {
  std::vector<float> scratch;
  if (f.n > 0) detail::solve_range(f, x, rows, ld, 0, f.n, transposed, scratch);
}

}  // namespace qforge::algorithms::linalg
