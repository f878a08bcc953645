#include <random>

#include <gtest/gtest.h>

#include "qforge/nn/zoo.hpp"
#include "qforge/providers/calibrating.hpp"

namespace qp = qforge::providers;
namespace qr = qforge::rules;
namespace nn = qforge::nn;

namespace {
qforge::TensorF correlated_batch(std::int64_t rows, std::int64_t cols, std::mt19937& gen) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  qforge::TensorF x({rows, cols});
  for (std::int64_t r = 0; r < rows; ++r) {
    float prev = d(gen);
    for (std::int64_t j = 0; j < cols; ++j) x[r * cols + j] = prev = j == 0 ? prev : 0.9f * prev + 0.43f * d(gen);
  }
  return x;
}

double output_error(nn::Module& a, nn::Module& b, const qp::Batches& batches) {
  double e = 0;
  for (const auto& x : batches) {
    nn::Context ca, cb;
    const auto ya = a.forward(ca, nn::Var(x)).value(), yb = b.forward(cb, nn::Var(x)).value();
    for (std::int64_t i = 0; i < ya.size(); ++i) e += (static_cast<double>(ya[i]) - yb[i]) * (ya[i] - yb[i]);
  }
  return e;
}

template <class Rule>
double run(Rule rule, unsigned seed, qp::CalibratedResult* out = nullptr) {
  nn::Rng rng_f(seed), rng_q(seed);
  nn::Mlp fp({32, 48, 48, 8}, rng_f), q({32, 48, 48, 8}, rng_q);
  std::mt19937 gen(seed);
  qp::Batches batches;
  for (int i = 0; i < 4; ++i) batches.push_back(correlated_batch(64, 32, gen));
  auto r = qp::calibrate_and_quantize(q, {rule}, batches);
  if (out) *out = std::move(r);
  return output_error(fp, q, batches);
}
}  // namespace

TEST(CalibratingProvider, GptqAndQepOnASmallMlpBeatRtn) {
  for (unsigned seed : {301u, 302u}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    qr::GptqRule g;
    g.weight_qtype = qforge::QType::kInt3;
    g.group_size = 16;
    qp::CalibratedResult res;
    const double e_gptq = run(g, seed, &res);
    ASSERT_EQ(res.layers.size(), 3u);
    EXPECT_EQ(res.stats.at(res.layers[0].site).tokens, 4 * 64);
    // RTN: GPTQ with a diagonal-only Hessian is RTN; emulate via a huge damping factor.
    qr::GptqRule rtn = g;
    rtn.damping_factor = 1e9;
    const double e_rtn = run(rtn, seed);
    EXPECT_LT(e_gptq, e_rtn);
    qr::QepRule qep;
    qep.weight_qtype = qforge::QType::kInt3;
    qep.group_size = 16;
    const double e_qep = run(qep, seed, &res);
    EXPECT_FALSE(res.stats.at(res.layers[1].site).h_delta.empty());
    EXPECT_LT(e_qep, e_rtn);
    EXPECT_LT(e_qep, e_gptq);  // the quantized prefix feeds noise forward; QEP corrects for it
    std::printf("seed %u: output error rtn %.4g gptq %.4g qep %.4g\n", seed, e_rtn, e_gptq, e_qep);
  }
}
