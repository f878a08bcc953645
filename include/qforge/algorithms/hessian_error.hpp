// The Hessian-weighted output error of a quantized layer, the one metric `qforge layer`,
// `qforge quantize --report` and the calibrating provider's report print for it:
//
//   hessian_rel_err = tr(ΔHΔᵀ) / tr(WHWᵀ),  Δ = W − Ŵ,
//
// which for H = XᵀX is ‖XΔᵀ‖²_F / ‖XWᵀ‖²_F, the layer's relative output error on the inputs
// behind H, without needing X. Any positive multiple of XᵀX gives the same ratio.
//
// Cost: one float32 GEMM [Δ; W]·Hᵀ on the backend per chunk of rows (2·rows·cols² multiply-adds
// in all, two n³ GEMMs for an n×n layer), then the row-wise dot products accumulated in double.
// The quadratic form only sees H's symmetric part, so H need not be exactly symmetric.
//
// Accuracy (docs/algorithms.md, "The Hessian-weighted error"). With u = 2⁻²⁴ and K = cols, each
// row's δ = fl(w − ŵ) = δ_exact(1 + α), H rounded to float = H∘(1 + β) and the GEMM's sums carry
// (1 + θ) with |α|, |β| ≤ u and |θ| ≤ γ_K = Ku/(1 − Ku) in any summation order (an FMA only
// rounds less); the products δ_j·(δH)_j are exact in double and their double sum over all
// rows·cols terms rounds by less than u while rows·cols ≤ 2²⁹. So the numerator's absolute
// error is at most
//   γ_{K+4} · Σ_rows |δ|ᵀ|H||δ|
// and the denominator's at most γ_{K+4} · Σ_rows |w|ᵀ|H||w| (kHessianErrGammaTerms is the 4).
// Relative to the quantity itself this is γ_{K+4} times κ = Σ|δ|ᵀ|H||δ| / Σ δᵀHδ, which is
// large exactly when the algorithm did its job (GPTQ makes δ nearly H-orthogonal, so δᵀHδ is
// small against |δ|ᵀ|H||δ|). The worst case at K = 4096 is 2.4e-4·κ. In practice the rounding
// errors of long sums mostly cancel: tests/algorithms/hessian_error_test.cpp measures 4e-8
// relative on 3-bit GPTQ codes at K = 512 (κ ≈ 400), where the worst case is 1.3e-2.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "qforge/backend/registry.hpp"

namespace qforge::algorithms {

// Rounding steps beyond the K of the GEMM's sums in the bound above: δ_j's and δ_k's subtraction,
// H's conversion to float and the double accumulation.
inline constexpr int kHessianErrGammaTerms = 4;

// γ_n = n·u / (1 − n·u), u = 2⁻²⁴: the relative bound per term of the quadratic forms above.
inline double hessian_err_gamma(std::int64_t cols) {
  const double nu = static_cast<double>(cols + kHessianErrGammaTerms) * 0x1p-24;
  return nu / (1.0 - nu);
}

namespace detail {
// Rows per GEMM: [Δ; W] of 256 rows is a 512-row product, large enough for the backend's GEMM to
// run at speed, small enough that the scratch stays a few MB at any width.
inline constexpr std::int64_t kHessianErrRows = 256;
}  // namespace detail

// w, wq: [rows, cols] float; h: [cols, cols] double. Returns 0 when tr(WHWᵀ) is not positive.
inline double hessian_rel_err(const double* h, const float* w, const float* wq, std::int64_t rows, std::int64_t cols) {
  if (rows <= 0 || cols <= 0) return 0.0;
  const std::vector<float> hf(h, h + cols * cols);
  const std::int64_t chunk = std::min(rows, detail::kHessianErrRows);
  std::vector<float> a(static_cast<std::size_t>(2 * chunk * cols)), ah(a.size());
  double num = 0, den = 0;
  for (std::int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const std::int64_t m = std::min(chunk, rows - r0);
    const std::size_t n = static_cast<std::size_t>(m * cols);
    const float* wr = w + r0 * cols;
    const float* qr = wq + r0 * cols;
    for (std::size_t i = 0; i < n; ++i) {
      a[i] = wr[i] - qr[i];
      a[n + i] = wr[i];
    }
    backend::run(backend::GemmF32Op{.M = 2 * m, .N = cols, .K = cols, .a = a.data(), .lda = cols, .b = hf.data(),
                                    .ldb = cols, .dst = ah.data(), .ldd = cols});
    for (std::size_t i = 0; i < n; ++i) {
      num += static_cast<double>(a[i]) * ah[i];
      den += static_cast<double>(a[n + i]) * ah[n + i];
    }
  }
  return den > 0 ? num / den : 0.0;
}

// The scalar reference: the same ratio with every step in double (δ = w − ŵ is exact there), and
// the bound above on how far hessian_rel_err may lie from it:
//   |r̂ − r| ≤ g·(A_num + r·A_den) / (den − g·A_den),  A = Σ_rows |v|ᵀ|H||v|,
// with g = γ_{K+4} plus the reference's own double rounding. One thread, 4·rows·cols²
// multiply-adds: for tests.
struct HessianRelErrReference {
  double value = 0.0;  // tr(ΔHΔᵀ) / tr(WHWᵀ) in double
  double bound = 0.0;  // the most |hessian_rel_err − value| may be
  double kappa = 0.0;  // Σ|δ|ᵀ|H||δ| / Σ δᵀHδ: how much the numerator's sums cancel
};

inline HessianRelErrReference hessian_rel_err_reference(const double* h, const float* w, const float* wq,
                                                        std::int64_t rows, std::int64_t cols) {
  double num = 0, den = 0, abs_num = 0, abs_den = 0;
  std::vector<double> d(static_cast<std::size_t>(cols)), x(d.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < cols; ++j) {
      x[static_cast<std::size_t>(j)] = w[r * cols + j];
      d[static_cast<std::size_t>(j)] = static_cast<double>(w[r * cols + j]) - wq[r * cols + j];
    }
    for (std::int64_t j = 0; j < cols; ++j) {
      double hd = 0, hx = 0, ahd = 0, ahx = 0;
      for (std::int64_t k = 0; k < cols; ++k) {
        const double hjk = h[j * cols + k], dk = d[static_cast<std::size_t>(k)], xk = x[static_cast<std::size_t>(k)];
        hd += hjk * dk;
        hx += hjk * xk;
        ahd += std::abs(hjk * dk);
        ahx += std::abs(hjk * xk);
      }
      num += d[static_cast<std::size_t>(j)] * hd;
      den += x[static_cast<std::size_t>(j)] * hx;
      abs_num += std::abs(d[static_cast<std::size_t>(j)]) * ahd;
      abs_den += std::abs(x[static_cast<std::size_t>(j)]) * ahx;
    }
  }
  HessianRelErrReference ref;
  if (!(den > 0)) return ref;
  // The reference's own sums: K terms per row product, rows·cols terms in all, in double.
  const double own = static_cast<double>(cols + rows * cols + 2) * 0x1p-53;
  const double g = hessian_err_gamma(cols) + own;
  ref.value = num / den;
  ref.bound = g * (abs_num + ref.value * abs_den) / (den - g * abs_den);
  ref.kappa = num > 0 ? abs_num / num : 0.0;
  return ref;
}

}  // namespace qforge::algorithms
