// QuantizationReport: what a provider did, site by site — the rule that matched, the qtypes, the
// scale shapes, the weight error and the bytes before and after — printable as a table and as
// JSON. Every quantize_model call returns one. Sites quantized by a layer algorithm (GPTQ, QEP,
// JointQ) also carry the method, its loss, the Hessian-weighted output error and the damping.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qforge/analysis/metrics.hpp"
#include "qforge/core/qtype.hpp"
#include "qforge/core/tensor.hpp"

namespace qforge::rules {

struct SiteReport {
  std::string site;          // "layers.0/dot_general0"
  std::string module_path;   // "layers.0"
  std::string op_name;       // "dot_general"
  std::string weight;        // "layers.0.weight" ("" for a product of two activations)
  int rule_index = -1;       // -1: no rule matched, the site runs in float
  std::string mode;          // "float", "weight-only", "dynamic-range", "static-range", "qat", "qt", "lora", "qlora"
  std::string weight_qtype;  // "" when unset
  std::string act_qtype;
  Shape weight_scale_shape;
  analysis::ErrorStats weight_error;
  std::uint64_t bytes_before = 0, bytes_after = 0;
  std::string note;
  // Layer algorithms only (method empty otherwise): "gptq", "qep" or "jointq"; the algorithm's
  // own objective; ‖X̂(W−Ŵ)ᵀ‖²/‖X̂Wᵀ‖² over the calibration inputs (from the Hessian); the
  // absolute damping added to the Hessian diagonal (after any retries, which `note` lists).
  std::string method;
  double loss = 0.0;
  double hessian_rel_err = 0.0;
  double damping = 0.0;
};

struct QuantizationReport {
  std::string provider;
  std::vector<SiteReport> sites;
  std::vector<int> unused_rules;  // indices of rules that matched no site

  std::uint64_t bytes_before() const {
    std::uint64_t b = 0;
    for (const auto& s : sites) b += s.bytes_before;
    return b;
  }
  std::uint64_t bytes_after() const {
    std::uint64_t b = 0;
    for (const auto& s : sites) b += s.bytes_after;
    return b;
  }
  const SiteReport* find(std::string_view site) const {
    for (const auto& s : sites)
      if (s.site == site) return &s;
    return nullptr;
  }

  nlohmann::json to_json() const {
    nlohmann::json sites_json = nlohmann::json::array();
    for (const auto& s : sites) {
      sites_json.push_back({{"site", s.site}, {"module_path", s.module_path}, {"op_name", s.op_name},
                            {"weight", s.weight}, {"rule_index", s.rule_index}, {"mode", s.mode},
                            {"weight_qtype", s.weight_qtype}, {"act_qtype", s.act_qtype},
                            {"weight_scale_shape", s.weight_scale_shape}, {"weight_error", s.weight_error.to_json()},
                            {"bytes_before", s.bytes_before}, {"bytes_after", s.bytes_after}, {"note", s.note}});
      if (!s.method.empty()) {
        auto& j = sites_json.back();
        j["method"] = s.method;
        j["loss"] = s.loss;
        j["hessian_rel_err"] = s.hessian_rel_err;
        j["damping"] = s.damping;
      }
    }
    return {{"provider", provider}, {"sites", sites_json}, {"unused_rules", unused_rules},
            {"bytes_before", bytes_before()}, {"bytes_after", bytes_after()}};
  }

  std::string to_string() const {
    std::size_t w = 4;
    for (const auto& s : sites) w = std::max(w, s.site.size());
    std::string out = fmt::format("{} report: {} sites\n", provider, sites.size());
    out += fmt::format("{:<{}}  {:>4}  {:<13} {:<8} {:<8} {:<12} {:>9} {:>8} {:>10} {:>10}\n", "site", w, "rule", "mode",
                       "weight", "act", "scale", "rel rmse", "sqnr dB", "bytes", "after");
    for (const auto& s : sites) {
      const bool q = !s.weight_qtype.empty();
      out += fmt::format("{:<{}}  {:>4}  {:<13} {:<8} {:<8} {:<12} {:>9} {:>8} {:>10} {:>10}{}\n", s.site, w,
                         s.rule_index < 0 ? std::string("-") : std::to_string(s.rule_index), s.mode,
                         q ? s.weight_qtype : "-", s.act_qtype.empty() ? "-" : s.act_qtype,
                         q ? shape_str(s.weight_scale_shape) : "-",
                         q ? fmt::format("{:.4f}", s.weight_error.relative) : "-",
                         q && std::isfinite(s.weight_error.sqnr_db) ? fmt::format("{:.2f}", s.weight_error.sqnr_db) : "-",
                         s.bytes_before, s.bytes_after, note_text(s));
    }
    for (int r : unused_rules) out += fmt::format("rule {} matched no site\n", r);
    out += fmt::format("weights: {} -> {} bytes\n", bytes_before(), bytes_after());
    return out;
  }

 private:
  static std::string note_text(const SiteReport& s) {
    std::string t;
    if (!s.method.empty())
      t = fmt::format("{}, loss {:.3g}, H-err {:.3g}, damp {:.3g}", s.method, s.loss, s.hessian_rel_err, s.damping);
    if (!s.note.empty()) t += (t.empty() ? "" : "; ") + s.note;
    return t.empty() ? t : "  (" + t + ")";
  }
};

}  // namespace qforge::rules
