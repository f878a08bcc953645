// QT's backward on tiled (and asymmetric) operands: both products run in integers, the gradient
// scale-shifted and quantized once per forward K tile. Checked two ways against the residual
// codes: exactly (the integer scheme, to float rounding) and against the float product of the
// dequantized operands within the bound the gradient's rounding allows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "qforge/nn/zoo.hpp"
#include "qforge/providers/qt.hpp"
#include "providers/provider_test_util.hpp"

namespace qforge::providers {
namespace {

using test_util::check_backward;
using test_util::Check;
using test_util::random_tensor;

TensorF transpose(const TensorF& x) { return detail::transpose2(x); }

struct Config {
  const char* name;
  std::string weight_method, act_method;
  bool act_static;
};

TEST(QtTiledBackward, BothProductsRunInIntegersPerForwardTile) {
  const Config configs[] = {
      {"tile 8, symmetric", "absmax", "absmax", false},
      {"tile 8, asymmetric activation (minmax)", "absmax", "minmax", false},
      {"tile 8, asymmetric weight (minmax)", "minmax", "absmax", false},
      {"tile 8, static asymmetric activation", "absmax", "minmax", true},
  };
  constexpr std::int64_t M = 6, N = 12, K = 24;
  for (const Config& cfg : configs)
    for (std::uint64_t seed : {1u, 2u, 3u}) {
      SCOPED_TRACE(fmt::format("{}, seed {}", cfg.name, seed));
      nn::Rng rng(seed);
      nn::Linear lin(K, N, rng);
      rules::QtRule rule;
      rule.weight_qtype = QType::kInt8;
      rule.act_qtype = QType::kInt8;
      rule.bwd_qtype = QType::kInt8;
      rule.tile_size = std::int64_t{8};
      rule.weight_calibration_method = cfg.weight_method;
      rule.act_calibration_method = cfg.act_method;
      rule.act_static_scale = cfg.act_static;
      nn::Var x(random_tensor({M, K}, 100 + seed, -1.0f, 2.0f), true);  // skewed: minmax gets a zero point
      const TensorF r = random_tensor({M, N}, 200 + seed);
      const auto report = quantize_model(lin, QtProvider({rule}), {x.value()});
      EXPECT_EQ(report.sites.front().mode, "qt");
      nn::Context ctx(lin.interceptor().get(), true);
      nn::backward(lin.forward(ctx, x), r);

      // The forward residuals, as the provider makes them.
      const rules::SiteConfig sc = rules::to_site_config(rule, 0);
      const QArray qw = quantize(lin.weight().var.value(), weight_how(sc, {N, K}));
      HowToQuantize xh = act_how(sc, {M, K}, 1);
      QArray qx = quantize(x.value(), xh);
      if (cfg.act_static) {
        ActivationStats st;
        detail::record_range(st, detail::batch_range(x.value(), xh, "x"), xh.calibration_method, "x");
        qx = quantize_with_scale(x.value(), detail::PtqInterceptor::static_how(xh), detail::frozen_scale(st, QType::kInt8));
      }
      ASSERT_EQ(qx.scale().shape()[1], 3);
      ASSERT_EQ(qw.scale().shape()[1], 3);
      EXPECT_EQ(qx.zero_point().has_value(), cfg.act_method == "minmax");
      EXPECT_EQ(qw.zero_point().has_value(), cfg.weight_method == "minmax");

      const Check dx = check_backward(r, qw, x.grad());                                   // dx = r · dq(W)
      const Check dw = check_backward(transpose(r), qx, lin.weight().var.grad());          // dW = rᵀ · dq(x)
      std::printf("%s, seed %llu: dx exact/ulps %.2g, err/bound %.3f, rel %.4f | dW exact/ulps %.2g, err/bound %.3f, rel %.4f\n",
                  cfg.name, static_cast<unsigned long long>(seed), dx.exact_ratio, dx.bound_ratio, dx.float_rel,
                  dw.exact_ratio, dw.bound_ratio, dw.float_rel);
      EXPECT_LE(dx.exact_ratio, 1.0);
      EXPECT_LE(dw.exact_ratio, 1.0);
      EXPECT_LE(dx.bound_ratio, 1.0);
      EXPECT_LE(dw.bound_ratio, 1.0);
    }
}

}  // namespace
}  // namespace qforge::providers
