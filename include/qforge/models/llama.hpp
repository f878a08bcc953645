// A Llama-family decoder (GGUF architectures `llama` and `qwen2`) run from a memory-mapped GGUF:
// token embedding, RMSNorm, rotary embeddings, grouped-query causal attention over a KV cache,
// SwiGLU MLP and output head, with llama.cpp's arithmetic wherever it is defined (ggml's
// rms_norm, rope and soft_max). Weights stay in the file's form; products go through the backend:
//   F32 weights               GemmF32Op
//   Q4_0, Q4_1, Q8_0 blocks   GemmBlocksOp (activations encoded to Q8_0 / Q8_1, as ggml does)
//   F16, BF16                 activations rounded to the weight type (ggml's F16/BF16 dot products
//                             take operands of that type), then a panel of rows at a time is
//                             widened to float into a scratch buffer for GemmF32Op
//   other types (Q4_K, Q6_K)  a panel of rows at a time dequantized into scratch, GemmF32Op
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "qforge/backend/registry.hpp"
#include "qforge/backend/threads.hpp"
#include "qforge/core/half.hpp"
#include "qforge/core/parallel.hpp"
#include "qforge/core/tensor.hpp"
#include "qforge/formats/gguf_file.hpp"
#include "qforge/models/llama_config.hpp"

namespace qforge::models {

// A weight matrix [rows, cols] ([out, in]) as the file stores it; `data` points into the mapping.
struct WeightView {
  std::string name;
  formats::GgmlType type = formats::GgmlType::kF32;
  std::int64_t rows = 0, cols = 0;
  const std::uint8_t* data = nullptr;
  std::int64_t row_bytes = 0;
};

namespace detail {

inline bool has_block_kernel(formats::GgmlType t) {
  using formats::GgmlType;
  return t == GgmlType::kQ4_0 || t == GgmlType::kQ4_1 || t == GgmlType::kQ8_0;
}

// Rounds x to the weight's 16-bit type and back, as ggml converts F32 activations before its F16
// and BF16 dot products.
inline void round_like_weight(formats::GgmlType t, float* x, std::int64_t n) {
  if (t == formats::GgmlType::kF16)
    for (std::int64_t i = 0; i < n; ++i) x[i] = fp16_to_fp32(fp32_to_fp16(x[i]));
  else if (t == formats::GgmlType::kBF16)
    for (std::int64_t i = 0; i < n; ++i) x[i] = bf16_to_fp32(fp32_to_bf16(x[i]));
}

// y[M, w.rows] (row stride ldy) = x[M, w.cols] * W^T for weights without a kernel of their own:
// panels of about 1 MiB of rows are decoded into float scratch and multiplied with GemmF32Op.
inline void matmul_by_panels(const WeightView& w, const float* x, std::int64_t M, float* y, std::int64_t ldy) {
  const std::int64_t panel = std::clamp<std::int64_t>((std::int64_t{1} << 20) / (4 * w.cols), 16, w.rows);
  std::vector<float> scratch(static_cast<std::size_t>(panel * w.cols));
  const int threads = backend::num_threads();
  for (std::int64_t r0 = 0; r0 < w.rows; r0 += panel) {
    const std::int64_t n = std::min(panel, w.rows - r0);
    parallel_for_each(n, threads, [&](std::int64_t r) {
      formats::decode_row(w.type, w.data + (r0 + r) * w.row_bytes, scratch.data() + r * w.cols, w.cols);
    });
    backend::run(backend::GemmF32Op{.M = M, .N = n, .K = w.cols, .a = x, .lda = w.cols, .b = scratch.data(),
                                    .ldb = w.cols, .dst = y + r0, .ldd = ldy});
  }
}

}  // namespace detail

// y[M, w.rows] = x[M, w.cols] * W^T through the backend (see the table at the top of this file).
inline void matmul(const WeightView& w, const float* x, std::int64_t M, float* y) {
  using formats::GgmlType;
  if (w.type == GgmlType::kF32) {
    backend::run(backend::GemmF32Op{.M = M, .N = w.rows, .K = w.cols, .a = x, .lda = w.cols,
                                    .b = reinterpret_cast<const float*>(w.data), .ldb = w.cols, .dst = y, .ldd = w.rows});
  } else if (detail::has_block_kernel(w.type)) {
    backend::run(backend::GemmBlocksOp{.weight_type = w.type, .M = M, .N = w.rows, .K = w.cols, .a = x, .lda = w.cols,
                                       .w = w.data, .dst = y, .ldd = w.rows});
  } else if (w.type == GgmlType::kF16 || w.type == GgmlType::kBF16) {
    std::vector<float> rounded(x, x + M * w.cols);
    detail::round_like_weight(w.type, rounded.data(), M * w.cols);
    detail::matmul_by_panels(w, rounded.data(), M, y, w.rows);
  } else {
    detail::matmul_by_panels(w, x, M, y, w.rows);
  }
}

// The precision of cached keys and values. kF16 is llama.cpp's default cache: keys and values
// rounded to float16, and, as ggml's F16 products take F16 operands, the queries and the
// attention probabilities rounded to float16 too before they meet them.
enum class KvPrecision { kF32, kF16 };

// Keys and values of every layer for positions [0, size()), [layer][position][kv_rows], held as
// float32 (with kF16 their values are float16 values).
class LlamaKvCache {
 public:
  LlamaKvCache(const LlamaConfig& c, std::int64_t n_ctx, KvPrecision precision = KvPrecision::kF32)
      : precision_(precision), n_ctx_(n_ctx), row_(c.kv_rows()), k_(values(c, n_ctx)), v_(values(c, n_ctx)) {}
  KvPrecision precision() const { return precision_; }
  std::int64_t capacity() const { return n_ctx_; }
  std::int64_t size() const { return size_; }
  void clear() { size_ = 0; }
  // Forgets positions from `n` on (to re-run a suffix).
  void truncate(std::int64_t n) { size_ = std::clamp<std::int64_t>(n, 0, size_); }

  float* k(std::int64_t layer, std::int64_t pos) { return k_.data() + (layer * n_ctx_ + pos) * row_; }
  float* v(std::int64_t layer, std::int64_t pos) { return v_.data() + (layer * n_ctx_ + pos) * row_; }
  void advance(std::int64_t n) { size_ += n; }

 private:
  static std::size_t values(const LlamaConfig& c, std::int64_t n_ctx) {
    if (n_ctx <= 0) throw_error(Status::kInvalidArgument, "KV cache: context {} must be positive", n_ctx);
    return static_cast<std::size_t>(c.n_layer * n_ctx * c.kv_rows());
  }
  KvPrecision precision_;
  std::int64_t n_ctx_, row_, size_ = 0;
  std::vector<float> k_, v_;
};

class LlamaModel {
 public:
  // Maps `path` and checks every tensor's presence, type and shape against the metadata.
  static LlamaModel from_gguf(const std::string& path) {
    return LlamaModel(std::make_shared<const formats::GgufFile>(path));
  }

  const LlamaConfig& config() const { return config_; }
  const formats::GgufFile& file() const { return *file_; }
  bool tied_output() const { return output_.name == token_embd_.name; }
  // A cache for up to n_ctx positions (at most the context the model was trained for).
  LlamaKvCache make_cache(std::int64_t n_ctx, KvPrecision precision = KvPrecision::kF32) const {
    if (n_ctx > config_.n_ctx_train)
      throw_error(Status::kInvalidArgument, "{}: a context of {} is longer than the model's {} ({}.context_length)",
                  file_->path(), n_ctx, config_.n_ctx_train, config_.architecture);
    return LlamaKvCache(config_, n_ctx, precision);
  }

  // Runs `tokens` at positions cache.size() onwards, appends their keys and values to the cache,
  // and returns the logits [tokens.size(), n_vocab] (every position) or [1, n_vocab] (the last).
  TensorF forward(std::span<const std::int32_t> tokens, LlamaKvCache& cache, bool all_logits = true) const {
    const auto T = static_cast<std::int64_t>(tokens.size());
    if (T == 0) throw_error(Status::kInvalidArgument, "{}: forward needs at least one token", file_->path());
    if (cache.size() + T > cache.capacity())
      throw_error(Status::kInvalidArgument, "{}: {} positions do not fit a KV cache of {} with {} in use", file_->path(),
                  T, cache.capacity(), cache.size());
    const auto& c = config_;
    std::vector<float> x(static_cast<std::size_t>(T * c.n_embd));
    embed(tokens, x.data());
    Activations a(c, T);
    const RopeTables rope = rope_tables(cache.size(), T);  // the same positions in every layer
    for (std::int64_t l = 0; l < c.n_layer; ++l) run_layer(l, x.data(), T, cache, rope, a);
    cache.advance(T);

    const std::int64_t first = all_logits ? 0 : T - 1, rows = T - first;
    std::vector<float> h(static_cast<std::size_t>(rows * c.n_embd));
    rms_norm(x.data() + first * c.n_embd, rows, output_norm_, h.data());
    TensorF logits({rows, c.n_vocab});
    matmul(output_, h.data(), rows, logits.data());
    return logits;
  }

 private:
  struct Layer {
    std::vector<float> attn_norm, ffn_norm, bq, bk, bv;
    WeightView wq, wk, wv, wo, gate, up, down;
  };
  // cos and sin of the rotary angles, [position][pair], for the positions of one forward.
  struct RopeTables {
    std::int64_t pairs = 0;
    std::vector<float> cos, sin;
    const float* cos_at(std::int64_t t) const { return cos.data() + t * pairs; }
    const float* sin_at(std::int64_t t) const { return sin.data() + t * pairs; }
  };
  // Per-forward buffers, one row per position.
  struct Activations {
    std::vector<float> h, q, k, v, attn, proj, gate, up;
    Activations(const LlamaConfig& c, std::int64_t T)
        : h(T * c.n_embd), q(T * c.q_rows()), k(T * c.kv_rows()), v(T * c.kv_rows()), attn(T * c.q_rows()),
          proj(T * c.n_embd), gate(T * c.n_ff), up(T * c.n_ff) {}
  };

  explicit LlamaModel(std::shared_ptr<const formats::GgufFile> file)
      : file_(std::move(file)), config_(LlamaConfig::from_gguf(*file_)) {
    const auto& c = config_;
    token_embd_ = weight(LlamaTensor::kTokenEmbd, -1, c.n_vocab, c.n_embd);
    output_norm_ = vector(LlamaTensor::kOutputNorm, -1, c.n_embd);
    output_ = file_->find(llama_tensor_name(LlamaTensor::kOutput, NameScheme::kGguf)) != nullptr
                  ? weight(LlamaTensor::kOutput, -1, c.n_vocab, c.n_embd)
                  : token_embd_;
    if (file_->find(llama_tensor_name(LlamaTensor::kRopeFreqs, NameScheme::kGguf)))
      rope_freq_factors_ = vector(LlamaTensor::kRopeFreqs, -1, c.rope.dims / 2);
    for (std::int64_t l = 0; l < c.n_layer; ++l) layers_.push_back(load_layer(l));
    rope_theta_scale_ = std::pow(c.rope.freq_base, -2.0f / static_cast<float>(c.rope.dims));
    attn_scale_ = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  }

  const formats::GgufTensorInfo& tensor(LlamaTensor id, std::int64_t layer) const {
    return file_->at(llama_tensor_name(id, NameScheme::kGguf, layer));
  }
  void check_shape(const formats::GgufTensorInfo& t, const Shape& want) const {
    if (t.shape != want)
      throw_error(Status::kShapeMismatch, "{}: tensor '{}' is {}, the metadata implies {}", file_->path(), t.name,
                  shape_str(t.shape), shape_str(want));
  }
  WeightView weight(LlamaTensor id, std::int64_t layer, std::int64_t rows, std::int64_t cols) const {
    const auto& t = tensor(id, layer);
    check_shape(t, {rows, cols});
    const auto bytes = file_->bytes(t);
    if (!formats::ggml_traits(t.type).quantized && t.type != formats::GgmlType::kF32 &&
        t.type != formats::GgmlType::kF16 && t.type != formats::GgmlType::kBF16)
      throw_error(Status::kUnsupported, "{}: tensor '{}' has type {}, not a weight type", file_->path(), t.name,
                  formats::ggml_traits(t.type).name);
    return {t.name, t.type, rows, cols, bytes.data(), formats::ggml_row_bytes(t.type, cols, t.name)};
  }
  // Small 1-D tensors (norms, biases, frequency factors) are widened to float once.
  std::vector<float> vector(LlamaTensor id, std::int64_t layer, std::int64_t n) const {
    const auto& t = tensor(id, layer);
    check_shape(t, {n});
    const TensorF f = file_->to_float(t.name);
    return {f.data(), f.data() + f.size()};
  }
  Layer load_layer(std::int64_t l) const {
    const auto& c = config_;
    Layer L;
    L.attn_norm = vector(LlamaTensor::kAttnNorm, l, c.n_embd);
    L.ffn_norm = vector(LlamaTensor::kFfnNorm, l, c.n_embd);
    L.wq = weight(LlamaTensor::kAttnQ, l, c.q_rows(), c.n_embd);
    L.wk = weight(LlamaTensor::kAttnK, l, c.kv_rows(), c.n_embd);
    L.wv = weight(LlamaTensor::kAttnV, l, c.kv_rows(), c.n_embd);
    L.wo = weight(LlamaTensor::kAttnOutput, l, c.n_embd, c.q_rows());
    L.gate = weight(LlamaTensor::kFfnGate, l, c.n_ff, c.n_embd);
    L.up = weight(LlamaTensor::kFfnUp, l, c.n_ff, c.n_embd);
    L.down = weight(LlamaTensor::kFfnDown, l, c.n_embd, c.n_ff);
    if (c.qkv_bias) {
      L.bq = vector(LlamaTensor::kAttnQBias, l, c.q_rows());
      L.bk = vector(LlamaTensor::kAttnKBias, l, c.kv_rows());
      L.bv = vector(LlamaTensor::kAttnVBias, l, c.kv_rows());
    }
    return L;
  }

  void embed(std::span<const std::int32_t> tokens, float* x) const {
    const auto& c = config_;
    for (std::size_t t = 0; t < tokens.size(); ++t) {
      const std::int32_t id = tokens[t];
      if (id < 0 || id >= c.n_vocab)
        throw_error(Status::kInvalidArgument, "{}: token {} at position {} is outside the vocabulary of {}",
                    file_->path(), id, t, c.n_vocab);
      formats::decode_row(token_embd_.type, token_embd_.data + id * token_embd_.row_bytes, x + t * c.n_embd, c.n_embd);
    }
  }

  // ggml_rms_norm (sum of squares in double, y = x * (1 / sqrt(mean + eps))), then ggml_mul by w.
  void rms_norm(const float* x, std::int64_t rows, const std::vector<float>& w, float* y) const {
    const std::int64_t n = config_.n_embd;
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * n;
      float* yr = y + r * n;
      double sum = 0.0;
      for (std::int64_t i = 0; i < n; ++i) sum += static_cast<double>(xr[i] * xr[i]);
      const float mean = static_cast<float>(sum / static_cast<double>(n));
      const float scale = 1.0f / std::sqrt(mean + config_.rms_eps);
      for (std::int64_t i = 0; i < n; ++i) yr[i] = (xr[i] * scale) * w[static_cast<std::size_t>(i)];
    }
  }

  // ggml_rope_ext with ext_factor 0 and attn_factor 1: theta_i = pos * freq_scale * base^(-2i/dims)
  // / factor_i, the powers built by repeated multiplication as ggml builds its cache; for
  // positions start .. start + T - 1.
  RopeTables rope_tables(std::int64_t start, std::int64_t T) const {
    RopeTables r;
    r.pairs = config_.rope.dims / 2;
    r.cos.resize(static_cast<std::size_t>(T * r.pairs));
    r.sin.resize(r.cos.size());
    for (std::int64_t t = 0; t < T; ++t) {
      float theta = static_cast<float>(start + t);
      for (std::int64_t i = 0; i < r.pairs; ++i) {
        const float factor = rope_freq_factors_.empty() ? 1.0f : rope_freq_factors_[static_cast<std::size_t>(i)];
        const float angle = config_.rope.freq_scale * (theta / factor);
        r.cos[static_cast<std::size_t>(t * r.pairs + i)] = std::cos(angle);
        r.sin[static_cast<std::size_t>(t * r.pairs + i)] = std::sin(angle);
        theta *= rope_theta_scale_;
      }
    }
    return r;
  }
  void rope_rows(float* x, std::int64_t heads, const float* cos_t, const float* sin_t) const {
    const std::int64_t hd = config_.head_dim, pairs = config_.rope.dims / 2;
    const bool adjacent = config_.rope.pairing == RopePairing::kAdjacent;
    for (std::int64_t h = 0; h < heads; ++h) {
      float* v = x + h * hd;
      for (std::int64_t i = 0; i < pairs; ++i) {
        float& x0 = adjacent ? v[2 * i] : v[i];
        float& x1 = adjacent ? v[2 * i + 1] : v[i + pairs];
        const float a = x0, b = x1;
        x0 = a * cos_t[i] - b * sin_t[i];
        x1 = a * sin_t[i] + b * cos_t[i];
      }
    }
  }

  static void add_bias(float* y, std::int64_t rows, const std::vector<float>& b) {
    const auto n = static_cast<std::int64_t>(b.size());
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t i = 0; i < n; ++i) y[r * n + i] += b[static_cast<std::size_t>(i)];
  }

  // ggml_soft_max_ext on one row of raw scores q·k: scaled, exponentials in float, their sum in
  // double; the probabilities are rounded to float16 for an F16 cache (ggml's F16 product with
  // the values converts them). Keys past `n_valid` are masked out (probability 0).
  void softmax_row(float* s, std::int64_t n_valid, std::int64_t n_total, bool f16) const {
    float max_score = -INFINITY;
    for (std::int64_t j = 0; j < n_valid; ++j) max_score = std::max(max_score, s[j] *= attn_scale_);
    double sum = 0.0;
    for (std::int64_t j = 0; j < n_valid; ++j) sum += (s[j] = std::exp(s[j] - max_score));
    const float inv = static_cast<float>(1.0 / sum);
    for (std::int64_t j = 0; j < n_valid; ++j) s[j] = f16 ? fp16_to_fp32(fp32_to_fp16(s[j] * inv)) : s[j] * inv;
    std::fill(s + n_valid, s + n_total, 0.0f);
  }

  // Causal attention of T new queries (positions start..start+T-1) over the cache's keys and
  // values 0..start+T-1 with grouped-query heads. A batch of queries runs as two GEMMs per head
  // (scores, then probabilities times values); a few queries (generation) run as loops over
  // (head, position) items, where the GEMM calls would cost more than the arithmetic.
  void attend(std::int64_t layer, std::int64_t start, std::int64_t T, LlamaKvCache& cache, float* q, float* out) const {
    const auto& c = config_;
    const std::int64_t hd = c.head_dim, group = c.n_head / c.n_head_kv, kv_row = c.kv_rows(), n_keys = start + T;
    const float* k0 = cache.k(layer, 0);
    const float* v0 = cache.v(layer, 0);
    const bool f16 = cache.precision() == KvPrecision::kF16;
    if (f16) detail::round_like_weight(formats::GgmlType::kF16, q, T * c.q_rows());
    if (T >= kAttentionGemmMinQueries) {
      std::vector<float> scores(static_cast<std::size_t>(T * n_keys));
      for (std::int64_t h = 0; h < c.n_head; ++h) {
        const std::int64_t kv_off = (h / group) * hd;
        backend::run(backend::GemmF32Op{.M = T, .N = n_keys, .K = hd, .a = q + h * hd, .lda = c.q_rows(),
                                        .b = k0 + kv_off, .ldb = kv_row, .dst = scores.data(), .ldd = n_keys});
        parallel_for_each(T, backend::num_threads(), [&](std::int64_t t) {
          softmax_row(scores.data() + t * n_keys, start + t + 1, n_keys, f16);
        });
        backend::run(backend::GemmF32Op{.M = T, .N = hd, .K = n_keys, .a = scores.data(), .lda = n_keys,
                                        .b = v0 + kv_off, .ldb = kv_row, .dst = out + h * hd, .ldd = c.q_rows(),
                                        .b_kn = true});
      }
      return;
    }
    parallel_for_each(c.n_head * T, backend::num_threads(), [&](std::int64_t item) {
      const std::int64_t h = item % c.n_head, t = item / c.n_head, n_valid = start + t + 1;
      const float* qh = q + t * c.q_rows() + h * hd;
      const std::int64_t kv_off = (h / group) * hd;
      thread_local std::vector<float> scores;
      scores.resize(static_cast<std::size_t>(n_valid));
      for (std::int64_t j = 0; j < n_valid; ++j) {
        const float* kj = k0 + j * kv_row + kv_off;
        float dot = 0.0f;
        for (std::int64_t d = 0; d < hd; ++d) dot += qh[d] * kj[d];
        scores[j] = dot;
      }
      softmax_row(scores.data(), n_valid, n_valid, f16);
      float* o = out + t * c.q_rows() + h * hd;
      std::fill(o, o + hd, 0.0f);
      for (std::int64_t j = 0; j < n_valid; ++j) {
        const float* vj = v0 + j * kv_row + kv_off;
        for (std::int64_t d = 0; d < hd; ++d) o[d] += scores[j] * vj[d];
      }
    });
  }

  void run_layer(std::int64_t l, float* x, std::int64_t T, LlamaKvCache& cache, const RopeTables& rope,
                 Activations& a) const {
    const auto& c = config_;
    const Layer& L = layers_[static_cast<std::size_t>(l)];
    const std::int64_t start = cache.size();
    rms_norm(x, T, L.attn_norm, a.h.data());
    matmul(L.wq, a.h.data(), T, a.q.data());
    matmul(L.wk, a.h.data(), T, a.k.data());
    matmul(L.wv, a.h.data(), T, a.v.data());
    if (c.qkv_bias) {
      add_bias(a.q.data(), T, L.bq);
      add_bias(a.k.data(), T, L.bk);
      add_bias(a.v.data(), T, L.bv);
    }
    for (std::int64_t t = 0; t < T; ++t) {
      rope_rows(a.q.data() + t * c.q_rows(), c.n_head, rope.cos_at(t), rope.sin_at(t));
      rope_rows(a.k.data() + t * c.kv_rows(), c.n_head_kv, rope.cos_at(t), rope.sin_at(t));
      std::copy_n(a.k.data() + t * c.kv_rows(), c.kv_rows(), cache.k(l, start + t));
      std::copy_n(a.v.data() + t * c.kv_rows(), c.kv_rows(), cache.v(l, start + t));
      if (cache.precision() == KvPrecision::kF16) {
        detail::round_like_weight(formats::GgmlType::kF16, cache.k(l, start + t), c.kv_rows());
        detail::round_like_weight(formats::GgmlType::kF16, cache.v(l, start + t), c.kv_rows());
      }
    }
    attend(l, start, T, cache, a.q.data(), a.attn.data());
    matmul(L.wo, a.attn.data(), T, a.proj.data());
    for (std::int64_t i = 0; i < T * c.n_embd; ++i) x[i] += a.proj[i];

    rms_norm(x, T, L.ffn_norm, a.h.data());
    matmul(L.gate, a.h.data(), T, a.gate.data());
    matmul(L.up, a.h.data(), T, a.up.data());
    for (std::int64_t i = 0; i < T * c.n_ff; ++i) {
      const float g = a.gate[i];
      a.gate[i] = g / (1.0f + std::exp(-g)) * a.up[i];  // ggml's silu(g) * up
    }
    matmul(L.down, a.gate.data(), T, a.proj.data());
    for (std::int64_t i = 0; i < T * c.n_embd; ++i) x[i] += a.proj[i];
  }

  std::shared_ptr<const formats::GgufFile> file_;
  LlamaConfig config_;
  WeightView token_embd_, output_;
  std::vector<float> output_norm_, rope_freq_factors_;
  std::vector<Layer> layers_;
  float rope_theta_scale_ = 1.0f, attn_scale_ = 1.0f;
  static constexpr std::int64_t kAttentionGemmMinQueries = 8;
};

}  // namespace qforge::models
