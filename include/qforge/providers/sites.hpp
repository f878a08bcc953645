// What every provider shares: discovering a model's op sites with one forward pass, resolving
// each site's rule (first full match wins), and how a site's operands are quantized — the
// weight [N, K] channelwise on N with the rule's tile on K, the activation [M, K] per row (per
// image for a convolution) with the same tile on K (qwix-semantics.md §2, op defaults).
#pragma once

#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "qforge/core/qarray.hpp"
#include "qforge/nn/nn.hpp"
#include "qforge/rules/report.hpp"
#include "qforge/rules/rule.hpp"

namespace qforge::providers {

using Batches = std::vector<TensorF>;

// One op site as the discovery pass saw it.
struct SiteInfo {
  nn::OpSite site;
  nn::SiteKind kind = nn::SiteKind::kDotGeneral;
  nn::Module* module = nullptr;
  nn::Parameter* weight = nullptr;  // null for a product of two activations
  std::string weight_name;          // full parameter path
  Shape lhs_shape, rhs_shape;
  std::int64_t rows_per_scale_group = 1;
  std::optional<int> rule_index;
  rules::SiteConfig config;
};

namespace detail {
class DiscoveryInterceptor : public nn::Interceptor {
 public:
  std::optional<nn::Var> intercept(nn::Context&, const nn::SiteCall& call) override {
    const std::string id = call.site.id();
    if (!seen_.count(id)) {
      seen_[id] = sites_.size();
      SiteInfo s;
      s.site = call.site;
      s.kind = call.kind;
      s.module = call.module;
      s.weight = call.weight;
      if (call.weight) s.weight_name = call.module->path().empty() ? call.weight->name : call.module->path() + "." + call.weight->name;
      s.lhs_shape = call.lhs.shape();
      s.rhs_shape = call.rhs.shape();
      s.rows_per_scale_group = call.rows_per_scale_group;
      sites_.push_back(std::move(s));
    }
    return std::nullopt;
  }
  std::vector<SiteInfo> sites_;
  std::map<std::string, std::size_t> seen_;
};
}  // namespace detail

// Runs one float forward pass on `sample` and lists the op sites in execution order.
inline std::vector<SiteInfo> discover_sites(nn::Module& model, const TensorF& sample) {
  detail::DiscoveryInterceptor d;
  nn::Context ctx(&d, false);
  model.forward(ctx, nn::Var(sample));
  return std::move(d.sites_);
}

// Matches rules to sites (first full match of module_path, op_names filter) and returns the
// indices of rules that matched nothing.
template <class Rule>
std::vector<int> resolve_rules(std::vector<SiteInfo>& sites, const std::vector<Rule>& rule_list) {
  rules::RuleMatcher<Rule> matcher(rule_list);
  for (auto& s : sites) {
    s.rule_index = matcher.match(s.site.module_path, s.site.op_name);
    if (s.rule_index) s.config = matcher.config(*s.rule_index);
  }
  return matcher.finish_run();
}

// "site layers.0/dot_general0 (rule 2)": how errors name a site.
inline std::string site_label(const SiteInfo& s) {
  return fmt::format("site {} (rule {})", s.site.id(), s.rule_index ? std::to_string(*s.rule_index) : std::string("none"));
}

// Runs `fn`, re-raising a qforge::Error with the site and its rule in front of the message, so
// a tile that does not divide a weight, or bad data met at a site, says where it happened.
template <class Fn>
decltype(auto) at_site(const SiteInfo& s, Fn&& fn) {
  try {
    return fn();
  } catch (const Error& e) {
    throw Error(e.status(), fmt::format("{}: {}", site_label(s), e.what()));
  }
}

// NaN or infinity reaching a quantized site (a diverging training run, bad input) is an error:
// quantizing it would silently produce garbage scales.
inline void check_finite(const TensorF& t, const SiteInfo& s, std::string_view what) {
  for (std::int64_t i = 0; i < t.size(); ++i)
    if (!std::isfinite(t[i]))
      throw_error(Status::kNumericalError, "{}: {} holds a non-finite value ({}) at flat index {}", site_label(s), what, t[i], i);
}

// How the weight operand [N, K] (or [G, N, K]) is quantized.
inline HowToQuantize weight_how(const rules::SiteConfig& c, const Shape& rhs_shape) {
  HowToQuantize h;
  h.qtype = *c.weight_qtype;
  const int rank = static_cast<int>(rhs_shape.size());
  for (int a = 0; a + 1 < rank; ++a) h.channelwise_axes.push_back(a);
  if (c.tile_size) h.tiled_axes[rank - 1] = *c.tile_size;
  h.calibration_method = c.weight_calibration_method;
  return h;
}

// How the activation operand [M, K] (or [G, M, K]) is quantized dynamically: per row, or per
// group of rows for a convolution (one scale per image), tiled on K like the weight.
inline HowToQuantize act_how(const rules::SiteConfig& c, const Shape& lhs_shape, std::int64_t rows_per_group) {
  HowToQuantize h;
  h.qtype = *c.act_qtype;
  const int rank = static_cast<int>(lhs_shape.size());
  for (int a = 0; a + 2 < rank; ++a) h.channelwise_axes.push_back(a);
  if (rows_per_group <= 1) h.channelwise_axes.push_back(rank - 2);
  else h.tiled_axes[rank - 2] = rows_per_group;
  if (c.tile_size) h.tiled_axes[rank - 1] = *c.tile_size;
  h.calibration_method = c.act_calibration_method;
  return h;
}

// What the rules alone cannot check, against the site's shapes (called before anything is
// installed, so the model stays as it was):
//  - the contracting axis K is never channelwise: a tile_size that resolves to 1 (an element
//    count of 1, or a fraction of 1/K) would give every element of K its own scale (Qwix: "tile 1
//    means per-channel"), and the product could no longer be an integer dot over K times one
//    scale per operand row;
//  - a product of two activations with static scales averages over act_batch_axes 0 (G) and 1
//    (the row), never over its contracting axis 2.
inline void check_site_layout(const SiteInfo& s) {
  if (!s.config.weight_qtype || s.lhs_shape.empty()) return;
  const int k_axis = static_cast<int>(s.lhs_shape.size()) - 1;
  const std::int64_t K = s.lhs_shape.back();
  if (s.config.tile_size && K > 1) {
    const auto* count = std::get_if<std::int64_t>(&*s.config.tile_size);
    const std::int64_t tile = count ? *count : std::llround(static_cast<double>(K) * std::get<double>(*s.config.tile_size));
    if (tile == 1)
      throw_error(Status::kInvalidArgument,
                  "{}: tile_size {} makes the contracting axis {} (size {}) channelwise, one scale per element; scales "
                  "may be channelwise only on non-contracting axes, so that the product stays an integer dot over "
                  "the contracting axis times one scale per operand row; use a tile of at least 2 or leave tile_size unset",
                  site_label(s), std::holds_alternative<double>(*s.config.tile_size) ? fmt::format("{}", std::get<double>(*s.config.tile_size))
                                                                                     : std::string("1"),
                  k_axis, K);
  }
  if (!s.weight && s.config.act_qtype && s.config.act_static_scale)
    for (int axis : s.config.act_batch_axes)
      if (axis >= k_axis)
        throw_error(Status::kInvalidArgument,
                    "{}: act_batch_axes holds axis {}, but the operands of this product of two activations are [G, "
                    "rows, K] and axis {} is the contracting axis; static scales average over axes 0 and 1 only",
                    site_label(s), axis, k_axis);
}

// The report note of a product of two activations the rule leaves float (act_qtype unset).
inline constexpr std::string_view kUnquantizedActivationProductNote =
    "product of two activations: act_qtype unset, nothing to quantize, stays float";

// The report note of a product of two activations whose operands are quantized.
inline std::string activation_product_note(const SiteInfo& s, const Shape& lhs_scale, const Shape& rhs_scale) {
  return fmt::format("product of two activations: both operands {}, lhs scale {}, rhs scale {}", to_string(*s.config.act_qtype),
                     shape_str(lhs_scale), shape_str(rhs_scale));
}

inline std::string qtype_name(const std::optional<QType>& t) { return t ? std::string(to_string(*t)) : std::string(); }

// The report entry for a site whose weight was quantized to `q` (or left float when q is null).
inline rules::SiteReport site_report(const SiteInfo& s, const QArray* q, std::string mode) {
  rules::SiteReport r;
  r.site = s.site.id();
  r.module_path = s.site.module_path;
  r.op_name = s.site.op_name;
  r.weight = s.weight_name;
  r.rule_index = s.rule_index.value_or(-1);
  r.mode = std::move(mode);
  r.act_qtype = qtype_name(s.config.act_qtype);
  if (s.weight) {
    r.bytes_before = r.bytes_after = static_cast<std::uint64_t>(s.weight->var.value().size()) * 4;
    // A float weight is exact: zero error, infinite SQNR (null in JSON).
    const TensorF& w = s.weight->var.value();
    r.weight_error = analysis::compare(w.data(), w.data(), w.size());
  }
  if (q) {
    r.weight_qtype = std::string(to_string(q->qtype()));
    r.weight_scale_shape = q->scale().shape();
    const TensorF dq = dequantize(*q);
    const TensorF& w = s.weight->var.value();
    r.weight_error = analysis::compare(w.data(), dq.data(), w.size());
    r.bytes_after = q->nbytes();
  }
  return r;
}

}  // namespace qforge::providers
