// Post-training quantization of a model graph (Qwix PtqProvider).
//
//   std::vector<rules::QuantizationRule> rules(1);
//   rules[0].module_path = "layers\\.[0-9]+";
//   rules[0].weight_qtype = QType::kInt8;
//   rules[0].act_qtype = QType::kInt8;                    // unset: weight-only
//   rules[0].act_static_scale = true;                     // static range: needs calibration batches
//   auto report = providers::quantize_model(model, providers::PtqProvider(rules), calibration_batches);
//   nn::Var logits = model(nn::Var(x));                   // the model's own code, now quantized
//
// Weight-only sites multiply the dequantized weight in float. Dynamic-range sites quantize the
// activation per row (per image for a convolution) on the fly; static-range sites use scales
// frozen from a calibration pass (Qwix's cumulative mean of per-batch absmax, or of min and
// max). Both then multiply in integers through the backend (QuantizedMatmulOp). A product of two
// activations (an einsum site: attention's q·kᵀ and probs·v) quantizes both operands with the
// rule's act_qtype, per row and tiled on K as Qwix's einsum does, dynamically or with frozen
// static scales, and multiplies them in integers too. A site whose rule leaves weight_qtype unset
// runs in float. Nothing in the model changes until every site has been prepared, so an error
// leaves the model as it was.
#pragma once

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "qforge/backend/registry.hpp"
#include "qforge/core/stats.hpp"
#include "qforge/providers/sites.hpp"

namespace qforge::providers {

class PtqProvider {
 public:
  explicit PtqProvider(std::vector<rules::QuantizationRule> rules) : rules_(std::move(rules)) {}
  const std::vector<rules::QuantizationRule>& rules() const { return rules_; }

 private:
  std::vector<rules::QuantizationRule> rules_;
};

// Static-range statistics per site id: the cumulative mean over batches of the per-batch mean
// (over act_batch_axes) of each row's range, one value per K tile: shape [1, T]. A product of two
// activations has one entry per operand, "<site id>_lhs" and "<site id>_rhs" (Qwix's names), of
// shape [G', X', T]: its operand [G, X, K] averaged over act_batch_axes (G' = 1 when axis 0 is
// one of them, X' = 1 when axis 1 is).
struct ActivationStats {
  RunningMean hi;  // absmax, or max for an asymmetric method
  RunningMean lo;  // min for an asymmetric method (unused for symmetric ones)
  bool symmetric = true;
};
using CalibrationStats = std::map<std::string, ActivationStats>;

// The quantized parameters of a model: what quantize_params produces offline and what a
// quantized model runs on. Keys: weight parameter paths and site ids.
struct QuantizedParams {
  std::map<std::string, QArray> weights;                 // "layers.0.weight" -> QArray over [N, K]
  std::map<std::string, ScaleAndZeroPoint> act_scales;   // site id -> frozen activation scale [1, T]
                                                         // (operand key -> [G', X', T] for einsum sites)
};

namespace detail {

inline TensorF rows_view(const nn::Var& v) {
  const Shape& s = v.shape();
  return TensorF(s, v.value().vec());
}

// One row of statistics from a batch: per-row (per-group) calibration, then the mean over the
// batch axis, as Qwix averages over act_batch_axes.
inline std::pair<TensorF, TensorF> batch_range(const TensorF& lhs, const HowToQuantize& how, std::string_view site) {
  const QuantLayout layout(lhs.shape(), how, site);
  const CalibrationMethod m = parse_calibration_method(how.calibration_method);
  const CalibratedRange r = calibrate(lhs.data(), layout, m, how.qtype, site);
  const std::int64_t rows = r.hi.shape()[0], tiles = r.hi.shape()[1];
  TensorF hi({1, tiles}), lo({1, tiles});
  for (std::int64_t t = 0; t < tiles; ++t) {
    double sh = 0, sl = 0;
    for (std::int64_t i = 0; i < rows; ++i) {
      sh += r.hi.at(i, t);
      sl += r.lo.at(i, t);
    }
    hi[t] = static_cast<float>(sh / static_cast<double>(rows));
    lo[t] = static_cast<float>(sl / static_cast<double>(rows));
  }
  return {hi, lo};
}

// A [M/g, T] per-group scale repeated to [M, T], so the integer product sees one scale per row.
inline QArray expand_row_groups(const QArray& q, std::int64_t rows_per_group) {
  if (rows_per_group <= 1 || q.scale().shape()[0] == q.shape()[0]) return q;
  const std::int64_t M = q.shape()[0], T = q.scale().shape()[1];
  TensorF scale({M, T});
  std::optional<Tensor<std::int32_t>> zp;
  if (q.zero_point()) zp = Tensor<std::int32_t>({M, T});
  for (std::int64_t m = 0; m < M; ++m)
    for (std::int64_t t = 0; t < T; ++t) {
      scale.at(m, t) = q.scale().at(m / rows_per_group, t);
      if (zp) zp->at(m, t) = q.zero_point()->at(m / rows_per_group, t);
    }
  QArray out(q.qtype(), q.shape(), std::move(scale), std::move(zp), q.how());
  std::copy(q.storage().begin(), q.storage().end(), out.storage().begin());
  return out;
}

// ---- products of two activations (einsum sites: lhs [G, M, K], rhs [G, N, K]) ---------------
// Both operands are activations, quantized with the rule's act_qtype and act_calibration_method,
// channelwise on their non-contracting axes (G and the row) and tiled on K (Qwix's einsum
// default), so group g is an ordinary [M, K] · [N, K]ᵀ product of per-row-scaled operands.

// The statistics / frozen-scale key of operand `which` (0 lhs, 1 rhs) of an einsum site.
inline std::string operand_key(const std::string& site_id, int which) { return site_id + (which ? "_rhs" : "_lhs"); }

// Group g of a [G, X, K] tensor as a [X, K] matrix.
inline TensorF group_slice(const TensorF& t, std::int64_t g) {
  const std::int64_t X = t.shape()[1], K = t.shape()[2];
  return TensorF({X, K}, std::vector<float>(t.data() + g * X * K, t.data() + (g + 1) * X * K));
}

// A per-batch range of one operand [G, X, K]: each row's K tiles calibrated, then averaged over
// act_batch_axes (0 and/or 1; the contracting axis 2 is refused by check_site_layout).
inline std::pair<TensorF, TensorF> operand_range(const TensorF& op, const rules::SiteConfig& c, std::string_view name) {
  const HowToQuantize how = act_how(c, op.shape(), 1);
  const QuantLayout layout(op.shape(), how, name);
  const CalibratedRange r = calibrate(op.data(), layout, parse_calibration_method(how.calibration_method), how.qtype, name);
  const Shape& in = r.hi.shape();  // [G, X, T]
  const auto averaged = [&](int axis) { return std::find(c.act_batch_axes.begin(), c.act_batch_axes.end(), axis) != c.act_batch_axes.end(); };
  const Shape out_shape{averaged(0) ? 1 : in[0], averaged(1) ? 1 : in[1], in[2]};
  TensorF hi(out_shape), lo(out_shape);
  const double n = static_cast<double>(numel(in) / numel(out_shape));
  std::vector<double> sh(static_cast<std::size_t>(hi.size())), sl(sh.size());
  for (std::int64_t g = 0; g < in[0]; ++g)
    for (std::int64_t x = 0; x < in[1]; ++x)
      for (std::int64_t t = 0; t < in[2]; ++t) {
        const std::int64_t src = (g * in[1] + x) * in[2] + t;
        const auto dst = static_cast<std::size_t>(((out_shape[0] == 1 ? 0 : g) * out_shape[1] + (out_shape[1] == 1 ? 0 : x)) * in[2] + t);
        sh[dst] += r.hi[src];
        sl[dst] += r.lo[src];
      }
  for (std::int64_t i = 0; i < hi.size(); ++i) {
    hi[i] = static_cast<float>(sh[static_cast<std::size_t>(i)] / n);
    lo[i] = static_cast<float>(sl[static_cast<std::size_t>(i)] / n);
  }
  return {hi, lo};
}

// Adds one batch's range to static statistics (Qwix's cumulative mean).
inline void record_range(ActivationStats& st, const std::pair<TensorF, TensorF>& range, std::string_view method, std::string_view name) {
  st.symmetric = parse_calibration_method(method).symmetric();
  st.hi.update(range.first, name);
  st.lo.update(range.second, name);
}

// The frozen scale (and zero point) the statistics give.
inline ScaleAndZeroPoint frozen_scale(const ActivationStats& st, QType qtype) {
  CalibratedRange range{st.lo.value(), st.hi.value(), st.symmetric};
  if (range.symmetric)
    for (std::int64_t i = 0; i < range.hi.size(); ++i) range.lo[i] = -range.hi[i];
  return compute_scale(range, qtype);
}

// Group g (of G) of a frozen operand scale [G', X', T] (G' = 1 or G) as [X', T].
inline ScaleAndZeroPoint group_scale(const ScaleAndZeroPoint& s, std::int64_t g, std::int64_t G, std::string_view name) {
  const Shape& sh = s.scale.shape();
  if (sh[0] != 1 && sh[0] != G)
    throw_error(Status::kShapeMismatch, "{}: the frozen scale {} has {} groups, the input {}", name, shape_str(sh), sh[0], G);
  const std::int64_t gg = sh[0] == 1 ? 0 : g, n = sh[1] * sh[2];
  ScaleAndZeroPoint out{TensorF({sh[1], sh[2]}, std::vector<float>(s.scale.data() + gg * n, s.scale.data() + (gg + 1) * n)),
                        std::nullopt};
  if (s.zero_point) {
    out.zero_point = Tensor<std::int32_t>({sh[1], sh[2]});
    std::copy_n(s.zero_point->data() + gg * n, n, out.zero_point->data());
  }
  return out;
}

// The scale shape of an einsum operand (shape [G, X, K]) under the site's rule: [G, X, T] per
// row, or [G', X', T] frozen (averaged over act_batch_axes).
inline Shape operand_scale_shape(const SiteInfo& s, const Shape& op) {
  Shape shape = QuantLayout(op, act_how(s.config, op, 1)).scale_shape();
  if (s.config.act_static_scale)
    for (int axis : s.config.act_batch_axes)
      if (axis < 2) shape[static_cast<std::size_t>(axis)] = 1;
  return shape;
}

// One operand slice [X, K] of a product of two activations, quantized per row (tiled on K), or
// with a frozen scale [X' (1 or X), T].
inline QArray quantize_operand(const TensorF& slice, const rules::SiteConfig& c, const ScaleAndZeroPoint* frozen,
                               std::string_view name) {
  HowToQuantize how = act_how(c, slice.shape(), 1);
  QuantizeOptions opts;
  opts.name = name;
  if (!frozen) return quantize(slice, how, opts);
  if (frozen->scale.shape()[0] == 1) {
    how.channelwise_axes.clear();
    how.tiled_axes.erase(0);
  }
  return quantize_with_scale(slice, how, *frozen, opts);
}

inline TensorF float_matmul_nt(const TensorF& a, const TensorF& b) {
  const std::int64_t M = a.shape()[0], K = a.shape()[1], N = b.shape()[0];
  TensorF d({M, N});
  backend::run(backend::GemmF32Op{M, N, K, a.data(), K, b.data(), K, d.data(), N});
  return d;
}

inline TensorF integer_product(const QArray& a, const QArray& b) {
  TensorF d({a.shape()[0], b.shape()[0]});
  backend::run(backend::QuantizedMatmulOp{&a, &b, d.data()});
  return d;
}

// A PTQ product of two activations must be integer x integer with at most one zero point.
inline void check_activation_product(const SiteInfo& s) {
  if (s.weight || !s.config.weight_qtype || !s.config.act_qtype) return;
  if (!parse_calibration_method(s.config.act_calibration_method).symmetric())
    throw_error(Status::kUnsupported,
                "{}: act_calibration_method '{}' is asymmetric, which would give both operands of this product of two "
                "activations a zero point; the integer product allows one (Qwix: \"only one operand can be "
                "asymmetric\"); use a symmetric method such as absmax",
                site_label(s), s.config.act_calibration_method);
  if (!is_integer(*s.config.act_qtype))
    throw_error(Status::kUnsupported, "{}: act_qtype {} is not an integer type; a product of two activations runs in integers",
                site_label(s), to_string(*s.config.act_qtype));
}

// The site's prepared state in a quantized model.
struct PreparedSite {
  SiteInfo info;
  std::optional<QArray> weight;             // over the [N, K] view
  std::optional<ScaleAndZeroPoint> act_scale;  // static range only
  std::string mode;
  bool activation_product = false;                         // an einsum site with both operands quantized
  std::array<std::optional<ScaleAndZeroPoint>, 2> operand_scales;  // its frozen [G', X', T] scales (static range)
};

// y[G, M, N] = dq(lhs) · dq(rhs)ᵀ per group, each operand quantized per row (or with its frozen
// scale) and every group multiplied in integers through the backend.
inline TensorF activation_product(const PreparedSite& p, const nn::SiteCall& call) {
  const TensorF& a = call.lhs.value();
  const TensorF& b = call.rhs.value();
  if (a.shape().size() != 3 || b.shape().size() != 3)
    throw_error(Status::kShapeMismatch, "a product of two activations needs [G, M, K] and [G, N, K] operands, got {} and {}",
                shape_str(a.shape()), shape_str(b.shape()));
  const std::int64_t G = a.shape()[0], M = a.shape()[1], N = b.shape()[1];
  const std::string keys[2] = {operand_key(p.info.site.id(), 0), operand_key(p.info.site.id(), 1)};
  TensorF y({G, M, N});
  for (std::int64_t g = 0; g < G; ++g) {
    QArray q[2];
    for (int w = 0; w < 2; ++w) {
      const auto& scale = p.operand_scales[static_cast<std::size_t>(w)];
      const std::optional<ScaleAndZeroPoint> frozen = scale ? std::optional(group_scale(*scale, g, G, keys[w])) : std::nullopt;
      q[w] = quantize_operand(group_slice(w ? b : a, g), p.info.config, frozen ? &*frozen : nullptr, keys[w]);
    }
    const TensorF yg = integer_product(q[0], q[1]);
    std::copy(yg.data(), yg.data() + yg.size(), y.data() + g * M * N);
  }
  return y;
}

class PtqInterceptor : public nn::Interceptor {
 public:
  PtqInterceptor(std::map<std::string, PreparedSite> sites, std::vector<SiteInfo> order)
      : sites_(std::move(sites)), order_(std::move(order)) {}

  std::optional<nn::Var> intercept(nn::Context&, const nn::SiteCall& call) override {
    const auto it = sites_.find(call.site.id());
    if (it == sites_.end()) return std::nullopt;
    const PreparedSite& p = it->second;
    if (p.activation_product) return nn::Var(at_site(p.info, [&] { return activation_product(p, call); }));
    if (!p.weight || !call.weight || call.lhs.rank() != 2) return std::nullopt;
    const TensorF lhs = rows_view(call.lhs);
    if (!p.info.config.act_qtype) return nn::Var(float_matmul_nt(lhs, dequantize(*p.weight)));
    const HowToQuantize how = act_how(p.info.config, lhs.shape(), call.rows_per_scale_group);
    QuantizeOptions opts;
    opts.name = p.info.site.id();
    QArray qa = p.act_scale ? quantize_with_scale(lhs, static_how(how), *p.act_scale, opts) : quantize(lhs, how, opts);
    qa = expand_row_groups(qa, p.act_scale ? 1 : call.rows_per_scale_group);
    return nn::Var(integer_product(qa, *p.weight));
  }

  const std::map<std::string, PreparedSite>& sites() const { return sites_; }
  // The resolved sites in execution order (what quantize_params needs to re-quantize offline).
  const std::vector<SiteInfo>& site_order() const { return order_; }

  // The per-tensor-over-rows layout a frozen scale [1, T] implies.
  static HowToQuantize static_how(HowToQuantize how) {
    how.channelwise_axes.clear();
    how.tiled_axes.erase(0);
    return how;
  }

 private:
  std::map<std::string, PreparedSite> sites_;
  std::vector<SiteInfo> order_;
};

class CalibrationInterceptor : public nn::Interceptor {
 public:
  explicit CalibrationInterceptor(const std::vector<SiteInfo>& sites) {
    for (const auto& s : sites)
      if (s.config.weight_qtype && s.config.act_qtype && s.config.act_static_scale) sites_[s.site.id()] = &s;
  }
  std::optional<nn::Var> intercept(nn::Context&, const nn::SiteCall& call) override {
    const auto it = sites_.find(call.site.id());
    if (it == sites_.end()) return std::nullopt;
    const SiteInfo& site = *it->second;
    if (!site.weight) {  // a product of two activations: statistics for both operands
      check_finite(call.lhs.value(), site, "calibration activation (lhs)");
      check_finite(call.rhs.value(), site, "calibration activation (rhs)");
      at_site(site, [&] {
        for (int w = 0; w < 2; ++w) {
          const std::string key = operand_key(call.site.id(), w);
          record_range(stats[key], operand_range((w ? call.rhs : call.lhs).value(), site.config, key),
                       site.config.act_calibration_method, key);
        }
      });
      return std::nullopt;
    }
    const TensorF lhs = rows_view(call.lhs);
    check_finite(lhs, site, "calibration activation");
    at_site(site, [&] {
      const HowToQuantize how = act_how(site.config, lhs.shape(), call.rows_per_scale_group);
      record_range(stats[call.site.id()], batch_range(lhs, how, call.site.id()), how.calibration_method, call.site.id());
    });
    return std::nullopt;
  }
  CalibrationStats stats;

 private:
  std::map<std::string, const SiteInfo*> sites_;
};

}  // namespace detail

// Runs the float model over `batches` and collects static-range statistics for every site whose
// rule asks for them. Statistics from shards of the data merge exactly (RunningMean::merge).
// Every batch must have batch 0's shape except along the leading (batch) axis.
inline void check_batch_shapes(const Batches& batches) {
  if (batches.empty()) return;
  const Shape& first = batches.front().shape();
  for (std::size_t i = 0; i < batches.size(); ++i) {
    const Shape& s = batches[i].shape();
    if (s.empty() || s.size() != first.size() || !std::equal(s.begin() + 1, s.end(), first.begin() + 1))
      throw_error(Status::kShapeMismatch,
                  "calibration batch {} has shape {}, but batch 0 has {} (only the leading batch axis may differ)", i,
                  shape_str(s), shape_str(first));
  }
}

inline CalibrationStats calibrate_model(nn::Module& model, const std::vector<SiteInfo>& sites, const Batches& batches) {
  check_batch_shapes(batches);
  detail::CalibrationInterceptor c(sites);
  for (std::size_t i = 0; i < batches.size(); ++i) {
    nn::Context ctx(&c, false);
    try {
      model.forward(ctx, nn::Var(batches[i]));
    } catch (const Error& e) {
      throw Error(e.status(), fmt::format("calibration batch {}: {}", i, e.what()));
    }
  }
  return std::move(c.stats);
}

// Quantizes float parameters offline into what a quantized model expects: weights by the rules
// of their sites, activation scales from statistics. No forward pass runs.
inline QuantizedParams quantize_params(const std::map<std::string, TensorF>& fp_params, const std::vector<SiteInfo>& sites,
                                       const CalibrationStats& stats) {
  QuantizedParams out;
  for (const auto& s : sites) {
    if (!s.config.weight_qtype) continue;
    check_site_layout(s);
    if (!s.weight) {  // a product of two activations: frozen scales for both operands
      detail::check_activation_product(s);
      if (!s.config.act_qtype || !s.config.act_static_scale) continue;
      for (int w = 0; w < 2; ++w) {
        const std::string key = detail::operand_key(s.site.id(), w);
        const auto st = stats.find(key);
        if (st == stats.end() || st->second.hi.count() == 0)
          throw_error(Status::kNotFound, "quantize_params: {} uses static activation scales but has no calibration statistics for '{}'",
                      site_label(s), key);
        out.act_scales.insert_or_assign(key, at_site(s, [&] { return detail::frozen_scale(st->second, *s.config.act_qtype); }));
      }
      continue;
    }
    const auto it = fp_params.find(s.weight_name);
    if (it == fp_params.end()) throw_error(Status::kNotFound, "quantize_params: no float parameter '{}' for {}", s.weight_name, site_label(s));
    if (it->second.size() != numel(s.rhs_shape))
      throw_error(Status::kShapeMismatch, "quantize_params: parameter '{}' has shape {}, {} needs {} values", s.weight_name,
                  shape_str(it->second.shape()), site_label(s), numel(s.rhs_shape));
    QuantizeOptions opts;
    opts.name = s.weight_name;
    check_finite(it->second, s, "weight '" + s.weight_name + "'");
    out.weights.insert_or_assign(s.weight_name, at_site(s, [&] {
      return quantize(TensorF(s.rhs_shape, it->second.vec()), weight_how(s.config, s.rhs_shape), opts);
    }));
    if (s.config.act_qtype && s.config.act_static_scale) {
      const auto st = stats.find(s.site.id());
      if (st == stats.end() || st->second.hi.count() == 0)
        throw_error(Status::kNotFound, "quantize_params: {} uses a static activation scale but has no calibration statistics", site_label(s));
      out.act_scales.insert_or_assign(s.site.id(), at_site(s, [&] { return detail::frozen_scale(st->second, *s.config.act_qtype); }));
    }
  }
  return out;
}

// Installs quantized parameters on a model whose sites were discovered and resolved; returns
// the report. The model is changed only if every site is ready.
inline rules::QuantizationReport install_quantized(nn::Module& model, const std::vector<SiteInfo>& sites, QuantizedParams params) {
  std::map<std::string, detail::PreparedSite> prepared;
  rules::QuantizationReport report;
  report.provider = "ptq";
  for (const auto& s : sites) {
    detail::PreparedSite p{s, std::nullopt, std::nullopt, "float", false, {}};
    if (s.config.weight_qtype) check_site_layout(s);
    if (s.config.weight_qtype && !s.weight && s.config.act_qtype) {
      detail::check_activation_product(s);
      p.activation_product = true;
      p.mode = s.config.act_static_scale ? "static-range" : "dynamic-range";
      if (s.config.act_static_scale)
        for (int w = 0; w < 2; ++w) {
          const auto a = params.act_scales.find(detail::operand_key(s.site.id(), w));
          if (a == params.act_scales.end())
            throw_error(Status::kNotFound, "install_quantized: {} needs a static scale '{}' and has none", site_label(s),
                        detail::operand_key(s.site.id(), w));
          p.operand_scales[static_cast<std::size_t>(w)] = a->second;
        }
    } else if (s.config.weight_qtype && s.weight) {
      const auto w = params.weights.find(s.weight_name);
      if (w == params.weights.end())
        throw_error(Status::kNotFound, "install_quantized: {} has no quantized weight '{}'", site_label(s), s.weight_name);
      if (w->second.shape() != s.rhs_shape)
        throw_error(Status::kShapeMismatch, "install_quantized: {}: quantized weight '{}' has shape {}, the site needs {}", site_label(s),
                    s.weight_name, shape_str(w->second.shape()), shape_str(s.rhs_shape));
      p.weight = std::move(w->second);
      p.mode = !s.config.act_qtype ? "weight-only" : s.config.act_static_scale ? "static-range" : "dynamic-range";
      if (s.config.act_static_scale) {
        const auto a = params.act_scales.find(s.site.id());
        if (a == params.act_scales.end())
          throw_error(Status::kNotFound, "install_quantized: {} needs a static activation scale and has none", site_label(s));
        p.act_scale = a->second;
      }
    }
    report.sites.push_back(site_report(s, p.weight ? &*p.weight : nullptr, p.mode));
    if (p.activation_product) {
      report.sites.back().note =
          activation_product_note(s, detail::operand_scale_shape(s, s.lhs_shape), detail::operand_scale_shape(s, s.rhs_shape));
    } else if (!s.weight && s.config.weight_qtype) {
      report.sites.back().note = kUnquantizedActivationProductNote;
    }
    prepared.emplace(s.site.id(), std::move(p));
  }
  model.install_interceptor(std::make_shared<detail::PtqInterceptor>(std::move(prepared), sites));
  return report;
}

// The resolved sites of a model quantize_model(…, PtqProvider) has rewritten.
inline const std::vector<SiteInfo>& quantized_sites(const nn::Module& quantized_model) {
  const auto* ptq = dynamic_cast<const detail::PtqInterceptor*>(quantized_model.interceptor().get());
  if (!ptq) throw_error(Status::kInvalidArgument, "the model was not quantized by a PtqProvider (no PTQ interceptor installed)");
  return ptq->site_order();
}

// quantize_params against a quantized model's structure: new float parameters (a checkpoint
// fine-tuned elsewhere, say) quantized offline by the model's rules, with no forward pass.
// Install the result with install_quantized(model, quantized_sites(model), params).
inline QuantizedParams quantize_params(const std::map<std::string, TensorF>& fp_params, const nn::Module& quantized_model,
                                       const CalibrationStats& stats) {
  return quantize_params(fp_params, quantized_sites(quantized_model), stats);
}

// Discovers the sites on batches[0], calibrates static-range sites on all batches, quantizes the
// weights and installs the quantized computation. Batches may be a single sample batch when no
// rule uses static scales.
inline rules::QuantizationReport quantize_model(nn::Module& model, const PtqProvider& provider, const Batches& batches) {
  if (batches.empty()) throw_error(Status::kInvalidArgument, "quantize_model: needs at least one sample batch to find the op sites");
  // Discovery and calibration run their own interceptors on the float model; the model's own
  // interceptor is replaced only at the end, so an error anywhere leaves the model as it was.
  std::vector<SiteInfo> sites = discover_sites(model, batches.front());
  const std::vector<int> unused = resolve_rules(sites, provider.rules());
  const CalibrationStats stats = calibrate_model(model, sites, batches);
  std::map<std::string, TensorF> fp;
  for (auto& [name, p] : model.named_parameters()) fp.emplace(name, p->var.value());
  rules::QuantizationReport report = install_quantized(model, sites, quantize_params(fp, sites, stats));
  report.unused_rules = unused;
  return report;
}

}  // namespace qforge::providers
