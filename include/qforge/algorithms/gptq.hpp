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
#include <memory>
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

// The damped factor H + damp I = Ũ Ũᵀ (Ũ upper, linalg.hpp); damp = percdamp * mean(diag H),
// retried x10. Its inverse U = Ũ⁻¹ is upper triangular with a positive diagonal and
// Uᵀ U = Ũ⁻ᵀ Ũ⁻¹ = (H + damp I)⁻¹: U is the reference's upper Cholesky factor of H⁻¹, so GPTQ
// needs no inverse and no second factorisation. Throws naming the site when every retry fails.
// h_at(i, j) gives the Hessian entry; only i <= j is asked for.
template <class HessianAt>
linalg::UpperCholesky damped_cholesky(std::int64_t c, HessianAt&& h_at, double percdamp, int max_retries,
                                      std::string_view site, double& damp_used, std::vector<std::string>& notes) {
  double mean_diag = 0.0;
  for (std::int64_t i = 0; i < c; ++i) mean_diag += h_at(i, i);
  mean_diag /= static_cast<double>(c);
  double factor = percdamp;
  for (int attempt = 0; attempt <= max_retries; ++attempt, factor *= 10.0) {
    const double damp = factor * mean_diag;
    linalg::UpperCholesky chol;
    if (!linalg::cholesky_upper(linalg::upper_triangle(c, h_at, damp), c, chol)) continue;
    damp_used = damp;
    if (attempt > 0)
      notes.push_back(fmt::format("{}: Hessian not positive definite at percdamp {}; succeeded at {}", site,
                                  percdamp, factor));
    return chol;
  }
  throw_error(Status::kNumericalError,
              "{}: Hessian is not positive definite even with damping {} x mean(diag) after {} retries; "
              "use more calibration tokens or a larger --damp",
              site, factor / 10.0, max_retries);
}

// The reference's U (upper Cholesky factor of (H + damp I)⁻¹) as a c×c row-major float matrix,
// for callers and tests that want it explicitly; GPTQ itself never forms it.
inline std::vector<float> inverse_cholesky_upper(const MatrixXdR& h, double percdamp, int max_retries,
                                                 std::string_view site, double& damp_used,
                                                 std::vector<std::string>& notes) {
  const std::int64_t c = h.rows();
  const auto f = damped_cholesky(
      c, [&](std::int64_t i, std::int64_t j) { return h(i, j); }, percdamp, max_retries, site, damp_used, notes);
  std::vector<float> u(static_cast<std::size_t>(c * c), 0.0f);
  for (std::int64_t i = 0; i < c; ++i) u[static_cast<std::size_t>(i * c + i)] = 1.0f;
  linalg::solve_right(f, u.data(), c, c, false);  // I · Ũ⁻¹
  for (std::int64_t i = 0; i < c; ++i) std::fill_n(u.begin() + i * c, i, 0.0f);
  return u;
}

namespace detail {
inline void check_finite_parallel(const auto* v, std::int64_t n, std::string_view what, std::string_view site) {
  constexpr std::int64_t kChunk = 1 << 16;
  parallel_for_each((n + kChunk - 1) / kChunk, backend::num_threads(), [&](std::int64_t c) {
    check_finite(v + c * kChunk, std::min(kChunk, n - c * kChunk), what, site);
  });
}
}  // namespace detail

// GPTQ in the factor's own basis. With d = W − Q (original weight minus quantized, per column),
// the reference's sequential updates satisfy ε = d Ũ for its scaled errors ε_j = (ŵ_j − q_j)/U_jj,
// so the value column k is quantized at is
//     ŵ_k = w_k + (S U)_k,   S = d_{<k} Ũ_{<k, ·}  (what the columns before k contribute).
// S is accumulated with one GEMM per block; at a block start the block's working values (and
// the group's, for dynamic groups reaching past the block) are w + S_I · (Ũ_II)⁻¹, with Ũ_II the
// small diagonal block over those columns, which is also the reference's U over them. Inside
// the block the reference's own column-by-column updates run with that U_II. Everything the
// reference reads (current values, stale group values at a block start: P5, the fresh fix) is
// therefore the reference's, regrouped; no n×n inverse is formed.
inline QuantizedLayer gptq(const float* w_in, std::int64_t rows, std::int64_t cols, const double* hessian,
                           const GptqOptions& opt, std::string_view site = "layer") {
  QuantizedLayer out = make_layer(opt.grid, rows, cols, site);
  const std::int64_t g = out.group_size;
  const bool per_channel = g == cols;
  const bool dynamic_groups = !per_channel && !opt.static_groups;
  if (opt.block_size <= 0) throw_error(Status::kInvalidArgument, "{}: block size must be positive", site);
  detail::check_finite_parallel(w_in, rows * cols, "weight", site);
  detail::check_finite_parallel(hessian, cols * cols, "Hessian", site);

  // The Hessian is only read through its diagonal and, once, into the factorisation's input;
  // dead columns and act-order are applied on the fly instead of to copies of H or W.
  std::vector<double> diag(static_cast<std::size_t>(cols));
  for (std::int64_t j = 0; j < cols; ++j) diag[static_cast<std::size_t>(j)] = hessian[j * cols + j];
  // Step 3's dead columns read as zero from here on (step 2 below reads the original W).
  std::vector<char> dead(static_cast<std::size_t>(cols), 0);
  int dead_count = 0;
  for (std::int64_t j = 0; j < cols; ++j)
    if (diag[static_cast<std::size_t>(j)] == 0.0) {
      diag[static_cast<std::size_t>(j)] = 1.0;
      dead[static_cast<std::size_t>(j)] = 1;
      ++dead_count;
    }
  if (dead_count == cols)
    out.notes.push_back(fmt::format("{}: no calibration signal (all columns dead): result is RTN", site));
  const auto w_at = [&](std::int64_t r, std::int64_t j) { return dead[static_cast<std::size_t>(j)] ? 0.0f : w_in[r * cols + j]; };

  // Step 2: per-channel params over the original W (before dead columns are zeroed).
  std::vector<GroupParams> row_params;
  if (per_channel && !opt.static_groups)
    for (std::int64_t r = 0; r < rows; ++r) row_params.push_back(find_params(opt.grid, {w_in + r * cols, static_cast<std::size_t>(cols)}));
  // Step 4: static groups over the original column groups (dead columns zeroed).
  std::vector<GroupParams> static_params;
  if (opt.static_groups) {
    std::vector<float> grp(static_cast<std::size_t>(g));
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t t = 0; t < out.groups; ++t) {
        for (std::int64_t k = 0; k < g; ++k) grp[static_cast<std::size_t>(k)] = w_at(r, t * g + k);
        static_params.push_back(find_params(opt.grid, grp));
      }
  }
  // Step 5: act-order.
  std::vector<std::int64_t> perm(static_cast<std::size_t>(cols));
  std::iota(perm.begin(), perm.end(), 0);
  if (opt.act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](std::int64_t a, std::int64_t b) {
      return diag[static_cast<std::size_t>(a)] > diag[static_cast<std::size_t>(b)];
    });
  const auto col = [&](std::int64_t j) { return perm[static_cast<std::size_t>(j)]; };
  // Steps 6-7: the damped factor of the permuted Hessian.
  const auto h_at = [&](std::int64_t i, std::int64_t j) {
    const std::int64_t a = col(i), b = col(j);
    return a == b ? diag[static_cast<std::size_t>(a)] : hessian[a * cols + b];
  };
  const linalg::UpperCholesky f =
      damped_cholesky(cols, h_at, opt.percdamp, opt.max_damp_retries, site, out.damp_used, out.notes);

  // dt[cols, rows]: column j (in the factor's order, dead columns zero) of W as row j, which
  // becomes d_j = w_j − q_j once the column is quantized. It lives in out.weight's storage (the
  // same size), which is filled with the dequantized result at the end: a GPTQ of a large layer
  // spends a noticeable part of its time first-touching fresh pages, so no n×n scratch is added.
  float* dt = out.weight.data();
  constexpr std::int64_t kRowsPerTask = 64, kSub = 16;
  const std::int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  const int threads = static_cast<int>(std::min<std::int64_t>(backend::num_threads(), tasks));
  parallel_for_each(tasks, backend::num_threads(), [&](std::int64_t task) {
    const std::int64_t r0 = task * kRowsPerTask, r1 = std::min(rows, r0 + kRowsPerTask);
    for (std::int64_t j = 0; j < cols; ++j) {
      const std::int64_t c = col(j);
      for (std::int64_t r = r0; r < r1; ++r) dt[j * rows + r] = w_at(r, c);
    }
  });
  // Codes in the factor's column order; under act-order they are put back at the end.
  std::vector<std::int8_t> codes_perm(opt.act_order ? static_cast<std::size_t>(rows * cols) : 0);
  std::int8_t* c_perm = opt.act_order ? codes_perm.data() : out.codes.data();

  // Block buffers are column-major ([column][row]) so that the per-column work, which is the
  // same for every row, vectorises across rows. Their column stride is padded off a multiple of
  // 4 KiB: a task's few columns would otherwise all map to the same L1 sets and evict each other.
  const std::int64_t ldw = (rows + 15) / 16 * 16 + 16;
  std::vector<float> work, stale, err, qt, v;
  std::vector<std::int8_t> ct;
  std::vector<double> row_loss(static_cast<std::size_t>(rows), 0.0);
  ParamColumns params(rows);
  if (!row_params.empty())
    for (std::int64_t r = 0; r < rows; ++r) params.set(r, row_params[static_cast<std::size_t>(r)]);
  for (std::int64_t i1 = 0; i1 < cols; i1 += opt.block_size) {
    const std::int64_t i2 = std::min(i1 + opt.block_size, cols), nb = i2 - i1;
    // Columns whose working values this block reads: its own, and those of groups starting in it.
    std::int64_t i_end = i2;
    if (dynamic_groups)
      for (std::int64_t j = i1; j < i2; ++j)
        if (j % g == 0) i_end = std::max(i_end, std::min(cols, j + g));
    const std::int64_t ni = i_end - i1;
    const std::vector<float> u_blk = linalg::to_float(linalg::inverse_of_diagonal_block(f, i1, i_end));  // U_II
    const auto U = [&](std::int64_t a, std::int64_t b) { return u_blk[static_cast<std::size_t>(a * ni + b)]; };

    // work = (w_I + d_{<i1} Ũ_{<i1, I} U_II)ᵀ: the block's values with every earlier column's
    // update, as the reference's W holds them at this block's start. Two GEMMs: V = Ũ_{<i1, I} U_II
    // (small), then work += Vᵀ · dt[<i1], whose inner dimension is every earlier column.
    work.resize(static_cast<std::size_t>(ni * ldw));
    for (std::int64_t i = 0; i < ni; ++i) std::copy_n(dt + (i1 + i) * rows, rows, &work[static_cast<std::size_t>(i * ldw)]);
    if (i1 > 0) {
      v.resize(static_cast<std::size_t>(i1 * ni));
      linalg::gemm({.M = i1, .N = ni, .K = ni, .a = &f.u[static_cast<std::size_t>(i1)], .lda = cols, .b = u_blk.data(),
                    .ldb = ni, .dst = v.data(), .ldd = ni, .b_kn = true});
      linalg::gemm({.M = ni, .N = rows, .K = i1, .a = v.data(), .lda = ni, .b = dt, .ldb = rows, .dst = work.data(),
                    .ldd = ldw, .accumulate = true, .a_km = true, .b_kn = true});
    }
    if (dynamic_groups && !opt.fresh_group_params) stale = work;  // what the reference's global W holds (P5)
    err.resize(static_cast<std::size_t>(nb * ldw));
    qt.resize(static_cast<std::size_t>(nb * ldw));
    ct.resize(static_cast<std::size_t>(nb * ldw));

    for (std::int64_t s0 = 0; s0 < nb; s0 += kSub) {
      const std::int64_t s1 = std::min(s0 + kSub, nb);
      // One item per thread, each a fixed contiguous range of row tasks: a thread then finds its
      // rows of work in its own cache from one sub-block to the next.
      parallel_for_each(threads, threads, [&](std::int64_t part) {
       for (std::int64_t task = part * tasks / threads; task < (part + 1) * tasks / threads; ++task) {
        const std::int64_t r0 = task * kRowsPerTask, r1 = std::min(rows, r0 + kRowsPerTask);
        std::vector<float> grp;  // [task rows, g]: a group's values, one row per weight row
        for (std::int64_t i = s0; i < s1; ++i) {
          const std::int64_t j = i1 + i;
          if (opt.static_groups) {
            for (std::int64_t r = r0; r < r1; ++r)
              params.set(r, static_params[static_cast<std::size_t>(r * out.groups + col(j) / g)]);
          } else if (dynamic_groups && j % g == 0) {
            // Gathered column by column (contiguous reads) into a row-major tile small enough for
            // L1, then each row's params from its own contiguous values.
            const std::int64_t nr = r1 - r0;
            grp.resize(static_cast<std::size_t>(nr * g));
            for (std::int64_t k = 0; k < g; ++k) {
              const std::int64_t c = i + k;  // block-relative column
              const float* src = &(opt.fresh_group_params ? work : stale)[static_cast<std::size_t>(c * ldw + r0)];
              for (std::int64_t r = 0; r < nr; ++r) grp[static_cast<std::size_t>(r * g + k)] = src[r];
              if (opt.fresh_group_params) {
                // Every update so far: those applied to work, plus those still pending.
                const std::int64_t pending_from = c < s1 ? i : c < nb ? s0 : 0;
                for (std::int64_t e = pending_from; e < i; ++e) {
                  const float u = U(e, c);
                  const float* ee = &err[static_cast<std::size_t>(e * ldw + r0)];
                  for (std::int64_t r = 0; r < nr; ++r) grp[static_cast<std::size_t>(r * g + k)] -= ee[r] * u;
                }
              }
            }
            for (std::int64_t r = 0; r < nr; ++r) {
              const GroupParams p = find_params(opt.grid, {&grp[static_cast<std::size_t>(r * g)], static_cast<std::size_t>(g)});
              params.set(r0 + r, p);
              out.params[static_cast<std::size_t>((r0 + r) * out.groups + j / g)] = p;
            }
          }
          // Quantize column i for the task's rows, then the reference's update of the rest of the
          // sub-block: work[k] −= ε · U[i, k] with ε = (x − q) / U[i, i].
          const std::size_t at = static_cast<std::size_t>(i * ldw + r0);
          const std::int64_t nr = r1 - r0;
          const float* x = &work[at];
          float* q = &qt[at];
          quantize_values(opt.grid, params, r0, r1, x, q, &ct[at]);
          const float d = U(i, i);
          const double inv_2d2 = 1.0 / (static_cast<double>(d) * d) / 2.0;
          float* dj = dt + j * rows + r0;
          for (std::int64_t r = 0; r < nr; ++r) {
            const float e = x[r] - q[r];
            row_loss[static_cast<std::size_t>(r0 + r)] += static_cast<double>(e) * e * inv_2d2;
            err[at + r] = e / d;
            dj[r] -= q[r];  // d_j = w_j − q_j
          }
          for (std::int64_t k = i + 1; k < s1; ++k) {
            const float u = U(i, k);
            float* xk = &work[static_cast<std::size_t>(k * ldw + r0)];
            const float* ek = &err[at];
            for (std::int64_t r = 0; r < nr; ++r) xk[r] -= ek[r] * u;
          }
        }
        for (std::int64_t r = r0; r < r1; ++r)
          for (std::int64_t i = s0; i < s1; ++i) c_perm[r * cols + i1 + i] = ct[static_cast<std::size_t>(i * ldw + r)];
       }
      });
      // The rest of the block: work[s1:nb] −= U[s0:s1, s1:nb]ᵀ · err[s0:s1].
      linalg::gemm({.M = nb - s1, .N = rows, .K = s1 - s0, .a = &u_blk[static_cast<std::size_t>(s0 * ni + s1)],
                    .lda = ni, .b = &err[static_cast<std::size_t>(s0 * ldw)], .ldb = ldw,
                    .dst = &work[static_cast<std::size_t>(s1 * ldw)], .ldd = ldw, .accumulate = true, .alpha = -1.0f,
                    .a_km = true, .b_kn = true});
    }
  }
  // The result in the original column order, from the codes (dequantizing gives the very q the
  // loop used), into out.weight now that dt is no longer needed.
  // Params are constant over runs of `run` columns in factor order: a group (dynamic groups), a
  // whole row (per-channel) or one column (static groups follow the original columns).
  const std::int64_t run = opt.static_groups ? 1 : g;
  const auto params_at = [&](std::int64_t r, std::int64_t j) -> const GroupParams& {  // j in factor order
    if (opt.static_groups) return static_params[static_cast<std::size_t>(r * out.groups + col(j) / g)];
    if (per_channel) return row_params[static_cast<std::size_t>(r)];
    return out.params[static_cast<std::size_t>(r * out.groups + j / g)];
  };
  parallel_for_each(rows, backend::num_threads(), [&](std::int64_t r) {
    for (std::int64_t j0 = 0; j0 < cols; j0 += run) {
      const GroupParams& p = params_at(r, j0);
      for (std::int64_t j = j0; j < j0 + run; ++j) {
        const std::int8_t c = c_perm[r * cols + j];
        const float q = dequantize_code(opt.grid, p, c);
        if (!std::isfinite(q))
          throw_error(Status::kNumericalError, "{}: quantized weight holds NaN or Inf (row {}, column {})", site, r, col(j));
        const auto dst = static_cast<std::size_t>(r * cols + col(j));
        out.codes[dst] = c;
        out.weight[dst] = q;
      }
    }
  });
  if (opt.static_groups) {
    out.params = static_params;
  } else if (per_channel) {
    out.params = row_params;  // one group per row, fixed before the first column
  } else if (opt.act_order) {
    std::vector<std::int64_t> invperm(static_cast<std::size_t>(cols));
    for (std::int64_t j = 0; j < cols; ++j) invperm[static_cast<std::size_t>(col(j))] = j;
    for (std::int64_t j = 0; j < cols; ++j)
      out.group_index[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(invperm[static_cast<std::size_t>(j)] / g);
  }
  if (opt.act_order) out.perm.assign(perm.begin(), perm.end());
  out.loss = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  return out;
}

}  // namespace qforge::algorithms
