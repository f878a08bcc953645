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
//    accumulation on the forward codes. Tiled operands fall back to the float STE product of the
//    fake-quantized values, as Qwix's tiled residuals do.
#pragma once

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

struct QtSiteState {
  SiteInfo info;
  ActivationStats stats;  // static-range activations
  std::uint64_t rounding_draws = 0;
};

class QtInterceptor : public nn::Interceptor {
 public:
  QtInterceptor(std::map<std::string, QtSiteState> sites, std::uint64_t seed) : sites_(std::move(sites)), seed_(seed) {}

  std::optional<nn::Var> intercept(nn::Context& ctx, const nn::SiteCall& call) override {
    const auto it = sites_.find(call.site.id());
    if (it == sites_.end() || !it->second.info.config.weight_qtype || call.lhs.rank() != 2) return std::nullopt;
    QtSiteState& st = it->second;
    const TensorF x = rows_view(call.lhs), w = rows_view(call.rhs);
    check_finite(x, st.info, "the input activation");
    check_finite(w, st.info, "the weight");
    return at_site(st.info, [&] { return quantized_product(ctx, call, st, x, w); });
  }

  const std::map<std::string, QtSiteState>& sites() const { return sites_; }

 private:
  nn::Var quantized_product(nn::Context& ctx, const nn::SiteCall& call, QtSiteState& st, const TensorF& x, const TensorF& w) {
    const rules::SiteConfig& c = st.info.config;
    QuantizeOptions wopts;
    wopts.name = st.info.weight_name.empty() ? call.site.id() : st.info.weight_name;
    const HowToQuantize wh = weight_how(c, w.shape());
    auto qw = std::make_shared<QArray>(quantize(w, wh, wopts));
    std::shared_ptr<QArray> qx;
    HowToQuantize xh;
    if (c.act_qtype) {
      xh = act_how(c, x.shape(), call.rows_per_scale_group);
      QuantizeOptions xopts;
      xopts.name = call.site.id();
      if (c.act_static_scale) {
        if (ctx.training() || st.stats.hi.count() == 0) {
          auto [hi, lo] = batch_range(x, xh, call.site.id());
          st.stats.symmetric = parse_calibration_method(xh.calibration_method).symmetric();
          st.stats.hi.update(hi, call.site.id());
          st.stats.lo.update(lo, call.site.id());
        }
        CalibratedRange range{st.stats.lo.value(), st.stats.hi.value(), st.stats.symmetric};
        if (range.symmetric)
          for (std::int64_t i = 0; i < range.hi.size(); ++i) range.lo[i] = -range.hi[i];
        xh = PtqInterceptor::static_how(xh);
        qx = std::make_shared<QArray>(quantize_with_scale(x, xh, compute_scale(range, *c.act_qtype), xopts));
      } else {
        qx = std::make_shared<QArray>(expand_row_groups(quantize(x, xh, xopts), call.rows_per_scale_group));
      }
    }
    const TensorF wq = dequantize(*qw);
    const TensorF xq = qx ? dequantize(*qx) : x;
    TensorF y = float_matmul_nt(xq, wq);
    auto mask_x = std::make_shared<TensorF>(qx ? gradient_mask(x, xh, *qx) : TensorF(x.shape(), 1.0f));
    auto mask_w = std::make_shared<TensorF>(gradient_mask(w, wh, *qw));
    const bool integer_bwd = c.bwd_qtype && qx && qw->scale().shape()[1] == 1 && qx->scale().shape()[1] == 1 &&
                             !qw->zero_point() && !qx->zero_point() && is_integer(qw->qtype()) && is_integer(qx->qtype());
    const std::optional<QType> bwd = c.bwd_qtype;
    const bool stochastic = c.bwd_stochastic_rounding;
    const std::uint64_t seed = seed_ + 7919 * (st.rounding_draws++) + std::hash<std::string>{}(call.site.id());
    const SiteInfo info = st.info;
    // QAT residuals are the float operands (STE); QT's are the forward codes.
    return nn::make_result(std::move(y), {call.lhs, call.rhs},
                           [x, w, xq, wq, qx, qw, mask_x, mask_w, integer_bwd, bwd, stochastic, seed, info](nn::Node& self) {
      nn::Node& A = *self.inputs[0];
      nn::Node& B = *self.inputs[1];
      const TensorF& g = self.grad;
      check_finite(g, info, "the incoming gradient");
      TensorF dx, dw;
      if (integer_bwd) {
        const std::string gradient_name = info.site.id() + " gradient";
        QuantizeOptions gopts;
        gopts.name = gradient_name;
        if (stochastic) gopts.stochastic_seed = seed;
        const HowToQuantize gh{*bwd, {0}, {}, "absmax"};
        // dx = g · W: fold W's per-row (per output) scale into g's columns, quantize g per row.
        const QArray g1 = quantize(scale_columns(g, qw->scale()), gh, gopts);
        dx = integer_product(g1, transposed_codes(*qw));
        // dW = gᵀ · x: fold x's per-row scale into g's rows, quantize gᵀ per row.
        const TensorF gt = scale_columns(transpose2(g), qx->scale());
        if (stochastic) gopts.stochastic_seed = seed + 1;
        const QArray g2 = quantize(gt, gh, gopts);
        dw = integer_product(g2, transposed_codes(*qx));
      } else {
        const bool qat = !bwd;
        dx = float_matmul_nt(g, transpose2(qat ? w : wq));
        dw = float_matmul_nt(transpose2(g), transpose2(qat ? x : xq));
      }
      for (std::int64_t i = 0; i < dx.size(); ++i) dx[i] *= (*mask_x)[i];
      for (std::int64_t i = 0; i < dw.size(); ++i) dw[i] *= (*mask_w)[i];
      if (A.requires_grad) A.accumulate(TensorF(A.value.shape(), std::move(dx.vec())));
      if (B.requires_grad) B.accumulate(TensorF(B.value.shape(), std::move(dw.vec())));
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
    if (s.config.weight_qtype && s.weight) {
      QuantizeOptions opts;
      opts.name = s.weight_name;
      q = at_site(s, [&] { return quantize(TensorF(s.rhs_shape, s.weight->var.value().vec()), weight_how(s.config, s.rhs_shape), opts); });
    }
    report.sites.push_back(site_report(s, q ? &*q : nullptr, !s.config.weight_qtype ? "float" : s.config.bwd_qtype ? "qt" : "qat"));
    state.emplace(s.site.id(), detail::QtSiteState{s, {}, 0});
  }
  report.unused_rules = unused;
  model.install_interceptor(std::make_shared<detail::QtInterceptor>(std::move(state), provider.seed()));
  return report;
}

}  // namespace qforge::providers
