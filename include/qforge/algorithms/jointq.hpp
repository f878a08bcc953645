// JointQ as OneComp defines it (onecomp.md §1), on the CPU, one row per task (threaded).
//
// Per row i it minimises (w_i − ŵ_i) XX_reg (w_i − ŵ_i)ᵀ with ŵ = s_t · v (per group t, v integer
// codes relative to the group's fixed zero point) and XX_reg = XX + nλR:
//   R = I ("identity") or diag((XX_jj / mean diag XX)^γ) ("diagonal").
// Candidates (each with a joint scale refit that is kept only when it helps), per-row best-of:
//   clip-optimise (min/max rounding + one decoupled local search per group) and GPTQ (on the
//   unregularised XX). Then sweeps: per group, a ±1 local search on the integer codes that
//   maximises θ = q²/o (q = h·v, o = vRvᵀ, h the residual correlation) followed by the closed-form
//   scale s = q/o, and after each sweep a joint least-squares refit of all the row's scales.
// Every step is accepted only when it lowers the row's objective, so the result is never worse
// than any candidate, in particular than its own GPTQ start.
// Deviations from OneComp (documented in docs/algorithms.md): rows run independently (no
// batch-wide 10% early stop or 0.6/0.2 refit heuristic), sweeps are capped (max_sweeps), and the
// clip-optimise-EP candidate and iterated local search are not implemented.
#pragma once

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "qforge/algorithms/gptq.hpp"
#include "qforge/core/parallel.hpp"

namespace qforge::algorithms {

struct JointqOptions {
  GridSpec grid;  // kInt only
  double regularization_lambda = 0.1;
  std::string regularization_mode = "diagonal";  // identity | diagonal
  double regularization_gamma = 0.5;
  std::string lambda_mode = "fixed_lambda";  // fixed_lambda | incremental_lambda
  std::vector<double> lambda_list = {0.001, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5};
  double incremental_eps_y = 0.03;
  double incremental_eps_w = 0.10;
  double incremental_initial_skip_ew_threshold = 0.3;
  bool enable_clip_optimize = true;
  bool enable_gptq = true;
  bool act_order = false;
  double gptq_percdamp = 0.01;
  std::int64_t gptq_block_size = 128;
  int max_sweeps = 30;
  int threads = 0;  // 0: default_threads()
};

struct JointqResult {
  QuantizedLayer layer;
  std::vector<double> row_objective;       // final regularised objective per row
  std::vector<double> row_gptq_objective;  // the GPTQ candidate's objective per row (NaN if disabled)
  double accepted_lambda = 0.0;
};

namespace detail {

struct RowProblem {
  const MatrixXdR* a;  // XX_reg
  std::int64_t cols, gs, groups;
  int lo, hi;  // signed code bounds
};

struct RowState {
  std::vector<double> v;      // integer codes relative to zero, per column
  std::vector<double> s;      // scale per group
  std::vector<double> zero;   // fixed zero per group (signed code domain)
};

inline std::vector<double> row_weight(const RowProblem& p, const RowState& st) {
  std::vector<double> w(static_cast<std::size_t>(p.cols));
  for (std::int64_t j = 0; j < p.cols; ++j) w[static_cast<std::size_t>(j)] = st.s[static_cast<std::size_t>(j / p.gs)] * st.v[static_cast<std::size_t>(j)];
  return w;
}

// (w − ŵ) A (w − ŵ)ᵀ.
inline double row_objective(const RowProblem& p, const std::vector<double>& w, const std::vector<double>& wq) {
  Eigen::VectorXd d(p.cols);
  for (std::int64_t j = 0; j < p.cols; ++j) d[j] = w[static_cast<std::size_t>(j)] - wq[static_cast<std::size_t>(j)];
  return d.dot(*p.a * d);
}

// Joint closed-form refit of all scales: (GᵀG) s = Gᵀy with G's columns the embedded v_t.
inline bool refit_scales(const RowProblem& p, const std::vector<double>& w, RowState& st, double& obj) {
  const auto& A = *p.a;
  Eigen::MatrixXd av(p.cols, p.groups);  // A[:, J_t] v_t
  av.setZero();
  for (std::int64_t t = 0; t < p.groups; ++t)
    for (std::int64_t k = 0; k < p.gs; ++k) {
      const std::int64_t j = t * p.gs + k;
      const double vj = st.v[static_cast<std::size_t>(j)];
      if (vj != 0.0) av.col(t) += vj * A.col(j);
    }
  Eigen::MatrixXd gg(p.groups, p.groups);
  Eigen::VectorXd rhs(p.groups);
  Eigen::VectorXd wv = Eigen::Map<const Eigen::VectorXd>(w.data(), p.cols);
  for (std::int64_t t = 0; t < p.groups; ++t) {
    rhs[t] = av.col(t).dot(wv);  // v_t · (A w)_t
    for (std::int64_t u = 0; u < p.groups; ++u) {
      double x = 0.0;
      for (std::int64_t k = 0; k < p.gs; ++k) x += st.v[static_cast<std::size_t>(t * p.gs + k)] * av(t * p.gs + k, u);
      gg(t, u) = x;
    }
  }
  Eigen::LDLT<Eigen::MatrixXd> ldlt(gg);
  if (ldlt.info() != Eigen::Success) return false;
  const Eigen::VectorXd s = ldlt.solve(rhs);
  if (!s.allFinite()) return false;
  RowState cand = st;
  for (std::int64_t t = 0; t < p.groups; ++t) cand.s[static_cast<std::size_t>(t)] = s[t];
  const double o = row_objective(p, w, row_weight(p, cand));
  if (o < obj) {
    obj = o;
    st = std::move(cand);
    return true;
  }
  return false;
}

// ±1 local search for one group maximising θ = q²/o, then s = q/o. h: residual correlation,
// group block R = A[J, J]. Returns whether v changed; writes the group's new scale.
inline void local_search_group(const RowProblem& p, std::int64_t t, const Eigen::VectorXd& h, RowState& st) {
  const auto& A = *p.a;
  const std::int64_t d = p.gs, off = t * p.gs;
  const double zero = st.zero[static_cast<std::size_t>(t)];
  const double vlo = p.lo - zero, vhi = p.hi - zero;
  Eigen::VectorXd v(d);
  for (std::int64_t k = 0; k < d; ++k) v[k] = st.v[static_cast<std::size_t>(off + k)];
  const auto R = A.block(off, off, d, d);
  Eigen::VectorXd rv = R * v;
  double q = h.dot(v), o = v.dot(rv);
  constexpr double kEps = 1e-12;
  for (std::int64_t it = 0; it < 10 * d; ++it) {
    const double theta = o > 0.0 ? q * q / o : 0.0;
    double best = theta;
    std::int64_t best_k = -1;
    double best_dir = 0.0;
    for (std::int64_t k = 0; k < d; ++k) {
      const double rkk = R(k, k);
      if (v[k] + 1.0 <= vhi) {
        const double on = o + 2.0 * rv[k] + rkk;
        if (on > 0.0) {
          const double l = (q + h[k]) * (q + h[k]) / on;
          if (l > best) best = l, best_k = k, best_dir = 1.0;
        }
      }
      if (v[k] - 1.0 >= vlo) {
        const double on = o - 2.0 * rv[k] + rkk;
        if (on > 0.0) {
          const double l = (q - h[k]) * (q - h[k]) / on;
          if (l > best) best = l, best_k = k, best_dir = -1.0;
        }
      }
    }
    if (best_k < 0 || best - theta <= kEps * std::max(1.0, theta)) break;
    q += best_dir * h[best_k];
    o += 2.0 * best_dir * rv[best_k] + R(best_k, best_k);
    v[best_k] += best_dir;
    rv += best_dir * R.col(best_k);
  }
  for (std::int64_t k = 0; k < d; ++k) st.v[static_cast<std::size_t>(off + k)] = v[k];
  st.s[static_cast<std::size_t>(t)] = o > 0.0 ? q / o : 0.0;
}

// One sweep over all groups with the residual-aware h; each group's change is kept only if the
// row objective does not increase (it cannot in exact arithmetic; the check guards round-off).
inline void sweep(const RowProblem& p, const std::vector<double>& w, RowState& st, double& obj) {
  const auto& A = *p.a;
  const Eigen::Map<const Eigen::VectorXd> wv(w.data(), p.cols);
  for (std::int64_t t = 0; t < p.groups; ++t) {
    const auto wq = row_weight(p, st);
    const Eigen::Map<const Eigen::VectorXd> wqv(wq.data(), p.cols);
    const std::int64_t off = t * p.gs;
    // h = (A(w − ŵ))_J + A[J,J] ŵ_J : correlation with the residual that excludes group t.
    const Eigen::VectorXd h = A.middleRows(off, p.gs) * (wv - wqv) + A.block(off, off, p.gs, p.gs) * wqv.segment(off, p.gs);
    RowState cand = st;
    local_search_group(p, t, h, cand);
    const double o = row_objective(p, w, row_weight(p, cand));
    if (o <= obj) {
      obj = o;
      st = std::move(cand);
    }
  }
}

inline RowState state_from_layer(const QuantizedLayer& q, std::int64_t r) {
  RowState st;
  st.v.resize(static_cast<std::size_t>(q.cols));
  st.s.resize(static_cast<std::size_t>(q.groups));
  st.zero.resize(static_cast<std::size_t>(q.groups));
  for (std::int64_t t = 0; t < q.groups; ++t) {
    const auto& pr = q.params[static_cast<std::size_t>(r * q.groups + t)];
    st.s[static_cast<std::size_t>(t)] = pr.scale;
    st.zero[static_cast<std::size_t>(t)] = pr.zero;
  }
  for (std::int64_t j = 0; j < q.cols; ++j)
    st.v[static_cast<std::size_t>(j)] = q.codes[static_cast<std::size_t>(r * q.cols + j)] - st.zero[static_cast<std::size_t>(j / q.group_size)];
  return st;
}

// Regularised Gram matrix XX + nλR.
inline MatrixXdR regularise(const MatrixXdR& xx, double tokens, double lambda, const JointqOptions& o) {
  MatrixXdR a = xx;
  if (lambda == 0.0) return a;
  const double mean = xx.diagonal().mean();
  for (std::int64_t j = 0; j < xx.rows(); ++j) {
    double r = 1.0;
    if (o.regularization_mode == "diagonal") r = mean > 0.0 ? std::pow(std::max(xx(j, j), 0.0) / mean, o.regularization_gamma) : 1.0;
    a(j, j) += tokens * lambda * r;
  }
  return a;
}

// One fixed-λ JointQ run on already permuted inputs. warm: an extra candidate (incremental mode).
inline JointqResult jointq_fixed(const std::vector<float>& w, std::int64_t rows, std::int64_t cols, const MatrixXdR& xx,
                                 double tokens, double lambda, const JointqOptions& o, const QuantizedLayer* warm,
                                 std::string_view site) {
  JointqResult res;
  const MatrixXdR a = regularise(xx, tokens, lambda, o);
  QuantizedLayer clip = quantize_rtn(w.data(), rows, cols, o.grid, site);
  std::optional<QuantizedLayer> gq;
  if (o.enable_gptq) {
    GptqOptions g;
    g.grid = o.grid;
    g.percdamp = o.gptq_percdamp;
    g.block_size = o.gptq_block_size;
    gq = gptq(w.data(), rows, cols, xx.data(), g, site);
  }
  RowProblem p{&a, cols, clip.group_size, clip.groups, -(1 << (o.grid.bits - 1)), (1 << (o.grid.bits - 1)) - 1};
  res.layer = clip;
  res.row_objective.assign(static_cast<std::size_t>(rows), 0.0);
  res.row_gptq_objective.assign(static_cast<std::size_t>(rows), std::nan(""));
  const int threads = o.threads > 0 ? o.threads : default_threads();
  parallel_for_each(rows, threads, [&](std::int64_t r) {
    std::vector<double> wr(w.begin() + r * cols, w.begin() + (r + 1) * cols);
    RowState best;
    double best_obj = std::numeric_limits<double>::infinity();
    auto consider = [&](RowState st) {
      double obj = row_objective(p, wr, row_weight(p, st));
      refit_scales(p, wr, st, obj);
      if (obj < best_obj) best_obj = obj, best = std::move(st);
      return obj;
    };
    if (o.enable_clip_optimize || !gq) {
      RowState st = state_from_layer(clip, r);
      // Decoupled local search per group (h = A[J,J] w_J), then the joint refit in consider().
      for (std::int64_t t = 0; t < p.groups; ++t) {
        const Eigen::Map<const Eigen::VectorXd> wg(wr.data() + t * p.gs, p.gs);
        const Eigen::VectorXd h = a.block(t * p.gs, t * p.gs, p.gs, p.gs) * wg;
        RowState cand = st;
        local_search_group(p, t, h, cand);
        st = cand;
      }
      const RowState plain = state_from_layer(clip, r);
      consider(plain);
      consider(st);
    }
    if (gq) {
      res.row_gptq_objective[static_cast<std::size_t>(r)] = row_objective(p, wr, row_weight(p, state_from_layer(*gq, r)));
      consider(state_from_layer(*gq, r));
    }
    if (warm) consider(state_from_layer(*warm, r));
    for (int s = 0; s < o.max_sweeps; ++s) {
      const double before = best_obj;
      sweep(p, wr, best, best_obj);
      refit_scales(p, wr, best, best_obj);
      if (!(before - best_obj > 1e-12 * std::max(1.0, std::fabs(before)))) break;
    }
    res.row_objective[static_cast<std::size_t>(r)] = best_obj;
    for (std::int64_t t = 0; t < p.groups; ++t) {
      auto& pr = res.layer.params[static_cast<std::size_t>(r * p.groups + t)];
      pr = GroupParams{};
      pr.scale = static_cast<float>(best.s[static_cast<std::size_t>(t)]);
      pr.inv_scale = pr.scale != 0.0f ? 1.0f / pr.scale : 0.0f;
      pr.zero = static_cast<float>(best.zero[static_cast<std::size_t>(t)]);
      pr.qmin_raw = pr.zero + static_cast<float>(1 << (o.grid.bits - 1));
    }
    for (std::int64_t j = 0; j < cols; ++j)
      res.layer.codes[static_cast<std::size_t>(r * cols + j)] =
          static_cast<std::int8_t>(best.v[static_cast<std::size_t>(j)] + best.zero[static_cast<std::size_t>(j / p.gs)]);
  });
  res.layer.dequantize_all();
  res.layer.loss = 0.0;
  for (double v : res.row_objective) res.layer.loss += v;
  res.accepted_lambda = lambda;
  return res;
}

inline double rel_errors(const std::vector<float>& w, const QuantizedLayer& q, const MatrixXdR& xx, double& ey) {
  const std::int64_t rows = q.rows, cols = q.cols;
  double nw = 0, dw = 0, ny = 0, dy = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    Eigen::VectorXd a(cols), d(cols);
    for (std::int64_t j = 0; j < cols; ++j) {
      a[j] = w[static_cast<std::size_t>(r * cols + j)];
      d[j] = a[j] - q.weight[static_cast<std::size_t>(r * cols + j)];
    }
    nw += a.squaredNorm();
    dw += d.squaredNorm();
    ny += a.dot(xx * a);
    dy += d.dot(xx * d);
  }
  ey = ny > 0 ? dy / ny : 0.0;
  return nw > 0 ? dw / nw : 0.0;
}

}  // namespace detail

// xx: Σ x xᵀ over `tokens` tokens ([cols, cols]); w: [rows, cols].
inline JointqResult jointq(const float* w_in, std::int64_t rows, std::int64_t cols, const double* xx_in, double tokens,
                           const JointqOptions& o, std::string_view site = "layer") {
  if (o.grid.kind != GridKind::kInt || o.grid.bits > 8)
    throw_error(Status::kUnsupported, "{}: JointQ works on integer grids (int1..int8), not {}", site, grid_name(o.grid));
  if (o.regularization_mode != "identity" && o.regularization_mode != "diagonal")
    throw_error(Status::kInvalidArgument, "{}: regularization_mode '{}' is not identity or diagonal", site, o.regularization_mode);
  if (o.lambda_mode != "fixed_lambda" && o.lambda_mode != "incremental_lambda")
    throw_error(Status::kInvalidArgument, "{}: lambda_mode '{}' is not fixed_lambda or incremental_lambda", site, o.lambda_mode);
  if (o.lambda_mode == "incremental_lambda" && o.regularization_mode != "identity")
    throw_error(Status::kInvalidArgument, "{}: incremental_lambda needs regularization_mode identity (as OneComp)", site);
  check_finite(w_in, rows * cols, "weight", site);
  check_finite(xx_in, cols * cols, "Hessian", site);
  (void)effective_group_size(o.grid, cols, site);
  std::vector<float> w(w_in, w_in + rows * cols);
  MatrixXdR xx = Eigen::Map<const MatrixXdR>(xx_in, cols, cols);
  std::vector<std::int64_t> perm(static_cast<std::size_t>(cols));
  std::iota(perm.begin(), perm.end(), 0);
  if (o.act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](std::int64_t a, std::int64_t b) { return xx(a, a) > xx(b, b); });
    MatrixXdR xp(cols, cols);
    std::vector<float> wp(w.size());
    for (std::int64_t a = 0; a < cols; ++a)
      for (std::int64_t b = 0; b < cols; ++b) xp(a, b) = xx(perm[static_cast<std::size_t>(a)], perm[static_cast<std::size_t>(b)]);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < cols; ++j) wp[static_cast<std::size_t>(r * cols + j)] = w[static_cast<std::size_t>(r * cols + perm[static_cast<std::size_t>(j)])];
    xx.swap(xp);
    w.swap(wp);
  }
  JointqResult res;
  if (o.lambda_mode == "fixed_lambda") {
    res = detail::jointq_fixed(w, rows, cols, xx, tokens, o.regularization_lambda, o, nullptr, site);
  } else {
    // onecomp.md §1.6: accept while both errors fall, or E_y within +3% and E_w down by 10%.
    std::optional<JointqResult> acc;
    double ew_prev = 0, ey_prev = 0;
    for (double lambda : o.lambda_list) {
      auto cand = detail::jointq_fixed(w, rows, cols, xx, tokens, lambda, o, acc ? &acc->layer : nullptr, site);
      double ey = 0;
      const double ew = detail::rel_errors(w, cand.layer, xx, ey);
      if (!acc) {
        if (lambda == 0.0 && ew > o.incremental_initial_skip_ew_threshold) continue;
      } else {
        const bool accept = (ey < ey_prev && ew < ew_prev) ||
                            (ew <= ew_prev && ey <= (1 + o.incremental_eps_y) * ey_prev && ew <= (1 - o.incremental_eps_w) * ew_prev);
        if (!accept) break;
      }
      acc = std::move(cand);
      ew_prev = ew;
      ey_prev = ey;
    }
    if (!acc) throw_error(Status::kNumericalError, "{}: incremental JointQ accepted no lambda", site);
    res = std::move(*acc);
  }
  if (o.act_order) {
    auto& q = res.layer;
    std::vector<std::int64_t> invperm(static_cast<std::size_t>(cols));
    for (std::int64_t j = 0; j < cols; ++j) invperm[static_cast<std::size_t>(perm[static_cast<std::size_t>(j)])] = j;
    std::vector<std::int8_t> codes(q.codes.size());
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < cols; ++j)
        codes[static_cast<std::size_t>(r * cols + j)] = q.codes[static_cast<std::size_t>(r * cols + invperm[static_cast<std::size_t>(j)])];
    q.codes = std::move(codes);
    for (std::int64_t j = 0; j < cols; ++j)
      q.group_index[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(invperm[static_cast<std::size_t>(j)] / q.group_size);
    q.perm.assign(perm.begin(), perm.end());
    q.dequantize_all();
  }
  return res;
}

}  // namespace qforge::algorithms
