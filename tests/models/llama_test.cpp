// Llama-family models on small synthetic GGUF files: the metadata, the name table, the Q/K row
// permutation, matmul's dispatch per weight type against scalar references, and the whole
// forward pass against an independent double-precision implementation written in Hugging Face's
// layout (rotate-half rotary embeddings on unpermuted weights), so that llama.cpp's permutation
// and ggml's adjacent-pair rotation have to agree with it.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include "core/test_util.hpp"
#include "qforge/models/llama.hpp"
#include "qforge/models/perplexity.hpp"

namespace qforge::models {
namespace {

namespace fs = std::filesystem;
using formats::GgmlType;
using formats::GgufValue;
using qforge::testing::expect_error;
using qforge::testing::normal_tensor;

struct TempGguf {
  std::string path = (fs::temp_directory_path() / ("qforge-llama-" + std::to_string(::getpid()) + "-" +
                                                   std::to_string(reinterpret_cast<std::uintptr_t>(this)) + ".gguf"))
                         .string();
  ~TempGguf() { fs::remove(path); }
};

// ---- a tiny model in Hugging Face's layout ---------------------------------------------------------
struct TinyModel {
  std::string arch = "llama";
  std::int64_t n_layer = 2, n_embd = 64, n_head = 4, n_head_kv = 2, n_ff = 96, n_vocab = 40;
  float eps = 1e-5f, freq_base = 10000.0f;
  bool tied = true, bias = false;
  std::map<std::string, TensorF> hf;  // HF names, HF row order

  std::int64_t head_dim() const { return n_embd / n_head; }

  explicit TinyModel(std::uint64_t seed, std::string arch_ = "llama", bool tied_ = true) : arch(std::move(arch_)), tied(tied_) {
    bias = arch == "qwen2";
    std::uint64_t s = seed;
    auto put = [&](LlamaTensor id, std::int64_t layer, Shape shape, float mean, float sd) {
      hf[llama_tensor_name(id, NameScheme::kHf, layer)] = normal_tensor(std::move(shape), ++s, mean, sd);
    };
    const std::int64_t q = n_head * head_dim(), kv = n_head_kv * head_dim();
    put(LlamaTensor::kTokenEmbd, -1, {n_vocab, n_embd}, 0.0f, 1.0f);
    put(LlamaTensor::kOutputNorm, -1, {n_embd}, 1.0f, 0.1f);
    if (!tied) put(LlamaTensor::kOutput, -1, {n_vocab, n_embd}, 0.0f, 0.3f);
    for (std::int64_t l = 0; l < n_layer; ++l) {
      put(LlamaTensor::kAttnNorm, l, {n_embd}, 1.0f, 0.1f);
      put(LlamaTensor::kFfnNorm, l, {n_embd}, 1.0f, 0.1f);
      put(LlamaTensor::kAttnQ, l, {q, n_embd}, 0.0f, 0.3f);
      put(LlamaTensor::kAttnK, l, {kv, n_embd}, 0.0f, 0.3f);
      put(LlamaTensor::kAttnV, l, {kv, n_embd}, 0.0f, 0.3f);
      put(LlamaTensor::kAttnOutput, l, {n_embd, q}, 0.0f, 0.15f);
      put(LlamaTensor::kFfnGate, l, {n_ff, n_embd}, 0.0f, 0.2f);
      put(LlamaTensor::kFfnUp, l, {n_ff, n_embd}, 0.0f, 0.2f);
      put(LlamaTensor::kFfnDown, l, {n_embd, n_ff}, 0.0f, 0.15f);
      if (bias) {
        put(LlamaTensor::kAttnQBias, l, {q}, 0.0f, 0.3f);
        put(LlamaTensor::kAttnKBias, l, {kv}, 0.0f, 0.3f);
        put(LlamaTensor::kAttnVBias, l, {kv}, 0.0f, 0.3f);
      }
    }
  }

  const TensorF& w(LlamaTensor id, std::int64_t layer = -1) const {
    return hf.at(llama_tensor_name(id, NameScheme::kHf, layer));
  }

  // Writes the GGUF as llama.cpp's converter would: GGUF names, Q/K rows permuted for llama.
  void write(const std::string& path, GgmlType matrix_type = GgmlType::kF32) const {
    formats::GgufWriter out;
    const std::string p = arch + ".";
    out.set("general.architecture", GgufValue::string(arch));
    out.set(p + "block_count", GgufValue::u32(static_cast<std::uint32_t>(n_layer)));
    out.set(p + "embedding_length", GgufValue::u32(static_cast<std::uint32_t>(n_embd)));
    out.set(p + "feed_forward_length", GgufValue::u32(static_cast<std::uint32_t>(n_ff)));
    out.set(p + "attention.head_count", GgufValue::u32(static_cast<std::uint32_t>(n_head)));
    out.set(p + "attention.head_count_kv", GgufValue::u32(static_cast<std::uint32_t>(n_head_kv)));
    out.set(p + "attention.layer_norm_rms_epsilon", GgufValue::f32(eps));
    out.set(p + "rope.freq_base", GgufValue::f32(freq_base));
    out.set(p + "context_length", GgufValue::u32(256));
    out.set(p + "vocab_size", GgufValue::u32(static_cast<std::uint32_t>(n_vocab)));
    LlamaConfig c;
    c.n_head = n_head;
    c.n_head_kv = n_head_kv;
    c.rope.pairing = arch == "qwen2" ? RopePairing::kHalves : RopePairing::kAdjacent;
    for (const auto& [name, t] : hf) {
      const auto parsed = parse_llama_tensor_name(name, NameScheme::kHf);
      const std::string gguf = llama_tensor_name(parsed->id, NameScheme::kGguf, parsed->layer);
      TensorF stored = t;
      if (const std::int64_t heads = permutation_heads(c, parsed->id)) {
        const auto n = static_cast<std::size_t>(t.size()) * 4;
        permute_qk_rows_hf_to_gguf({reinterpret_cast<const std::uint8_t*>(t.data()), n},
                                   {reinterpret_cast<std::uint8_t*>(stored.data()), n}, t.shape()[0], heads, gguf);
      }
      out.add_float(gguf, t.shape().size() == 2 ? matrix_type : GgmlType::kF32, stored);
    }
    out.write(path);
  }
};

// A tiny model written to a temporary GGUF and loaded back.
struct LoadedTiny {
  TinyModel m;
  TempGguf file;
  LlamaModel model;
  explicit LoadedTiny(TinyModel tiny) : m(std::move(tiny)), model((m.write(file.path), LlamaModel::from_gguf(file.path))) {}
};

// The forward pass in double, in HF's layout: rotate_half on the two halves of each head.
std::vector<double> reference_logits(const TinyModel& m, const std::vector<std::int32_t>& tokens) {
  const std::int64_t T = static_cast<std::int64_t>(tokens.size()), E = m.n_embd, hd = m.head_dim(), F = m.n_ff;
  const std::int64_t group = m.n_head / m.n_head_kv;
  auto matvec = [](const TensorF& w, const std::vector<double>& x) {
    std::vector<double> y(static_cast<std::size_t>(w.shape()[0]));
    for (std::int64_t r = 0; r < w.shape()[0]; ++r)
      for (std::int64_t c = 0; c < w.shape()[1]; ++c) y[r] += double{w[r * w.shape()[1] + c]} * x[c];
    return y;
  };
  auto norm = [&](const std::vector<double>& x, const TensorF& w) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double s = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + m.eps);
    std::vector<double> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * s * w[static_cast<std::int64_t>(i)];
    return y;
  };
  auto add = [](std::vector<double>& y, const TensorF& b) {
    for (std::size_t i = 0; i < y.size(); ++i) y[i] += b[static_cast<std::int64_t>(i)];
  };
  auto rope = [&](std::vector<double>& v, std::int64_t heads, std::int64_t pos) {
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < hd / 2; ++i) {
        const double theta = static_cast<double>(pos) * std::pow(double{m.freq_base}, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
        double& a = v[h * hd + i];
        double& b = v[h * hd + i + hd / 2];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(theta) - b0 * std::sin(theta);
        b = b0 * std::cos(theta) + a0 * std::sin(theta);
      }
  };
  std::vector<std::vector<double>> x(T);
  for (std::int64_t t = 0; t < T; ++t) {
    const TensorF& e = m.w(LlamaTensor::kTokenEmbd);
    x[t].assign(e.data() + tokens[t] * E, e.data() + (tokens[t] + 1) * E);
  }
  for (std::int64_t l = 0; l < m.n_layer; ++l) {
    std::vector<std::vector<double>> q(T), k(T), v(T);
    for (std::int64_t t = 0; t < T; ++t) {
      const auto h = norm(x[t], m.w(LlamaTensor::kAttnNorm, l));
      q[t] = matvec(m.w(LlamaTensor::kAttnQ, l), h);
      k[t] = matvec(m.w(LlamaTensor::kAttnK, l), h);
      v[t] = matvec(m.w(LlamaTensor::kAttnV, l), h);
      if (m.bias) {
        add(q[t], m.w(LlamaTensor::kAttnQBias, l));
        add(k[t], m.w(LlamaTensor::kAttnKBias, l));
        add(v[t], m.w(LlamaTensor::kAttnVBias, l));
      }
      rope(q[t], m.n_head, t);
      rope(k[t], m.n_head_kv, t);
    }
    for (std::int64_t t = 0; t < T; ++t) {
      std::vector<double> attn(static_cast<std::size_t>(m.n_head * hd));
      for (std::int64_t h = 0; h < m.n_head; ++h) {
        const std::int64_t kvh = h / group;
        std::vector<double> p(static_cast<std::size_t>(t + 1));
        for (std::int64_t j = 0; j <= t; ++j)
          for (std::int64_t d = 0; d < hd; ++d) p[j] += q[t][h * hd + d] * k[j][kvh * hd + d] / std::sqrt(double(hd));
        const double mx = *std::max_element(p.begin(), p.end());
        double sum = 0;
        for (auto& s : p) sum += (s = std::exp(s - mx));
        for (std::int64_t j = 0; j <= t; ++j)
          for (std::int64_t d = 0; d < hd; ++d) attn[h * hd + d] += p[j] / sum * v[j][kvh * hd + d];
      }
      const auto o = matvec(m.w(LlamaTensor::kAttnOutput, l), attn);
      for (std::int64_t i = 0; i < E; ++i) x[t][i] += o[i];
      const auto h = norm(x[t], m.w(LlamaTensor::kFfnNorm, l));
      auto g = matvec(m.w(LlamaTensor::kFfnGate, l), h);
      const auto u = matvec(m.w(LlamaTensor::kFfnUp, l), h);
      for (std::int64_t i = 0; i < F; ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      const auto d = matvec(m.w(LlamaTensor::kFfnDown, l), g);
      for (std::int64_t i = 0; i < E; ++i) x[t][i] += d[i];
    }
  }
  std::vector<double> logits;
  const TensorF& head = m.tied ? m.w(LlamaTensor::kTokenEmbd) : m.w(LlamaTensor::kOutput);
  for (std::int64_t t = 0; t < T; ++t) {
    const auto y = matvec(head, norm(x[t], m.w(LlamaTensor::kOutputNorm)));
    logits.insert(logits.end(), y.begin(), y.end());
  }
  return logits;
}

std::vector<std::int32_t> random_tokens(std::int64_t n, std::int64_t vocab, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (auto& v : t) v = static_cast<std::int32_t>(rng() % static_cast<std::uint64_t>(vocab));
  return t;
}

// Float32 against double: every product and norm rounds each of its K terms at most once
// (gamma_K = K * 2^-24 relative to the sum of magnitudes), through 2 + 6 * n_layer dependent
// steps. The logits' magnitudes here are O(10) and each step's error is bounded by its inputs'
// magnitude sum, so 2^-24 * K_max * steps * (logit scale 10) * (a margin of 16 for the growth
// of magnitude sums through residual connections) bounds the difference.
double float32_tolerance(const TinyModel& m) {
  const double k_max = static_cast<double>(std::max({m.n_embd, m.n_ff, m.n_head * m.head_dim()}));
  const double steps = 2.0 + 6.0 * static_cast<double>(m.n_layer);
  return std::ldexp(1.0, -24) * k_max * steps * 10.0 * 16.0;
}

void expect_logits_near(const TensorF& got, const std::vector<double>& want, double tol, std::uint64_t seed) {
  ASSERT_EQ(static_cast<std::size_t>(got.size()), want.size());
  double worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(double{got[static_cast<std::int64_t>(i)]} - want[i]));
  EXPECT_LE(worst, tol) << "seed " << seed;
  // The comparison must be able to fail: logits are not all alike.
  const auto [lo, hi] = std::minmax_element(want.begin(), want.end());
  EXPECT_GT(*hi - *lo, 100 * tol) << "seed " << seed;
}

// ---- config and names ------------------------------------------------------------------------------
TEST(LlamaConfig, ReadsTheMetadata) {
  TempGguf f;
  TinyModel m(1);
  m.write(f.path);
  const auto c = LlamaConfig::from_gguf(formats::GgufFile(f.path));
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.n_embd, 64);
  EXPECT_EQ(c.n_head, 4);
  EXPECT_EQ(c.n_head_kv, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.n_ff, 96);
  EXPECT_EQ(c.n_vocab, 40);
  EXPECT_EQ(c.n_ctx_train, 256);
  EXPECT_EQ(c.rope.dims, 16);
  EXPECT_EQ(c.rope.pairing, RopePairing::kAdjacent);
  EXPECT_FALSE(c.qkv_bias);
}

TEST(LlamaConfig, RejectsOtherArchitecturesAndMissingKeys) {
  TempGguf f;
  {
    formats::GgufWriter w;
    w.set("general.architecture", GgufValue::string("gpt2"));
    w.write(f.path);
  }
  expect_error([&] { LlamaConfig::from_gguf(formats::GgufFile(f.path)); }, {f.path, "gpt2", "llama"});
  {
    formats::GgufWriter w;
    w.set("general.architecture", GgufValue::string("llama"));
    w.set("llama.block_count", GgufValue::u32(2));
    w.write(f.path);
  }
  expect_error([&] { LlamaConfig::from_gguf(formats::GgufFile(f.path)); }, {f.path, "llama.embedding_length"});
}

TEST(LlamaModel, MissingTensorIsNamed) {
  TempGguf f;
  TinyModel m(2);
  m.hf.erase(llama_tensor_name(LlamaTensor::kFfnUp, NameScheme::kHf, 1));
  m.write(f.path);
  expect_error([&] { LlamaModel::from_gguf(f.path); }, {f.path, "blk.1.ffn_up.weight"});
}

TEST(LlamaNames, MapBetweenSchemes) {
  EXPECT_EQ(rename_llama_tensor("blk.17.attn_q.weight", NameScheme::kGguf, NameScheme::kHf),
            "model.layers.17.self_attn.q_proj.weight");
  EXPECT_EQ(rename_llama_tensor("model.layers.3.mlp.down_proj.weight", NameScheme::kHf, NameScheme::kGguf),
            "blk.3.ffn_down.weight");
  EXPECT_EQ(rename_llama_tensor("token_embd.weight", NameScheme::kGguf, NameScheme::kModule), "embed.weight");
  EXPECT_EQ(rename_llama_tensor("lm_head.weight", NameScheme::kHf, NameScheme::kGguf), "output.weight");
  // Every row round-trips through every scheme it has a name in.
  for (const auto& row : kLlamaTensorNames)
    for (auto from : {NameScheme::kGguf, NameScheme::kHf, NameScheme::kModule})
      for (auto to : {NameScheme::kGguf, NameScheme::kHf, NameScheme::kModule}) {
        if (scheme_pattern(row, from).empty() || scheme_pattern(row, to).empty()) continue;
        const std::string name = llama_tensor_name(row.id, from, row.per_layer ? 5 : -1);
        const std::string there = rename_llama_tensor(name, from, to);
        EXPECT_EQ(rename_llama_tensor(there, to, from), name);
      }
  EXPECT_FALSE(parse_llama_tensor_name("blk.x.attn_q.weight", NameScheme::kGguf));
  EXPECT_FALSE(parse_llama_tensor_name("blk.01.attn_q.weight", NameScheme::kGguf));
  expect_error([] { rename_llama_tensor("model.layers.0.conv.weight", NameScheme::kHf, NameScheme::kGguf); },
               {"model.layers.0.conv.weight"});
}

TEST(QkPermutation, MatchesTheConvertersReshapeAndInverts) {
  // llama.cpp's permute: reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols).
  const std::int64_t heads = 3, hd = 8, cols = 2, rows = heads * hd;
  std::vector<float> hf(static_cast<std::size_t>(rows * cols));
  std::iota(hf.begin(), hf.end(), 0.0f);
  std::vector<float> want(hf.size());
  for (std::int64_t h = 0; h < heads; ++h)
    for (std::int64_t i = 0; i < hd / 2; ++i)
      for (std::int64_t j = 0; j < 2; ++j)
        for (std::int64_t c = 0; c < cols; ++c)  // swapped axes: out[h][i][j] = in[h][j][i]
          want[((h * (hd / 2) + i) * 2 + j) * cols + c] = hf[((h * 2 + j) * (hd / 2) + i) * cols + c];
  std::vector<float> gguf(hf.size()), back(hf.size());
  auto bytes = [](std::vector<float>& v) { return std::span<std::uint8_t>(reinterpret_cast<std::uint8_t*>(v.data()), v.size() * 4); };
  permute_qk_rows_hf_to_gguf(bytes(hf), bytes(gguf), rows, heads, "q");
  EXPECT_EQ(gguf, want);
  permute_qk_rows_gguf_to_hf(bytes(gguf), bytes(back), rows, heads, "q");
  EXPECT_EQ(back, hf);
  expect_error([&] { permute_qk_rows_hf_to_gguf(bytes(hf), bytes(gguf), rows, 5, "blk.0.attn_k.weight"); },
               {"blk.0.attn_k.weight", "5 heads"});
}

// The offset m of the Q4_1 block holding element k, and the stored sum s = d * sum(q) of a Q8_1 block.
double q4_1_min(const std::uint8_t* row, std::int64_t k) {
  return fp16_to_fp32(formats::detail::load_block<formats::BlockQ4_1>(row, k / 32).m);
}
double q8_1_sum(const std::uint8_t* row, std::int64_t block) {
  return fp16_to_fp32(formats::detail::load_block<formats::BlockQ8_1>(row, block).s);
}

// ---- matmul per weight type ------------------------------------------------------------------------
// The reference is the scalar definition of each path: block types multiply the decoded weights
// by the decoded Q8_0/Q8_1 activations (ggml's vec_dot in exact arithmetic), F16/BF16 by the
// rounded activations, the rest by the activations themselves, all in double. The kernels sum
// K products in float: |error| <= gamma_K * sum |w x| with gamma_K = K 2^-24 (plus, for blocks,
// the float rounding of each block's scale product, another 2^-23 per block).
TEST(LlamaMatmul, EveryWeightTypeMatchesItsScalarDefinition) {
  const std::int64_t rows = 1100, cols = 256, M = 3;  // rows beyond one 1 MiB panel of floats
  const std::uint64_t seed = 11;
  const TensorF w = normal_tensor({rows, cols}, seed);
  const TensorF x = normal_tensor({M, cols}, seed + 1);
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ4_0, GgmlType::kQ4_1,
                        GgmlType::kQ8_0, GgmlType::kQ4_K, GgmlType::kQ6_K}) {
    const std::int64_t row_bytes = formats::ggml_row_bytes(type, cols);
    std::vector<std::uint8_t> data(static_cast<std::size_t>(rows * row_bytes));
    for (std::int64_t r = 0; r < rows; ++r) formats::encode_row(type, w.data() + r * cols, data.data() + r * row_bytes, cols);
    const WeightView view{"w", type, rows, cols, data.data(), row_bytes};
    std::vector<float> y(static_cast<std::size_t>(M * rows));
    matmul(view, x.data(), M, y.data());

    std::vector<float> wd(static_cast<std::size_t>(cols)), xd(static_cast<std::size_t>(cols));
    const GgmlType act = type == GgmlType::kQ4_1 ? GgmlType::kQ8_1 : GgmlType::kQ8_0;
    std::vector<std::uint8_t> xq(static_cast<std::size_t>(formats::ggml_row_bytes(act, cols)));
    double worst_ratio = 0;
    for (std::int64_t m = 0; m < M; ++m) {
      std::copy_n(x.data() + m * cols, cols, xd.data());
      if (detail::has_block_kernel(type)) {
        formats::encode_row(act, xd.data(), xq.data(), cols);
        formats::decode_row(act, xq.data(), xd.data(), cols);
      }
      detail::round_like_weight(type, xd.data(), cols);
      for (std::int64_t r = 0; r < rows; ++r) {
        formats::decode_row(type, data.data() + r * row_bytes, wd.data(), cols);
        double want = 0, magnitude = 0;
        for (std::int64_t k = 0; k < cols; ++k) {
          // Q4_1 x Q8_1 takes each block's offset term from the activation block's stored sum.
          const double wk = type == GgmlType::kQ4_1 ? double{wd[k]} - q4_1_min(data.data() + r * row_bytes, k) : wd[k];
          want += wk * xd[k];
          magnitude += std::abs(wk * xd[k]);
        }
        if (type == GgmlType::kQ4_1)
          for (std::int64_t b = 0; b < cols / 32; ++b) {
            const double term = q4_1_min(data.data() + r * row_bytes, 32 * b) * q8_1_sum(xq.data(), b);
            want += term;
            magnitude += std::abs(term);
          }
        const double bound = (static_cast<double>(cols) + 2.0 * static_cast<double>(cols / 32)) * std::ldexp(magnitude, -24);
        worst_ratio = std::max(worst_ratio, std::abs(y[m * rows + r] - want) / bound);
      }
    }
    EXPECT_LE(worst_ratio, 1.0) << formats::ggml_traits(type).name << ", seed " << seed;
  }
}

// ---- the forward pass ------------------------------------------------------------------------------
TEST(LlamaModel, ForwardMatchesHfLayoutReferenceForLlamaAndQwen2) {
  for (const std::string arch : {"llama", "qwen2"}) {
    for (bool tied : {true, false}) {
      const std::uint64_t seed = 100 + (arch == "qwen2") * 10 + tied;
      const LoadedTiny tiny{TinyModel(seed, arch, tied)};
      const auto& [m, f, model] = tiny;
      EXPECT_EQ(model.tied_output(), tied);
      EXPECT_EQ(model.config().qkv_bias, arch == "qwen2");
      const auto tokens = random_tokens(13, m.n_vocab, seed);
      auto cache = model.make_cache(32);
      const TensorF logits = model.forward(tokens, cache);
      SCOPED_TRACE(arch + (tied ? " tied" : " separate head"));
      expect_logits_near(logits, reference_logits(m, tokens), float32_tolerance(m), seed);
    }
  }
}

TEST(LlamaModel, GenerationWithTheCacheMatchesTheBatch) {
  const std::uint64_t seed = 7;
  const LoadedTiny tiny{TinyModel(seed)};
  const auto& [m, f, model] = tiny;
  const auto tokens = random_tokens(20, m.n_vocab, seed);
  auto batch_cache = model.make_cache(32);
  const TensorF batch = model.forward(tokens, batch_cache);
  // A 5-token prompt, then one token at a time, each step returning only its last row.
  auto cache = model.make_cache(32);
  const std::span<const std::int32_t> all(tokens);
  TensorF first = model.forward(all.first(5), cache, /*all_logits=*/false);
  std::vector<double> stepwise(first.data(), first.data() + first.size());
  for (std::size_t t = 5; t < tokens.size(); ++t) {
    const TensorF step = model.forward(all.subspan(t, 1), cache, false);
    stepwise.insert(stepwise.end(), step.data(), step.data() + step.size());
  }
  EXPECT_EQ(cache.size(), 20);
  // Rows 4, 5, ..., 19 of the batch: both are float32 runs of the same arithmetic with
  // different GEMM shapes, so the float32 bound applies twice.
  const TensorF tail({16, m.n_vocab}, std::vector<float>(batch.data() + 4 * m.n_vocab, batch.data() + batch.size()));
  expect_logits_near(tail, stepwise, 2 * float32_tolerance(m), seed);
  expect_error([&] { model.forward(all.first(13), cache); }, {f.path, "KV cache of 32"});
  const std::vector<std::int32_t> bad = {3, 40};
  cache.clear();
  expect_error([&] { model.forward(bad, cache); }, {f.path, "token 40 at position 1"});
}

TEST(LlamaModel, F16CacheHoldsFloat16ValuesAndStaysClose) {
  const std::uint64_t seed = 9;
  const LoadedTiny tiny{TinyModel(seed)};
  const auto& [m, f, model] = tiny;
  const auto tokens = random_tokens(12, m.n_vocab, seed);
  auto f32 = model.make_cache(16);
  auto f16 = model.make_cache(16, KvPrecision::kF16);
  const TensorF a = model.forward(tokens, f32), b = model.forward(tokens, f16);
  std::int64_t changed = 0;
  for (std::int64_t l = 0; l < m.n_layer; ++l)
    for (std::int64_t t = 0; t < 12; ++t)
      for (std::int64_t i = 0; i < 2 * m.head_dim(); ++i) {
        const float k = f16.k(l, t)[i], v = f16.v(l, t)[i];
        EXPECT_EQ(k, fp16_to_fp32(fp32_to_fp16(k)));
        EXPECT_EQ(v, fp16_to_fp32(fp32_to_fp16(v)));
        changed += f32.k(l, t)[i] != k;
      }
  EXPECT_GT(changed, 0);  // the rounding happened
  // Each rounding is relative 2^-11; through the 2 layers' attention (queries, keys, values,
  // probabilities: four roundings in a chain) the logits move by a few times 2^-11 of their scale 10.
  double worst = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) worst = std::max(worst, double{std::abs(a[i] - b[i])});
  EXPECT_GT(worst, 0.0);
  EXPECT_LT(worst, 4 * m.n_layer * 10 * std::ldexp(1.0, -11)) << "seed " << seed;
}

// ---- perplexity ----------------------------------------------------------------------------------
TEST(Perplexity, ScoresTheSecondHalfOfEachWindowAsLlamaPerplexityDoes) {
  const std::uint64_t seed = 21;
  const LoadedTiny tiny{TinyModel(seed)};
  const auto& [m, f, model] = tiny;
  const auto tokens = random_tokens(3 * 16 + 5, m.n_vocab, seed);  // 3 windows of 16, 5 left over
  PerplexityOptions o;
  o.n_ctx = 16;
  o.kv = KvPrecision::kF32;
  std::vector<std::int64_t> progress;
  const auto r = perplexity(model, tokens, o, [&](std::int64_t done, std::int64_t total, const PerplexityEstimate&) {
    EXPECT_EQ(total, 3);
    progress.push_back(done);
  });
  EXPECT_EQ(progress, (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(r.final.chunks, 3);
  EXPECT_EQ(r.final.tokens_scored, 3 * 7);  // positions 8..14 of each window
  ASSERT_EQ(r.token_logprob.size(), 21u);
  ASSERT_EQ(r.running_ppl.size(), 3u);
  // Window 1, position 8 predicts token 16 + 9, from a fresh cache.
  auto cache = model.make_cache(16);
  const std::span<const std::int32_t> all(tokens);
  const TensorF logits = model.forward(all.subspan(16, 16), cache);
  double mx = -1e30, sum = 0;
  for (std::int64_t v = 0; v < m.n_vocab; ++v) mx = std::max(mx, double{logits[8 * m.n_vocab + v]});
  for (std::int64_t v = 0; v < m.n_vocab; ++v) sum += std::exp(logits[8 * m.n_vocab + v] - mx);
  // Same float logits (same shapes, bit-identical), log-softmax in double both times.
  EXPECT_NEAR(r.token_logprob[7], logits[8 * m.n_vocab + tokens[25]] - mx - std::log(sum), 1e-9);
  // The estimate and its error from the log-probabilities, as llama-perplexity prints them.
  double nll = 0, nll2 = 0;
  for (double lp : r.token_logprob) nll -= lp, nll2 += lp * lp;
  nll /= 21, nll2 /= 21;
  EXPECT_NEAR(r.final.ppl, std::exp(nll), 1e-9 * r.final.ppl);
  EXPECT_NEAR(r.final.ppl_stderr, std::exp(nll) * std::sqrt((nll2 - nll * nll) / 20), 1e-6 * r.final.ppl_stderr);
  EXPECT_EQ(r.running_ppl.back(), r.final.ppl);
  // BOS replaces each window's first token, which the scored positions attend to.
  o.bos = (tokens[0] + 1) % static_cast<std::int32_t>(m.n_vocab);
  const auto with_bos = perplexity(model, tokens, o);
  EXPECT_NE(with_bos.token_logprob[0], r.token_logprob[0]);
  o.n_ctx = 512;
  expect_error([&] { perplexity(model, tokens, o); }, {f.path, "512", "256"});
  o.n_ctx = 64;
  expect_error([&] { perplexity(model, tokens, o); }, {"53 tokens", "window of 64"});
}

}  // namespace
}  // namespace qforge::models
