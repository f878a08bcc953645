// Module tree, op-site ids, and gradients of every op against central finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>

#include "qforge/nn/nn.hpp"

namespace qforge::nn {
namespace {

TensorF random_tensor(Shape shape, Rng& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  TensorF t(std::move(shape));
  for (auto& v : t.vec()) v = d(rng);
  return t;
}

// Checks d(sum(w ⊙ f(x)))/dx against central differences for every input in `inputs`.
// Tolerance: float32 forward with step h = 1e-2 gives truncation O(h²·f''') plus rounding
// O(eps·|f|/h) ≈ 1e-5/1e-2; 2e-3 relative to max(1, |g|) covers both for these smooth ops.
void check_gradients(std::vector<Var> inputs, const std::function<Var(const std::vector<Var>&)>& f, std::uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Rng rng(seed);
  for (auto& v : inputs) v.set_requires_grad(true);
  Var y = f(inputs);
  const TensorF w = random_tensor(y.shape(), rng);
  backward(y, w);
  auto objective = [&]() {
    const Var out = f(inputs);
    double s = 0;
    for (std::int64_t i = 0; i < w.size(); ++i) s += double(w[i]) * out.value()[i];
    return s;
  };
  const float h = 1e-2f;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    ASSERT_TRUE(inputs[k].has_grad()) << "input " << k;
    const TensorF analytic = inputs[k].grad();
    for (std::int64_t i = 0; i < inputs[k].value().size(); ++i) {
      float& x = inputs[k].value()[i];
      const float keep = x;
      x = keep + h;
      const double up = objective();
      x = keep - h;
      const double down = objective();
      x = keep;
      const double numeric = (up - down) / (2 * h);
      EXPECT_NEAR(analytic[i], numeric, 2e-3 * std::max(1.0, std::fabs(numeric))) << "input " << k << " element " << i;
    }
  }
}

TEST(NnGradients, Products) {
  Rng rng(1);
  check_gradients({Var(random_tensor({3, 4}, rng)), Var(random_tensor({5, 4}, rng))},
                  [](const auto& v) { return matmul_nt(v[0], v[1]); }, 1);
  check_gradients({Var(random_tensor({2, 3, 4}, rng)), Var(random_tensor({2, 5, 4}, rng))},
                  [](const auto& v) { return batched_matmul_nt(v[0], transpose_last2(transpose_last2(v[1]))); }, 2);
}

TEST(NnGradients, Elementwise) {
  Rng rng(3);
  // Inputs away from 0 so ReLU's kink is not inside the finite-difference step.
  TensorF x = random_tensor({4, 6}, rng, 0.1f, 1.0f);
  for (std::int64_t i = 0; i < x.size(); i += 2) x[i] = -x[i];
  check_gradients({Var(x)}, [](const auto& v) { return relu(v[0]); }, 3);
  check_gradients({Var(x)}, [](const auto& v) { return gelu(v[0]); }, 4);
  check_gradients({Var(x)}, [](const auto& v) { return silu(v[0]); }, 5);
  check_gradients({Var(x)}, [](const auto& v) { return softmax(v[0]); }, 6);
  check_gradients({Var(x), Var(random_tensor({6}, rng))}, [](const auto& v) { return add_bias(v[0], v[1]); }, 7);
  check_gradients({Var(x), Var(random_tensor({4, 6}, rng))}, [](const auto& v) { return add(v[0], scale(v[1], 3.0f)); }, 8);
}

TEST(NnGradients, Norms) {
  Rng rng(9);
  const TensorF x = random_tensor({3, 8}, rng);
  check_gradients({Var(x), Var(random_tensor({8}, rng, 0.5f, 1.5f)), Var(random_tensor({8}, rng))},
                  [](const auto& v) { return normalize_last_axis(v[0], v[1], &v[2], 1e-5f, true); }, 9);
  check_gradients({Var(x), Var(random_tensor({8}, rng, 0.5f, 1.5f))},
                  [](const auto& v) { return normalize_last_axis(v[0], v[1], nullptr, 1e-6f, false); }, 10);
}

TEST(NnGradients, ConvolutionAndShapes) {
  Rng rng(11);
  const Conv2dGeometry g{2, 2, 5, 5, 3, 3, 2, 1, 3, 3};
  check_gradients({Var(random_tensor({2, 2, 5, 5}, rng)), Var(random_tensor({4, 18}, rng))},
                  [g](const auto& v) { return rows_to_nchw(matmul_nt(im2col(v[0], g), v[1]), 2, 3, 3); }, 11);
  check_gradients({Var(random_tensor({4, 5}, rng))}, [](const auto& v) {
    return embedding_lookup(Var(TensorF({3}, {2.0f, 0.0f, 2.0f})), v[0]);
  }, 12);
}

TEST(NnGradients, Losses) {
  Rng rng(13);
  const TensorF target = random_tensor({3, 4}, rng);
  check_gradients({Var(random_tensor({3, 4}, rng))}, [&](const auto& v) { return mse_loss(v[0], target); }, 13);
  const std::vector<int> labels{1, 3, 0};
  check_gradients({Var(random_tensor({3, 4}, rng))}, [&](const auto& v) { return softmax_cross_entropy(v[0], labels); }, 14);
}

TEST(NnGradients, ConvMatchesDirectConvolution) {
  Rng rng(15);
  Conv2d conv(2, 3, 3, rng, 1, 1);
  const TensorF x = random_tensor({1, 2, 4, 4}, rng);
  const Var y = conv(Var(x));
  const TensorF& w = conv.weight().var.value();
  const TensorF& b = conv.parameter("bias")->var.value();
  for (int o = 0; o < 3; ++o)
    for (int oy = 0; oy < 4; ++oy)
      for (int ox = 0; ox < 4; ++ox) {
        double acc = b[o];
        for (int c = 0; c < 2; ++c)
          for (int ky = 0; ky < 3; ++ky)
            for (int kx = 0; kx < 3; ++kx) {
              const int iy = oy + ky - 1, ix = ox + kx - 1;
              if (iy < 0 || iy >= 4 || ix < 0 || ix >= 4) continue;
              acc += double(w[((o * 2 + c) * 3 + ky) * 3 + kx]) * x[(c * 4 + iy) * 4 + ix];
            }
        EXPECT_NEAR(y.value()[(o * 4 + oy) * 4 + ox], acc, 1e-5) << o << " " << oy << " " << ox;
      }
}

// A user model: encoder.layer.0.attention.{query,key,value,output} plus a residual MLP.
struct Block : Module {
  explicit Block(Rng& rng) : attention(add_module<SelfAttention>("attention", 8, rng)), norm(add_module<LayerNorm>("norm", 8)) {}
  Var forward(Context& ctx, const Var& x) override { return norm(ctx, add(x, attention(ctx, x))); }
  SelfAttention& attention;
  LayerNorm& norm;
};
struct Encoder : Module {
  explicit Encoder(Rng& rng) {
    auto& layers = add_module<Sequential>("layer");
    layers.add<Block>(rng);
    layers.add<Block>(rng);
  }
  Var forward(Context& ctx, const Var& x) override { return (*children()[0])(ctx, x); }
};
struct Model : Module {
  explicit Model(Rng& rng) : encoder(add_module<Encoder>("encoder", rng)), head(add_module<Linear>("head", 8, 3, rng)) {}
  Var forward(Context& ctx, const Var& x) override { return head(ctx, encoder(ctx, x)); }
  Encoder& encoder;
  Linear& head;
};

struct SiteRecorder : Interceptor {
  std::vector<std::string> ids;
  std::optional<Var> intercept(Context&, const SiteCall& call) override {
    ids.push_back(call.site.id());
    return std::nullopt;
  }
};

TEST(NnModules, PathsParametersAndStableSiteIds) {
  Rng rng(17);
  Model m(rng);
  bool found = false;
  for (auto& [name, p] : m.named_parameters()) found = found || name == "encoder.layer.0.attention.query.weight";
  EXPECT_TRUE(found);
  auto recorder = std::make_shared<SiteRecorder>();
  m.install_interceptor(recorder);
  const Var x(random_tensor({2, 5, 8}, rng));
  m(x);
  const auto first = recorder->ids;
  recorder->ids.clear();
  m(x);
  EXPECT_EQ(first, recorder->ids);
  ASSERT_EQ(first.size(), 2u * 6u + 1u);
  EXPECT_EQ(first[0], "encoder.layer.0.attention.query/dot_general0");
  EXPECT_EQ(first[3], "encoder.layer.0.attention/einsum0");
  EXPECT_EQ(first[4], "encoder.layer.0.attention/einsum1");
  EXPECT_EQ(first.back(), "head/dot_general0");
}

TEST(NnModules, RejectsBadNamesAndShapes) {
  Rng rng(19);
  Sequential s;
  EXPECT_THROW(s.add_module<ReLU>("a.b"), Error);
  auto& fc = s.add<Linear>(4, 2, rng);
  EXPECT_EQ(fc.path(), "0");
  EXPECT_THROW(s(Var(TensorF({1, 5}))), Error);
}

TEST(NnTraining, AdamAndSgdFitALinearMap) {
  for (int use_adam = 0; use_adam < 2; ++use_adam) {
    Rng rng(21);
    Sequential model;
    model.add<Linear>(3, 2, rng);
    const TensorF x = random_tensor({32, 3}, rng);
    TensorF y({32, 2});
    for (int i = 0; i < 32; ++i) {
      y.at(i, 0) = x.at(i, 0) - 2 * x.at(i, 2) + 0.5f;
      y.at(i, 1) = 3 * x.at(i, 1);
    }
    std::unique_ptr<Optimizer> opt;
    if (use_adam) opt = std::make_unique<Adam>(model, 0.05f);
    else opt = std::make_unique<Sgd>(model, 0.1f, 0.9f);
    float loss = 0;
    for (int step = 0; step < 300; ++step) {
      const Var l = mse_loss(model(Var(x), true), y);
      loss = l.value()[0];
      backward(l);
      opt->step();
    }
    EXPECT_LT(loss, 1e-3) << (use_adam ? "adam" : "sgd");
  }
}

TEST(NnTraining, NonFiniteGradientIsAnError) {
  Rng rng(23);
  Sequential model;
  auto& fc = model.add<Linear>(2, 1, rng);
  Sgd opt(model, 0.1f);
  const Var l = mse_loss(model(Var(TensorF({1, 2}, {1.0f, 2.0f})), true), TensorF({1, 1}, 0.0f));
  backward(l);
  fc.weight().var.grad()[0] = NAN;
  try {
    opt.step();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("0.weight"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qforge::nn
