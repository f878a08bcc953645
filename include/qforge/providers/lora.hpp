// LoRA and QLoRA adapters on a model graph (Qwix LoraProvider).
//
//   rules::LoraRule r;
//   r.module_path = "layers\\.[0-9]+";
//   r.rank = 8; r.alpha = 16;
//   r.weight_qtype = QType::kNf4;                      // set: QLoRA over a frozen NF4 base
//   providers::quantize_model(model, providers::LoraProvider({r}), {sample});
//   nn::Adam opt(model, 1e-3f);                        // sees only the adapters
//
// Each matched weight site [N, K] gets two trainable parameters next to its weight, laid out as
// PEFT does: `<weight>_lora_a` [rank, K] (Kaiming-uniform) and `<weight>_lora_b` [N, rank]
// (zeros), and computes y = x·Wᵀ + dropout(x)·Aᵀ·Bᵀ·alpha/rank. Every other parameter of the
// model is frozen. With weight_qtype set the base is quantized once and only its dequantized
// values are used:
//  - nf4: exactly as bitsandbytes' Linear4bit stores it (formats/bnb4.hpp) — the weight
//    flattened row-major in blocks of 64 (LoraOptions::base_block, or the rule's integer
//    tile_size), fp32 absmax per block, and with double_quant the absmax values quantized to
//    bitsandbytes' 8-bit dynamic map in nested blocks of 256 around their mean. qlora_bases()
//    returns these tensors, ready for formats::add_bnb4.
//  - other qtypes (int4, ...): a qforge QArray, blockwise along K (64 where 64 divides K, one
//    scale per row otherwise); double_quant quantizes its scales the same nested way.
#pragma once

#include <cmath>
#include <memory>
#include <random>

#include "qforge/formats/bnb4.hpp"
#include "qforge/providers/ptq.hpp"

namespace qforge::providers {

struct LoraOptions {
  std::uint64_t seed = 0;        // adapter initialisation and dropout
  bool double_quant = false;     // QLoRA: quantize the base's block scales too
  std::int64_t base_block = 64;  // QLoRA block along K when the rule has no tile_size
};

class LoraProvider {
 public:
  explicit LoraProvider(std::vector<rules::LoraRule> rules, LoraOptions options = {})
      : rules_(std::move(rules)), options_(options) {}
  const std::vector<rules::LoraRule>& rules() const { return rules_; }
  const LoraOptions& options() const { return options_; }

 private:
  std::vector<rules::LoraRule> rules_;
  LoraOptions options_;
};

// Double quantization of block scales as bitsandbytes does it (compress_statistics): offset =
// mean(scales); (scale - offset) quantized to the 8-bit dynamic map in nested blocks of 256, each
// with its own fp32 absmax. Returns the scales the base will use (what a reader of the compressed
// form reconstructs) and the bytes the compressed form takes (a code per scale, a float per
// nested block, the offset).
inline std::pair<TensorF, std::uint64_t> double_quantize_scales(const TensorF& scales) {
  const std::int64_t n = scales.size(), block = 256;
  double sum = 0;
  for (float v : scales.vec()) sum += v;
  const float offset = n ? static_cast<float>(sum / static_cast<double>(n)) : 0.0f;
  const auto& map = formats::bnb_dynamic_map();
  TensorF out(scales.shape());
  std::uint64_t bytes = sizeof(float);
  for (std::int64_t b = 0; b < n; b += block) {
    const std::int64_t e = std::min(n, b + block);
    float amax = 0;
    for (std::int64_t i = b; i < e; ++i) amax = std::max(amax, std::fabs(scales[i] - offset));
    const float inv = amax > 0 ? 1.0f / amax : 0.0f;
    for (std::int64_t i = b; i < e; ++i) out[i] = map[formats::nearest_code(map, (scales[i] - offset) * inv)] * amax + offset;
    bytes += static_cast<std::uint64_t>(e - b) + sizeof(float);
  }
  return {out, bytes};
}

namespace detail {

inline nn::Var dropout(const nn::Var& x, float p, nn::Rng& rng) {
  if (p <= 0.0f) return x;
  auto mask = std::make_shared<TensorF>(x.shape());
  std::bernoulli_distribution keep(1.0 - p);
  for (auto& m : mask->vec()) m = keep(rng) ? 1.0f / (1.0f - p) : 0.0f;
  TensorF y = x.value();
  for (std::int64_t i = 0; i < y.size(); ++i) y[i] *= (*mask)[i];
  return nn::make_result(std::move(y), {x}, [mask](nn::Node& self) {
    TensorF g = self.grad;
    for (std::int64_t i = 0; i < g.size(); ++i) g[i] *= (*mask)[i];
    self.inputs[0]->accumulate(g);
  });
}

struct LoraSite {
  nn::Parameter* a = nullptr;  // [rank, K]
  nn::Parameter* b = nullptr;  // [N, rank]
  std::optional<TensorF> base;  // dequantized QLoRA base [N, K]; unset: the float weight
  float scaling = 1.0f;
  float dropout = 0.0f;
  std::string label;  // "site … (rule …)" for errors
  std::optional<formats::Bnb4Tensor> bnb_base;  // an nf4 base in bitsandbytes' layout
  std::string module_path;  // the module the adapters live in
};

// A diverging fine-tune shows up as NaN in the activations reaching the adapters.
inline void check_finite_input(const TensorF& x, const std::string& label) {
  for (std::int64_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(x[i]))
      throw_error(Status::kNumericalError, "{}: the input activation holds a non-finite value ({}) at flat index {}", label, x[i], i);
}

class LoraInterceptor : public nn::Interceptor {
 public:
  LoraInterceptor(std::map<std::string, LoraSite> sites, std::uint64_t seed) : sites_(std::move(sites)), rng_(seed) {}

  const std::map<std::string, LoraSite>& sites() const { return sites_; }

  std::optional<nn::Var> intercept(nn::Context& ctx, const nn::SiteCall& call) override {
    const auto it = sites_.find(call.site.id());
    if (it == sites_.end() || call.lhs.rank() != 2) return std::nullopt;
    const LoraSite& s = it->second;
    if (ctx.training()) check_finite_input(call.lhs.value(), s.label);
    const nn::Var base = s.base ? nn::Var(*s.base) : call.rhs;
    nn::Var y = nn::matmul_nt(call.lhs, base);
    const nn::Var xd = ctx.training() ? dropout(call.lhs, s.dropout, rng_) : call.lhs;
    const nn::Var delta = nn::scale(nn::matmul_nt(nn::matmul_nt(xd, s.a->var), s.b->var), s.scaling);
    return nn::add(y, delta);
  }

 private:
  std::map<std::string, LoraSite> sites_;
  nn::Rng rng_;
};

}  // namespace detail

// Adds adapters to every matched Linear-like weight site, freezes everything else, and installs
// the LoRA computation. Validates every rule and site before changing the model.
inline rules::QuantizationReport quantize_model(nn::Module& model, const LoraProvider& provider, const Batches& sample) {
  if (sample.empty()) throw_error(Status::kInvalidArgument, "quantize_model: needs a sample batch to find the op sites");
  std::vector<SiteInfo> sites = discover_sites(model, sample.front());
  const std::vector<int> unused = resolve_rules(sites, provider.rules());
  rules::QuantizationReport report;
  report.provider = "lora";
  report.unused_rules = unused;
  // Plan first: quantized bases and adapter shapes, with nothing added to the model yet.
  struct Plan {
    const SiteInfo* site;
    std::optional<QArray> base;
    std::optional<TensorF> base_values;
    std::uint64_t base_bytes = 0;
    std::optional<formats::Bnb4Tensor> bnb;
  };
  std::vector<Plan> plans;
  for (const auto& s : sites) {
    if (!s.rule_index || s.config.lora_rank <= 0) {
      report.sites.push_back(site_report(s, nullptr, "float"));
      continue;
    }
    // An adapter needs a weight to sit beside: a LoRA rule matching a product of two
    // activations (attention scores) is a rule of the wrong op kind.
    if (!s.weight || s.rhs_shape.size() != 2)
      throw_error(Status::kInvalidArgument,
                  "{}: a LoRA rule matched a {} site without a weight matrix; restrict the rule with op_names or "
                  "module_path to Linear/Conv2d sites",
                  site_label(s), s.site.op_name);
    for (const char* suffix : {"_lora_a", "_lora_b"})
      if (s.module->find_parameter(s.weight->name + suffix))
        throw_error(Status::kInvalidArgument, "{}: parameter '{}{}' already exists (LoRA applied twice?)", site_label(s),
                    s.weight_name, suffix);
    check_finite(s.weight->var.value(), s, "weight '" + s.weight_name + "'");
    Plan p{&s, std::nullopt, std::nullopt, static_cast<std::uint64_t>(numel(s.rhs_shape)) * 4, std::nullopt};
    if (s.config.weight_qtype == QType::kNf4 && !std::holds_alternative<double>(s.config.tile_size.value_or(std::int64_t{0}))) {
      formats::Bnb4Options o;
      o.blocksize = s.config.tile_size ? std::get<std::int64_t>(*s.config.tile_size) : provider.options().base_block;
      o.double_quant = provider.options().double_quant;
      p.bnb = at_site(s, [&] { return formats::bnb4_quantize(s.weight->var.value().data(), s.rhs_shape, o); });
      p.base_values = formats::bnb4_dequantize(*p.bnb);
      p.base_bytes = p.bnb->packed.size() + (p.bnb->nested ? p.bnb->absmax_codes.size() + 4 * p.bnb->nested_absmax.size() + 4
                                                            : 4 * p.bnb->absmax.size());
    } else if (s.config.weight_qtype) {
      rules::SiteConfig c = s.config;
      if (!c.tile_size && s.rhs_shape[1] % provider.options().base_block == 0) c.tile_size = provider.options().base_block;
      QuantizeOptions opts;
      opts.name = s.weight_name;
      p.base = at_site(s, [&] { return quantize(TensorF(s.rhs_shape, s.weight->var.value().vec()), weight_how(c, s.rhs_shape), opts); });
      p.base_bytes = p.base->nbytes();
      if (provider.options().double_quant) {
        auto [scales, bytes] = double_quantize_scales(p.base->scale());
        p.base_bytes = p.base->storage().size() + bytes;
        p.base->scale() = std::move(scales);
      }
      p.base_values = dequantize(*p.base);
    }
    plans.push_back(std::move(p));
  }
  // Apply: freeze everything, then add the adapters (the only trainable parameters).
  for (auto& [name, param] : model.named_parameters()) param->set_trainable(false);
  nn::Rng init(provider.options().seed);
  std::map<std::string, detail::LoraSite> lora;
  for (auto& p : plans) {
    const SiteInfo& s = *p.site;
    const std::int64_t N = s.rhs_shape[0], K = s.rhs_shape[1], r = s.config.lora_rank;
    const float bound = 1.0f / std::sqrt(static_cast<float>(K));  // PyTorch's kaiming_uniform(a=sqrt(5))
    nn::Parameter& a = s.module->add_parameter(s.weight->name + "_lora_a", nn::uniform_tensor({r, K}, bound, init));
    nn::Parameter& b = s.module->add_parameter(s.weight->name + "_lora_b", TensorF({N, r}));
    rules::SiteReport rep = site_report(s, p.base ? &*p.base : nullptr, p.base || p.bnb ? "qlora" : "lora");
    if (p.bnb) {
      rep.weight_qtype = "nf4";
      rep.weight_scale_shape = {p.bnb->blocks()};
      rep.weight_error = analysis::compare(s.weight->var.value().data(), p.base_values->data(), p.base_values->size());
      rep.note = fmt::format("bitsandbytes layout, block {}", p.bnb->blocksize);
    }
    detail::LoraSite ls{&a, &b, std::move(p.base_values), s.config.lora_alpha / static_cast<float>(r), s.config.lora_dropout,
                        site_label(s), std::move(p.bnb), s.module->path()};
    rep.bytes_after = p.base_bytes + static_cast<std::uint64_t>((r * K + N * r) * 4);
    if ((p.base || ls.bnb_base) && provider.options().double_quant)
      rep.note += std::string(rep.note.empty() ? "" : ", ") + "double-quantized block scales";
    report.sites.push_back(std::move(rep));
    lora.emplace(s.site.id(), std::move(ls));
  }
  std::map<std::string, std::size_t> order;
  for (std::size_t i = 0; i < sites.size(); ++i) order[sites[i].site.id()] = i;
  std::sort(report.sites.begin(), report.sites.end(), [&](const auto& x, const auto& y) { return order[x.site] < order[y.site]; });
  model.install_interceptor(std::make_shared<detail::LoraInterceptor>(std::move(lora), provider.options().seed + 1));
  return report;
}

// The frozen NF4 bases of a QLoRA model in bitsandbytes' layout, by weight parameter path, to
// write with formats::add_bnb4 next to the adapters.
inline std::map<std::string, formats::Bnb4Tensor> qlora_bases(const nn::Module& model) {
  const auto* lora = dynamic_cast<const detail::LoraInterceptor*>(model.interceptor().get());
  if (!lora) throw_error(Status::kInvalidArgument, "the model has no LoRA adapters (no LoraProvider installed)");
  std::map<std::string, formats::Bnb4Tensor> out;
  for (const auto& [id, site] : lora->sites())
    if (site.bnb_base) {
      const std::string& a = site.a->name;  // "<weight>_lora_a"
      const std::string prefix = site.module_path.empty() ? "" : site.module_path + ".";
      out.emplace(prefix + a.substr(0, a.size() - 7), *site.bnb_base);
    }
  return out;
}

}  // namespace qforge::providers
