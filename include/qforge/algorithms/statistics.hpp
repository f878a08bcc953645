// Per-site calibration statistics for GPTQ/QEP/JointQ and their file form.
//
// LayerStatistics holds SUMS over tokens, in double: H = Σ x̂ x̂ᵀ and H_δ = Σ (x − x̂) x̂ᵀ, plus the
// token count. Sums (not the reference's running 2/N mean) make merging a plain addition: the
// algorithms are invariant to H's scale as long as H and H_δ share it (GPTQ damping is relative,
// QEP's correction is a ratio), and JointQ's nλ uses the stored token count.
// Accumulation: chunks of kChunkTokens tokens go through the backend in float32 (SyrkOp for H,
// GemmF32Op for H_δ) and each chunk's result is added into the double sums. Merging shards whose
// boundaries fall on chunk boundaries adds the same chunk contributions in a different order:
// the result is bit-equal to one pass whenever those double additions are exact (contributions
// within 2^29 of each other in magnitude and of ≤ 24 significant bits, e.g. the dyadic test data),
// and otherwise equal within double rounding (~1e-16 relative), far below the float32 round-off
// already inside each chunk.
//
// File: safetensors with, per site S, "S.hessian" F64 [in, in], "S.hessian_delta" F64 [in, in]
// (only with a quantized stream) and "S.tokens" I64 [1].
#pragma once

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "qforge/algorithms/gptq.hpp"
#include "qforge/backend/registry.hpp"
#include "qforge/formats/safetensors.hpp"

namespace qforge::algorithms {

struct LayerStatistics {
  static constexpr std::int64_t kChunkTokens = 256;
  std::int64_t cols = 0;
  std::int64_t tokens = 0;
  std::vector<double> h;
  std::vector<double> h_delta;  // empty: no quantized stream (x̂ = x)

  LayerStatistics() = default;
  explicit LayerStatistics(std::int64_t in_features, bool with_delta = false)
      : cols(in_features), h(static_cast<std::size_t>(in_features * in_features), 0.0) {
    if (with_delta) h_delta.assign(h.size(), 0.0);
  }

  // x: float stream [t, cols]; xq: quantized-prefix stream [t, cols] or null (x̂ = x).
  void add(const float* x, const float* xq, std::int64_t t, std::string_view site = "layer") {
    if (cols <= 0) throw_error(Status::kInvalidArgument, "{}: statistics have no input width", site);
    check_finite(x, t * cols, "calibration inputs", site);
    if (xq) check_finite(xq, t * cols, "quantized-stream inputs", site);
    const float* xh = xq ? xq : x;
    if (xq && h_delta.empty()) h_delta.assign(h.size(), 0.0);
    std::vector<float> chunk(static_cast<std::size_t>(cols * cols));
    std::vector<float> dt, xt;
    for (std::int64_t t0 = 0; t0 < t; t0 += kChunkTokens) {
      const std::int64_t n = std::min(kChunkTokens, t - t0);
      std::fill(chunk.begin(), chunk.end(), 0.0f);
      backend::run(backend::SyrkOp{.T = n, .K = cols, .x = xh + t0 * cols, .ldx = cols, .h = chunk.data(), .alpha = 1.0f});
      for (std::size_t i = 0; i < chunk.size(); ++i) h[i] += chunk[i];
      if (!h_delta.empty() && xq) {
        // H_δ[a, b] = Σ_t d[t, a] x̂[t, b]: GEMM with a = dᵀ [cols, n] and b = x̂ᵀ [cols, n].
        dt.resize(static_cast<std::size_t>(cols * n));
        xt.resize(static_cast<std::size_t>(cols * n));
        for (std::int64_t i = 0; i < n; ++i)
          for (std::int64_t j = 0; j < cols; ++j) {
            const auto src = static_cast<std::size_t>((t0 + i) * cols + j);
            dt[static_cast<std::size_t>(j * n + i)] = x[src] - xq[src];
            xt[static_cast<std::size_t>(j * n + i)] = xq[src];
          }
        backend::run(backend::GemmF32Op{.M = cols, .N = cols, .K = n, .a = dt.data(), .lda = n, .b = xt.data(),
                                        .ldb = n, .dst = chunk.data(), .ldd = cols, .accumulate = false});
        for (std::size_t i = 0; i < chunk.size(); ++i) h_delta[i] += chunk[i];
      }
    }
    tokens += t;
  }

  void merge(const LayerStatistics& o, std::string_view site = "layer") {
    if (o.cols != cols)
      throw_error(Status::kShapeMismatch, "{}: cannot merge statistics of {} and {} input features", site, cols, o.cols);
    if (o.h_delta.empty() != h_delta.empty())
      throw_error(Status::kInvalidArgument, "{}: one shard has H_delta and the other does not", site);
    for (std::size_t i = 0; i < h.size(); ++i) h[i] += o.h[i];
    for (std::size_t i = 0; i < h_delta.size(); ++i) h_delta[i] += o.h_delta[i];
    tokens += o.tokens;
  }
};

using StatisticsSet = std::map<std::string, LayerStatistics>;

namespace detail {
template <class T>
std::vector<std::uint8_t> to_bytes(const std::vector<T>& v) {
  std::vector<std::uint8_t> b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}
}  // namespace detail

inline void save_statistics(const StatisticsSet& stats, const std::string& path) {
  formats::SafetensorsWriter w;
  for (const auto& [site, s] : stats) {
    w.add(site + ".hessian", formats::Dtype::kF64, {s.cols, s.cols}, detail::to_bytes(s.h));
    if (!s.h_delta.empty()) w.add(site + ".hessian_delta", formats::Dtype::kF64, {s.cols, s.cols}, detail::to_bytes(s.h_delta));
    w.add(site + ".tokens", formats::Dtype::kI64, {1}, detail::to_bytes(std::vector<std::int64_t>{s.tokens}));
  }
  w.set_metadata("format", "qforge.layer_statistics");
  w.write(path);
}

inline StatisticsSet load_statistics(const std::string& path) {
  formats::SafetensorsFile f(path);
  StatisticsSet out;
  auto read_f64 = [&](const formats::SafetensorsEntry& e, std::vector<double>& dst) {
    if (e.dtype != formats::Dtype::kF64 || e.shape.size() != 2 || e.shape[0] != e.shape[1])
      throw_error(Status::kFormatError, "{}: '{}' must be F64 [in, in]", path, e.name);
    dst.resize(static_cast<std::size_t>(e.numel()));
    std::memcpy(dst.data(), f.bytes(e).data(), dst.size() * sizeof(double));
  };
  const std::string suffix = ".hessian";
  for (const auto& e : f.tensors()) {
    if (e.name.size() <= suffix.size() || e.name.compare(e.name.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const std::string site = e.name.substr(0, e.name.size() - suffix.size());
    LayerStatistics s;
    read_f64(e, s.h);
    s.cols = e.shape[0];
    if (const auto* d = f.find(site + ".hessian_delta")) {
      read_f64(*d, s.h_delta);
      if (static_cast<std::int64_t>(s.h_delta.size()) != s.cols * s.cols)
        throw_error(Status::kShapeMismatch, "{}: site '{}' H_delta does not match H", path, site);
    }
    const auto* t = f.find(site + ".tokens");
    if (!t || t->dtype != formats::Dtype::kI64 || t->numel() != 1)
      throw_error(Status::kFormatError, "{}: site '{}' has no I64 [1] tokens count", path, site);
    std::memcpy(&s.tokens, f.bytes(*t).data(), sizeof(std::int64_t));
    check_finite(s.h.data(), static_cast<std::int64_t>(s.h.size()), "Hessian", site);
    out.emplace(site, std::move(s));
  }
  if (out.empty()) throw_error(Status::kFormatError, "{}: no '<site>.hessian' tensors: not a statistics file", path);
  return out;
}

// Merges b into a site by site; sites present in only one file are kept as they are.
inline StatisticsSet merge_statistics(StatisticsSet a, const StatisticsSet& b) {
  for (const auto& [site, s] : b) {
    auto it = a.find(site);
    if (it == a.end()) a.emplace(site, s);
    else it->second.merge(s, site);
  }
  return a;
}

}  // namespace qforge::algorithms
