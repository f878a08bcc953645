// The forward context and op-site interception.
//
// Every product a model computes (a Linear's dot_general, a Conv2d's convolution, an
// activation-by-activation einsum) goes through Context::call_site. Each call gets an OpSite: the
// module path ('.'-joined, root = ""), the op name and a per-module counter, so the same product
// gets the same id on every forward pass ("encoder.layer.0.attention/einsum1"). A provider
// installed on the model (an Interceptor) sees every site and may replace its computation; the
// user's model code never changes when it is quantized.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "qforge/nn/ops.hpp"

namespace qforge::nn {

class Module;
struct Parameter;

enum class SiteKind { kDotGeneral, kConv, kEinsum };

// Qwix's op names, so rules written for Qwix (op_names: [dot_general]) mean the same here.
constexpr std::string_view site_op_name(SiteKind k) {
  switch (k) {
    case SiteKind::kDotGeneral: return "dot_general";
    case SiteKind::kConv: return "conv_general_dilated";
    case SiteKind::kEinsum: return "einsum";
  }
  return "unknown";
}

struct OpSite {
  std::string module_path;
  std::string op_name;
  int index = 0;
  // "fc1/dot_general0"; a site of the root module is "/dot_general0".
  std::string id() const { return module_path + "/" + op_name + std::to_string(index); }
};

// One product at one site, normalised to lhs[M, K] · rhs[N, K]^T (or batched: [G, M, K] and
// [G, N, K]). For a weight site, rhs is the weight viewed as [out, in·kh·kw] and `weight` points
// at the parameter it came from; for an einsum between activations `weight` is null.
struct SiteCall {
  OpSite site;
  SiteKind kind = SiteKind::kDotGeneral;
  Var lhs;
  Var rhs;
  Parameter* weight = nullptr;
  Module* module = nullptr;
  // Rows of lhs that share one dynamic activation scale: 1 for per-token (Linear), OH·OW for a
  // convolution (Qwix quantizes conv inputs per image: channelwise on the lhs batch axis only).
  std::int64_t rows_per_scale_group = 1;
};

class Context;

class Interceptor {
 public:
  virtual ~Interceptor() = default;
  // The site's output, or std::nullopt to run the float product.
  virtual std::optional<Var> intercept(Context& ctx, const SiteCall& call) = 0;
};

class Context {
 public:
  explicit Context(Interceptor* interceptor = nullptr, bool training = false)
      : interceptor_(interceptor), training_(training) {}

  bool training() const noexcept { return training_; }
  Interceptor* interceptor() const noexcept { return interceptor_; }

  // The next site id for `op_name` in module `path` (counters restart with every Context).
  OpSite next_site(const std::string& path, std::string_view op_name) {
    int& counter = counters_[path + "/" + std::string(op_name)];
    return OpSite{path, std::string(op_name), counter++};
  }

  Var call_site(const SiteCall& call) {
    if (interceptor_)
      if (auto out = interceptor_->intercept(*this, call)) return *out;
    return float_product(call);
  }

  static Var float_product(const SiteCall& call) {
    return call.lhs.rank() == 3 ? batched_matmul_nt(call.lhs, call.rhs) : matmul_nt(call.lhs, call.rhs);
  }

 private:
  Interceptor* interceptor_;
  bool training_;
  std::map<std::string, int> counters_;
};

}  // namespace qforge::nn
