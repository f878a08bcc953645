// JointQ as OneComp defines it (onecomp.md §1), on the CPU: rows in blocks, each row's search a
// task (threaded), the from-scratch evaluations of a block's states float32 GEMMs on the backend.
//
// Per row i it minimises (w_i − ŵ_i) A (w_i − ŵ_i)ᵀ with ŵ = s_t · v (per group t, v integer
// codes relative to the group's fixed zero point) and A = XX + nλR:
//   R = I ("identity") or diag((XX_jj / mean diag XX)^γ) ("diagonal").
// The solver works on OneComp's form yy − 2 b·ŵ + ŵ A ŵ (b = A w, the row of YX), keeps the
// residual correlation r = b − A ŵ = A (w − ŵ) up to date incrementally (a group move costs
// O(d·m), its objective change O(d²)) and never recomputes the objective from scratch inside the
// search. Each start is evaluated once from scratch, in float32 (StateEvaluator: the O(m²) work
// per state, as GEMMs over a block of rows); the search then runs from there, in double except
// for A[:, J_t] v_t, which it keeps in float32 as evaluated.
// Candidates (each with a joint scale refit kept only when it helps), per-row best-of:
//   clip-optimise (min/max rounding + one decoupled local search per group), clip-optimise-EP
//   (groups in order, each searched then its error propagated to the unquantized columns, the
//   exact re-solve done GPTQ-style with the upper Cholesky factor of A⁻¹) and GPTQ (on the
//   unregularised XX). Then sweeps: per group a ±1 local search on the integer codes that
//   maximises θ = q²/o followed by s = q/o, and after each sweep a joint least-squares refit of
//   all the row's scales. Optionally an iterated local search (onecomp.md §1.7) on the worst rows.
// Every step is accepted only when it lowers the row's objective, so the result is never worse
// than any candidate, in particular than its own GPTQ start (objectives as evaluated: to float32
// round-off, ~1e-6 relative, StateEvaluator).
// jointq_error_propagation(): OneComp's separate "JointQ error propagation" re-quantization
// (onecomp.md §1.9) of a stage-1 result against the quantized model's inputs.
// Deviations from OneComp: docs/algorithms.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "qforge/algorithms/gptq.hpp"
#include "qforge/core/half.hpp"
#include "qforge/core/parallel.hpp"

namespace qforge::algorithms {

struct JointqOptions {
  // kInt (int1..int8), or q4_0 / q4_1 / q8_0: solved as int4 symmetric / int4 asymmetric / int8
  // symmetric in groups of 32, scales (and q4_1's offset) rounded to fp16 at the end.
  GridSpec grid;
  double regularization_lambda = 0.1;
  std::string regularization_mode = "diagonal";  // identity | diagonal
  double regularization_gamma = 0.5;
  std::string lambda_mode = "fixed_lambda";  // fixed_lambda | incremental_lambda
  std::vector<double> lambda_list = {0.001, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5};
  double incremental_eps_y = 0.03;
  double incremental_eps_w = 0.10;
  double incremental_initial_skip_ew_threshold = 0.3;
  bool enable_clip_optimize = true;
  bool enable_clip_optimize_ep = false;  // OneComp v1.1 default (v1.0 always ran it when k > 1)
  bool enable_gptq = true;
  bool act_order = false;
  double gptq_percdamp = 0.01;
  std::int64_t gptq_block_size = 128;
  int max_sweeps = 30;
  // Iterated local search (onecomp.md §1.7, off by default as in OneComp).
  bool ils_enabled = false;
  int ils_iterations = 10;
  std::int64_t ils_rows = 1024;  // the worst min(rows, ils_rows) rows per iteration
  int ils_clones = 8;
  double ils_zero_probability = 0.005;
  std::uint64_t ils_seed = 0;  // per (iteration, row, clone) streams: independent of threads
  int threads = 0;             // 0: default_threads()
};

// Which initial candidate a row started from.
enum class JointqCandidate : std::int8_t { kClip = 0, kClipEp = 1, kGptq = 2, kWarm = 3 };
inline constexpr int kJointqCandidates = 4;

struct JointqResult {
  QuantizedLayer layer;
  std::vector<double> row_objective;            // final regularised objective per row
  std::vector<double> row_gptq_objective;       // the GPTQ candidate as GPTQ left it (NaN if disabled)
  std::vector<double> row_candidate_objective;  // [rows, 4]: each candidate after its refit (NaN: not run)
  std::vector<std::int8_t> row_candidate;       // JointqCandidate each row started from
  std::vector<double> row_start_objective;      // the best candidate's objective (before the sweeps)
  std::vector<double> row_search_objective;     // after the sweeps, before the iterated local search
  std::int64_t ils_improved_rows = 0;           // rows the iterated local search improved
  double accepted_lambda = 0.0;
};

namespace detail {

// One row's problem: minimise yy − 2 b·ŵ + ŵ (A + μI) ŵ, ŵ_j = s_{j/gs} v_j, v_j + zero_t ∈ [lo, hi].
struct RowCtx {
  const double* a = nullptr;     // [m, m] row-major, symmetric (shared by all rows)
  const double* diag = nullptr;  // A's diagonal, [m]: the local search reads it per group, and
                                 // strided through A each entry would be a cache miss
  double mu = 0.0;            // per-row diagonal addition
  std::int64_t m = 0, gs = 0, k = 0;
  int lo = 0, hi = 0;
  const double* b = nullptr;  // [m]
  double yy = 0.0;
};

// The part of a row's problem every row of a layer shares: A, its diagonal, the group layout and
// the signed code range of a bits-wide grid.
inline RowCtx shared_row_context(const double* a, const double* diag, std::int64_t m, std::int64_t gs, std::int64_t k,
                                 int bits) {
  RowCtx c;
  c.a = a;
  c.diag = diag;
  c.m = m;
  c.gs = gs;
  c.k = k;
  c.lo = -(1 << (bits - 1));
  c.hi = (1 << (bits - 1)) - 1;
  return c;
}

struct RowState {
  std::vector<double> v;     // codes relative to zero, per column
  std::vector<double> s;     // scale per group
  std::vector<double> zero;  // fixed zero per group (signed code domain)
  std::vector<double> r;     // b − (A + μI) ŵ
  double obj = 0.0;
};

// Working set of one state being searched. StateEvaluator (or refresh()) fills av and gg; the
// search then keeps them current: av[t] = (A + μI)[:, J_t] v_t (so R v_t = av[t][J_t] and
// A ŵ = Σ_t s_t av[t]) and gg[u, t] = v_u·av[t][J_u], the Gram matrix of the scale refit.
// av[t] is row t of a [k, m] array with a row stride: in float32, a view of StateEvaluator's
// GEMM output, for JointQ's own states (no copy; the search's updates of av are rounded to float,
// well inside the float32 error av was computed with); in double and owned (Scratch) for
// jointq_error_propagation's.
template <class T>
struct BasicScratch {
  std::int64_t m = 0, gs = 0, k = 0;
  std::vector<double> h, rv, dg, vn, gg, u;
  std::vector<std::int64_t> nz;
  std::vector<unsigned char> beats;  // local_search: per move (k, ±1), whether it beats the scan's start
  BasicScratch(std::int64_t m_, std::int64_t gs_, std::int64_t k_)
      : m(m_), gs(gs_), k(k_), h(static_cast<std::size_t>(gs_)), rv(static_cast<std::size_t>(gs_)),
        dg(static_cast<std::size_t>(gs_)), vn(static_cast<std::size_t>(gs_)), gg(static_cast<std::size_t>(k_ * k_)),
        u(static_cast<std::size_t>(m_)), beats(static_cast<std::size_t>(2 * gs_)) {}
  void view(T* av, std::int64_t stride) {
    av_ = av;
    stride_ = stride;
  }
  T* col(std::int64_t t) { return av_ + t * stride_; }
  double& g(std::int64_t a, std::int64_t b) { return gg[static_cast<std::size_t>(a * k + b)]; }

 private:
  T* av_ = nullptr;
  std::int64_t stride_ = 0;
};
using ViewScratch = BasicScratch<float>;

struct Scratch : BasicScratch<double> {
  std::vector<double> av;  // [k, m]
  Scratch(std::int64_t m_, std::int64_t gs_, std::int64_t k_)
      : BasicScratch<double>(m_, gs_, k_), av(static_cast<std::size_t>(m_ * k_)) {
    view(av.data(), m_);
  }
  Scratch(const Scratch&) = delete;  // the view points into av
  Scratch& operator=(const Scratch&) = delete;
};

template <class Y, class X>
void axpy(Y* __restrict y, double alpha, const X* __restrict x, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = static_cast<Y>(y[i] + alpha * static_cast<double>(x[i]));
}
// Four partial sums so the compiler can keep two vector accumulators without -ffast-math.
template <class X, class Y>
double dot(const X* __restrict x, const Y* __restrict y, std::int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<double>(x[i]) * static_cast<double>(y[i]);
    s1 += static_cast<double>(x[i + 1]) * static_cast<double>(y[i + 1]);
    s2 += static_cast<double>(x[i + 2]) * static_cast<double>(y[i + 2]);
    s3 += static_cast<double>(x[i + 3]) * static_cast<double>(y[i + 3]);
  }
  for (; i < n; ++i) s0 += static_cast<double>(x[i]) * static_cast<double>(y[i]);
  return (s0 + s1) + (s2 + s3);
}

inline double at(const std::vector<double>& v, std::int64_t i) { return v[static_cast<std::size_t>(i)]; }
inline double& at(std::vector<double>& v, std::int64_t i) { return v[static_cast<std::size_t>(i)]; }

// All of gg, entry (u, t) for u ≤ t from av[t]: each pair once (O(m·k/2)).
template <class T>
void fill_gram(const RowState& st, BasicScratch<T>& sc) {
  for (std::int64_t t = 0; t < sc.k; ++t)
    for (std::int64_t u = 0; u <= t; ++u)
      sc.g(u, t) = sc.g(t, u) = dot(st.v.data() + u * sc.gs, sc.col(t) + u * sc.gs, sc.gs);
}

// Objective for scales s from gg: yy − 2 Σ s_t v_t·b_t + sᵀ gg s (O(m + k²)).
template <class S>
double objective_from_gram(const RowCtx& c, const RowState& st, Scratch& sc, const S& s) {
  double lin = 0.0, quad = 0.0;
  for (std::int64_t t = 0; t < c.k; ++t) {
    lin += s(t) * dot(st.v.data() + t * c.gs, c.b + t * c.gs, c.gs);
    for (std::int64_t u = 0; u < c.k; ++u) quad += s(u) * s(t) * sc.g(u, t);
  }
  return c.yy - 2.0 * lin + quad;
}

// av, gg, r and the objective from scratch in double, one state at a time (O(m²)): for
// jointq_error_propagation's few states, whose b is not A w (JointQ's own go through StateEvaluator).
inline void refresh(const RowCtx& c, RowState& st, Scratch& sc) {
  std::fill(sc.av.begin(), sc.av.end(), 0.0);
  for (std::int64_t t = 0; t < c.k; ++t) {
    double* col = sc.col(t);
    for (std::int64_t l = t * c.gs; l < (t + 1) * c.gs; ++l)
      if (const double vl = at(st.v, l); vl != 0.0) {
        axpy(col, vl, c.a + l * c.m, c.m);
        col[l] += c.mu * vl;
      }
  }
  fill_gram(st, sc);
  st.r.assign(c.b, c.b + c.m);
  for (std::int64_t t = 0; t < c.k; ++t) axpy(st.r.data(), -at(st.s, t), sc.col(t), c.m);
  st.obj = objective_from_gram(c, st, sc, [&](std::int64_t t) { return at(st.s, t); });
}

// JointQ's states evaluated from scratch a batch at a time in float32 GEMMs on the backend, in
// place of refresh()'s per-state double pass over all of A (O(m²) per state, bound by streaming
// A from memory): per state av[t] = A[:, J_t] v_t (one GEMM per group for the whole batch, K =
// gs) and r = A (w − ŵ) (one GEMM, K = m); gg and obj = (w − ŵ)·r follow in double. A, the codes
// and w − ŵ are rounded to float (codes exactly) and the GEMM sums in float, so an entry of av or
// r is off by about √K·2⁻²⁴ of Σ_l |A_jl x_l|. r is formed from w − ŵ rather than as b − A ŵ,
// which would cancel (b and A ŵ agree to within the quantization error), so its error is
// relative to r's own scale and obj is good to ~1e-6 of itself (measured against double: worst
// 1.4e-6 on the bench layers). The search then works from these values, and every step it
// accepts lowers this objective. Needs μ = 0 (the regularisation is inside A). A batch's results
// do not depend on how threads split the per-state work.
class StateEvaluator {
 public:
  StateEvaluator(const MatrixXdR& a, const float* w, std::int64_t gs, std::int64_t k)
      : a_(linalg::to_float(a)), w_(w), m_(a.rows()), gs_(gs), k_(k) {}

  // Sets st[i]->r, st[i]->obj and sc[i]->gg from scratch and points sc[i]'s av at this batch's
  // GEMM output (valid until the next call); st[i] is a state of weight row rows[i].
  void evaluate(const std::vector<RowState*>& st, const std::vector<std::int64_t>& rows,
                const std::vector<ViewScratch*>& sc, int threads) {
    const auto n = static_cast<std::int64_t>(st.size());
    if (n == 0) return;
    const auto plane = static_cast<std::size_t>(n * m_);
    codes_.resize(plane);
    errors_.resize(plane);
    residuals_.resize(plane);
    group_products_.resize(plane * static_cast<std::size_t>(k_));
    parallel_for_each(n, threads, [&](std::int64_t i) {
      write_inputs(*st[static_cast<std::size_t>(i)], rows[static_cast<std::size_t>(i)], i);
    });
    // A is symmetric, so its rows J_t serve as the [K, N] operand: contiguous rows.
    for (std::int64_t t = 0; t < k_; ++t)
      linalg::gemm({.M = n, .N = m_, .K = gs_, .a = codes_.data() + t * gs_, .lda = m_, .b = a_.data() + t * gs_ * m_,
                    .ldb = m_, .dst = group_product(t, n, 0), .ldd = m_, .b_kn = true});
    linalg::gemm({.M = n, .N = m_, .K = m_, .a = errors_.data(), .lda = m_, .b = a_.data(), .ldb = m_,
                  .dst = residuals_.data(), .ldd = m_, .b_kn = true});
    parallel_for_each(n, threads, [&](std::int64_t i) {
      read_outputs(*st[static_cast<std::size_t>(i)], rows[static_cast<std::size_t>(i)],
                   *sc[static_cast<std::size_t>(i)], i, n);
    });
  }

  // out[i, J_t] = A[J_t, J_t] x[i, J_t] for every group t, for rows × m inputs x (row-major).
  void times_diagonal_blocks(const float* x, std::int64_t rows, float* out) const {
    for (std::int64_t t = 0; t < k_; ++t) {
      const std::int64_t off = t * gs_;
      linalg::gemm_nt(rows, gs_, gs_, x + off, m_, a_.data() + off * m_ + off, m_, out + off, m_, false);
    }
  }

 private:
  float* group_product(std::int64_t t, std::int64_t n, std::int64_t i) {
    return group_products_.data() + (t * n + i) * m_;
  }
  const float* weight_row(std::int64_t r) const { return w_ + r * m_; }

  void write_inputs(const RowState& st, std::int64_t row, std::int64_t i) {
    const float* w = weight_row(row);
    float* codes = codes_.data() + i * m_;
    float* errors = errors_.data() + i * m_;
    for (std::int64_t t = 0; t < k_; ++t) {
      const double s = at(st.s, t);
      for (std::int64_t j = t * gs_; j < (t + 1) * gs_; ++j) {
        codes[j] = static_cast<float>(at(st.v, j));
        errors[j] = static_cast<float>(w[j] - s * at(st.v, j));
      }
    }
  }

  void read_outputs(RowState& st, std::int64_t row, ViewScratch& sc, std::int64_t i, std::int64_t n) {
    sc.view(group_product(0, n, i), n * m_);
    fill_gram(st, sc);
    const float* w = weight_row(row);
    const float* res = residuals_.data() + i * m_;
    st.r.assign(res, res + m_);
    double obj = 0.0;
    for (std::int64_t t = 0; t < k_; ++t) {
      const double s = at(st.s, t);
      for (std::int64_t j = t * gs_; j < (t + 1) * gs_; ++j) obj += (w[j] - s * at(st.v, j)) * at(st.r, j);
    }
    st.obj = obj;
  }

  std::vector<float> a_;  // A in float32, [m, m]
  const float* w_;        // the weight, [rows, m]
  std::int64_t m_, gs_, k_;
  std::vector<float> codes_, errors_, residuals_;  // per batch: v, w − ŵ and A (w − ŵ), [n, m]
  std::vector<float> group_products_;              // per batch: A[:, J_t] v_t, [k, n, m]
};

// ±1 local search for group t maximising θ = q²/o (q = h·v, o = v R v, R = A[J,J] + μI), from
// the codes in vg (updated in place); rv0 = R vg (null: computed here). Leaves R v in sc.rv and
// returns the closed-form scale q/o; o in o_out.
template <class T, class R>
double local_search(const RowCtx& c, std::int64_t t, const double* h, double* vg, double zero, BasicScratch<T>& sc,
                    const R* rv0, double& o_out) {
  const std::int64_t d = c.gs, off = t * c.gs;
  const double vlo = c.lo - zero, vhi = c.hi - zero;
  double* rv = sc.rv.data();
  double* dg = sc.dg.data();
  for (std::int64_t k = 0; k < d; ++k) {
    const double* row = c.a + (off + k) * c.m + off;
    rv[k] = rv0 ? rv0[k] : dot(row, vg, d) + c.mu * vg[k];
    dg[k] = c.diag[off + k] + c.mu;
  }
  double q = dot(h, vg, d), o = dot(vg, rv, d);
  constexpr double kEps = 1e-12;
  unsigned char* beats = sc.beats.data();
  for (std::int64_t it = 0; it < 10 * d; ++it) {
    // Compare λ = num/den by cross-multiplication (den > 0): no division in the scan.
    double bnum = o > 0.0 ? q * q : 0.0, bden = o > 0.0 ? o : 1.0;
    // The bar below only rises from θ, so a move that does not beat θ is never picked: a
    // branch-free pass marks the moves that do, and the sequential scan visits only those.
    for (std::int64_t k = 0; k < d; ++k) {
      const double qp = q + h[k], op = o + 2.0 * rv[k] + dg[k];
      const double qm = q - h[k], om = o - 2.0 * rv[k] + dg[k];
      beats[2 * k] = (vg[k] + 1.0 <= vhi) & (op > 0.0) & (qp * qp * bden > bnum * op);
      beats[2 * k + 1] = (vg[k] - 1.0 >= vlo) & (om > 0.0) & (qm * qm * bden > bnum * om);
    }
    std::int64_t best_k = -1;
    double best_dir = 0.0;
    for (std::int64_t k = 0; k < d; ++k) {
      if (!(beats[2 * k] | beats[2 * k + 1])) continue;
      const double qp = q + h[k], op = o + 2.0 * rv[k] + dg[k];
      if (vg[k] + 1.0 <= vhi && op > 0.0 && qp * qp * bden > bnum * op) bnum = qp * qp, bden = op, best_k = k, best_dir = 1.0;
      const double qm = q - h[k], om = o - 2.0 * rv[k] + dg[k];
      if (vg[k] - 1.0 >= vlo && om > 0.0 && qm * qm * bden > bnum * om) bnum = qm * qm, bden = om, best_k = k, best_dir = -1.0;
    }
    const double theta = o > 0.0 ? q * q / o : 0.0;
    if (best_k < 0 || bnum / bden - theta <= kEps * std::max(1.0, theta)) break;
    q += best_dir * h[best_k];
    o += 2.0 * best_dir * rv[best_k] + dg[best_k];
    vg[best_k] += best_dir;
    axpy(rv, best_dir, c.a + (off + best_k) * c.m + off, d);
    rv[best_k] += best_dir * c.mu;
  }
  o_out = o;
  return o > 0.0 ? q / o : 0.0;
}

// u = (A + μI)[:, J_t] δ for the code change δ = vn − v on group t's entries sc.nz (O(m·nnz)).
template <class T>
const double* column_change(const RowCtx& c, std::int64_t t, const double* vn, const RowState& st,
                            BasicScratch<T>& sc) {
  const std::int64_t off = t * c.gs;
  double* u = sc.u.data();
  bool first = true;
  for (auto ka : sc.nz) {
    const double da = vn[ka] - at(st.v, off + ka);
    const double* a_row = c.a + (off + ka) * c.m;
    if (first)
      for (std::int64_t j = 0; j < c.m; ++j) u[j] = da * a_row[j];
    else
      axpy(u, da, a_row, c.m);
    u[off + ka] += c.mu * da;
    first = false;
  }
  return u;
}

// After group t's codes changed by δ (u = R̃δ, column_change) and its scale by ds to sn:
// r −= sn u + ds av[t], av[t] += u and gg row t = v_g·av[t][J_g], in one pass over the m
// entries instead of three.
template <class T>
void update_residual_and_group(RowState& st, BasicScratch<T>& sc, std::int64_t t, const double* u, double sn,
                               double ds) {
  double* r = st.r.data();
  T* avt = sc.col(t);
  for (std::int64_t g = 0; g < sc.k; ++g) {
    double gram = 0.0;
    for (std::int64_t j = g * sc.gs; j < (g + 1) * sc.gs; ++j) {
      r[j] -= sn * u[j] + ds * static_cast<double>(avt[j]);
      avt[j] = static_cast<T>(avt[j] + u[j]);
      gram += at(st.v, j) * static_cast<double>(avt[j]);
    }
    sc.g(g, t) = sc.g(t, g) = gram;
  }
}

// Replaces group t by (vn, sn) when that does not increase the objective. With δ = vn − v (a few
// ±1 moves) and Δ = sn δ + (sn − s) v: obj change Δ R Δ − 2 Δ·r_J from gg and av in O(nnz² + d),
// then r, av[t] and gg row t in O(m·nnz + m).
template <class T>
bool apply_group(const RowCtx& c, std::int64_t t, const double* vn, double sn, RowState& st, BasicScratch<T>& sc) {
  const std::int64_t d = c.gs, off = t * c.gs;
  const double so = at(st.s, t), ds = sn - so;
  T* avt = sc.col(t);
  sc.nz.clear();
  for (std::int64_t k = 0; k < d; ++k)
    if (vn[k] != at(st.v, off + k)) sc.nz.push_back(k);
  if (sc.nz.empty() && ds == 0.0) return false;
  // δRδ, δ·R v (= δ·av[t]_J), vRv = gg[t,t]; Δ·r_J.
  double drd = 0.0, drv = 0.0;
  for (auto ka : sc.nz) {
    const double da = vn[ka] - at(st.v, off + ka);
    drv += da * avt[off + ka];
    for (auto kb : sc.nz) drd += da * (vn[kb] - at(st.v, off + kb)) * (c.a[(off + ka) * c.m + off + kb] + (ka == kb ? c.mu : 0.0));
  }
  double dr = 0.0;
  for (std::int64_t k = 0; k < d; ++k) dr += (sn * (vn[k] - at(st.v, off + k)) + ds * at(st.v, off + k)) * at(st.r, off + k);
  const double quad = sn * sn * drd + 2.0 * sn * ds * drv + ds * ds * sc.g(t, t);
  const double dobj = quad - 2.0 * dr;
  if (!(dobj <= 0.0)) return false;
  st.obj += dobj;
  if (sc.nz.empty()) {
    axpy(st.r.data(), -ds, avt, c.m);
  } else {
    const double* u = column_change(c, t, vn, st, sc);
    for (auto ka : sc.nz) at(st.v, off + ka) = vn[ka];
    update_residual_and_group(st, sc, t, u, sn, ds);
  }
  at(st.s, t) = sn;
  return true;
}

// One sweep over the groups with the residual-aware h = r_J + R ŵ_J (the correlation with the
// residual that leaves group t out). Needs sc current (StateEvaluator or refresh()).
template <class T>
void sweep(const RowCtx& c, RowState& st, BasicScratch<T>& sc) {
  const std::int64_t d = c.gs;
  for (std::int64_t t = 0; t < c.k; ++t) {
    const std::int64_t off = t * d;
    const double s = at(st.s, t);
    const T* rv0 = sc.col(t) + off;
    for (std::int64_t k = 0; k < d; ++k) at(sc.h, k) = at(st.r, off + k) + s * rv0[k];
    std::copy(st.v.begin() + off, st.v.begin() + off + d, sc.vn.begin());
    double o = 0.0;
    const double sn = local_search(c, t, sc.h.data(), sc.vn.data(), at(st.zero, t), sc, rv0, o);
    apply_group(c, t, sc.vn.data(), sn, st, sc);
  }
}

// A step of all the scales: Δ, and the objective change it brings.
struct ScaleStep {
  Eigen::VectorXd delta;
  double change = 0.0;
};

// Joint least-squares refit of all scales, as one Newton step from the current ones: in s the
// objective has gradient −2g (g_t = v_t·r_{J_t}) and Hessian 2·gg, so the optimum is s + Δ with
// gg Δ = g and the objective changes by Δᵀ gg Δ − 2 Δ·g. (The same optimum as the normal
// equations gg s = (v_t·b_t)_t, but the change is formed from r, not as a difference of absolute
// objectives that cancel against yy = w A w: r may come from a float32 GEMM, StateEvaluator.)
// Empty when the step would not lower the objective. Needs sc current; O(m + k³).
template <class T>
std::optional<ScaleStep> scale_refit_step(const RowCtx& c, const RowState& st, BasicScratch<T>& sc) {
  const std::int64_t k = c.k, d = c.gs;
  Eigen::MatrixXd gg(k, k);
  Eigen::VectorXd g(k);
  for (std::int64_t t = 0; t < k; ++t) {
    g[t] = dot(st.v.data() + t * d, st.r.data() + t * d, d);
    for (std::int64_t u = 0; u < k; ++u) gg(u, t) = sc.g(u, t);
  }
  Eigen::MatrixXd system = gg;
  for (std::int64_t t = 0; t < k; ++t)
    if (system(t, t) == 0.0) {  // an all-zero group: its scale does not matter, keep it
      system(t, t) = 1.0;
      g[t] = 0.0;
    }
  Eigen::LDLT<Eigen::MatrixXd> ldlt(system);
  if (ldlt.info() != Eigen::Success) return std::nullopt;
  ScaleStep step;
  step.delta = ldlt.solve(g);
  if (!step.delta.allFinite()) return std::nullopt;
  step.change = step.delta.dot(gg * step.delta) - 2.0 * step.delta.dot(g);
  if (!(step.change < 0.0)) return std::nullopt;
  return step;
}

// s += Δ and the objective, and unless update_residual is false, r −= Σ_t Δ_t av[t] (O(m·k)).
template <class T>
void take_scale_step(const RowCtx& c, RowState& st, BasicScratch<T>& sc, const ScaleStep& step,
                     bool update_residual = true) {
  st.obj += step.change;
  for (std::int64_t t = 0; t < c.k; ++t) {
    at(st.s, t) += step.delta[t];
    if (update_residual) axpy(st.r.data(), -step.delta[t], sc.col(t), c.m);
  }
}

// The joint refit, kept only when the objective falls.
template <class T>
bool refit_scales(const RowCtx& c, RowState& st, BasicScratch<T>& sc) {
  const auto step = scale_refit_step(c, st, sc);
  if (step) take_scale_step(c, st, sc, *step);
  return step.has_value();
}

// Sweeps and refits until the row stops improving or max_sweeps. Needs sc current for st
// (StateEvaluator); releases st.r at the end, since the last refit does not bring it up to date
// (an O(m·k) update nothing would read).
template <class T>
void search(const RowCtx& c, RowState& st, BasicScratch<T>& sc, int max_sweeps) {
  for (int s = 0; s < max_sweeps; ++s) {
    const double before = st.obj;
    sweep(c, st, sc);
    const auto step = scale_refit_step(c, st, sc);
    const double after = step ? st.obj + step->change : st.obj;
    const bool again = s + 1 < max_sweeps && before - after > 1e-12 * std::max(1.0, std::fabs(before));
    if (step) take_scale_step(c, st, sc, *step, again);
    if (!again) break;
  }
  std::vector<double>().swap(st.r);
}

inline RowState state_from_layer(const QuantizedLayer& q, std::int64_t r) {
  RowState st;
  st.v.resize(static_cast<std::size_t>(q.cols));
  st.s.resize(static_cast<std::size_t>(q.groups));
  st.zero.resize(static_cast<std::size_t>(q.groups));
  for (std::int64_t t = 0; t < q.groups; ++t) {
    const auto& pr = q.params[static_cast<std::size_t>(r * q.groups + t)];
    at(st.s, t) = pr.scale;
    at(st.zero, t) = pr.zero;
  }
  for (std::int64_t j = 0; j < q.cols; ++j)
    at(st.v, j) = q.codes[static_cast<std::size_t>(r * q.cols + j)] - at(st.zero, j / q.group_size);
  return st;
}

inline void write_row(QuantizedLayer& q, std::int64_t r, const RowState& st, int bits) {
  for (std::int64_t t = 0; t < q.groups; ++t) {
    auto& pr = q.params[static_cast<std::size_t>(r * q.groups + t)];
    pr = GroupParams{};
    pr.scale = static_cast<float>(at(st.s, t));
    pr.inv_scale = pr.scale != 0.0f ? 1.0f / pr.scale : 0.0f;
    pr.zero = static_cast<float>(at(st.zero, t));
    pr.qmin_raw = pr.zero + static_cast<float>(1 << (bits - 1));
  }
  for (std::int64_t j = 0; j < q.cols; ++j)
    q.codes[static_cast<std::size_t>(r * q.cols + j)] = static_cast<std::int8_t>(at(st.v, j) + at(st.zero, j / q.group_size));
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

// B = W A (rows of YX) in fixed chunks of 64 rows, so the result does not depend on the threads.
inline MatrixXdR times_gram(const float* w, std::int64_t rows, std::int64_t cols, const MatrixXdR& a, int threads) {
  MatrixXdR b(rows, cols);
  constexpr std::int64_t kChunk = 64;
  parallel_for_each((rows + kChunk - 1) / kChunk, threads, [&](std::int64_t ci) {
    const std::int64_t r0 = ci * kChunk, n = std::min(kChunk, rows - r0);
    const MatrixXdR wc = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(w + r0 * cols, n, cols).cast<double>();
    b.middleRows(r0, n).noalias() = wc * a;
  });
  return b;
}

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// U upper with UᵀU = (A + δI)⁻¹ in double, for the clip-optimise-EP re-solves. OneComp solves
// exactly with a pinv fallback (rcond 1e-6); here δ = 1e-10·mean(diag A), raised 10x per failed
// factorisation up to 1e-5. With P the reversal, P A P = R Rᵀ gives A = ŨŨᵀ (Ũ = P R P upper)
// and U = Ũ⁻¹.
inline std::optional<MatrixXdR> ep_factor(const MatrixXdR& a) {
  const std::int64_t c = a.rows();
  const double mean = a.diagonal().mean();
  for (double f = 1e-10; f <= 1e-5 * 1.5; f *= 10.0) {
    MatrixXdR ad = a;
    ad.diagonal().array() += f * std::max(mean, 1e-300);
    Eigen::LLT<MatrixXdR> llt(ad.reverse());
    if (llt.info() != Eigen::Success) continue;
    const MatrixXdR ut = MatrixXdR(llt.matrixL()).reverse();
    MatrixXdR u = ut.triangularView<Eigen::Upper>().solve(MatrixXdR::Identity(c, c));
    u.triangularView<Eigen::StrictlyLower>().setZero();
    if (u.allFinite()) return u;
  }
  return std::nullopt;
}

// Clip-optimise-EP for one row: groups in order; each is clipped from the current W̃, searched
// with h = A_JJ W̃_J (the residual on the unquantized columns is zero after the re-solve), and its
// error propagated to the later columns: with U upper, UᵀU = A⁻¹, ε U_JJ = W̃_J − Ŵ_J and
// W̃_rest −= ε U_J,rest, the exact least-squares re-solve of the unquantized columns.
inline std::optional<RowState> clip_optimize_ep(const RowCtx& c, const float* w, const MatrixXdR& u, const GridSpec& grid,
                                                ViewScratch& sc) {
  std::vector<double> wt(w, w + c.m);
  std::vector<float> grp(static_cast<std::size_t>(c.gs));
  std::vector<double> eps(static_cast<std::size_t>(c.gs));
  RowState st;
  st.v.resize(static_cast<std::size_t>(c.m));
  st.s.resize(static_cast<std::size_t>(c.k));
  st.zero.resize(static_cast<std::size_t>(c.k));
  for (std::int64_t t = 0; t < c.k; ++t) {
    const std::int64_t off = t * c.gs, d = c.gs;
    for (std::int64_t k = 0; k < d; ++k) grp[static_cast<std::size_t>(k)] = static_cast<float>(at(wt, off + k));
    for (float x : grp)
      if (!std::isfinite(x)) return std::nullopt;
    const GroupParams p = find_params(grid, grp);
    at(st.zero, t) = p.zero;
    for (std::int64_t k = 0; k < d; ++k) at(st.v, off + k) = quantize_code(grid, p, grp[static_cast<std::size_t>(k)]) - p.zero;
    for (std::int64_t k = 0; k < d; ++k)
      at(sc.h, k) = dot(c.a + (off + k) * c.m + off, wt.data() + off, d) + c.mu * at(wt, off + k);
    double o = 0.0;
    const double* computed_there = nullptr;  // R v
    const double s = local_search(c, t, sc.h.data(), st.v.data() + off, p.zero, sc, computed_there, o);
    at(st.s, t) = s;
    if (off + d >= c.m) break;
    for (std::int64_t k = 0; k < d; ++k) {
      double e = at(wt, off + k) - s * at(st.v, off + k);
      for (std::int64_t l = 0; l < k; ++l) e -= at(eps, l) * u(off + l, off + k);
      at(eps, k) = e / u(off + k, off + k);
    }
    for (std::int64_t k = 0; k < d; ++k)
      axpy(wt.data() + off + d, -at(eps, k), u.data() + (off + k) * c.m + off + d, c.m - off - d);
  }
  return st;
}

// States are evaluated in batches, so that every from-scratch evaluation is a GEMM over many
// states: at m = 4096 the GEMMs reach most of their speed at about 256 states (64 states took
// 1.4x as long, 512 no less). The batch is set by the problem's shape alone (at most
// kBatchBytes of float32 av), never by the thread count, so neither are the results.
inline constexpr std::int64_t kMaxBatchStates = 256;
inline constexpr std::int64_t kBatchBytes = std::int64_t{128} << 20;
inline std::int64_t batch_states(std::int64_t m, std::int64_t k) {
  const auto per_state = static_cast<std::int64_t>(sizeof(float)) * m * k;
  return std::clamp<std::int64_t>(kBatchBytes / per_state, 1, kMaxBatchStates);
}

// Slots of states with their working sets, evaluated together and then searched independently.
// A slot may be empty (a candidate that does not apply to its row).
struct StateBatch {
  std::vector<std::optional<RowState>> states;
  std::vector<std::int64_t> rows;  // the weight row of each slot
  std::vector<ViewScratch> scratch;
  StateBatch(std::int64_t slots, std::int64_t m, std::int64_t gs, std::int64_t k)
      : states(static_cast<std::size_t>(slots)), rows(static_cast<std::size_t>(slots), 0),
        scratch(static_cast<std::size_t>(slots), ViewScratch(m, gs, k)) {}
  std::optional<RowState>& state(std::int64_t i) { return states[static_cast<std::size_t>(i)]; }
  ViewScratch& working_set(std::int64_t i) { return scratch[static_cast<std::size_t>(i)]; }
  void clear() {
    for (auto& st : states) st.reset();
  }
  void evaluate(StateEvaluator& ev, int threads) {
    std::vector<RowState*> present;
    std::vector<std::int64_t> present_rows;
    std::vector<ViewScratch*> present_scratch;
    for (std::size_t i = 0; i < states.size(); ++i)
      if (states[i]) {
        present.push_back(&*states[i]);
        present_rows.push_back(rows[i]);
        present_scratch.push_back(&scratch[i]);
      }
    ev.evaluate(present, present_rows, present_scratch, threads);
  }
};

// One iterated-local-search clone of `cur`: each code set to 0 (ŵ = 0) with probability
// `threshold`/2⁵³ from the (iteration, row, clone) stream; empty when nothing changed.
inline std::optional<RowState> perturbed_clone(const RowState& cur, const RowCtx& c, std::uint64_t seed, int iteration,
                                               std::int64_t r, int clone, std::uint64_t threshold) {
  RowState st = cur;
  std::uint64_t x = splitmix64(
      seed ^ splitmix64(static_cast<std::uint64_t>(iteration) * 0x100000001b3ULL ^
                        splitmix64(static_cast<std::uint64_t>(r) * 131 + static_cast<std::uint64_t>(clone))));
  bool changed = false;
  for (std::int64_t j = 0; j < c.m; ++j) {
    x = splitmix64(x);
    if ((x >> 11) < threshold && at(st.v, j) != 0.0) {
      const double z = at(st.zero, j / c.gs);
      if (z >= c.lo && z <= c.hi) {  // v = 0 (ŵ = 0) is in range
        at(st.v, j) = 0.0;
        changed = true;
      }
    }
  }
  if (!changed) return std::nullopt;
  return st;
}

// Iterated local search (onecomp.md §1.7): per iteration the worst rows are cloned, each clone's
// codes are set to 0 (ŵ = 0) with a small probability, evaluated from scratch (the clones of a
// few rows in one batch), searched again and evaluated again, and the best clone replaces the
// row when its objective is lower. Random streams are per (iteration, row, clone).
inline std::int64_t iterated_local_search(std::vector<RowState>& states, const RowCtx& c, StateEvaluator& ev,
                                          const JointqOptions& o, int threads) {
  const auto rows = static_cast<std::int64_t>(states.size());
  const int clones = std::max(o.ils_clones, 0);
  if (clones == 0) return 0;
  std::vector<std::int8_t> improved(static_cast<std::size_t>(rows), 0);
  const auto threshold = static_cast<std::uint64_t>(std::ldexp(std::clamp(o.ils_zero_probability, 0.0, 1.0), 53));
  const std::int64_t rows_per_batch = std::max<std::int64_t>(1, batch_states(c.m, c.k) / clones);
  StateBatch batch(rows_per_batch * clones, c.m, c.gs, c.k);
  for (int it = 0; it < o.ils_iterations; ++it) {
    std::vector<std::int64_t> order(static_cast<std::size_t>(rows));
    std::iota(order.begin(), order.end(), 0);
    const std::int64_t n = std::min(rows, std::max<std::int64_t>(o.ils_rows, 0));
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
      return states[static_cast<std::size_t>(a)].obj > states[static_cast<std::size_t>(b)].obj;
    });
    for (std::int64_t b0 = 0; b0 < n; b0 += rows_per_batch) {
      const std::int64_t nb = std::min(rows_per_batch, n - b0);
      auto row_of = [&](std::int64_t li) { return order[static_cast<std::size_t>(b0 + li)]; };
      batch.clear();
      parallel_for_each(nb * clones, threads, [&](std::int64_t i) {
        const std::int64_t r = row_of(i / clones);
        batch.rows[static_cast<std::size_t>(i)] = r;
        batch.state(i) = perturbed_clone(states[static_cast<std::size_t>(r)], c, o.ils_seed, it, r,
                                         static_cast<int>(i % clones), threshold);
      });
      batch.evaluate(ev, threads);
      parallel_for_each(nb * clones, threads, [&](std::int64_t i) {
        if (auto& st = batch.state(i)) search(c, *st, batch.working_set(i), o.max_sweeps);
      });
      // Again from scratch: a clone starts far above where its search ends, and the evaluation's
      // float32 error is relative to the objective it evaluates, so the searched objective would
      // carry the start's error at many times its own relative size.
      batch.evaluate(ev, threads);
      parallel_for_each(nb, threads, [&](std::int64_t li) {
        const std::int64_t r = row_of(li);
        RowState& cur = states[static_cast<std::size_t>(r)];
        std::optional<RowState>* best = nullptr;
        for (std::int64_t i = li * clones; i < (li + 1) * clones; ++i) {
          auto& st = batch.state(i);
          if (st && st->obj < cur.obj - 1e-12 * std::fabs(cur.obj) && (!best || st->obj < (*best)->obj)) best = &st;
        }
        if (best) {
          cur = std::move(**best);
          improved[static_cast<std::size_t>(r)] = 1;
        }
      });
    }
  }
  return std::count(improved.begin(), improved.end(), std::int8_t{1});
}

// The clip-optimise candidate's group products for a block of rows, from float32 GEMMs: h =
// A[J,J] w_J (its local search target, the coupling between groups ignored) and A[J,J] v_J for
// the min/max-rounded codes v it starts from. Float round-off only steers this heuristic start;
// the start is then evaluated like any other (StateEvaluator).
struct ClipInputs {
  std::int64_t r0 = 0, rows = 0, m = 0;  // the block: rows r0 .. r0 + rows
  std::vector<float> inputs, products;  // [2·rows, m]: w then v, and their products (one GEMM per group)
  void compute(const StateEvaluator& ev, const QuantizedLayer& clip, const float* w, std::int64_t first,
               std::int64_t n) {
    r0 = first;
    rows = n;
    m = clip.cols;
    inputs.resize(static_cast<std::size_t>(2 * rows * m));
    products.resize(inputs.size());
    std::copy(w + r0 * m, w + (r0 + rows) * m, inputs.begin());
    float* codes = inputs.data() + rows * m;
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = 0; j < m; ++j) {
        const auto& pr = clip.params[static_cast<std::size_t>((r0 + i) * clip.groups + j / clip.group_size)];
        codes[i * m + j] = static_cast<float>(clip.codes[static_cast<std::size_t>((r0 + i) * m + j)] - pr.zero);
      }
    ev.times_diagonal_blocks(inputs.data(), 2 * rows, products.data());
  }
  const float* h_of(std::int64_t r) const { return products.data() + (r - r0) * m; }
  const float* rv_of(std::int64_t r) const { return products.data() + (rows + r - r0) * m; }
};

// Clip-optimise for one row: min/max rounding, then per group a ±1 local search towards h (the
// coupling between groups ignored).
inline RowState clip_optimize(const RowCtx& c, const ClipInputs& in, const QuantizedLayer& clip, std::int64_t r,
                              ViewScratch& sc) {
  RowState st = state_from_layer(clip, r);
  const float* h = in.h_of(r);
  const float* rv = in.rv_of(r);
  std::vector<double> rv0(static_cast<std::size_t>(c.gs));
  for (std::int64_t t = 0; t < c.k; ++t) {
    const std::int64_t off = t * c.gs;
    std::copy(h + off, h + off + c.gs, sc.h.begin());
    std::copy(rv + off, rv + off + c.gs, rv0.begin());
    double o = 0.0;
    at(st.s, t) = local_search(c, t, sc.h.data(), st.v.data() + off, at(st.zero, t), sc, rv0.data(), o);
  }
  return st;
}

// Where a row's candidates come from.
struct CandidateSources {
  const float* w = nullptr;  // [rows, m]
  const QuantizedLayer* clip = nullptr;
  const QuantizedLayer* gptq = nullptr;
  const QuantizedLayer* warm = nullptr;
  const MatrixXdR* ep_factor = nullptr;  // U of clip_optimize_ep
  GridSpec grid;
};

// Row r's candidate `which`, codes and scales only (empty: it does not apply to the row); clip_inputs:
// the block's, for clip-optimise.
inline std::optional<RowState> build_candidate(JointqCandidate which, const CandidateSources& src,
                                               const ClipInputs& clip_inputs, const RowCtx& c, std::int64_t r,
                                               ViewScratch& sc) {
  const float* w = src.w + r * c.m;
  switch (which) {
    case JointqCandidate::kClip: return clip_optimize(c, clip_inputs, *src.clip, r, sc);
    case JointqCandidate::kClipEp: return clip_optimize_ep(c, w, *src.ep_factor, src.grid, sc);
    case JointqCandidate::kGptq: return state_from_layer(*src.gptq, r);
    case JointqCandidate::kWarm: return state_from_layer(*src.warm, r);
  }
  return std::nullopt;
}

// Row r's candidates are batch slots first .. first + kinds.size(), evaluated. Records each one's
// objective after its scale refit and returns the best slot (the first on ties) with its refit
// taken (the others' refits only solved: their r is not needed), or −1 when no slot is filled.
inline std::int64_t best_candidate(const RowCtx& c, StateBatch& batch, std::int64_t first,
                                   const std::vector<JointqCandidate>& kinds, std::int64_t r, JointqResult& res) {
  const auto ri = static_cast<std::size_t>(r);
  std::int64_t best = -1;
  double best_obj = 0.0;
  std::optional<ScaleStep> best_step;
  for (std::size_t ci = 0; ci < kinds.size(); ++ci) {
    const std::int64_t slot = first + static_cast<std::int64_t>(ci);
    auto& st = batch.state(slot);
    if (!st) continue;
    if (kinds[ci] == JointqCandidate::kGptq) res.row_gptq_objective[ri] = st->obj;
    auto step = scale_refit_step(c, *st, batch.working_set(slot));
    const double obj = step ? st->obj + step->change : st->obj;
    double& recorded = res.row_candidate_objective[ri * kJointqCandidates + static_cast<std::size_t>(kinds[ci])];
    if (!(recorded <= obj)) recorded = obj;
    if (best < 0 || obj < best_obj) {
      best = slot;
      best_obj = obj;
      best_step = std::move(step);
      res.row_candidate[ri] = static_cast<std::int8_t>(kinds[ci]);
    }
  }
  if (best_step) take_scale_step(c, *batch.state(best), batch.working_set(best), *best_step);
  return best;
}

// The candidates run, in the order ties between them are broken.
inline std::vector<JointqCandidate> candidate_kinds(const JointqOptions& o, const CandidateSources& src) {
  std::vector<JointqCandidate> kinds;
  if (o.enable_clip_optimize || (!src.gptq && !src.ep_factor)) kinds.push_back(JointqCandidate::kClip);
  if (src.ep_factor) kinds.push_back(JointqCandidate::kClipEp);
  if (src.gptq) kinds.push_back(JointqCandidate::kGptq);
  if (src.warm) kinds.push_back(JointqCandidate::kWarm);
  return kinds;
}

// Every row from its best candidate through the search, a block of rows at a time: the block's
// candidates are built (in parallel), evaluated together (StateEvaluator), and each row then
// refits them, keeps the best and searches it (in parallel). Fills res's per-row candidate,
// start and search fields; returns the searched states.
inline std::vector<RowState> search_rows(const RowCtx& c, const CandidateSources& src,
                                         const std::vector<JointqCandidate>& kinds, StateEvaluator& ev,
                                         std::int64_t rows, int max_sweeps, int threads, JointqResult& res,
                                         std::string_view site) {
  std::vector<RowState> states(static_cast<std::size_t>(rows));
  const auto nc = static_cast<std::int64_t>(kinds.size());
  const std::int64_t block = std::max<std::int64_t>(1, batch_states(c.m, c.k) / nc);  // rows
  StateBatch batch(block * nc, c.m, c.gs, c.k);  // slot li·nc + ci: candidate kinds[ci] of row r0 + li
  ClipInputs clip_inputs;
  for (std::int64_t r0 = 0; r0 < rows; r0 += block) {
    const std::int64_t nr = std::min(block, rows - r0);
    batch.clear();
    if (kinds.front() == JointqCandidate::kClip) clip_inputs.compute(ev, *src.clip, src.w, r0, nr);
    parallel_for_each(nr * nc, threads, [&](std::int64_t i) {
      const std::int64_t r = r0 + i / nc;
      batch.rows[static_cast<std::size_t>(i)] = r;
      batch.state(i) =
          build_candidate(kinds[static_cast<std::size_t>(i % nc)], src, clip_inputs, c, r, batch.working_set(i));
    });
    batch.evaluate(ev, threads);
    parallel_for_each(nr, threads, [&](std::int64_t li) {
      const std::int64_t r = r0 + li;
      const auto ri = static_cast<std::size_t>(r);
      const std::int64_t best = best_candidate(c, batch, li * nc, kinds, r, res);
      if (best < 0) throw_error(Status::kNumericalError, "{}: row {} has no JointQ candidate", site, r);
      RowState& st = *batch.state(best);
      res.row_start_objective[ri] = st.obj;
      search(c, st, batch.working_set(best), max_sweeps);
      res.row_search_objective[ri] = st.obj;
      states[ri] = std::move(st);
    });
  }
  return states;
}

// Writes the searched states into res.layer with their objectives. The objective is the one the
// search kept, not recomputed: every accepted step lowered it, and a recomputation would carry
// float32 round-off of its own (StateEvaluator). So the GPTQ fallback below is a guard that does
// not fire; it keeps the promise visible.
inline void write_rows(std::vector<RowState>& states, const QuantizedLayer* gptq_layer, int bits, int threads,
                       JointqResult& res) {
  parallel_for_each(static_cast<std::int64_t>(states.size()), threads, [&](std::int64_t r) {
    const auto ri = static_cast<std::size_t>(r);
    RowState& st = states[ri];
    if (gptq_layer && st.obj > res.row_gptq_objective[ri]) {
      st = state_from_layer(*gptq_layer, r);
      st.obj = res.row_gptq_objective[ri];
    }
    res.row_objective[ri] = st.obj;
    write_row(res.layer, r, st, bits);
  });
  res.layer.dequantize_all();
  res.layer.loss = 0.0;
  for (double v : res.row_objective) res.layer.loss += v;
}

// One fixed-λ JointQ run on already permuted inputs (integer grid). warm: an extra candidate.
inline JointqResult jointq_fixed(const std::vector<float>& w, std::int64_t rows, std::int64_t cols, const MatrixXdR& xx,
                                 double tokens, double lambda, const JointqOptions& o, const QuantizedLayer* warm,
                                 std::string_view site) {
  JointqResult res;
  const int threads = o.threads > 0 ? o.threads : default_threads();
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
  const std::int64_t gs = clip.group_size, k = clip.groups;
  std::optional<MatrixXdR> u;
  std::vector<std::string> notes;
  if (o.enable_clip_optimize_ep && k > 1) {
    u = ep_factor(a);
    if (!u) notes.push_back(fmt::format("{}: clip-optimize-EP skipped (regularised Gram matrix not factorable)", site));
  }
  const Eigen::VectorXd diag = a.diagonal();
  RowCtx c = shared_row_context(a.data(), diag.data(), cols, gs, k, o.grid.bits);
  res.layer = clip;
  res.layer.notes = std::move(notes);
  if (gq) res.layer.notes.insert(res.layer.notes.end(), gq->notes.begin(), gq->notes.end());
  res.row_objective.assign(static_cast<std::size_t>(rows), 0.0);
  res.row_gptq_objective.assign(static_cast<std::size_t>(rows), std::nan(""));
  res.row_candidate_objective.assign(static_cast<std::size_t>(rows * kJointqCandidates), std::nan(""));
  res.row_candidate.assign(static_cast<std::size_t>(rows), 0);
  res.row_start_objective.assign(static_cast<std::size_t>(rows), 0.0);
  res.row_search_objective.assign(static_cast<std::size_t>(rows), 0.0);

  const CandidateSources src{w.data(), &clip, gq ? &*gq : nullptr, warm, u ? &*u : nullptr, o.grid};
  StateEvaluator ev(a, w.data(), gs, k);
  std::vector<RowState> states =
      search_rows(c, src, candidate_kinds(o, src), ev, rows, o.max_sweeps, threads, res, site);
  if (o.ils_enabled) res.ils_improved_rows = iterated_local_search(states, c, ev, o, threads);
  write_rows(states, src.gptq, o.grid.bits, threads, res);
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

// The integer grid a GGML block type is solved on, and the conversion of the result back.
inline GridSpec integer_grid_for(const GridSpec& g) {
  if (!is_ggml_grid(g.kind)) return g;
  GridSpec i;
  i.kind = GridKind::kInt;
  i.group_size = 32;
  i.bits = g.kind == GridKind::kQ8_0 ? 8 : 4;
  i.sym = g.kind != GridKind::kQ4_1;
  i.fix_sym_nonnegative = true;
  return i;
}

// value = s·(code − zero) → Q4_0/Q8_0 d·code (zero is 0), Q4_1 d·(code + 8) + m with m = −s·z.
inline void to_ggml_grid(QuantizedLayer& q, const GridSpec& ggml) {
  for (auto& p : q.params) {
    GroupParams n;
    const float s = fp16_to_fp32(fp32_to_fp16(p.scale));
    n.scale = s;
    n.inv_scale = s != 0.0f ? 1.0f / s : 0.0f;
    if (ggml.kind == GridKind::kQ4_1) {
      n.offset = fp16_to_fp32(fp32_to_fp16(-p.scale * p.qmin_raw));
      n.qmin_raw = n.offset;
    }
    p = n;
  }
  q.grid = ggml;
  q.dequantize_all();
}

}  // namespace detail

// xx: Σ x xᵀ over `tokens` tokens ([cols, cols]); w: [rows, cols].
inline JointqResult jointq(const float* w_in, std::int64_t rows, std::int64_t cols, const double* xx_in, double tokens,
                           const JointqOptions& o_in, std::string_view site = "layer") {
  if ((o_in.grid.kind != GridKind::kInt && !is_ggml_grid(o_in.grid.kind)) || o_in.grid.bits > 8)
    throw_error(Status::kUnsupported, "{}: JointQ works on integer grids (int1..int8, q4_0, q4_1, q8_0), not {}", site,
                grid_name(o_in.grid));
  if (is_ggml_grid(o_in.grid.kind) && o_in.grid.range == RangeMethod::kMse)
    throw_error(Status::kUnsupported, "{}: the ggml scale rule is fixed; MSE range search does not apply", site);
  JointqOptions o = o_in;
  o.grid = detail::integer_grid_for(o_in.grid);
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
  if (is_ggml_grid(o_in.grid.kind)) detail::to_ggml_grid(res.layer, o_in.grid);
  return res;
}

// OneComp's "JointQ error propagation" (onecomp.md §1.9): re-quantizes a stage-1 result W0
// against the float layer's outputs on the quantized model's inputs,
//   min ‖X w_i − X̂ ŵ_i‖² + λ_i ‖ŵ_i − w0_i‖²   per row, from W0, zero points fixed,
// λ_i = 10·g_i/‖w0_i‖² (g_i = ‖X w_i − X̂ w0_i‖²), one sweep (+ scale refit) per iteration for at
// most max_iter iterations, λ_i doubled when the relative change ρ_i = ‖ŵ_i − w0_i‖²/‖w0_i‖²
// exceeds ρ_max and halved when ρ_i < ρ_max/2, ρ_max = clip(variation_scale·deg, 0,
// variation_cap) when deg = (g_i − f_i)/f_i > degradation_threshold (f_i = ‖X (w_i − w0_i)‖²,
// the stage-1 error), else 0: the row stays W0. A row keeps the iterate with the lowest g among
// those with ρ ≤ ρ_max (W0 itself qualifies), so no row gets worse on the stage-2 objective.
struct JointqEpOptions {
  double variation_scale = 0.1;
  double variation_cap = 0.05;
  double degradation_threshold = 0.1;
  int max_iter = 10;
  double initial_lambda_factor = 10.0;
  int threads = 0;
};

struct JointqEpResult {
  QuantizedLayer layer;
  std::vector<double> row_degradation;  // (g − f)/f per row
  std::vector<double> row_error_before;  // g: ‖X w − X̂ w0‖²
  std::vector<double> row_error_after;   // ‖X w − X̂ ŵ‖²
  std::vector<double> row_rho;           // ‖ŵ − w0‖²/‖w0‖² of the kept iterate
  std::int64_t rows_changed = 0;
};

// w: float [rows, cols]; w0: the stage-1 layer (integer grid, no act-order); xx = XᵀX (float
// inputs), hh = X̂ᵀX̂ and hx = X̂ᵀX (= H + H_δᵀ in statistics.hpp terms), all [cols, cols].
inline JointqEpResult jointq_error_propagation(const float* w, std::int64_t rows, std::int64_t cols, const QuantizedLayer& w0,
                                               const double* xx, const double* hh, const double* hx,
                                               const JointqEpOptions& o, std::string_view site = "layer") {
  if (w0.grid.kind != GridKind::kInt)
    throw_error(Status::kUnsupported, "{}: JointQ error propagation needs an integer-grid stage-1 result, not {}", site, grid_name(w0.grid));
  if (w0.rows != rows || w0.cols != cols)
    throw_error(Status::kShapeMismatch, "{}: stage-1 result is [{}, {}], the weight [{}, {}]", site, w0.rows, w0.cols, rows, cols);
  for (std::int64_t j = 0; j < cols; ++j)
    if (!w0.perm.empty() || w0.group_index[static_cast<std::size_t>(j)] != j / w0.group_size)
      throw_error(Status::kUnsupported, "{}: JointQ error propagation needs a stage-1 result without act-order", site);
  check_finite(w, rows * cols, "weight", site);
  check_finite(xx, cols * cols, "XᵀX", site);
  check_finite(hh, cols * cols, "X̂ᵀX̂", site);
  check_finite(hx, cols * cols, "X̂ᵀX", site);
  const int threads = o.threads > 0 ? o.threads : default_threads();
  const Eigen::Map<const MatrixXdR> XX(xx, cols, cols), HX(hx, cols, cols);
  const MatrixXdR b = detail::times_gram(w, rows, cols, HX.transpose(), threads);  // rows: (X̂ᵀX w)ᵀ
  JointqEpResult res;
  res.layer = w0;
  res.row_degradation.assign(static_cast<std::size_t>(rows), 0.0);
  res.row_error_before.assign(static_cast<std::size_t>(rows), 0.0);
  res.row_error_after.assign(static_cast<std::size_t>(rows), 0.0);
  res.row_rho.assign(static_cast<std::size_t>(rows), 0.0);
  std::vector<std::int8_t> changed(static_cast<std::size_t>(rows), 0);
  const std::int64_t gs = w0.group_size, k = w0.groups;
  const Eigen::VectorXd hh_diag = Eigen::Map<const MatrixXdR>(hh, cols, cols).diagonal();
  parallel_for_each(rows, threads, [&](std::int64_t r) {
    const auto ri = static_cast<std::size_t>(r);
    detail::Scratch sc(cols, gs, k);
    Eigen::VectorXd wr(cols), w0r(cols);
    detail::RowState st = detail::state_from_layer(w0, r);
    for (std::int64_t j = 0; j < cols; ++j) {
      wr[j] = w[r * cols + j];
      w0r[j] = detail::at(st.s, j / gs) * detail::at(st.v, j);
    }
    const double yy = wr.dot(XX * wr);
    const Eigen::VectorXd e0 = wr - w0r;
    const double f = e0.dot(XX * e0);
    detail::RowCtx c = detail::shared_row_context(hh, hh_diag.data(), cols, gs, k, w0.grid.bits);
    c.b = b.data() + r * cols;
    c.yy = yy;
    detail::refresh(c, st, sc);
    const double g = st.obj;
    res.row_error_before[ri] = g;
    res.row_error_after[ri] = g;
    const double deg = f > 0.0 ? (g - f) / f : 0.0;
    res.row_degradation[ri] = deg;
    const double rho_max = deg > o.degradation_threshold ? std::clamp(o.variation_scale * deg, 0.0, o.variation_cap) : 0.0;
    const double n0 = w0r.squaredNorm();
    if (!(rho_max > 0.0) || !(n0 > 0.0)) return;
    double lambda = o.initial_lambda_factor * g / n0;
    std::vector<double> breg(static_cast<std::size_t>(cols));
    std::optional<detail::RowState> kept;
    double kept_err = g;
    for (int it = 0; it < o.max_iter; ++it) {
      for (std::int64_t j = 0; j < cols; ++j) detail::at(breg, j) = c.b[j] + lambda * w0r[j];
      detail::RowCtx cl = c;
      cl.mu = lambda;
      cl.b = breg.data();
      cl.yy = yy + lambda * n0;
      detail::refresh(cl, st, sc);
      detail::sweep(cl, st, sc);
      detail::refit_scales(cl, st, sc);
      double dist = 0.0;
      for (std::int64_t j = 0; j < cols; ++j) {
        const double dj = detail::at(st.s, j / gs) * detail::at(st.v, j) - w0r[j];
        dist += dj * dj;
      }
      const double rho = dist / n0;
      detail::RowState plain = st;
      detail::refresh(c, plain, sc);  // the unregularised stage-2 error of this iterate
      if (rho <= rho_max && plain.obj < kept_err) {
        kept_err = plain.obj;
        kept = plain;
        res.row_rho[ri] = rho;
      }
      if (rho > rho_max) lambda *= 2.0;
      else if (rho < 0.5 * rho_max) lambda *= 0.5;
    }
    if (kept) {
      res.row_error_after[ri] = kept_err;
      detail::write_row(res.layer, r, *kept, w0.grid.bits);
      changed[ri] = 1;
    }
  });
  res.rows_changed = std::count(changed.begin(), changed.end(), std::int8_t{1});
  res.layer.dequantize_all();
  res.layer.loss = 0.0;
  for (double v : res.row_error_after) res.layer.loss += v;
  return res;
}

}  // namespace qforge::algorithms
