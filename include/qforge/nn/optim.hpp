// Optimizers over a model's trainable parameters: SGD with (heavy-ball) momentum and Adam
// (Kingma & Ba, bias-corrected). step() reads each parameter's gradient, updates the value and
// clears the gradient; a parameter without a gradient (unused this step) is left alone. A
// non-finite gradient is an error naming the parameter, so training never silently diverges.
#pragma once

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "qforge/nn/module.hpp"

namespace qforge::nn {

class Optimizer {
 public:
  explicit Optimizer(std::vector<std::pair<std::string, Parameter*>> params) : params_(std::move(params)) {}
  // All trainable parameters of `model`, named by path.
  explicit Optimizer(Module& model) {
    for (auto& [name, p] : model.named_parameters())
      if (p->trainable) params_.emplace_back(name, p);
  }
  virtual ~Optimizer() = default;
  void step() {
    for (std::size_t i = 0; i < params_.size(); ++i) {
      Var& v = params_[i].second->var;
      if (!v.has_grad()) continue;
      for (float g : v.grad().vec())
        if (!std::isfinite(g))
          throw_error(Status::kNumericalError, "optimizer: parameter '{}' has a non-finite gradient", params_[i].first);
      update(i, v.value(), v.grad());
      v.zero_grad();
    }
  }
  void zero_grad() {
    for (auto& [n, p] : params_) p->var.zero_grad();
  }

 protected:
  virtual void update(std::size_t slot, TensorF& value, const TensorF& grad) = 0;
  std::vector<std::pair<std::string, Parameter*>> params_;
};

class Sgd : public Optimizer {
 public:
  Sgd(Module& model, float lr, float momentum = 0.0f) : Optimizer(model), lr_(lr), momentum_(momentum) {}

 protected:
  void update(std::size_t slot, TensorF& value, const TensorF& grad) override {
    if (velocity_.size() <= slot) velocity_.resize(slot + 1);
    TensorF& vel = velocity_[slot];
    if (vel.size() != value.size()) vel = TensorF(value.shape());
    for (std::int64_t i = 0; i < value.size(); ++i) {
      vel[i] = momentum_ * vel[i] + grad[i];
      value[i] -= lr_ * vel[i];
    }
  }

 private:
  float lr_, momentum_;
  std::vector<TensorF> velocity_;
};

class Adam : public Optimizer {
 public:
  Adam(Module& model, float lr, float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f)
      : Optimizer(model), lr_(lr), beta1_(beta1), beta2_(beta2), eps_(eps) {}

 protected:
  void update(std::size_t slot, TensorF& value, const TensorF& grad) override {
    if (state_.size() <= slot) state_.resize(slot + 1);
    State& s = state_[slot];
    if (s.m.size() != value.size()) s = State{TensorF(value.shape()), TensorF(value.shape()), 0};
    ++s.t;
    const double c1 = 1.0 - std::pow(beta1_, s.t), c2 = 1.0 - std::pow(beta2_, s.t);
    for (std::int64_t i = 0; i < value.size(); ++i) {
      s.m[i] = beta1_ * s.m[i] + (1 - beta1_) * grad[i];
      s.v[i] = beta2_ * s.v[i] + (1 - beta2_) * grad[i] * grad[i];
      const double mh = s.m[i] / c1, vh = s.v[i] / c2;
      value[i] -= static_cast<float>(lr_ * mh / (std::sqrt(vh) + eps_));
    }
  }

 private:
  struct State {
    TensorF m, v;
    int t = 0;
  };
  float lr_, beta1_, beta2_, eps_;
  std::vector<State> state_;
};

}  // namespace qforge::nn
