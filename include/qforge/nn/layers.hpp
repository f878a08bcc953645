// Standard layers. Linear and Conv2d run their product as an op site ("dot_general",
// "conv_general_dilated"); dot_general() lets a user module run an activation-by-activation
// product ("einsum") as a site too, as attention does. Initialisation follows PyTorch's defaults
// (kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for weights and
// biases), drawn from the caller's generator so a model is reproducible from a seed.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>

#include "qforge/nn/module.hpp"

namespace qforge::nn {

inline TensorF uniform_tensor(Shape shape, float bound, Rng& rng) {
  std::uniform_real_distribution<float> dist(-bound, bound);
  TensorF t(std::move(shape));
  for (auto& v : t.vec()) v = dist(rng);
  return t;
}

class Linear : public Module {
 public:
  Linear(std::int64_t in_features, std::int64_t out_features, Rng& rng, bool bias = true)
      : in_(in_features), out_(out_features) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(in_features));
    weight_ = &add_parameter("weight", uniform_tensor({out_features, in_features}, bound, rng));
    if (bias) bias_ = &add_parameter("bias", uniform_tensor({out_features}, bound, rng));
  }
  std::string type_name() const override { return "Linear"; }
  Var forward(Context& ctx, const Var& x) override {
    if (x.rank() < 1 || x.shape().back() != in_)
      throw_error(Status::kShapeMismatch, "Linear '{}': input {} does not end in {} features", path(), shape_str(x.shape()), in_);
    // Leading axes flatten to tokens: [..., in] -> [tokens, in] -> [..., out].
    Shape out_shape = x.shape();
    out_shape.back() = out_;
    const Var x2 = x.rank() == 2 ? x : reshape(x, {x.value().size() / in_, in_});
    Var y = site(ctx, SiteKind::kDotGeneral, x2, weight_->var, weight_);
    if (bias_) y = add_bias(y, bias_->var);
    return x.rank() == 2 ? y : reshape(y, out_shape);
  }
  Parameter& weight() { return *weight_; }
  Parameter* bias() { return bias_; }
  std::int64_t in_features() const { return in_; }
  std::int64_t out_features() const { return out_; }

 private:
  std::int64_t in_, out_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
};

// NCHW convolution with square kernels, one stride and symmetric zero padding; weight
// [out, in, k, k]. The product is im2col patches · weight[out, in·k·k]^T, so weight scales are
// per output channel (one row of the reshaped weight).
class Conv2d : public Module {
 public:
  Conv2d(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel, Rng& rng, std::int64_t stride = 1,
         std::int64_t padding = 0, bool bias = true)
      : in_(in_channels), out_(out_channels), kernel_(kernel), stride_(stride), padding_(padding) {
    if (kernel <= 0 || stride <= 0 || padding < 0)
      throw_error(Status::kInvalidArgument, "Conv2d: kernel {}, stride {}, padding {} are not valid", kernel, stride, padding);
    const float bound = 1.0f / std::sqrt(static_cast<float>(in_channels * kernel * kernel));
    weight_ = &add_parameter("weight", uniform_tensor({out_channels, in_channels, kernel, kernel}, bound, rng));
    if (bias) bias_ = &add_parameter("bias", uniform_tensor({out_channels}, bound, rng));
  }
  std::string type_name() const override { return "Conv2d"; }
  Var forward(Context& ctx, const Var& x) override {
    if (x.rank() != 4 || x.dim(1) != in_)
      throw_error(Status::kShapeMismatch, "Conv2d '{}': input {} is not [batch, {}, height, width]", path(), shape_str(x.shape()), in_);
    Conv2dGeometry g{x.dim(0), in_, x.dim(2), x.dim(3), kernel_, kernel_, stride_, padding_, 0, 0};
    g.out_h = (g.height + 2 * padding_ - kernel_) / stride_ + 1;
    g.out_w = (g.width + 2 * padding_ - kernel_) / stride_ + 1;
    if (g.out_h <= 0 || g.out_w <= 0)
      throw_error(Status::kShapeMismatch, "Conv2d '{}': input {} is smaller than the kernel", path(), shape_str(x.shape()));
    const Var patches = im2col(x, g);
    const Var w2 = reshape(weight_->var, {out_, g.patch_size()});
    Var y = site(ctx, SiteKind::kConv, patches, w2, weight_, g.out_h * g.out_w);
    y = rows_to_nchw(y, g.batch, g.out_h, g.out_w);
    if (bias_) y = add_bias(y, bias_->var, 1);
    return y;
  }
  Parameter& weight() { return *weight_; }

 private:
  std::int64_t in_, out_, kernel_, stride_, padding_;
  Parameter* weight_ = nullptr;
  Parameter* bias_ = nullptr;
};

// Lookup of integer ids (stored as floats) in a [vocab, dim] table. Not an op site: Qwix leaves
// embedding gathers in float too.
class Embedding : public Module {
 public:
  Embedding(std::int64_t vocab, std::int64_t dim, Rng& rng) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    TensorF t({vocab, dim});
    for (auto& v : t.vec()) v = normal(rng);
    table_ = &add_parameter("embedding", std::move(t));
  }
  std::string type_name() const override { return "Embedding"; }
  Var forward(Context&, const Var& ids) override { return embedding_lookup(ids, table_->var); }

 private:
  Parameter* table_ = nullptr;
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(std::int64_t dim, float eps = 1e-5f) : eps_(eps) {
    scale_ = &add_parameter("scale", TensorF({dim}, 1.0f));
    bias_ = &add_parameter("bias", TensorF({dim}, 0.0f));
  }
  std::string type_name() const override { return "LayerNorm"; }
  Var forward(Context&, const Var& x) override { return normalize_last_axis(x, scale_->var, &bias_->var, eps_, true); }

 private:
  float eps_;
  Parameter* scale_ = nullptr;
  Parameter* bias_ = nullptr;
};

class RMSNorm : public Module {
 public:
  explicit RMSNorm(std::int64_t dim, float eps = 1e-6f) : eps_(eps) { scale_ = &add_parameter("scale", TensorF({dim}, 1.0f)); }
  std::string type_name() const override { return "RMSNorm"; }
  Var forward(Context&, const Var& x) override { return normalize_last_axis(x, scale_->var, nullptr, eps_, false); }

 private:
  float eps_;
  Parameter* scale_ = nullptr;
};

class ReLU : public Module {
 public:
  std::string type_name() const override { return "ReLU"; }
  Var forward(Context&, const Var& x) override { return relu(x); }
};
class GELU : public Module {
 public:
  std::string type_name() const override { return "GELU"; }
  Var forward(Context&, const Var& x) override { return gelu(x); }
};
class SiLU : public Module {
 public:
  std::string type_name() const override { return "SiLU"; }
  Var forward(Context&, const Var& x) override { return silu(x); }
};
class Softmax : public Module {
 public:
  std::string type_name() const override { return "Softmax"; }
  Var forward(Context&, const Var& x) override { return softmax(x); }
};
// [batch, ...] -> [batch, prod(...)].
class Flatten : public Module {
 public:
  std::string type_name() const override { return "Flatten"; }
  Var forward(Context&, const Var& x) override { return reshape(x, {x.dim(0), x.value().size() / std::max<std::int64_t>(x.dim(0), 1)}); }
};

// Children named "0", "1", ... run in order.
class Sequential : public Module {
 public:
  std::string type_name() const override { return "Sequential"; }
  template <class M, class... Args>
  M& add(Args&&... args) {
    return add_module<M>(std::to_string(children().size()), std::forward<Args>(args)...);
  }
  Var forward(Context& ctx, const Var& x) override {
    Var h = x;
    for (const auto& c : children()) h = (*c)(ctx, h);
    return h;
  }
};

// x + body(x): the residual connection; the body is the child "body".
template <class Body>
class Residual : public Module {
 public:
  template <class... Args>
  explicit Residual(Args&&... args) : body_(add_module<Body>("body", std::forward<Args>(args)...)) {}
  std::string type_name() const override { return "Residual"; }
  Var forward(Context& ctx, const Var& x) override { return add(x, body_(ctx, x)); }
  Body& body() { return body_; }

 private:
  Body& body_;
};

// Single-head self-attention over x[batch, tokens, dim]: query/key/value/output Linear children
// and two activation products (einsum0: scores = q·kᵀ, einsum1: probs·v) as op sites.
class SelfAttention : public Module {
 public:
  SelfAttention(std::int64_t dim, Rng& rng)
      : dim_(dim),
        query_(add_module<Linear>("query", dim, dim, rng)),
        key_(add_module<Linear>("key", dim, dim, rng)),
        value_(add_module<Linear>("value", dim, dim, rng)),
        output_(add_module<Linear>("output", dim, dim, rng)) {}
  std::string type_name() const override { return "SelfAttention"; }
  Var forward(Context& ctx, const Var& x) override {
    detail::require_rank(x, 3, "SelfAttention input");
    const Var q = query_(ctx, x), k = key_(ctx, x), v = value_(ctx, x);
    const Var scores = scale(site(ctx, SiteKind::kEinsum, q, k, nullptr), 1.0f / std::sqrt(static_cast<float>(dim_)));
    const Var probs = softmax(scores);
    const Var mixed = site(ctx, SiteKind::kEinsum, probs, transpose_last2(v), nullptr);
    return output_(ctx, mixed);
  }

 private:
  std::int64_t dim_;
  Linear& query_;
  Linear& key_;
  Linear& value_;
  Linear& output_;
};

}  // namespace qforge::nn
