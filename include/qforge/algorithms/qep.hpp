// QEP (Arai & Ichikawa; OneComp adjust_weight, algorithms.md §3): correct the float weight for
// the error the quantized prefix puts into this layer's inputs, then run a base algorithm.
//
//   H   = X̂ᵀX̂            (from the quantized-prefix stream)
//   H_δ = (X − X̂)ᵀX̂      (float stream minus quantized stream, times quantized stream)
//   W'  = W + α · (W·H_δ) · (H + λI)^-1,  λ = damp · mean(diag H)
//
// The solve is a symmetric (Cholesky) solve in double. H and H_δ must carry the same scale (both
// sums, or both means). α = 0 gives W' = W exactly; X̂ = X gives H_δ = 0 and W' = W exactly.
#pragma once

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
  const Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> Wf(w, rows, cols);
  // W·H_δ on the backend in float32 (b is [N, K] = H_δᵀ).
  std::vector<float> hd_t(static_cast<std::size_t>(cols * cols));
  for (std::int64_t a = 0; a < cols; ++a)
    for (std::int64_t b = 0; b < cols; ++b) hd_t[static_cast<std::size_t>(b * cols + a)] = static_cast<float>(Hd(a, b));
  std::vector<float> whd(static_cast<std::size_t>(rows * cols));
  backend::run(backend::GemmF32Op{.M = rows, .N = cols, .K = cols, .a = w, .lda = cols, .b = hd_t.data(), .ldb = cols,
                                  .dst = whd.data(), .ldd = cols, .accumulate = false});
  MatrixXdR hdamp = H;
  const double lambda = opt.damping_factor * H.diagonal().mean();
  hdamp.diagonal().array() += lambda;
  Eigen::LLT<MatrixXdR> llt(hdamp);
  if (llt.info() != Eigen::Success)
    throw_error(Status::kNumericalError, "{}: QEP: H + {} x mean(diag) I is not positive definite; raise damping_factor",
                site, opt.damping_factor);
  // ΔW (H+λI) = W H_δ  <=>  (H+λI) ΔWᵀ = (W H_δ)ᵀ since H is symmetric.
  const MatrixXdR rhs = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
                            whd.data(), rows, cols).cast<double>().transpose();
  const MatrixXdR dwt = llt.solve(rhs);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < cols; ++j)
      out[static_cast<std::size_t>(r * cols + j)] =
          static_cast<float>(static_cast<double>(Wf(r, j)) + opt.correction_factor * dwt(j, r));
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
