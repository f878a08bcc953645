// Module: a node of the model tree. Users write models by subclassing Module, registering child
// modules and parameters in the constructor and overriding forward(). Paths join names with '.'
// (the checkpoint convention: "encoder.layer.0.attention.query"); parameters are named
// "<module path>.<name>". Children and parameters have stable addresses for the module's life.
#pragma once

#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "qforge/nn/context.hpp"

namespace qforge::nn {

using Rng = std::mt19937_64;

struct Parameter {
  std::string name;  // local name within its module ("weight")
  Var var;
  bool trainable = true;
  // Frozen parameters get no gradient and optimizers skip them (LoRA freezes its base weights).
  void set_trainable(bool t) {
    trainable = t;
    var.set_requires_grad(t);
  }
};

class Module {
 public:
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  virtual ~Module() = default;

  virtual Var forward(Context& ctx, const Var& x) = 0;
  // A short type name for reports ("Linear", "Conv2d"); user modules may override it.
  virtual std::string type_name() const { return "Module"; }

  Var operator()(Context& ctx, const Var& x) { return forward(ctx, x); }
  // Top-level call: a fresh Context with this model's installed provider.
  Var operator()(const Var& x, bool training = false) {
    Context ctx(interceptor_.get(), training);
    return forward(ctx, x);
  }

  const std::string& name() const noexcept { return name_; }
  Module* parent() const noexcept { return parent_; }
  std::string path() const {
    if (!parent_) return "";
    const std::string up = parent_->path();
    return up.empty() ? name_ : up + "." + name_;
  }

  template <class M, class... Args>
  M& add_module(std::string name, Args&&... args) {
    check_new_name(name);
    auto child = std::make_unique<M>(std::forward<Args>(args)...);
    M& ref = *child;
    child->name_ = std::move(name);
    child->parent_ = this;
    children_.push_back(std::move(child));
    return ref;
  }

  Parameter& add_parameter(std::string name, TensorF value, bool trainable = true) {
    check_new_name(name);
    auto p = std::make_unique<Parameter>();
    p->name = std::move(name);
    p->var = Var(std::move(value), trainable);
    p->trainable = trainable;
    params_.push_back(std::move(p));
    return *params_.back();
  }
  // Removes a parameter this module owns (providers use it to undo what they added).
  void remove_parameter(const std::string& name) {
    std::erase_if(params_, [&](const auto& p) { return p->name == name; });
  }

  Parameter* find_parameter(const std::string& local_name) const {
    for (const auto& p : params_)
      if (p->name == local_name) return p.get();
    return nullptr;
  }
  const std::vector<std::unique_ptr<Module>>& children() const noexcept { return children_; }

  // This module and all below it, depth first, with their paths.
  std::vector<std::pair<std::string, Module*>> named_modules() {
    std::vector<std::pair<std::string, Module*>> out;
    collect_modules(out);
    return out;
  }
  // Every parameter below this module, named "<path>.<name>".
  std::vector<std::pair<std::string, Parameter*>> named_parameters() {
    std::vector<std::pair<std::string, Parameter*>> out;
    for (auto& [path, m] : named_modules())
      for (const auto& p : m->params_) out.emplace_back(path.empty() ? p->name : path + "." + p->name, p.get());
    return out;
  }
  // The parameters an optimizer updates.
  std::vector<Parameter*> trainable_parameters() {
    std::vector<Parameter*> out;
    for (auto& [name, p] : named_parameters())
      if (p->trainable) out.push_back(p);
    return out;
  }
  Parameter* parameter(const std::string& full_name) {
    for (auto& [name, p] : named_parameters())
      if (name == full_name) return p;
    return nullptr;
  }

  // The provider that intercepts this model's op sites (set by quantize_model and friends).
  void install_interceptor(std::shared_ptr<Interceptor> interceptor) { interceptor_ = std::move(interceptor); }
  const std::shared_ptr<Interceptor>& interceptor() const noexcept { return interceptor_; }

 protected:
  // Runs a product as an op site of this module.
  Var site(Context& ctx, SiteKind kind, const Var& lhs, const Var& rhs, Parameter* weight,
           std::int64_t rows_per_scale_group = 1) {
    SiteCall call;
    call.site = ctx.next_site(path(), site_op_name(kind));
    call.kind = kind;
    call.lhs = lhs;
    call.rhs = rhs;
    call.weight = weight;
    call.module = this;
    call.rows_per_scale_group = rows_per_scale_group;
    return ctx.call_site(call);
  }

 private:
  void check_new_name(const std::string& name) const {
    if (name.empty() || name.find('.') != std::string::npos || name.find('/') != std::string::npos)
      throw_error(Status::kInvalidArgument, "module '{}': name '{}' must be non-empty and contain no '.' or '/'", path(), name);
    for (const auto& c : children_)
      if (c->name_ == name) throw_error(Status::kInvalidArgument, "module '{}': duplicate child '{}'", path(), name);
    for (const auto& p : params_)
      if (p->name == name) throw_error(Status::kInvalidArgument, "module '{}': duplicate parameter '{}'", path(), name);
  }
  void collect_modules(std::vector<std::pair<std::string, Module*>>& out) {
    out.emplace_back(path(), this);
    for (auto& c : children_) c->collect_modules(out);
  }

  std::string name_;
  Module* parent_ = nullptr;
  std::vector<std::unique_ptr<Module>> children_;
  std::vector<std::unique_ptr<Parameter>> params_;
  std::shared_ptr<Interceptor> interceptor_;
};

}  // namespace qforge::nn
