// Small reference models and the loops that train and evaluate them: the networks qforge's
// examples and accuracy tests quantize. Parameter names follow the checkpoint convention
// ("layers.0.weight"), so a saved model loads anywhere that convention is used.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "qforge/data/digits.hpp"
#include "qforge/nn/layers.hpp"
#include "qforge/nn/optim.hpp"

namespace qforge::nn {

// Multi-layer perceptron: Linear -> ReLU -> ... -> Linear, children of "layers".
class Mlp : public Module {
 public:
  Mlp(const std::vector<std::int64_t>& widths, Rng& rng) {
    auto& seq = add_module<Sequential>("layers");
    for (std::size_t i = 0; i + 1 < widths.size(); ++i) {
      seq.add<Linear>(widths[i], widths[i + 1], rng);
      if (i + 2 < widths.size()) seq.add<ReLU>();
    }
  }
  std::string type_name() const override { return "Mlp"; }
  Var forward(Context& ctx, const Var& x) override { return (*children()[0])(ctx, x); }
};

// A small CNN for 8x8 single-channel images: conv3x3(1->16) ReLU conv3x3(16->32, stride 2)
// ReLU, flatten, Linear(32*4*4 -> 10). Input rows of 64 pixels are viewed as [N, 1, 8, 8].
class DigitsCnn : public Module {
 public:
  explicit DigitsCnn(Rng& rng) {
    auto& seq = add_module<Sequential>("layers");
    seq.add<Conv2d>(1, 16, 3, rng, 1, 1);
    seq.add<ReLU>();
    seq.add<Conv2d>(16, 32, 3, rng, 2, 1);
    seq.add<ReLU>();
    seq.add<Flatten>();
    seq.add<Linear>(32 * 4 * 4, 10, rng);
  }
  std::string type_name() const override { return "DigitsCnn"; }
  Var forward(Context& ctx, const Var& x) override {
    const Var img = x.rank() == 2 ? reshape(x, {x.dim(0), 1, 8, 8}) : x;
    return (*children()[0])(ctx, img);
  }
};

struct TrainOptions {
  int epochs = 30;
  std::int64_t batch = 64;
  float lr = 2e-3f;
  std::uint64_t seed = 0;  // shuffling order
};

// Mini-batch Adam on softmax cross-entropy. Returns the final epoch's mean loss.
inline double train_classifier(Module& model, const data::LabelledImages& train, const TrainOptions& opt,
                               Optimizer* optimizer = nullptr) {
  Adam adam(model, opt.lr);
  Optimizer& o = optimizer ? *optimizer : adam;
  Rng rng(opt.seed);
  std::vector<std::int64_t> order(static_cast<std::size_t>(train.size()));
  std::iota(order.begin(), order.end(), 0);
  double epoch_loss = 0;
  for (int epoch = 0; epoch < opt.epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    epoch_loss = 0;
    int batches = 0;
    for (std::int64_t b = 0; b < train.size(); b += opt.batch) {
      const std::int64_t e = std::min(train.size(), b + opt.batch);
      TensorF x({e - b, 64});
      std::vector<int> y;
      for (std::int64_t i = b; i < e; ++i) {
        const std::int64_t src = order[static_cast<std::size_t>(i)];
        std::copy(train.images.data() + src * 64, train.images.data() + (src + 1) * 64, x.data() + (i - b) * 64);
        y.push_back(train.labels[static_cast<std::size_t>(src)]);
      }
      Var loss = softmax_cross_entropy(model(Var(std::move(x)), /*training=*/true), y);
      backward(loss);
      o.step();
      epoch_loss += loss.value()[0];
      ++batches;
    }
    epoch_loss /= std::max(batches, 1);
  }
  return epoch_loss;
}

// Fraction of images whose arg-max logit is the label.
inline double accuracy(Module& model, const data::LabelledImages& d) {
  const Var logits = model(Var(d.images));
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < d.size(); ++i) {
    const float* z = logits.value().data() + i * 10;
    correct += (std::max_element(z, z + 10) - z) == d.labels[static_cast<std::size_t>(i)];
  }
  return static_cast<double>(correct) / static_cast<double>(d.size());
}

}  // namespace qforge::nn
