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
                                      std::string_view site, double& damp_used, std::vector<std::string>& notes,
                                      int* retries = nullptr) {
  double mean_diag = 0.0;
  for (std::int64_t i = 0; i < c; ++i) mean_diag += h_at(i, i);
  mean_diag /= static_cast<double>(c);
  double factor = percdamp;
  for (int attempt = 0; attempt <= max_retries; ++attempt, factor *= 10.0) {
    const double damp = factor * mean_diag;
    linalg::UpperCholesky chol;
    if (!linalg::cholesky_upper(linalg::upper_triangle(c, h_at, damp), c, chol)) continue;
    damp_used = damp;
    if (retries) *retries = attempt;
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

// Everything GPTQ takes from H alone (steps 3 and 5-7 of the reference): dead columns, the
// act-order permutation and the damped factor P (H + damp I) Pᵀ = Ũ Ũᵀ of the permuted Hessian.
// QEP reuses it for its own solve (qep.hpp).
struct GptqPlan {
  std::vector<double> diag;  // H's diagonal with dead columns set to 1
  std::vector<char> dead;
  std::int64_t dead_count = 0;
  std::vector<std::int64_t> perm;  // factor order → original column
  linalg::UpperCholesky factor;
  double damp_used = 0.0;
  int retries = 0;
  std::vector<std::string> notes;
  std::int64_t col(std::int64_t j) const { return perm[static_cast<std::size_t>(j)]; }
};

inline GptqPlan plan_gptq(const double* hessian, std::int64_t cols, const GptqOptions& opt, std::string_view site) {
  GptqPlan plan;
  plan.diag.resize(static_cast<std::size_t>(cols));
  plan.dead.assign(static_cast<std::size_t>(cols), 0);
  for (std::int64_t j = 0; j < cols; ++j) {
    double& d = plan.diag[static_cast<std::size_t>(j)];
    d = hessian[j * cols + j];
    if (d == 0.0) {
      d = 1.0;
      plan.dead[static_cast<std::size_t>(j)] = 1;
      ++plan.dead_count;
    }
  }
  if (plan.dead_count == cols)
    plan.notes.push_back(fmt::format("{}: no calibration signal (all columns dead): result is RTN", site));
  plan.perm.resize(static_cast<std::size_t>(cols));
  std::iota(plan.perm.begin(), plan.perm.end(), 0);
  if (opt.act_order)  // stable: ties keep index order (P8)
    std::stable_sort(plan.perm.begin(), plan.perm.end(), [&](std::int64_t a, std::int64_t b) {
      return plan.diag[static_cast<std::size_t>(a)] > plan.diag[static_cast<std::size_t>(b)];
    });
  // The Hessian is read only here (and its diagonal above), through the permutation, instead of
  // being copied into a permuted matrix first.
  const auto h_at = [&](std::int64_t i, std::int64_t j) {
    const std::int64_t a = plan.col(i), b = plan.col(j);
    return a == b ? plan.diag[static_cast<std::size_t>(a)] : hessian[a * cols + b];
  };
  plan.factor =
      damped_cholesky(cols, h_at, opt.percdamp, opt.max_damp_retries, site, plan.damp_used, plan.notes, &plan.retries);
  return plan;
}

// A term added to the weight before quantizing, given in the factor's basis: GPTQ then
// quantizes W + alpha · Y Ũ⁻¹ without forming it (QEP's correction, qep.hpp). y is [rows, cols]
// row-major in factor column order.
struct GptqShift {
  const float* y = nullptr;
  float alpha = 0.0f;
};

namespace detail {
inline void check_finite_parallel(const auto* v, std::int64_t n, std::string_view what, std::string_view site) {
  constexpr std::int64_t kChunk = 1 << 16;
  parallel_for_each((n + kChunk - 1) / kChunk, backend::num_threads(), [&](std::int64_t c) {
    check_finite(v + c * kChunk, std::min(kChunk, n - c * kChunk), what, site);
  });
}

// Block buffers are column-major ([column][row]) so that the per-column work, which is the same
// for every row, vectorises across rows. Rows are split into tasks of kRowsPerTask.
inline constexpr std::int64_t kGptqRowsPerTask = 64, kGptqSubBlock = 16;

// The params of a dynamic group starting at block column i for the task's rows [r0, r1): the
// group's values are gathered column by column (contiguous reads) into a row-major tile small
// enough for L1, then each row's params come from its own contiguous values. values(c, r) gives
// the value the reference reads for block column c and row r.
template <class Values>
void dynamic_group_params(const GridSpec& grid, std::int64_t g, std::int64_t i, std::int64_t r0, std::int64_t r1,
                          Values&& values, std::vector<float>& tile, auto&& set_params) {
  const std::int64_t nr = r1 - r0;
  tile.resize(static_cast<std::size_t>(nr * g));
  for (std::int64_t k = 0; k < g; ++k) values(i + k, r0, r1, [&](std::int64_t r, float v) { tile[static_cast<std::size_t>((r - r0) * g + k)] = v; });
  for (std::int64_t r = r0; r < r1; ++r)
    set_params(r, find_params(grid, {&tile[static_cast<std::size_t>((r - r0) * g)], static_cast<std::size_t>(g)}));
}
}  // namespace detail

// GPTQ in the factor's own basis. With d = W − Q (original weight minus quantized, per column),
// the reference's sequential updates satisfy ε = d Ũ for its scaled errors ε_j = (ŵ_j − q_j)/U_jj,
// so the value column k is quantized at is
//     ŵ_k = w_k + (S U)_k,   S = d_{<k} Ũ_{<k, ·}  (what the columns before k contribute).
// At a block start the block's working values (and the group's, for dynamic groups reaching
// past the block) are w_I + d_{<i1} Ũ_{<i1, I} U_II, one GEMM whose inner size is every earlier
// column, with U_II = (Ũ_II)⁻¹ the small inverse of the diagonal block over those columns, which
// is also the reference's U over them. Inside the block the reference's own column-by-column
// updates run with that U_II. Everything the reference reads (current values, stale group
// values at a block start: P5, the fresh fix) is therefore the reference's, regrouped; no n×n
// inverse is formed. With a shift (QEP), the block's values also get alpha · Y_I U_II: since
// U_{<i1, I} = −U_{<i1,<i1} Ũ_{<i1, I} U_II, the shifted weight's own earlier columns cancel and
// d keeps using the unshifted W.
inline QuantizedLayer gptq_planned(const float* w_in, std::int64_t rows, std::int64_t cols, const GptqPlan& plan,
                                   const GptqOptions& opt, std::string_view site, GptqShift shift = {}) {
  using detail::kGptqRowsPerTask, detail::kGptqSubBlock;
  QuantizedLayer out = make_layer(opt.grid, rows, cols, site);
  out.damp_used = plan.damp_used;
  out.notes.insert(out.notes.end(), plan.notes.begin(), plan.notes.end());
  const std::int64_t g = out.group_size;
  const bool per_channel = g == cols;
  const bool dynamic_groups = !per_channel && !opt.static_groups;
  if (opt.block_size <= 0) throw_error(Status::kInvalidArgument, "{}: block size must be positive", site);
  if (shift.y && !dynamic_groups)
    throw_error(Status::kInvalidArgument, "{}: a shifted GPTQ needs dynamic groups (its params read the shifted W)", site);
  detail::check_finite_parallel(w_in, rows * cols, "weight", site);
  const linalg::UpperCholesky& f = plan.factor;
  const auto col = [&](std::int64_t j) { return plan.col(j); };
  // Step 3's dead columns read as zero (step 2 below reads the original W).
  const auto w_at = [&](std::int64_t r, std::int64_t j) {
    return plan.dead[static_cast<std::size_t>(j)] ? 0.0f : w_in[r * cols + j];
  };

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

  // dt[cols, rows]: column j (in the factor's order, dead columns zero) of W as row j, which
  // becomes d_j = w_j − q_j once the column is quantized. It lives in out.weight's storage (the
  // same size), which is filled with the dequantized result at the end: a GPTQ of a large layer
  // spends a noticeable part of its time first-touching fresh pages, so no n×n scratch is added.
  float* dt = out.weight.data();
  const std::int64_t tasks = (rows + kGptqRowsPerTask - 1) / kGptqRowsPerTask;
  const int threads = static_cast<int>(std::min<std::int64_t>(backend::num_threads(), tasks));
  parallel_for_each(tasks, backend::num_threads(), [&](std::int64_t task) {
    const std::int64_t r0 = task * kGptqRowsPerTask, r1 = std::min(rows, r0 + kGptqRowsPerTask);
    for (std::int64_t j = 0; j < cols; ++j) {
      const std::int64_t c = col(j);
      for (std::int64_t r = r0; r < r1; ++r) dt[j * rows + r] = w_at(r, c);
    }
  });
  // Codes in the factor's column order; under act-order they are put back at the end.
  std::vector<std::int8_t> codes_perm(opt.act_order ? static_cast<std::size_t>(rows * cols) : 0);
  std::int8_t* c_perm = opt.act_order ? codes_perm.data() : out.codes.data();

  // Column stride of the block buffers, padded off a multiple of 4 KiB: a task's few columns
  // would otherwise all map to the same L1 sets and evict each other.
  const std::int64_t ldw = (rows + 15) / 16 * 16 + 16;
  std::vector<float> work, stale, err, qt, v;
  std::vector<std::int8_t> ct;
  std::vector<double> row_loss(static_cast<std::size_t>(rows), 0.0);
  ParamColumns params(rows);
  if (!row_params.empty())
    for (std::int64_t r = 0; r < rows; ++r) params.set(r, row_params[static_cast<std::size_t>(r)]);
  const auto set_group_params = [&](std::int64_t j) {
    return [&, j](std::int64_t r, const GroupParams& p) {
      params.set(r, p);
      out.params[static_cast<std::size_t>(r * out.groups + j / g)] = p;
    };
  };
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

    // work = (w_I + d_{<i1} Ũ_{<i1, I} U_II + alpha Y_I U_II)ᵀ: the block's values with every
    // earlier column's update, as the reference's W holds them at this block's start. V =
    // Ũ_{<i1, I} U_II is small; work += Vᵀ · dt[<i1] has every earlier column as inner size.
    work.resize(static_cast<std::size_t>(ni * ldw));
    for (std::int64_t i = 0; i < ni; ++i) std::copy_n(dt + (i1 + i) * rows, rows, &work[static_cast<std::size_t>(i * ldw)]);
    if (i1 > 0) {
      v.resize(static_cast<std::size_t>(i1 * ni));
      linalg::gemm({.M = i1, .N = ni, .K = ni, .a = &f.u[static_cast<std::size_t>(i1)], .lda = cols, .b = u_blk.data(),
                    .ldb = ni, .dst = v.data(), .ldd = ni, .b_kn = true});
      linalg::gemm({.M = ni, .N = rows, .K = i1, .a = v.data(), .lda = ni, .b = dt, .ldb = rows, .dst = work.data(),
                    .ldd = ldw, .accumulate = true, .a_km = true, .b_kn = true});
    }
    if (shift.y)
      linalg::gemm({.M = ni, .N = rows, .K = ni, .a = u_blk.data(), .lda = ni, .b = shift.y + i1, .ldb = cols,
                    .dst = work.data(), .ldd = ldw, .accumulate = true, .alpha = shift.alpha, .a_km = true});
    if (dynamic_groups && !opt.fresh_group_params) stale = work;  // what the reference's global W holds (P5)
    err.resize(static_cast<std::size_t>(nb * ldw));
    qt.resize(static_cast<std::size_t>(nb * ldw));
    ct.resize(static_cast<std::size_t>(nb * ldw));

    for (std::int64_t s0 = 0; s0 < nb; s0 += kGptqSubBlock) {
      const std::int64_t s1 = std::min(s0 + kGptqSubBlock, nb);
      // The value the reference reads for a group's block column c: stale (P5), or with every
      // update so far, those applied to work plus those still pending (the fresh fix).
      const auto group_values = [&](std::int64_t i) {
        return [&, i](std::int64_t c, std::int64_t r0, std::int64_t r1, auto&& put) {
          const float* src = &(opt.fresh_group_params ? work : stale)[static_cast<std::size_t>(c * ldw)];
          if (!opt.fresh_group_params) {
            for (std::int64_t r = r0; r < r1; ++r) put(r, src[r]);
            return;
          }
          const std::int64_t pending_from = c < s1 ? i : c < nb ? s0 : 0;
          for (std::int64_t r = r0; r < r1; ++r) {
            float x = src[r];
            for (std::int64_t e = pending_from; e < i; ++e) x -= err[static_cast<std::size_t>(e * ldw + r)] * U(e, c);
            put(r, x);
          }
        };
      };
      // One item per thread, each a fixed contiguous range of row tasks: a thread then finds its
      // rows of work in its own cache from one sub-block to the next.
      parallel_for_each(threads, threads, [&](std::int64_t part) {
        std::vector<float> tile;
        for (std::int64_t task = part * tasks / threads; task < (part + 1) * tasks / threads; ++task) {
          const std::int64_t r0 = task * kGptqRowsPerTask, r1 = std::min(rows, r0 + kGptqRowsPerTask), nr = r1 - r0;
          for (std::int64_t i = s0; i < s1; ++i) {
            const std::int64_t j = i1 + i;
            if (opt.static_groups) {
              for (std::int64_t r = r0; r < r1; ++r)
                params.set(r, static_params[static_cast<std::size_t>(r * out.groups + col(j) / g)]);
            } else if (dynamic_groups && j % g == 0) {
              detail::dynamic_group_params(opt.grid, g, i, r0, r1, group_values(i), tile, set_group_params(j));
            }
            // Quantize column i for the task's rows, then the reference's update of the rest of
            // the sub-block: work[k] −= ε · U[i, k] with ε = (x − q) / U[i, i].
            const std::size_t at = static_cast<std::size_t>(i * ldw + r0);
            const float* x = &work[at];
            const float* q = &qt[at];
            quantize_values(opt.grid, params, r0, r1, x, &qt[at], &ct[at]);
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
  if (opt.act_order) out.perm.assign(plan.perm.begin(), plan.perm.end());
  out.loss = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  return out;
}

inline QuantizedLayer gptq(const float* w_in, std::int64_t rows, std::int64_t cols, const double* hessian,
                           const GptqOptions& opt, std::string_view site = "layer") {
  detail::check_finite_parallel(hessian, cols * cols, "Hessian", site);
  return gptq_planned(w_in, rows, cols, plan_gptq(hessian, cols, opt, site), opt, site);
}

}  // namespace qforge::algorithms
