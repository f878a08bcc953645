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

inline std::vector<float> qep_correct(const float* w, std::int64_t rows, std::int64_t cols, const double* h,
                                      const double* h_delta, const QepOptions& opt, std::string_view site = "layer") {
  std::vector<float> out(w, w + rows * cols);
  if (!opt.apply_correction || opt.correction_factor == 0.0) return out;
  check_finite(h, cols * cols, "Hessian", site);
  check_finite(h_delta, cols * cols, "H_delta", site);
  const Eigen::Map<const MatrixXdR> H(h, cols, cols), Hd(h_delta, cols, cols);
  // W·H_δ on the backend in float32 (b is [N, K] = H_δᵀ).
  std::vector<float> hd_f(static_cast<std::size_t>(cols * cols));
  parallel_for_each(cols, backend::num_threads(), [&](std::int64_t a) {
    for (std::int64_t b = 0; b < cols; ++b) hd_f[static_cast<std::size_t>(a * cols + b)] = static_cast<float>(Hd(a, b));
  });
  const std::vector<float> hd_t = linalg::transpose(hd_f, cols);
  std::vector<float> whd(static_cast<std::size_t>(rows * cols));
  backend::run(backend::GemmF32Op{.M = rows, .N = cols, .K = cols, .a = w, .lda = cols, .b = hd_t.data(), .ldb = cols,
                                  .dst = whd.data(), .ldd = cols, .accumulate = false});
  // ΔW = W H_δ (H + λI)⁻¹ = (W H_δ) Y Yᵀ with H + λI = L Lᵀ and Y = L⁻ᵀ: the factorisation and
  // both products run blocked in float32 on the backend (linalg.hpp), like GPTQ's.
  const double lambda = opt.damping_factor * H.diagonal().mean();
  linalg::LowerCholesky chol;
  if (!linalg::cholesky_lower(linalg::lower_triangle(cols, H, lambda), cols, chol))
    throw_error(Status::kNumericalError, "{}: QEP: H + {} x mean(diag) I is not positive definite; raise damping_factor",
                site, opt.damping_factor);
  const std::vector<float> y = linalg::inverse_lower_transposed(chol);
  const std::vector<float> x = linalg::transpose(y, cols);  // L⁻¹
  std::vector<float> z(static_cast<std::size_t>(rows * cols)), dw(static_cast<std::size_t>(rows * cols));
  // Y is upper triangular: a panel of output columns [n0, n1) of (W H_δ)·Y needs only the inner
  // indices below n1, and of Z·Yᵀ only those from n0 on, which halves both products.
  for (std::int64_t n0 = 0; n0 < cols; n0 += linalg::kPanelRows) {
    const std::int64_t n1 = std::min(n0 + linalg::kPanelRows, cols);
    linalg::gemm_nt(rows, n1 - n0, n1, whd.data(), cols, &x[static_cast<std::size_t>(n0 * cols)], cols, &z[static_cast<std::size_t>(n0)],
                    cols, false);
  }
  for (std::int64_t n0 = 0; n0 < cols; n0 += linalg::kPanelRows) {
    const std::int64_t n1 = std::min(n0 + linalg::kPanelRows, cols);
    linalg::gemm_nt(rows, n1 - n0, cols - n0, &z[static_cast<std::size_t>(n0)], cols,
                    &y[static_cast<std::size_t>(n0 * cols + n0)], cols, &dw[static_cast<std::size_t>(n0)], cols, false);
  }
  for (std::int64_t i = 0; i < rows * cols; ++i)
    out[static_cast<std::size_t>(i)] = static_cast<float>(static_cast<double>(w[i]) +
                                                          opt.correction_factor * dw[static_cast<std::size_t>(i)]);
  check_finite(out.data(), rows * cols, "QEP-corrected weight", site);
  return out;
}

// QEP then GPTQ on the corrected weight with H (GPTQ adds its own damping).
inline QuantizedLayer qep_gptq(const float* w, std::int64_t rows, std::int64_t cols, const double* h,
                               const double* h_delta, const QepOptions& qep, const GptqOptions& gptq_opt,
                               std::string_view site = "layer") {
  const auto corrected = qep_correct(w, rows, cols, h, h_delta, qep, site);
  return gptq(corrected.data(), rows, cols, h, gptq_opt, site);
}

}  // namespace qforge::algorithms
