// QEP (Arai & Ichikawa; OneComp adjust_weight, algorithms.md §3): correct the float weight for
// the error the quantized prefix puts into this layer's inputs, then run a base algorithm.
//
//   H   = X̂ᵀX̂            (from the quantized-prefix stream)
//   H_δ = (X − X̂)ᵀX̂      (float stream minus quantized stream, times quantized stream)
//   W'  = W + α · (W·H_δ) · (H + λI)^-1,  λ = damp · mean(diag H)
//
// The solve is a blocked float32 Cholesky solve (linalg.hpp). H and H_δ must carry the same scale (both
// sums, or both means). α = 0 gives W' = W exactly; X̂ = X gives H_δ = 0 and W' = W exactly.
#pragma once

#include <algorithm>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "qforge/algorithms/gptq.hpp"

namespace qforge::algorithms {

struct QepOptions {
  double correction_factor = 0.5;  // α (OneComp perccorr)
  double damping_factor = 0.01;    // relative λ (OneComp percdamp; the NeurIPS CLI used 1.0)
  bool apply_correction = true;
};

namespace detail {
// W·H_δ[:, col(0..cols)] in float32 on the backend (H_δ's columns read through col, so a
// factor's permutation costs nothing; H_δ as the GEMM's [K, N] operand).
template <class ColumnOf>
std::vector<float> times_h_delta(const float* w, std::int64_t rows, std::int64_t cols, const double* h_delta,
                                 ColumnOf&& col) {
  std::vector<float> hd_f(static_cast<std::size_t>(cols * cols));
  parallel_for_each(cols, backend::num_threads(), [&](std::int64_t a) {
    for (std::int64_t i = 0; i < cols; ++i) hd_f[static_cast<std::size_t>(a * cols + i)] = static_cast<float>(h_delta[a * cols + col(i)]);
  });
  std::vector<float> z(static_cast<std::size_t>(rows * cols));
  linalg::gemm({.M = rows, .N = cols, .K = cols, .a = w, .lda = cols, .b = hd_f.data(), .ldb = cols, .dst = z.data(),
                .ldd = cols, .b_kn = true});
  return z;
}

[[noreturn]] inline void throw_qep_not_positive_definite(std::string_view site, double damping_factor) {
  throw_error(Status::kNumericalError, "{}: QEP: H + {} x mean(diag) I is not positive definite; raise damping_factor",
              site, damping_factor);
}
}  // namespace detail

inline std::vector<float> qep_correct(const float* w, std::int64_t rows, std::int64_t cols, const double* h,
                                      const double* h_delta, const QepOptions& opt, std::string_view site = "layer") {
  std::vector<float> out(w, w + rows * cols);
  if (!opt.apply_correction || opt.correction_factor == 0.0) return out;
  detail::check_finite_parallel(h, cols * cols, "Hessian", site);
  detail::check_finite_parallel(h_delta, cols * cols, "H_delta", site);
  std::vector<float> dw = detail::times_h_delta(w, rows, cols, h_delta, [](std::int64_t i) { return i; });  // Z = W·H_δ
  // ΔW = Z (H + λI)⁻¹ = Z Ũ⁻ᵀ Ũ⁻¹ with H + λI = Ũ Ũᵀ: two blocked triangular solves whose work
  // is GEMMs on the backend (linalg.hpp), like GPTQ's factorisation.
  double mean_diag = 0.0;
  for (std::int64_t i = 0; i < cols; ++i) mean_diag += h[i * cols + i];
  const double lambda = opt.damping_factor * mean_diag / static_cast<double>(cols);
  linalg::UpperCholesky chol;
  if (!linalg::cholesky_upper(linalg::upper_triangle(cols, [&](std::int64_t i, std::int64_t j) { return h[i * cols + j]; }, lambda),
                              cols, chol))
    detail::throw_qep_not_positive_definite(site, opt.damping_factor);
  linalg::solve_right(chol, dw.data(), rows, cols, true);
  linalg::solve_right(chol, dw.data(), rows, cols, false);
  parallel_for_each(rows, backend::num_threads(), [&](std::int64_t r) {
    for (std::int64_t j = 0; j < cols; ++j) {
      const auto i = static_cast<std::size_t>(r * cols + j);
      out[i] = static_cast<float>(static_cast<double>(w[i]) + opt.correction_factor * dw[i]);
    }
  });
  detail::check_finite_parallel(out.data(), rows * cols, "QEP-corrected weight", site);
  return out;
}

// QEP then GPTQ on the corrected weight with H (GPTQ adds its own damping). When GPTQ's damped
// factor is also QEP's (same relative damping, no dead columns, no retry), the correction is
// never formed: ΔW = α Z H⁻¹ with Z = W H_δ is α (Z Pᵀ Ũ⁻ᵀ) Ũ⁻¹ P in GPTQ's factor, and GPTQ
// takes Y = Z Pᵀ Ũ⁻ᵀ as a shift in its own basis (gptq.hpp). That saves QEP's factorisation and
// one of its two triangular solves; otherwise the two steps run separately.
inline QuantizedLayer qep_gptq(const float* w, std::int64_t rows, std::int64_t cols, const double* h,
                               const double* h_delta, const QepOptions& qep, const GptqOptions& gptq_opt,
                               std::string_view site = "layer") {
  if (!qep.apply_correction || qep.correction_factor == 0.0) return gptq(w, rows, cols, h, gptq_opt, site);
  const bool dynamic_groups = effective_group_size(gptq_opt.grid, cols, site) != cols && !gptq_opt.static_groups;
  bool any_dead = false;
  for (std::int64_t j = 0; j < cols && !any_dead; ++j) any_dead = h[j * cols + j] == 0.0;
  if (!dynamic_groups || any_dead || qep.damping_factor != gptq_opt.percdamp) {
    const auto corrected = qep_correct(w, rows, cols, h, h_delta, qep, site);
    return gptq(corrected.data(), rows, cols, h, gptq_opt, site);
  }
  detail::check_finite_parallel(w, rows * cols, "weight", site);
  detail::check_finite_parallel(h, cols * cols, "Hessian", site);
  detail::check_finite_parallel(h_delta, cols * cols, "H_delta", site);
  const GptqPlan plan = plan_gptq(h, cols, gptq_opt, site);
  if (plan.retries > 0)  // QEP's own damping does not give a positive-definite matrix either
    detail::throw_qep_not_positive_definite(site, qep.damping_factor);
  // Y = W H_δ Pᵀ Ũ⁻ᵀ: H_δ's columns are read in factor order, then one triangular solve.
  std::vector<float> y = detail::times_h_delta(w, rows, cols, h_delta, [&](std::int64_t i) { return plan.col(i); });
  linalg::solve_right(plan.factor, y.data(), rows, cols, true);
  detail::check_finite_parallel(y.data(), rows * cols, "QEP correction", site);
  return gptq_planned(w, rows, cols, plan, gptq_opt, site, {y.data(), static_cast<float>(qep.correction_factor)});
}

}  // namespace qforge::algorithms
