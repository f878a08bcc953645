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
#include <utility>
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

// The in-block state and steps of one GPTQ run (gptq_planned below explains the arithmetic).
// Block buffers are column-major ([column][row]) so that the per-column work, which is the same
// for every row, vectorises across rows; rows are split into tasks of kRowsPerTask, and within a
// block each thread keeps a fixed range of tasks, so it finds its rows in its own cache from one
// sub-block to the next.
class GptqRun {
 public:
  static constexpr std::int64_t kRowsPerTask = 64, kSubBlock = 16;

  GptqRun(const float* w, std::int64_t rows, std::int64_t cols, const GptqPlan& plan, const GptqOptions& opt,
          std::string_view site, GptqShift shift)
      : w_(w), rows_(rows), cols_(cols), plan_(plan), opt_(opt), site_(site), shift_(shift),
        out_(make_layer(opt.grid, rows, cols, site)), g_(out_.group_size), per_channel_(g_ == cols),
        dynamic_groups_(!per_channel_ && !opt.static_groups), tasks_((rows + kRowsPerTask - 1) / kRowsPerTask),
        threads_(static_cast<int>(std::min<std::int64_t>(backend::num_threads(), tasks_))),
        ldw_((rows + 15) / 16 * 16 + 16), params_(rows), row_loss_(static_cast<std::size_t>(rows), 0.0) {
    out_.damp_used = plan.damp_used;
    out_.notes.insert(out_.notes.end(), plan.notes.begin(), plan.notes.end());
    if (opt.block_size <= 0) throw_error(Status::kInvalidArgument, "{}: block size must be positive", site);
    if (shift.y && !dynamic_groups_)
      throw_error(Status::kInvalidArgument, "{}: a shifted GPTQ needs dynamic groups (its params read the shifted W)", site);
    check_finite_parallel(w, rows * cols, "weight", site);
    fixed_params();
    load_weight();
  }

  void run_block(std::int64_t i1) {
    i1_ = i1;
    i2_ = std::min(i1 + opt_.block_size, cols_);
    nb_ = i2_ - i1_;
    load_block_values();
    for (std::int64_t s0 = 0; s0 < nb_; s0 += kSubBlock) {
      const std::int64_t s1 = std::min(s0 + kSubBlock, nb_);
      parallel_for_each(threads_, threads_, [&](std::int64_t part) {
        std::vector<float> tile;
        for (std::int64_t task = part * tasks_ / threads_; task < (part + 1) * tasks_ / threads_; ++task)
          quantize_task(task, s0, s1, tile);
      });
      update_rest_of_block(s0, s1);
    }
  }

  QuantizedLayer finish() {
    write_result();
    if (opt_.static_groups) {
      out_.params = static_params_;
    } else if (per_channel_) {
      out_.params = row_params_;  // one group per row, fixed before the first column
    } else if (opt_.act_order) {
      std::vector<std::int64_t> invperm(static_cast<std::size_t>(cols_));
      for (std::int64_t j = 0; j < cols_; ++j) invperm[static_cast<std::size_t>(col(j))] = j;
      for (std::int64_t j = 0; j < cols_; ++j)
        out_.group_index[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(invperm[static_cast<std::size_t>(j)] / g_);
    }
    if (opt_.act_order) out_.perm.assign(plan_.perm.begin(), plan_.perm.end());
    out_.loss = std::accumulate(row_loss_.begin(), row_loss_.end(), 0.0);
    return std::move(out_);
  }

 private:
  std::int64_t col(std::int64_t j) const { return plan_.col(j); }
  // Step 3's dead columns read as zero (step 2 reads the original W).
  float w_at(std::int64_t r, std::int64_t j) const { return plan_.dead[static_cast<std::size_t>(j)] ? 0.0f : w_[r * cols_ + j]; }
  float u(std::int64_t a, std::int64_t b) const { return u_blk_[static_cast<std::size_t>(a * ni_ + b)]; }
  std::pair<std::int64_t, std::int64_t> task_rows(std::int64_t task) const {
    return {task * kRowsPerTask, std::min(rows_, (task + 1) * kRowsPerTask)};
  }

  // Step 2: per-channel params over the original W (before dead columns are zeroed); step 4:
  // static groups over the original column groups (dead columns zeroed).
  void fixed_params() {
    if (per_channel_ && !opt_.static_groups) {
      for (std::int64_t r = 0; r < rows_; ++r) {
        row_params_.push_back(find_params(opt_.grid, {w_ + r * cols_, static_cast<std::size_t>(cols_)}));
        params_.set(r, row_params_.back());
      }
    }
    if (opt_.static_groups) {
      std::vector<float> grp(static_cast<std::size_t>(g_));
      for (std::int64_t r = 0; r < rows_; ++r)
        for (std::int64_t t = 0; t < out_.groups; ++t) {
          for (std::int64_t k = 0; k < g_; ++k) grp[static_cast<std::size_t>(k)] = w_at(r, t * g_ + k);
          static_params_.push_back(find_params(opt_.grid, grp));
        }
    }
  }

  // dt[cols, rows]: column j (in the factor's order, dead columns zero) of W as row j, which
  // becomes d_j = w_j − q_j once the column is quantized. It lives in out.weight's storage (the
  // same size), which is filled with the dequantized result at the end: a GPTQ of a large layer
  // spends a noticeable part of its time first-touching fresh pages, so no n×n scratch is added.
  // Codes are kept in the factor's column order and put back at the end under act-order.
  void load_weight() {
    dt_ = out_.weight.data();
    parallel_for_each(tasks_, backend::num_threads(), [&](std::int64_t task) {
      const auto [r0, r1] = task_rows(task);
      for (std::int64_t j = 0; j < cols_; ++j) {
        const std::int64_t c = col(j);
        for (std::int64_t r = r0; r < r1; ++r) dt_[j * rows_ + r] = w_at(r, c);
      }
    });
    if (opt_.act_order) codes_perm_.resize(static_cast<std::size_t>(rows_ * cols_));
    c_perm_ = opt_.act_order ? codes_perm_.data() : out_.codes.data();
  }

  // work = (w_I + d_{<i1} Ũ_{<i1, I} U_II + alpha Y_I U_II)ᵀ over I = the block's columns and
  // those of groups starting in it: the values the reference's W holds at this block's start.
  // V = Ũ_{<i1, I} U_II is small; work += Vᵀ · dt[<i1] has every earlier column as inner size.
  void load_block_values() {
    std::int64_t i_end = i2_;
    if (dynamic_groups_)
      for (std::int64_t j = i1_; j < i2_; ++j)
        if (j % g_ == 0) i_end = std::max(i_end, std::min(cols_, j + g_));
    ni_ = i_end - i1_;
    const linalg::UpperCholesky& f = plan_.factor;
    u_blk_ = linalg::to_float(linalg::inverse_of_diagonal_block(f, i1_, i_end));
    work_.resize(static_cast<std::size_t>(ni_ * ldw_));
    for (std::int64_t i = 0; i < ni_; ++i)
      std::copy_n(dt_ + (i1_ + i) * rows_, rows_, &work_[static_cast<std::size_t>(i * ldw_)]);
    if (i1_ > 0) {
      v_.resize(static_cast<std::size_t>(i1_ * ni_));
      linalg::gemm({.M = i1_, .N = ni_, .K = ni_, .a = &f.u[static_cast<std::size_t>(i1_)], .lda = cols_,
                    .b = u_blk_.data(), .ldb = ni_, .dst = v_.data(), .ldd = ni_, .b_kn = true});
      linalg::gemm({.M = ni_, .N = rows_, .K = i1_, .a = v_.data(), .lda = ni_, .b = dt_, .ldb = rows_,
                    .dst = work_.data(), .ldd = ldw_, .accumulate = true, .a_km = true, .b_kn = true});
    }
    if (shift_.y)
      linalg::gemm({.M = ni_, .N = rows_, .K = ni_, .a = u_blk_.data(), .lda = ni_, .b = shift_.y + i1_, .ldb = cols_,
                    .dst = work_.data(), .ldd = ldw_, .accumulate = true, .alpha = shift_.alpha, .a_km = true});
    // What the reference's global W holds (P5) is work as it is now; a copy is needed only when
    // a group starts after the block's first column, by which time work has moved on.
    stale_copied_ = false;
    if (dynamic_groups_ && !opt_.fresh_group_params)
      for (std::int64_t j = i1_ + 1; j < i2_ && !stale_copied_; ++j)
        if (j % g_ == 0) {
          stale_ = work_;
          stale_copied_ = true;
        }
    err_.resize(static_cast<std::size_t>(nb_ * ldw_));
    qt_.resize(static_cast<std::size_t>(nb_ * ldw_));
    ct_.resize(static_cast<std::size_t>(nb_ * ldw_));
  }

  // Block columns [s0, s1) for one task's rows: params where a group starts, then per column the
  // quantization and the reference's update of the rest of the sub-block,
  // work[k] −= ε · U[i, k] with ε = (x − q) / U[i, i].
  void quantize_task(std::int64_t task, std::int64_t s0, std::int64_t s1, std::vector<float>& tile) {
    const auto [r0, r1] = task_rows(task);
    const std::int64_t nr = r1 - r0;
    for (std::int64_t i = s0; i < s1; ++i) {
      const std::int64_t j = i1_ + i;
      if (opt_.static_groups) {
        for (std::int64_t r = r0; r < r1; ++r)
          params_.set(r, static_params_[static_cast<std::size_t>(r * out_.groups + col(j) / g_)]);
      } else if (dynamic_groups_ && j % g_ == 0) {
        group_params(i, s0, s1, r0, r1, tile);
      }
      const std::size_t at = static_cast<std::size_t>(i * ldw_ + r0);
      const float* x = &work_[at];
      const float* q = &qt_[at];
      quantize_values(opt_.grid, params_, r0, r1, x, &qt_[at], &ct_[at]);
      const float d = u(i, i);
      const double inv_2d2 = 1.0 / (static_cast<double>(d) * d) / 2.0;
      float* dj = dt_ + j * rows_ + r0;
      for (std::int64_t r = 0; r < nr; ++r) {
        const float e = x[r] - q[r];
        row_loss_[static_cast<std::size_t>(r0 + r)] += static_cast<double>(e) * e * inv_2d2;
        err_[at + r] = e / d;
        dj[r] -= q[r];  // d_j = w_j − q_j
      }
      for (std::int64_t k = i + 1; k < s1; ++k) {
        const float uk = u(i, k);
        float* xk = &work_[static_cast<std::size_t>(k * ldw_ + r0)];
        const float* ek = &err_[at];
        for (std::int64_t r = 0; r < nr; ++r) xk[r] -= ek[r] * uk;
      }
    }
    for (std::int64_t r = r0; r < r1; ++r)
      for (std::int64_t i = s0; i < s1; ++i) c_perm_[r * cols_ + i1_ + i] = ct_[static_cast<std::size_t>(i * ldw_ + r)];
  }

  // The params of the dynamic group starting at block column i, for rows [r0, r1), from the
  // values the reference reads: stale (P5), or with every update so far (the fresh fix), those
  // applied to work plus those still pending. The group's values are gathered column by column
  // (contiguous reads) into a row-major tile small enough for L1, then each row's params come
  // from its own contiguous values.
  void group_params(std::int64_t i, std::int64_t s0, std::int64_t s1, std::int64_t r0, std::int64_t r1,
                    std::vector<float>& tile) {
    const std::int64_t nr = r1 - r0, j = i1_ + i;
    tile.resize(static_cast<std::size_t>(nr * g_));
    for (std::int64_t k = 0; k < g_; ++k) {
      const std::int64_t c = i + k;  // block-relative column
      const float* src = &(stale_copied_ ? stale_ : work_)[static_cast<std::size_t>(c * ldw_)];
      const std::int64_t pending_from = !opt_.fresh_group_params ? i : c < s1 ? i : c < nb_ ? s0 : 0;
      for (std::int64_t r = r0; r < r1; ++r) {
        float x = src[r];
        for (std::int64_t e = pending_from; e < i; ++e) x -= err_[static_cast<std::size_t>(e * ldw_ + r)] * u(e, c);
        tile[static_cast<std::size_t>((r - r0) * g_ + k)] = x;
      }
    }
    for (std::int64_t r = r0; r < r1; ++r) {
      const GroupParams p = find_params(opt_.grid, {&tile[static_cast<std::size_t>((r - r0) * g_)], static_cast<std::size_t>(g_)});
      params_.set(r, p);
      out_.params[static_cast<std::size_t>(r * out_.groups + j / g_)] = p;
    }
  }

  // The rest of the block: work[s1:nb] −= U[s0:s1, s1:nb]ᵀ · err[s0:s1].
  void update_rest_of_block(std::int64_t s0, std::int64_t s1) {
    linalg::gemm({.M = nb_ - s1, .N = rows_, .K = s1 - s0, .a = &u_blk_[static_cast<std::size_t>(s0 * ni_ + s1)],
                  .lda = ni_, .b = &err_[static_cast<std::size_t>(s0 * ldw_)], .ldb = ldw_,
                  .dst = &work_[static_cast<std::size_t>(s1 * ldw_)], .ldd = ldw_, .accumulate = true, .alpha = -1.0f,
                  .a_km = true, .b_kn = true});
  }

  // The result in the original column order, from the codes (dequantizing gives the very q the
  // loop used), into out.weight now that dt is no longer needed. Params are constant over runs
  // of `run` columns in factor order: a group (dynamic groups), a whole row (per-channel) or one
  // column (static groups follow the original columns).
  void write_result() {
    const std::int64_t run = opt_.static_groups ? 1 : g_;
    const auto params_at = [&](std::int64_t r, std::int64_t j) -> const GroupParams& {  // j in factor order
      if (opt_.static_groups) return static_params_[static_cast<std::size_t>(r * out_.groups + col(j) / g_)];
      if (per_channel_) return row_params_[static_cast<std::size_t>(r)];
      return out_.params[static_cast<std::size_t>(r * out_.groups + j / g_)];
    };
    parallel_for_each(rows_, backend::num_threads(), [&](std::int64_t r) {
      for (std::int64_t j0 = 0; j0 < cols_; j0 += run) {
        const GroupParams& p = params_at(r, j0);
        for (std::int64_t j = j0; j < j0 + run; ++j) {
          const std::int8_t c = c_perm_[r * cols_ + j];
          const float q = dequantize_code(opt_.grid, p, c);
          if (!std::isfinite(q))
            throw_error(Status::kNumericalError, "{}: quantized weight holds NaN or Inf (row {}, column {})", site_, r,
                        col(j));
          const auto dst = static_cast<std::size_t>(r * cols_ + col(j));
          out_.codes[dst] = c;
          out_.weight[dst] = q;
        }
      }
    });
  }

  const float* w_;
  std::int64_t rows_, cols_;
  const GptqPlan& plan_;
  const GptqOptions& opt_;
  std::string_view site_;
  GptqShift shift_;
  QuantizedLayer out_;
  std::int64_t g_;
  bool per_channel_, dynamic_groups_;
  std::int64_t tasks_;
  int threads_;
  // Column stride of the block buffers, padded off a multiple of 4 KiB: a task's few columns
  // would otherwise all map to the same L1 sets and evict each other.
  std::int64_t ldw_;
  ParamColumns params_;
  std::vector<double> row_loss_;
  std::vector<GroupParams> row_params_, static_params_;
  float* dt_ = nullptr;
  std::vector<std::int8_t> codes_perm_;
  std::int8_t* c_perm_ = nullptr;
  std::int64_t i1_ = 0, i2_ = 0, nb_ = 0, ni_ = 0;  // the block, and the columns it reads
  bool stale_copied_ = false;
  std::vector<float> u_blk_, work_, stale_, err_, qt_, v_;
  std::vector<std::int8_t> ct_;
};
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
  // With every column dead the reference would zero the whole of W and quantize zeros; a layer
  // that calibration never reached keeps its round-to-nearest weights instead (docs/algorithms.md).
  if (plan.dead_count == cols) {
    QuantizedLayer q = quantize_rtn(w_in, rows, cols, opt.grid, site);
    q.notes = plan.notes;
    return q;
  }
  detail::GptqRun run(w_in, rows, cols, plan, opt, site, shift);
  for (std::int64_t i1 = 0; i1 < cols; i1 += opt.block_size) run.run_block(i1);
  return run.finish();
}

inline QuantizedLayer gptq(const float* w_in, std::int64_t rows, std::int64_t cols, const double* hessian,
                           const GptqOptions& opt, std::string_view site = "layer") {
  detail::check_finite_parallel(hessian, cols * cols, "Hessian", site);
  return gptq_planned(w_in, rows, cols, plan_gptq(hessian, cols, opt, site), opt, site);
}

}  // namespace qforge::algorithms
