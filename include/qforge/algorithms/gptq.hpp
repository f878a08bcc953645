// GPTQ as IST-DASLab's gptq.py fasterquant() does it (algorithms.md §1.2), on one [out, in] matrix.
//
// H is any positive multiple of X^T X ([in, in], double); its scale changes only the reported loss.
// Order of steps matches the reference: per-channel params over the original W, dead columns,
// static groups, act-order (stable sort, index tie-break: P8), relative damping, the upper
// Cholesky factor U of H^-1, lazy blocks whose tail update is one GEMM on the backend.
// Deviations offered as options (default = reference behaviour):
//  - fresh_group_params: dynamic group params include the current block's pending updates (P5);
//  - grid.fix_sym_nonnegative: symmetric groups without negatives use [-max, max] (P6).
// A Hessian that is not positive definite after damping is retried with 10x the damping up to
// max_damp_retries times (OneComp v1.1); each retry is recorded in QuantizedLayer::notes.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "qforge/algorithms/layer.hpp"
#include "qforge/backend/registry.hpp"

namespace qforge::algorithms {

struct GptqOptions {
  GridSpec grid;
  double percdamp = 0.01;
  std::int64_t block_size = 128;
  bool act_order = false;
  bool static_groups = false;
  bool fresh_group_params = false;
  int max_damp_retries = 5;
};

using MatrixXdR = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline void check_finite(const double* v, std::int64_t n, std::string_view what, std::string_view site) {
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) throw_error(Status::kNumericalError, "{}: {} holds NaN or Inf (index {})", site, what, i);
}
inline void check_finite(const float* v, std::int64_t n, std::string_view what, std::string_view site) {
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) throw_error(Status::kNumericalError, "{}: {} holds NaN or Inf (index {})", site, what, i);
}

// U upper triangular with U^T U = (H + damp I)^-1; damp = percdamp * mean(diag H), retried x10.
// Returns U and the damping actually used. Throws naming the site when every retry fails.
inline MatrixXdR inverse_cholesky_upper(MatrixXdR h, double percdamp, int max_retries, std::string_view site,
                                        double& damp_used, std::vector<std::string>& notes) {
  const std::int64_t c = h.rows();
  const double mean_diag = h.diagonal().mean();
  double factor = percdamp;
  for (int attempt = 0; attempt <= max_retries; ++attempt, factor *= 10.0) {
    MatrixXdR hd = h;
    const double damp = factor * mean_diag;
    hd.diagonal().array() += damp;
    // With P the reversal permutation, P H P = R Rᵀ (R lower) gives H = Ũ Ũᵀ with Ũ = P R P upper,
    // so H⁻¹ = Ũ⁻ᵀ Ũ⁻¹ and U = Ũ⁻¹ is the upper Cholesky factor of H⁻¹ (positive diagonal):
    // one factorisation and one triangular inverse instead of chol, inverse and chol again.
    Eigen::LLT<MatrixXdR> llt(hd.reverse());
    if (llt.info() == Eigen::Success) {
      const MatrixXdR u_tilde = MatrixXdR(llt.matrixL()).reverse();
      MatrixXdR u = u_tilde.triangularView<Eigen::Upper>().solve(MatrixXdR::Identity(c, c));
      u.triangularView<Eigen::StrictlyLower>().setZero();
      if (u.allFinite()) {
        damp_used = damp;
        if (attempt > 0)
          notes.push_back(fmt::format("{}: Hessian not positive definite at percdamp {}; succeeded at {}", site,
                                      percdamp, factor));
        return u;
      }
    }
  }
  throw_error(Status::kNumericalError,
              "{}: Hessian is not positive definite even with damping {} x mean(diag) after {} retries; "
              "use more calibration tokens or a larger --damp",
              site, factor / 10.0, max_retries);
}

inline QuantizedLayer gptq(const float* w_in, std::int64_t rows, std::int64_t cols, const double* hessian,
                           const GptqOptions& opt, std::string_view site = "layer") {
  QuantizedLayer out = make_layer(opt.grid, rows, cols, site);
  const std::int64_t g = out.group_size;
  const bool per_channel = g == cols;
  if (opt.block_size <= 0) throw_error(Status::kInvalidArgument, "{}: block size must be positive", site);
  check_finite(w_in, rows * cols, "weight", site);
  check_finite(hessian, cols * cols, "Hessian", site);

  std::vector<float> w(w_in, w_in + rows * cols);
  MatrixXdR h = Eigen::Map<const MatrixXdR>(hessian, cols, cols);
  auto W = [&](std::int64_t r, std::int64_t j) -> float& { return w[static_cast<std::size_t>(r * cols + j)]; };

  // Step 2: per-channel params over the original W (before dead columns are zeroed).
  std::vector<GroupParams> row_params;
  if (per_channel && !opt.static_groups)
    for (std::int64_t r = 0; r < rows; ++r) row_params.push_back(find_params(opt.grid, {&W(r, 0), static_cast<std::size_t>(cols)}));
  // Step 3: dead columns.
  int dead = 0;
  for (std::int64_t j = 0; j < cols; ++j)
    if (h(j, j) == 0.0) {
      h(j, j) = 1.0;
      for (std::int64_t r = 0; r < rows; ++r) W(r, j) = 0.0f;
      ++dead;
    }
  if (dead == cols) out.notes.push_back(fmt::format("{}: no calibration signal (all columns dead): result is RTN", site));
  // Step 4: static groups over the original column groups.
  std::vector<GroupParams> static_params;
  if (opt.static_groups)
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t t = 0; t < out.groups; ++t)
        static_params.push_back(find_params(opt.grid, {&W(r, t * g), static_cast<std::size_t>(g)}));
  // Step 5: act-order.
  std::vector<std::int64_t> perm(static_cast<std::size_t>(cols));
  std::iota(perm.begin(), perm.end(), 0);
  if (opt.act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](std::int64_t a, std::int64_t b) { return h(a, a) > h(b, b); });
    std::vector<float> wp(w.size());
    MatrixXdR hp(cols, cols);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < cols; ++j) wp[static_cast<std::size_t>(r * cols + j)] = W(r, perm[static_cast<std::size_t>(j)]);
    for (std::int64_t a = 0; a < cols; ++a)
      for (std::int64_t b = 0; b < cols; ++b) hp(a, b) = h(perm[static_cast<std::size_t>(a)], perm[static_cast<std::size_t>(b)]);
    w.swap(wp);
    h.swap(hp);
  }
  // Steps 6-7.
  const MatrixXdR ud = inverse_cholesky_upper(std::move(h), opt.percdamp, opt.max_damp_retries, site, out.damp_used, out.notes);
  const std::vector<float> u = [&] {
    std::vector<float> f(static_cast<std::size_t>(cols * cols));
    for (std::int64_t i = 0; i < cols * cols; ++i) f[static_cast<std::size_t>(i)] = static_cast<float>(ud.data()[i]);
    return f;
  }();
  auto U = [&](std::int64_t a, std::int64_t b) { return u[static_cast<std::size_t>(a * cols + b)]; };

  // Quantized values / codes in permuted column order; params index per permuted column.
  std::vector<float> qv(w.size());
  std::vector<std::int8_t> qc(w.size());
  std::vector<GroupParams> cur(static_cast<std::size_t>(rows));
  if (!row_params.empty()) cur = row_params;
  std::vector<float> err_block;  // [rows, B], negated errors for the tail GEMM
  std::vector<float> ut_block;   // [cols - i2, B]: U[i1:i2, i2:]^T
  double loss = 0.0;
  for (std::int64_t i1 = 0; i1 < cols; i1 += opt.block_size) {
    const std::int64_t i2 = std::min(i1 + opt.block_size, cols), nb = i2 - i1;
    err_block.assign(static_cast<std::size_t>(rows * nb), 0.0f);
    std::vector<float> w1(static_cast<std::size_t>(rows * nb));
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t i = 0; i < nb; ++i) w1[static_cast<std::size_t>(r * nb + i)] = W(r, i1 + i);
    for (std::int64_t i = 0; i < nb; ++i) {
      const std::int64_t j = i1 + i;
      if (opt.static_groups) {
        const std::int64_t t = perm[static_cast<std::size_t>(j)] / g;
        for (std::int64_t r = 0; r < rows; ++r) cur[static_cast<std::size_t>(r)] = static_params[static_cast<std::size_t>(r * out.groups + t)];
      } else if (!per_channel && j % g == 0) {
        std::vector<float> grp(static_cast<std::size_t>(g));
        for (std::int64_t r = 0; r < rows; ++r) {
          for (std::int64_t k = 0; k < g; ++k) {
            const std::int64_t col = j + k;
            float v = W(r, col);  // the reference reads global W: no in-block updates (P5)
            if (opt.fresh_group_params) {
              if (col < i2) {
                v = w1[static_cast<std::size_t>(r * nb + (col - i1))];
              } else {
                for (std::int64_t e = 0; e < i; ++e) v += err_block[static_cast<std::size_t>(r * nb + e)] * U(i1 + e, col);
              }
            }
            grp[static_cast<std::size_t>(k)] = v;
          }
          cur[static_cast<std::size_t>(r)] = find_params(opt.grid, grp);
          out.params[static_cast<std::size_t>(r * out.groups + j / g)] = cur[static_cast<std::size_t>(r)];
        }
      }
      const float d = U(j, j);
      for (std::int64_t r = 0; r < rows; ++r) {
        const float x = w1[static_cast<std::size_t>(r * nb + i)];
        const int code = quantize_code(opt.grid, cur[static_cast<std::size_t>(r)], x);
        const float q = dequantize_code(opt.grid, cur[static_cast<std::size_t>(r)], code);
        qv[static_cast<std::size_t>(r * cols + j)] = q;
        qc[static_cast<std::size_t>(r * cols + j)] = static_cast<std::int8_t>(code);
        loss += static_cast<double>(x - q) * (x - q) / (static_cast<double>(d) * d) / 2.0;
        const float e = (x - q) / d;
        for (std::int64_t k = i; k < nb; ++k) w1[static_cast<std::size_t>(r * nb + k)] -= e * U(j, i1 + k);
        err_block[static_cast<std::size_t>(r * nb + i)] = -e;
      }
      if (per_channel && !opt.static_groups)
        for (std::int64_t r = 0; r < rows; ++r) out.params[static_cast<std::size_t>(r)] = cur[static_cast<std::size_t>(r)];
    }
    if (i2 < cols) {  // W[:, i2:] -= E * U[i1:i2, i2:], one GEMM on the backend
      ut_block.resize(static_cast<std::size_t>((cols - i2) * nb));
      for (std::int64_t n = i2; n < cols; ++n)
        for (std::int64_t k = 0; k < nb; ++k) ut_block[static_cast<std::size_t>((n - i2) * nb + k)] = U(i1 + k, n);
      backend::run(backend::GemmF32Op{.M = rows, .N = cols - i2, .K = nb, .a = err_block.data(), .lda = nb,
                                      .b = ut_block.data(), .ldb = nb, .dst = w.data() + i2, .ldd = cols,
                                      .accumulate = true});
    }
  }
  // Back to the original column order.
  std::vector<std::int64_t> invperm(static_cast<std::size_t>(cols));
  for (std::int64_t j = 0; j < cols; ++j) invperm[static_cast<std::size_t>(perm[static_cast<std::size_t>(j)])] = j;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < cols; ++j) {
      const auto src = static_cast<std::size_t>(r * cols + invperm[static_cast<std::size_t>(j)]);
      out.weight[static_cast<std::size_t>(r * cols + j)] = qv[src];
      out.codes[static_cast<std::size_t>(r * cols + j)] = qc[src];
    }
  if (opt.static_groups) {
    out.params = static_params;
  } else if (opt.act_order && !per_channel) {
    for (std::int64_t j = 0; j < cols; ++j)
      out.group_index[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(invperm[static_cast<std::size_t>(j)] / g);
  }
  if (opt.act_order) out.perm.assign(perm.begin(), perm.end());
  out.loss = loss;
  check_finite(out.weight.data(), rows * cols, "quantized weight", site);
  return out;
}

}  // namespace qforge::algorithms
