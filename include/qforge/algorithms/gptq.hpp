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
#include "qforge/algorithms/linalg.hpp"
#include "qforge/backend/threads.hpp"
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

inline void check_finite(const double* v, std::int64_t n, std::string_view what, std::string_view site) {
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) throw_error(Status::kNumericalError, "{}: {} holds NaN or Inf (index {})", site, what, i);
}
inline void check_finite(const float* v, std::int64_t n, std::string_view what, std::string_view site) {
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) throw_error(Status::kNumericalError, "{}: {} holds NaN or Inf (index {})", site, what, i);
}

// U upper triangular with U^T U = (H + damp I)^-1 as a c×c row-major float matrix;
// damp = percdamp * mean(diag H), retried x10. Returns U and the damping actually used. Throws
// naming the site when every retry fails.
// With P the reversal permutation, P H P = R Rᵀ (R lower) gives H = Ũ Ũᵀ with Ũ = P R P upper,
// so H⁻¹ = Ũ⁻ᵀ Ũ⁻¹ and U = Ũ⁻¹ = P R⁻¹ P is the upper Cholesky factor of H⁻¹ (positive
// diagonal): one factorisation and one triangular inverse instead of chol, inverse and chol again.
// Both run blocked in float32 with GEMMs on the backend (linalg.hpp), as the reference GPTQ
// factors in float32.
// h_at(i, j) gives the Hessian entry; only i >= j is asked for.
template <class HessianAt>
std::vector<float> inverse_cholesky_upper(std::int64_t c, HessianAt&& h_at, double percdamp, int max_retries,
                                          std::string_view site, double& damp_used, std::vector<std::string>& notes) {
  double mean_diag = 0.0;
  for (std::int64_t i = 0; i < c; ++i) mean_diag += h_at(i, i);
  mean_diag /= static_cast<double>(c);
  double factor = percdamp;
  const auto reversed_at = [&](std::int64_t i, std::int64_t j) { return h_at(c - 1 - i, c - 1 - j); };  // P H P
  for (int attempt = 0; attempt <= max_retries; ++attempt, factor *= 10.0) {
    const double damp = factor * mean_diag;
    linalg::LowerCholesky chol;
    if (!linalg::cholesky_lower(linalg::lower_triangle(c, reversed_at, damp), c, chol)) continue;
    const std::vector<float> y = linalg::inverse_lower_transposed(chol);  // y[a, b] = R⁻¹[b, a]
    // U[j, k] = R⁻¹[c-1-j, c-1-k] = y[c-1-k, c-1-j].
    std::vector<float> u = linalg::reversed_transpose(y, c);
    if (std::all_of(u.begin(), u.end(), [](float v) { return std::isfinite(v); })) {
      damp_used = damp;
      if (attempt > 0)
        notes.push_back(fmt::format("{}: Hessian not positive definite at percdamp {}; succeeded at {}", site,
                                    percdamp, factor));
      return u;
    }
  }
  throw_error(Status::kNumericalError,
              "{}: Hessian is not positive definite even with damping {} x mean(diag) after {} retries; "
              "use more calibration tokens or a larger --damp",
              site, factor / 10.0, max_retries);
}

inline std::vector<float> inverse_cholesky_upper(const MatrixXdR& h, double percdamp, int max_retries,
                                                 std::string_view site, double& damp_used,
                                                 std::vector<std::string>& notes) {
  return inverse_cholesky_upper(
      h.rows(), [&](std::int64_t i, std::int64_t j) { return h(i, j); }, percdamp, max_retries, site, damp_used,
      notes);
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
  auto W = [&](std::int64_t r, std::int64_t j) -> float& { return w[static_cast<std::size_t>(r * cols + j)]; };
  // The Hessian is only read through its diagonal and, once, into the factorisation's input:
  // dead columns and act-order are applied on the fly instead of to a copy.
  std::vector<double> diag(static_cast<std::size_t>(cols));
  for (std::int64_t j = 0; j < cols; ++j) diag[static_cast<std::size_t>(j)] = hessian[j * cols + j];

  // Step 2: per-channel params over the original W (before dead columns are zeroed).
  std::vector<GroupParams> row_params;
  if (per_channel && !opt.static_groups)
    for (std::int64_t r = 0; r < rows; ++r) row_params.push_back(find_params(opt.grid, {&W(r, 0), static_cast<std::size_t>(cols)}));
  // Step 3: dead columns.
  int dead = 0;
  for (std::int64_t j = 0; j < cols; ++j)
    if (diag[static_cast<std::size_t>(j)] == 0.0) {
      diag[static_cast<std::size_t>(j)] = 1.0;
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
    std::stable_sort(perm.begin(), perm.end(), [&](std::int64_t a, std::int64_t b) {
      return diag[static_cast<std::size_t>(a)] > diag[static_cast<std::size_t>(b)];
    });
    std::vector<float> wp(w.size());
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < cols; ++j) wp[static_cast<std::size_t>(r * cols + j)] = W(r, perm[static_cast<std::size_t>(j)]);
    w.swap(wp);
  }
  // Steps 6-7.
  const auto h_at = [&](std::int64_t i, std::int64_t j) {
    const std::int64_t a = perm[static_cast<std::size_t>(i)], b = perm[static_cast<std::size_t>(j)];
    return a == b ? diag[static_cast<std::size_t>(a)] : hessian[a * cols + b];
  };
  const std::vector<float> u =
      inverse_cholesky_upper(cols, h_at, opt.percdamp, opt.max_damp_retries, site, out.damp_used, out.notes);
  auto U = [&](std::int64_t a, std::int64_t b) { return u[static_cast<std::size_t>(a * cols + b)]; };

  // Quantized values / codes in permuted column order; params index per permuted column.
  std::vector<float> qv(w.size());
  std::vector<std::int8_t> qc(w.size());
  std::vector<GroupParams> cur(static_cast<std::size_t>(rows));
  if (!row_params.empty()) cur = row_params;
  std::vector<float> w1;         // [rows, B]: the block being quantized
  std::vector<float> err_block;  // [rows, B], negated scaled errors
  std::vector<float> ut;         // U[sub rows, later columns]ᵀ as the GEMM's [N, K] operand
  std::vector<double> row_loss(static_cast<std::size_t>(rows), 0.0);
  // Within a block every row is independent (its own params, errors and pending updates), so
  // rows run in parallel; each row's loss has its own slot, so results do not depend on threads.
  // Updates are lazy at two levels, as the reference is at one: inside a sub-block of kSub
  // columns they are applied column by column; the rest of the block, and then the rest of the
  // matrix, get them as one GEMM each. The arithmetic is the reference's, regrouped.
  constexpr std::int64_t kRowsPerTask = 16, kSub = 16;
  const std::int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  // dst[:, 0:n] += err_block[:, e0:e1] · U[i1+e0 : i1+e1, col0 : col0+n] on the backend.
  auto apply_errors = [&](std::int64_t i1, std::int64_t nb, std::int64_t e0, std::int64_t e1, std::int64_t col0,
                          std::int64_t n, float* dst, std::int64_t ldd) {
    if (n <= 0) return;
    const std::int64_t k = e1 - e0;
    ut.resize(static_cast<std::size_t>(n * k));
    for (std::int64_t e = 0; e < k; ++e) {
      const float* u_row = &u[static_cast<std::size_t>((i1 + e0 + e) * cols + col0)];
      for (std::int64_t c = 0; c < n; ++c) ut[static_cast<std::size_t>(c * k + e)] = u_row[c];
    }
    linalg::gemm_nt(rows, n, k, &err_block[static_cast<std::size_t>(e0)], nb, ut.data(), k, dst, ldd, true);
  };
  for (std::int64_t i1 = 0; i1 < cols; i1 += opt.block_size) {
    const std::int64_t i2 = std::min(i1 + opt.block_size, cols), nb = i2 - i1;
    err_block.assign(static_cast<std::size_t>(rows * nb), 0.0f);
    w1.resize(static_cast<std::size_t>(rows * nb));
    for (std::int64_t r = 0; r < rows; ++r) std::copy_n(&W(r, i1), nb, &w1[static_cast<std::size_t>(r * nb)]);
    for (std::int64_t s0 = 0; s0 < nb; s0 += kSub) {
      const std::int64_t s1 = std::min(s0 + kSub, nb);
      parallel_for_each(tasks, backend::num_threads(), [&](std::int64_t task) {
        std::vector<float> grp(static_cast<std::size_t>(g));
        const std::int64_t r0 = task * kRowsPerTask, r1 = std::min(rows, r0 + kRowsPerTask);
        // Column by column across the task's rows, as the reference does on whole columns: each
        // row's quantize-divide-update chain is serial, so interleaving rows hides its latency.
        for (std::int64_t i = s0; i < s1; ++i) {
          const std::int64_t j = i1 + i;
          for (std::int64_t r = r0; r < r1; ++r) {
            GroupParams& p = cur[static_cast<std::size_t>(r)];
            if (opt.static_groups) {
              p = static_params[static_cast<std::size_t>(r * out.groups + perm[static_cast<std::size_t>(j)] / g)];
            } else if (!per_channel && j % g == 0) {
              const float* wr = &w1[static_cast<std::size_t>(r * nb)];
              const float* err = &err_block[static_cast<std::size_t>(r * nb)];
              for (std::int64_t k = 0; k < g; ++k) {
                const std::int64_t col = j + k;
                float v = W(r, col);  // the reference reads global W: no in-block updates (P5)
                if (opt.fresh_group_params) {
                  // The value with every update so far: applied ones plus those still pending
                  // (err holds -e).
                  const std::int64_t pending_from = col < i1 + s1 ? i : col < i2 ? s0 : 0;
                  if (col < i2) v = wr[col - i1];
                  for (std::int64_t e = pending_from; e < i; ++e) v += err[e] * U(i1 + e, col);
                }
                grp[static_cast<std::size_t>(k)] = v;
              }
              p = find_params(opt.grid, grp);
              out.params[static_cast<std::size_t>(r * out.groups + j / g)] = p;
            }
          }
          const float d = U(j, j);
          const float* u_row = &u[static_cast<std::size_t>(j * cols + i1)];
          for (std::int64_t r = r0; r < r1; ++r) {
            float* wr = &w1[static_cast<std::size_t>(r * nb)];
            const GroupParams& p = cur[static_cast<std::size_t>(r)];
            const float x = wr[i];
            const int code = quantize_code(opt.grid, p, x);
            const float q = dequantize_code(opt.grid, p, code);
            qv[static_cast<std::size_t>(r * cols + j)] = q;
            qc[static_cast<std::size_t>(r * cols + j)] = static_cast<std::int8_t>(code);
            row_loss[static_cast<std::size_t>(r)] += static_cast<double>(x - q) * (x - q) / (static_cast<double>(d) * d) / 2.0;
            const float e = (x - q) / d;
            for (std::int64_t k = i + 1; k < s1; ++k) wr[k] -= e * u_row[k];
            err_block[static_cast<std::size_t>(r * nb + i)] = -e;
          }
        }
      });
      apply_errors(i1, nb, s0, s1, i1 + s1, nb - s1, &w1[static_cast<std::size_t>(s1)], nb);  // rest of the block
    }
    apply_errors(i1, nb, 0, nb, i2, cols - i2, w.data() + i2, cols);  // W[:, i2:] -= E · U[i1:i2, i2:]
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
  } else if (per_channel) {
    out.params = row_params;  // one group per row, fixed before the first column
  } else if (opt.act_order) {
    for (std::int64_t j = 0; j < cols; ++j)
      out.group_index[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(invperm[static_cast<std::size_t>(j)] / g);
  }
  if (opt.act_order) out.perm.assign(perm.begin(), perm.end());
  out.loss = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  check_finite(out.weight.data(), rows * cols, "quantized weight", site);
  return out;
}

}  // namespace qforge::algorithms
