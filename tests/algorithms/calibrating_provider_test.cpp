#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
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

namespace {
// One pre-norm-free transformer-ish block: attention (query/key/value read the same input, then
// output), and an MLP whose gate and up projections read the same input.
class TinyBlock : public nn::Module {
 public:
  TinyBlock(std::int64_t dim, std::int64_t hidden, nn::Rng& rng)
      : attn_(add_module<nn::Residual<nn::SelfAttention>>("attn", dim, rng)),
        gate_(add_module<nn::Linear>("gate", dim, hidden, rng)),
        up_(add_module<nn::Linear>("up", dim, hidden, rng)),
        down_(add_module<nn::Linear>("down", hidden, dim, rng)) {}
  nn::Var forward(nn::Context& ctx, const nn::Var& x) override {
    const nn::Var h = attn_(ctx, x);
    const nn::Var gate = nn::relu(gate_(ctx, h));
    const nn::Var up = up_(ctx, h);
    return down_(ctx, nn::add(gate, up));
  }

 private:
  nn::Residual<nn::SelfAttention>& attn_;
  nn::Linear& gate_;
  nn::Linear& up_;
  nn::Linear& down_;
};

qp::Batches token_batches(unsigned seed, int count, std::int64_t dim) {
  std::mt19937 gen(seed);
  qp::Batches out;
  for (int i = 0; i < count; ++i) {
    auto x = correlated_batch(2 * 8, dim, gen);
    out.push_back(qforge::TensorF({2, 8, dim}, x.vec()));
  }
  return out;
}

std::map<std::string, qforge::TensorF> parameters_of(nn::Module& m) {
  std::map<std::string, qforge::TensorF> out;
  for (auto& [name, p] : m.named_parameters()) out.emplace(name, p->var.value());
  return out;
}

bool bit_equal(const qforge::TensorF& a, const qforge::TensorF& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(float)) == 0;
}

template <class Rule>
void check_grouping_is_exact(Rule rule, std::int64_t passes_per_batch_and_stage) {
  nn::Rng rng_a(11), rng_b(11);
  TinyBlock grouped(16, 32, rng_a), separate(16, 32, rng_b);
  const qp::Batches batches = token_batches(12, 3, 16);
  const auto rg = qp::calibrate_and_quantize(grouped, {rule}, batches);
  const auto rs = qp::calibrate_and_quantize(separate, {rule}, batches, {.group_stages = false});
  const std::vector<std::vector<std::string>> stages = {
      {"attn.body.query", "attn.body.key", "attn.body.value"}, {"attn.body.output"}, {"gate", "up"}, {"down"}};
  EXPECT_EQ(rg.stages, stages);
  EXPECT_EQ(rs.stages.size(), 7u);
  EXPECT_EQ(rg.calibration_passes, 4 * 3 * passes_per_batch_and_stage);
  EXPECT_EQ(rs.calibration_passes, 7 * 3 * passes_per_batch_and_stage);
  const auto pg = parameters_of(grouped), ps = parameters_of(separate);
  for (const auto& [name, t] : pg) EXPECT_TRUE(bit_equal(t, ps.at(name))) << name;
  ASSERT_EQ(rg.stats.size(), rs.stats.size());
  for (const auto& [site, s] : rg.stats) {
    EXPECT_EQ(s.h, rs.stats.at(site).h) << site;
    EXPECT_EQ(s.h_delta, rs.stats.at(site).h_delta) << site;
    EXPECT_EQ(s.tokens, 3 * 16) << site;
  }
  // The shared Hessian really is shared: query and value see the same inputs.
  EXPECT_EQ(rg.stats.at("attn.body.query").h, rg.stats.at("attn.body.value").h);
}
}  // namespace

TEST(CalibratingProvider, SitesReadingTheSameInputShareOneStageWithTheSameResult) {
  qr::GptqRule g;
  g.weight_qtype = qforge::QType::kInt3;
  g.group_size = 8;
  check_grouping_is_exact(g, 1);
  qr::QepRule q;
  q.weight_qtype = qforge::QType::kInt3;
  q.group_size = 8;
  check_grouping_is_exact(q, 2);  // QEP: a quantized and a float pass per stage and batch
}

TEST(CalibratingProvider, ConvolutionSitesUseTheIm2colViewAndGptqBeatsRtn) {
  for (unsigned seed : {401u, 402u, 403u}) {
    SCOPED_TRACE(testing::Message() << "seed " << seed);
    std::mt19937 gen(seed);
    qp::Batches batches;
    for (int i = 0; i < 3; ++i) batches.push_back(correlated_batch(32, 64, gen));  // [N, 64] = 8x8 images
    auto run_cnn = [&](double damping, qp::CalibratedResult* out) {
      nn::Rng rng_f(seed), rng_q(seed);
      nn::DigitsCnn fp(rng_f), q(rng_q);
      qr::GptqRule g;
      g.weight_qtype = qforge::QType::kInt3;
      g.damping_factor = damping;
      *out = qp::calibrate_and_quantize(q, {g}, batches);
      return output_error(fp, q, batches);
    };
    qp::CalibratedResult res, rtn_res;
    const double e_gptq = run_cnn(0.01, &res);
    const double e_rtn = run_cnn(1e9, &rtn_res);  // a diagonal-only Hessian: GPTQ is RTN
    ASSERT_EQ(res.layers.size(), 3u);
    EXPECT_EQ(res.stats.at("layers.0").cols, 9);          // 1 channel x 3 x 3
    EXPECT_EQ(res.stats.at("layers.0").tokens, 3 * 32 * 64);  // one patch per output pixel
    EXPECT_EQ(res.stats.at("layers.2").cols, 16 * 9);
    EXPECT_EQ(res.stats.at("layers.2").tokens, 3 * 32 * 16);
    EXPECT_EQ(res.report.find("layers.0/conv_general_dilated0")->method, "gptq");
    EXPECT_LT(e_gptq, e_rtn);
    std::printf("cnn seed %u: output error rtn %.4g gptq %.4g\n", seed, e_rtn, e_gptq);
  }
}

TEST(CalibratingProvider, IntegerSitesInstallThroughThePtqMachineryAndReport) {
  for (bool static_range : {false, true}) {
    SCOPED_TRACE(static_range ? "static range" : "dynamic range");
    nn::Rng rng(5);
    nn::Mlp model({32, 48, 48, 8}, rng);
    std::mt19937 gen(6);
    qp::Batches batches;
    for (int i = 0; i < 3; ++i) batches.push_back(correlated_batch(64, 32, gen));
    qr::GptqRule g;
    g.weight_qtype = qforge::QType::kInt4;
    g.group_size = 16;
    g.act_qtype = qforge::QType::kInt8;
    g.act_static_scale = static_range;
    const auto res = qp::calibrate_and_quantize(model, {g}, batches);
    const auto* ptq = dynamic_cast<const qp::detail::PtqInterceptor*>(model.interceptor().get());
    ASSERT_NE(ptq, nullptr);
    EXPECT_EQ(qp::quantized_sites(model).size(), 3u);
    for (const auto& l : res.layers) {
      const auto& site = ptq->sites().at(l.site + "/dot_general0");
      ASSERT_TRUE(site.weight);
      EXPECT_EQ(site.weight->qtype(), qforge::QType::kInt4);
      const auto dq = qforge::dequantize(*site.weight);
      EXPECT_EQ(std::memcmp(dq.data(), l.layer.weight.data(), l.layer.weight.size() * sizeof(float)), 0) << l.site;
      EXPECT_TRUE(bit_equal(dq, model.parameter(l.site + ".weight")->var.value())) << l.site;
      const auto* r = res.report.find(l.site + "/dot_general0");
      ASSERT_NE(r, nullptr);
      EXPECT_EQ(r->mode, static_range ? "static-range" : "dynamic-range");
      EXPECT_EQ(r->method, "gptq");
      EXPECT_EQ(r->rule_index, 0);
      EXPECT_EQ(r->weight_qtype, "int4");
      EXPECT_EQ(r->act_qtype, "int8");
      EXPECT_EQ(r->weight_scale_shape, (qforge::Shape{l.layer.rows, l.layer.groups}));
      EXPECT_GT(r->weight_error.relative, 0.0);
      EXPECT_GT(r->loss, 0.0);
      EXPECT_GT(r->damping, 0.0);
      EXPECT_GT(r->hessian_rel_err, 0.0);
      EXPECT_LT(r->hessian_rel_err, 0.1);
      EXPECT_LT(r->bytes_after, r->bytes_before);
    }
    const auto j = res.report.to_json();
    EXPECT_EQ(j["sites"][0]["method"], "gptq");
    EXPECT_NE(res.report.to_string().find("gptq, loss"), std::string::npos);
    // The installed forward quantizes activations and multiplies in integers: close to, but not
    // the same as, the float product with the dequantized weights.
    nn::Context plain;
    const auto y_float = model.forward(plain, nn::Var(batches[0])).value();
    const auto y_int = model(nn::Var(batches[0])).value();
    double num = 0, den = 0;
    for (std::int64_t i = 0; i < y_float.size(); ++i) {
      num += (static_cast<double>(y_int[i]) - y_float[i]) * (y_int[i] - y_float[i]);
      den += static_cast<double>(y_float[i]) * y_float[i];
    }
    EXPECT_GT(num, 0.0);
    EXPECT_LT(num / den, static_range ? 5e-2 : 1e-3);  // a static scale clips rows above the mean range
  }
}

TEST(CalibratingProvider, ProviderFormReturnsTheReport) {
  nn::Rng rng(8);
  nn::Mlp model({32, 48, 8}, rng);
  std::mt19937 gen(9);
  qp::Batches batches = {correlated_batch(64, 32, gen)};
  qr::JointqRule j;
  j.module_path = "layers\\.0";
  j.weight_qtype = qforge::QType::kInt4;
  j.regularization_lambda = 0;
  qr::GptqRule unused;
  unused.module_path = "nothing";
  unused.weight_qtype = qforge::QType::kInt4;
  const auto report = qp::quantize_model(model, qp::CalibratingProvider({j, unused}), batches);
  EXPECT_EQ(report.provider, "calibrating");
  ASSERT_EQ(report.sites.size(), 2u);
  EXPECT_EQ(report.sites[0].method, "jointq");
  EXPECT_EQ(report.sites[0].mode, "weight-only");
  EXPECT_EQ(report.sites[1].mode, "float");
  EXPECT_EQ(report.sites[1].rule_index, -1);
  EXPECT_EQ(report.unused_rules, std::vector<int>{1});
}

TEST(CalibratingProvider, DampingRetriesReachTheReport) {
  nn::Rng rng(10);
  nn::Mlp model({32, 16}, rng);
  std::mt19937 gen(11);
  qp::Batches batches = {correlated_batch(4, 32, gen)};  // 4 tokens, 32 inputs: H is singular
  qr::GptqRule g;
  g.weight_qtype = qforge::QType::kInt4;
  g.damping_factor = 1e-10;  // below the rounding noise of the singular H: retried at 1e-9, 1e-8, ...
  const auto res = qp::calibrate_and_quantize(model, {g}, batches);
  ASSERT_EQ(res.layers.size(), 1u);
  const auto& notes = res.layers[0].layer.notes;
  ASSERT_FALSE(notes.empty());
  EXPECT_NE(res.report.sites[0].note.find(notes[0]), std::string::npos);
  // The absolute damping is factor · mean(diag H); a factor of 1 on the same H needs no retry, so
  // it reads mean(diag H) back. The retried damping must have risen by whole factors of ten.
  g.damping_factor = 1.0;
  nn::Rng same_rng(10);
  nn::Mlp same_model({32, 16}, same_rng);
  const double mean_diag = qp::calibrate_and_quantize(same_model, {g}, batches).report.sites[0].damping;
  ASSERT_GT(mean_diag, 0.0);
  const double rise = res.report.sites[0].damping / (1e-10 * mean_diag);
  std::printf("damping rose %gx above the requested value\n", rise);
  EXPECT_GE(rise, 10.0 * (1 - 1e-9));
  EXPECT_NEAR(std::log10(rise), std::round(std::log10(rise)), 1e-6);
}

TEST(CalibratingProvider, ErrorsNameSiteAndRuleAndChangeNothing) {
  nn::Rng rng(12);
  nn::Mlp model({32, 48, 48, 8}, rng);
  std::mt19937 gen(13);
  qp::Batches batches = {correlated_batch(64, 32, gen), correlated_batch(64, 32, gen)};
  const auto before = parameters_of(model);
  auto expect_error = [&](const std::vector<qr::AlgorithmRule>& rules, const std::vector<std::string>& parts,
                          const qp::Batches& data) {
    try {
      qp::calibrate_and_quantize(model, rules, data);
      ADD_FAILURE() << "no error";
    } catch (const qforge::Error& e) {
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
    for (const auto& [name, t] : parameters_of(model)) EXPECT_TRUE(bit_equal(t, before.at(name))) << name;
    EXPECT_EQ(model.interceptor(), nullptr);
  };
  qr::GptqRule ok;
  ok.module_path = "layers\\.[02]";
  ok.weight_qtype = qforge::QType::kInt4;
  qr::GptqRule bad = ok;
  bad.module_path = "layers\\.4";
  bad.group_size = 7;  // does not divide 48: fails at the last stage, after two were written
  expect_error({ok, bad}, {"site layers.4/dot_general0 (rule 1)"}, batches);
  qr::GptqRule act_order = ok;
  act_order.module_path = ".*";
  act_order.group_size = 16;
  act_order.act_order = true;
  act_order.act_qtype = qforge::QType::kInt8;
  expect_error({act_order}, {"site layers.0/dot_general0 (rule 0)", "static_groups"}, batches);
  qp::Batches nan_batches = batches;
  nan_batches[1][5] = std::nanf("");
  expect_error({ok}, {"site layers.0/dot_general0 (rule 0)", "calibration batch 1"}, nan_batches);
}
