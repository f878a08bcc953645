// Quantization-aware training (QAT) and quantized training (QT) on a model graph (Qwix QtProvider).
//
//   std::vector<rules::QtRule> rules(1);
//   rules[0].weight_qtype = QType::kInt4;
//   rules[0].act_qtype = QType::kInt4;                 // QAT w4a4
//   rules[0].bwd_qtype = QType::kInt8;                 // set: QT, the backward runs in integers too
//   providers::quantize_model(model, providers::QtProvider(rules), {sample});
//   ... train as usual: model(x, /*training=*/true), backward(loss), optimizer.step() ...
//
// Forward: both operands fake-quantized (weights re-quantized every step, activations per row,
// or with a static scale that is Qwix's cumulative mean, updated only in training). Backward:
//  - QAT (bwd_qtype unset): the straight-through estimator — the float residuals give
//    dlhs = g·W and dW = gᵀ·x — with Qwix's gradient masking: zero where the input lay outside
//    the calibrated range, for methods that clip (a factor below 1, fixed, rms, percentile, mse).
//  - QT: the incoming gradient is quantized to bwd_qtype after folding the other operand's
//    per-row scale into it ("scale shifting"), and both products run as integer GEMMs with int32
//    accumulation on the forward codes. A tiled operand has one scale per K tile, so the gradient
//    is scale-shifted and quantized once per tile and each tile's codes multiplied in integers; a
//    zero point is subtracted as a second integer product (Qwix instead falls back to float for
//    tiled residuals). Only a residual that is not integer-quantized (no act_qtype; fp8, nf4)
//    makes its backward product run in float, on its dequantized value.
// A product of two activations (einsum: q·kᵀ, probs·v) fake-quantizes both operands with the
// rule's act settings and runs the same backward per group.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <optional>

#include "qforge/providers/ptq.hpp"

namespace qforge::providers {

class QtProvider {
 public:
  explicit QtProvider(std::vector<rules::QtRule> rules, std::uint64_t seed = 0) : rules_(std::move(rules)), seed_(seed) {}
  const std::vector<rules::QtRule>& rules() const { return rules_; }
  std::uint64_t seed() const { return seed_; }  // stochastic rounding of gradients

 private:
  std::vector<rules::QtRule> rules_;
  std::uint64_t seed_;
};

namespace detail {

// 1 where the element lies inside its cell's calibrated range, 0 outside; all ones when the
// method cannot clip (absmax/minmax without a factor below 1).
inline TensorF gradient_mask(const TensorF& x, const HowToQuantize& how, const QArray& q) {
  TensorF mask(x.shape(), 1.0f);
  const CalibrationMethod m = parse_calibration_method(how.calibration_method);
  const bool clips = !((m.kind == CalibrationKind::kAbsMax || m.kind == CalibrationKind::kMinMax) && m.factor >= 1.0);
  if (!clips) return mask;
  const float* s = q.scale().data();
  const std::int32_t* zp = q.zero_point() ? q.zero_point()->data() : nullptr;
  const auto& qi = info(q.qtype());
  q.layout().for_each([&](std::int64_t e, std::int64_t c) {
    // The calibrated range as it lands on the grid: [-B, B]·scale for a symmetric cell,
    // [qmin - zp, qmax - zp]·scale for an asymmetric one.
    const double z = zp ? zp[c] : 0;
    const double lo = zp ? (qi.qmin - z) * s[c] : -qi.symmetric_bound * s[c];
    const double hi = zp ? (qi.qmax - z) * s[c] : qi.symmetric_bound * s[c];
    const double tol = 1e-6 * std::max(std::fabs(lo), std::fabs(hi));
    if (x[e] > hi + tol || x[e] < lo - tol) mask[e] = 0.0f;
  });
  return mask;
}

inline TensorF transpose2(const TensorF& x) {
  const std::int64_t R = x.shape()[0], C = x.shape()[1];
  TensorF t({C, R});
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < C; ++c) t.at(c, r) = x.at(r, c);
  return t;
}

// The codes of a per-row-scaled 2-D QArray, transposed, as a QArray with unit scale: the
// integer operand of a backward product.
inline QArray transposed_codes(const QArray& q) {
  const std::int64_t R = q.shape()[0], C = q.shape()[1];
  QArray t(q.qtype(), {C, R}, TensorF({1, 1}, {1.0f}));
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < C; ++c) t.set_code(c * R + r, q.code(r * C + c));
  return t;
}

// g [M, N] with column n multiplied by s[n] (or row m by s[m]).
inline TensorF scale_columns(TensorF g, const TensorF& s) {
  const std::int64_t M = g.shape()[0], N = g.shape()[1];
  for (std::int64_t m = 0; m < M; ++m)
    for (std::int64_t n = 0; n < N; ++n) g.at(m, n) *= s[s.size() == 1 ? 0 : n];
  return g;
}

// One operand of a QAT/QT product, [R, K], as its backward pass needs it.
struct Residual {
  TensorF fp;                       // the float operand: QAT's straight-through residual
  std::shared_ptr<const QArray> q;  // its forward quantization (scale [R or 1, T]); null: not quantized
  TensorF mask;                     // Qwix's gradient mask: 0 where the operand was clipped
  TensorF fake() const { return q ? dequantize(*q) : fp; }
};

struct BackwardSettings {
  std::optional<QType> bwd;  // unset: QAT
  bool stochastic = false;
  std::string name;          // names the gradient in errors
};

// out[P, K] = G[P, R] · Y[R, K], one backward product with the residual Y:
//  - QAT: with Y's float value (the straight-through estimator);
//  - QT, Y integer-quantized: Y = (q − z)[r, k]·s[r, j] for k in K tile j (s, z: [R or 1, T]), so
//    out[:, tile j] = (G ⊙ s[:, j]) · (q − z)[:, tile j]. The scale is folded into G's columns,
//    the result quantized per row (bwd_qtype, absmax; seeded stochastic rounding optional) once
//    per tile, and multiplied with that tile's codes in integers through the backend; a zero
//    point is the integer product of the quantized gradient with the zero points, subtracted;
//  - QT otherwise (Y not quantized, or codes that are not integers): float, with Y's fake value.
inline TensorF backward_product(const TensorF& G, const Residual& y, const BackwardSettings& b, std::uint64_t seed) {
  if (!b.bwd) return float_matmul_nt(G, transpose2(y.fp));
  if (!y.q || !is_integer(y.q->qtype())) return float_matmul_nt(G, transpose2(y.fake()));
  const QArray& q = *y.q;
  const std::int64_t P = G.shape()[0], R = q.shape()[0], K = q.shape()[1];
  const std::int64_t T = q.scale().shape()[1], tile = K / T;
  const bool per_row = q.scale().shape()[0] == R;
  const HowToQuantize gh{*b.bwd, {0}, {}, "absmax"};
  QuantizeOptions gopts;
  gopts.name = b.name;
  const TensorF unit({1, 1}, {1.0f});
  TensorF out({P, K});
  for (std::int64_t j = 0; j < T; ++j) {
    TensorF gj = G;
    for (std::int64_t p = 0; p < P; ++p)
      for (std::int64_t r = 0; r < R; ++r) gj.at(p, r) *= q.scale().at(per_row ? r : 0, j);
    if (b.stochastic) gopts.stochastic_seed = seed + 2 * static_cast<std::uint64_t>(j);
    const QArray qg = quantize(gj, gh, gopts);
    QArray codes(q.qtype(), {tile, R}, unit);
    for (std::int64_t r = 0; r < R; ++r)
      for (std::int64_t c = 0; c < tile; ++c) codes.set_code(c * R + r, q.code(r * K + j * tile + c));
    TensorF part = integer_product(qg, codes);  // [P, tile]
    if (q.zero_point()) {
      QArray zp(q.qtype(), {1, R}, unit);
      for (std::int64_t r = 0; r < R; ++r) zp.set_code(r, q.zero_point()->at(per_row ? r : 0, j));
      const TensorF correction = integer_product(qg, zp);  // [P, 1]
      for (std::int64_t p = 0; p < P; ++p)
        for (std::int64_t c = 0; c < tile; ++c) part.at(p, c) -= correction.at(p, 0);
    }
    for (std::int64_t p = 0; p < P; ++p) std::copy_n(&part.at(p, 0), tile, &out.at(p, j * tile));
  }
  return out;
}

// Both gradients of y = lhs · rhsᵀ (lhs [M, K], rhs [N, K]) from g [M, N], masked.
inline std::pair<TensorF, TensorF> product_backward(const TensorF& g, const Residual& lhs, const Residual& rhs,
                                                    const BackwardSettings& b, std::uint64_t seed) {
  TensorF dl = backward_product(g, rhs, b, seed);
  TensorF dr = backward_product(transpose2(g), lhs, b, seed + 1);
  for (std::int64_t i = 0; i < dl.size(); ++i) dl[i] *= lhs.mask[i];
  for (std::int64_t i = 0; i < dr.size(); ++i) dr[i] *= rhs.mask[i];
  return {std::move(dl), std::move(dr)};
}

struct QtSiteState {
  SiteInfo info;
  ActivationStats stats;  // static-range activations
  std::uint64_t rounding_draws = 0;
  std::array<ActivationStats, 2> operand_stats;  // static-range operands of a product of two activations
};

class QtInterceptor : public nn::Interceptor {
 public:
  QtInterceptor(std::map<std::string, QtSiteState> sites, std::uint64_t seed) : sites_(std::move(sites)), seed_(seed) {}

  std::optional<nn::Var> intercept(nn::Context& ctx, const nn::SiteCall& call) override {
    const auto it = sites_.find(call.site.id());
    if (it == sites_.end() || !it->second.info.config.weight_qtype) return std::nullopt;
    QtSiteState& st = it->second;
    if (!call.weight) {  // a product of two activations: nothing to quantize without act_qtype
      if (!st.info.config.act_qtype || call.lhs.rank() != 3 || call.rhs.rank() != 3) return std::nullopt;
      check_finite(call.lhs.value(), st.info, "the lhs activation");
      check_finite(call.rhs.value(), st.info, "the rhs activation");
      return at_site(st.info, [&] { return activation_product(ctx, call, st); });
    }
    if (call.lhs.rank() != 2) return std::nullopt;
    const TensorF x = rows_view(call.lhs), w = rows_view(call.rhs);
    check_finite(x, st.info, "the input activation");
    check_finite(w, st.info, "the weight");
    return at_site(st.info, [&] { return quantized_product(ctx, call, st, x, w); });
  }

  const std::map<std::string, QtSiteState>& sites() const { return sites_; }

 private:
  BackwardSettings backward_settings(const SiteInfo& info) const {
    return {info.config.bwd_qtype, info.config.bwd_stochastic_rounding, info.site.id() + " gradient"};
  }
  std::uint64_t next_seed(QtSiteState& st, const nn::SiteCall& call) {
    return seed_ + 7919 * (st.rounding_draws++) + std::hash<std::string>{}(call.site.id());
  }

  nn::Var quantized_product(nn::Context& ctx, const nn::SiteCall& call, QtSiteState& st, const TensorF& x, const TensorF& w) {
    const rules::SiteConfig& c = st.info.config;
    QuantizeOptions wopts;
    wopts.name = st.info.weight_name.empty() ? call.site.id() : st.info.weight_name;
    const HowToQuantize wh = weight_how(c, w.shape());
    auto qw = std::make_shared<const QArray>(quantize(w, wh, wopts));
    auto rw = std::make_shared<Residual>(Residual{w, qw, gradient_mask(w, wh, *qw)});
    auto rx = std::make_shared<Residual>(Residual{x, nullptr, TensorF(x.shape(), 1.0f)});
    if (c.act_qtype) {
      HowToQuantize xh = act_how(c, x.shape(), call.rows_per_scale_group);
      QuantizeOptions xopts;
      xopts.name = call.site.id();
      std::shared_ptr<const QArray> qx;
      if (c.act_static_scale) {
        if (ctx.training() || st.stats.hi.count() == 0)
          record_range(st.stats, batch_range(x, xh, call.site.id()), xh.calibration_method, call.site.id());
        xh = PtqInterceptor::static_how(xh);
        qx = std::make_shared<const QArray>(quantize_with_scale(x, xh, frozen_scale(st.stats, *c.act_qtype), xopts));
      } else {
        qx = std::make_shared<const QArray>(expand_row_groups(quantize(x, xh, xopts), call.rows_per_scale_group));
      }
      rx->q = qx;
      rx->mask = gradient_mask(x, xh, *qx);
    }
    TensorF y = float_matmul_nt(rx->fake(), rw->fake());
    const BackwardSettings settings = backward_settings(st.info);
    const std::uint64_t seed = next_seed(st, call);
    const SiteInfo info = st.info;
    // QAT's residuals are the float operands (STE); QT's are the forward codes.
    return nn::make_result(std::move(y), {call.lhs, call.rhs}, [rx, rw, settings, seed, info](nn::Node& self) {
      nn::Node& A = *self.inputs[0];
      nn::Node& B = *self.inputs[1];
      check_finite(self.grad, info, "the incoming gradient");
      auto [dx, dw] = at_site(info, [&] { return product_backward(self.grad, *rx, *rw, settings, seed); });
      if (A.requires_grad) A.accumulate(TensorF(A.value.shape(), std::move(dx.vec())));
      if (B.requires_grad) B.accumulate(TensorF(B.value.shape(), std::move(dw.vec())));
    });
  }

  // lhs [G, M, K] · rhs [G, N, K]ᵀ with both operands fake-quantized per group (act settings,
  // per row, tiled on K, or with static scales that update while training).
  nn::Var activation_product(nn::Context& ctx, const nn::SiteCall& call, QtSiteState& st) {
    const rules::SiteConfig& c = st.info.config;
    const TensorF& a = call.lhs.value();
    const TensorF& b = call.rhs.value();
    const std::int64_t G = a.shape()[0], M = a.shape()[1], N = b.shape()[1], K = a.shape()[2];
    if (b.shape()[0] != G || b.shape()[2] != K)
      throw_error(Status::kShapeMismatch, "operands {} and {} do not fit [G, M, K] · [G, N, K]ᵀ", shape_str(a.shape()),
                  shape_str(b.shape()));
    const std::string keys[2] = {operand_key(call.site.id(), 0), operand_key(call.site.id(), 1)};
    std::optional<ScaleAndZeroPoint> frozen[2];
    if (c.act_static_scale)
      for (std::size_t w = 0; w < 2; ++w) {
        if (ctx.training() || st.operand_stats[w].hi.count() == 0)
          record_range(st.operand_stats[w], operand_range(w ? b : a, c, keys[w]), c.act_calibration_method, keys[w]);
        frozen[w] = frozen_scale(st.operand_stats[w], *c.act_qtype);
      }
    auto residuals = std::make_shared<std::vector<std::array<Residual, 2>>>(static_cast<std::size_t>(G));
    TensorF y({G, M, N});
    for (std::int64_t g = 0; g < G; ++g) {
      auto& res = (*residuals)[static_cast<std::size_t>(g)];
      for (std::size_t w = 0; w < 2; ++w) {
        const TensorF slice = group_slice(w ? b : a, g);
        const std::optional<ScaleAndZeroPoint> fz = frozen[w] ? std::optional(group_scale(*frozen[w], g, G, keys[w])) : std::nullopt;
        auto q = std::make_shared<const QArray>(quantize_operand(slice, c, fz ? &*fz : nullptr, keys[w]));
        res[w] = Residual{slice, q, gradient_mask(slice, act_how(c, slice.shape(), 1), *q)};
      }
      const TensorF yg = float_matmul_nt(res[0].fake(), res[1].fake());
      std::copy(yg.data(), yg.data() + yg.size(), y.data() + g * M * N);
    }
    const BackwardSettings settings = backward_settings(st.info);
    const std::uint64_t seed = next_seed(st, call);
    const SiteInfo info = st.info;
    return nn::make_result(std::move(y), {call.lhs, call.rhs}, [residuals, settings, seed, info, G, M, N, K](nn::Node& self) {
      nn::Node& A = *self.inputs[0];
      nn::Node& B = *self.inputs[1];
      check_finite(self.grad, info, "the incoming gradient");
      TensorF ga({G, M, K}), gb({G, N, K});
      at_site(info, [&] {
        for (std::int64_t g = 0; g < G; ++g) {
          const TensorF gg({M, N}, std::vector<float>(self.grad.data() + g * M * N, self.grad.data() + (g + 1) * M * N));
          const auto& res = (*residuals)[static_cast<std::size_t>(g)];
          const auto [dl, dr] = product_backward(gg, res[0], res[1], settings, seed + 1000003 * static_cast<std::uint64_t>(g));
          std::copy(dl.data(), dl.data() + dl.size(), ga.data() + g * M * K);
          std::copy(dr.data(), dr.data() + dr.size(), gb.data() + g * N * K);
        }
      });
      if (A.requires_grad) A.accumulate(ga);
      if (B.requires_grad) B.accumulate(gb);
    });
  }

  std::map<std::string, QtSiteState> sites_;
  std::uint64_t seed_;
};

}  // namespace detail

// Installs QAT/QT on every matched site. `sample` finds the sites (one forward pass).
inline rules::QuantizationReport quantize_model(nn::Module& model, const QtProvider& provider, const Batches& sample) {
  if (sample.empty()) throw_error(Status::kInvalidArgument, "quantize_model: needs a sample batch to find the op sites");
  std::vector<SiteInfo> sites = discover_sites(model, sample.front());
  const std::vector<int> unused = resolve_rules(sites, provider.rules());
  std::map<std::string, detail::QtSiteState> state;
  rules::QuantizationReport report;
  report.provider = "qt";
  for (const auto& s : sites) {
    std::optional<QArray> q;
    check_site_layout(s);
    if (s.config.weight_qtype && s.weight) {
      QuantizeOptions opts;
      opts.name = s.weight_name;
      q = at_site(s, [&] { return quantize(TensorF(s.rhs_shape, s.weight->var.value().vec()), weight_how(s.config, s.rhs_shape), opts); });
    }
    const bool quantized = s.config.weight_qtype && (s.weight || s.config.act_qtype);
    report.sites.push_back(site_report(s, q ? &*q : nullptr, !quantized ? "float" : s.config.bwd_qtype ? "qt" : "qat"));
    if (!s.weight && quantized)
      report.sites.back().note = activation_product_note(s, detail::operand_scale_shape(s, s.lhs_shape),
                                                         detail::operand_scale_shape(s, s.rhs_shape));
    else if (!s.weight && s.config.weight_qtype)
      report.sites.back().note = kUnquantizedActivationProductNote;
    state.emplace(s.site.id(), detail::QtSiteState{s, {}, 0, {}});
  }
  report.unused_rules = unused;
  model.install_interceptor(std::make_shared<detail::QtInterceptor>(std::move(state), provider.seed()));
  return report;
}

}  // namespace qforge::providers
