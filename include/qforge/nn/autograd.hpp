// Reverse-mode automatic differentiation over qforge::TensorF.
//
// A Var is a handle on a Node: a value, a gradient (allocated on first use) and, for results of
// differentiable ops, the inputs and a closure that pushes this node's gradient into theirs.
// backward(loss) walks the graph in reverse topological order. The graph lives as long as the
// Vars that reference it; parameters are long-lived leaves whose gradients accumulate until an
// optimizer clears them. Ops skip recording when no input requires a gradient (inference).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "qforge/core/tensor.hpp"

namespace qforge::nn {

struct Node {
  TensorF value;
  TensorF grad;  // empty until a gradient arrives
  bool requires_grad = false;
  std::vector<std::shared_ptr<Node>> inputs;
  // Reads self.grad and accumulates into the inputs' gradients.
  std::function<void(Node& self)> backward_fn;

  // Accumulates `g` into this node's gradient (allocating it on first use).
  void accumulate(const TensorF& g) {
    if (grad.size() != value.size()) grad = TensorF(value.shape());
    if (g.size() != grad.size())
      throw_error(Status::kInternal, "gradient of shape {} does not fit value of shape {}", shape_str(g.shape()),
                  shape_str(value.shape()));
    float* d = grad.data();
    const float* s = g.data();
    for (std::int64_t i = 0; i < g.size(); ++i) d[i] += s[i];
  }
  // A writable gradient buffer of the value's shape (zeros on first use).
};

class Var {
 public:
  Var() : node_(std::make_shared<Node>()) {}
  explicit Var(TensorF value, bool requires_grad = false) : node_(std::make_shared<Node>()) {
    node_->value = std::move(value);
    node_->requires_grad = requires_grad;
  }
  explicit Var(std::shared_ptr<Node> node) : node_(std::move(node)) {}

  const TensorF& value() const noexcept { return node_->value; }
  TensorF& value() noexcept { return node_->value; }
  const TensorF& grad() const noexcept { return node_->grad; }
  TensorF& grad() noexcept { return node_->grad; }
  bool has_grad() const noexcept { return !node_->grad.empty() && node_->grad.size() == node_->value.size(); }
  bool requires_grad() const noexcept { return node_->requires_grad; }
  void set_requires_grad(bool r) noexcept { node_->requires_grad = r; }
  const Shape& shape() const noexcept { return node_->value.shape(); }
  std::int64_t dim(int axis) const { return node_->value.dim(axis); }
  int rank() const noexcept { return node_->value.rank(); }
  const std::shared_ptr<Node>& node() const noexcept { return node_; }
  void zero_grad() { node_->grad = TensorF(); }

 private:
  std::shared_ptr<Node> node_;
};

// Records the result of a differentiable op. `backward` is called with the result node once its
// gradient is complete; it is dropped when no input requires a gradient.
inline Var make_result(TensorF value, std::vector<Var> inputs, std::function<void(Node&)> backward) {
  Var out(std::move(value));
  bool any = false;
  for (const Var& v : inputs) any = any || v.requires_grad();
  if (!any) return out;
  Node& n = *out.node();
  n.requires_grad = true;
  for (Var& v : inputs) n.inputs.push_back(v.node());
  n.backward_fn = std::move(backward);
  return out;
}

// Gradient of `root` with respect to every node that requires one, seeded with `seed` (ones for
// a scalar loss when `seed` is empty).
inline void backward(const Var& root, const TensorF& seed = TensorF()) {
  if (!root.requires_grad()) throw_error(Status::kInvalidArgument, "backward: the value does not depend on any parameter");
  // Iterative post-order DFS: a node comes after all nodes it feeds into when reversed.
  std::vector<Node*> order;
  std::unordered_set<Node*> seen;
  std::vector<std::pair<Node*, std::size_t>> stack{{root.node().get(), 0}};
  seen.insert(root.node().get());
  while (!stack.empty()) {
    auto& [node, next] = stack.back();
    if (next < node->inputs.size()) {
      Node* child = node->inputs[next++].get();
      if (child->requires_grad && seen.insert(child).second) stack.emplace_back(child, 0);
    } else {
      order.push_back(node);
      stack.pop_back();
    }
  }
  Node& r = *root.node();
  if (seed.empty()) {
    r.grad = TensorF(r.value.shape(), 1.0f);
  } else {
    if (seed.shape() != r.value.shape())
      throw_error(Status::kShapeMismatch, "backward: seed shape {} differs from value shape {}", shape_str(seed.shape()),
                  shape_str(r.value.shape()));
    r.grad = seed;
  }
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* n = *it;
    if (n->backward_fn && n->grad.size() == n->value.size() && !n->grad.empty()) n->backward_fn(*n);
  }
  // Free interior gradients and closures: only leaves (parameters) keep theirs.
  for (Node* n : order)
    if (n->backward_fn) {
      n->grad = TensorF();
      n->backward_fn = nullptr;
      n->inputs.clear();
    }
}

}  // namespace qforge::nn
