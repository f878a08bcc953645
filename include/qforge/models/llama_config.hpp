// Llama-family decoders (GGUF architectures `llama` and `qwen2`): the hyper-parameters from a GGUF
// file's metadata, and the one table that maps tensor names between GGUF (`blk.N.attn_q.weight`),
// Hugging Face (`model.layers.N.self_attn.q_proj.weight`) and qforge module paths
// (`layers.N.attn.q.weight`), with the Q/K row permutation llama.cpp's converter applies.
//
// Keys follow llama.cpp's llama_model::load_hparams: block_count, embedding_length,
// context_length and attention.layer_norm_rms_epsilon are required; feed_forward_length and
// attention.head_count are required here too (a decoder without them is not one we can run);
// head_count_kv defaults to head_count, rope.freq_base to 10000, rope.dimension_count to the head
// dimension, vocab_size to the length of tokenizer.ggml.tokens.
#pragma once

#include <array>
#include <cstring>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "qforge/core/error.hpp"
#include "qforge/formats/gguf_file.hpp"

namespace qforge::models {

// How rotary embeddings pair the dimensions of a head. llama.cpp's converter permutes Llama's Q/K
// rows so that pairs are adjacent (ggml's normal mode); Qwen2 is converted without the
// permutation and keeps Hugging Face's halves (ggml's NeoX mode).
enum class RopePairing { kAdjacent, kHalves };

struct RopeConfig {
  float freq_base = 10000.0f;
  std::int64_t dims = 0;       // rotated dimensions per head (the first `dims`)
  float freq_scale = 1.0f;     // positions are multiplied by this (linear scaling: 1 / factor)
  RopePairing pairing = RopePairing::kAdjacent;
};

struct LlamaConfig {
  std::string architecture;  // "llama" or "qwen2"
  std::int64_t n_layer = 0, n_embd = 0, n_ff = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
  std::int64_t n_ctx_train = 0, n_vocab = 0;
  float rms_eps = 1e-5f;
  RopeConfig rope;
  bool qkv_bias = false;  // qwen2 has biases on Q, K and V

  std::int64_t q_rows() const { return n_head * head_dim; }
  std::int64_t kv_rows() const { return n_head_kv * head_dim; }

  static LlamaConfig from_gguf(const formats::GgufFile& file);
};

// ---- metadata access ---------------------------------------------------------------------------
namespace detail {

inline const formats::GgufValue* find_key(const formats::GgufFile& file, const std::string& key) {
  return file.find_kv(key);
}

[[noreturn]] inline void bad_key(const formats::GgufFile& file, const std::string& key, std::string_view why) {
  throw_error(Status::kFormatError, "{}: metadata key '{}' {}", file.path(), key, why);
}

inline bool is_integer(formats::GgufType t) {
  using formats::GgufType;
  return t == GgufType::kU8 || t == GgufType::kI8 || t == GgufType::kU16 || t == GgufType::kI16 ||
         t == GgufType::kU32 || t == GgufType::kI32 || t == GgufType::kU64 || t == GgufType::kI64;
}

inline std::int64_t integer_value(const formats::GgufFile& file, const std::string& key, const formats::GgufValue& v) {
  if (!is_integer(v.type)) bad_key(file, key, "is not an integer");
  if (const auto* u = std::get_if<std::uint64_t>(&v.scalar)) return static_cast<std::int64_t>(*u);
  return std::get<std::int64_t>(v.scalar);
}

// An integer key, or (llama.cpp's get_key_or_arr) a per-layer array whose values must all agree,
// since qforge runs uniform layers only.
inline std::optional<std::int64_t> optional_int(const formats::GgufFile& file, const std::string& key) {
  const auto* v = find_key(file, key);
  if (!v) return std::nullopt;
  if (v->type != formats::GgufType::kArray) return integer_value(file, key, *v);
  if (v->array.empty()) bad_key(file, key, "is an empty array");
  const std::int64_t first = integer_value(file, key, v->array.front());
  for (const auto& e : v->array)
    if (integer_value(file, key, e) != first) bad_key(file, key, "varies per layer, which is not supported");
  return first;
}

inline std::int64_t required_int(const formats::GgufFile& file, const std::string& key) {
  const auto v = optional_int(file, key);
  if (!v) throw_error(Status::kNotFound, "{}: missing metadata key '{}'", file.path(), key);
  if (*v <= 0) bad_key(file, key, fmt::format("is {}, expected a positive count", *v));
  return *v;
}

inline std::optional<float> optional_float(const formats::GgufFile& file, const std::string& key) {
  const auto* v = find_key(file, key);
  if (!v) return std::nullopt;
  if (v->type == formats::GgufType::kF32 || v->type == formats::GgufType::kF64)
    return static_cast<float>(std::get<double>(v->scalar));
  bad_key(file, key, "is not a float");
}

inline std::optional<std::string> optional_string(const formats::GgufFile& file, const std::string& key) {
  const auto* v = find_key(file, key);
  if (!v) return std::nullopt;
  if (v->type != formats::GgufType::kString) bad_key(file, key, "is not a string");
  return std::get<std::string>(v->scalar);
}

}  // namespace detail

inline LlamaConfig LlamaConfig::from_gguf(const formats::GgufFile& file) {
  using namespace detail;
  LlamaConfig c;
  const auto arch = optional_string(file, "general.architecture");
  if (!arch) throw_error(Status::kNotFound, "{}: missing metadata key 'general.architecture'", file.path());
  if (*arch != "llama" && *arch != "qwen2")
    throw_error(Status::kUnsupported, "{}: general.architecture is '{}'; qforge runs 'llama' and 'qwen2'", file.path(),
                *arch);
  c.architecture = *arch;
  const std::string p = c.architecture + ".";
  c.n_layer = required_int(file, p + "block_count");
  c.n_embd = required_int(file, p + "embedding_length");
  c.n_ff = required_int(file, p + "feed_forward_length");
  c.n_head = required_int(file, p + "attention.head_count");
  c.n_head_kv = optional_int(file, p + "attention.head_count_kv").value_or(c.n_head);
  c.n_ctx_train = required_int(file, p + "context_length");
  const auto eps = optional_float(file, p + "attention.layer_norm_rms_epsilon");
  if (!eps) throw_error(Status::kNotFound, "{}: missing metadata key '{}'", file.path(), p + "attention.layer_norm_rms_epsilon");
  c.rms_eps = *eps;
  if (c.n_embd % c.n_head != 0)
    bad_key(file, p + "attention.head_count", fmt::format("{} does not divide embedding_length {}", c.n_head, c.n_embd));
  if (c.n_head_kv <= 0 || c.n_head % c.n_head_kv != 0)
    bad_key(file, p + "attention.head_count_kv", fmt::format("{} does not divide head_count {}", c.n_head_kv, c.n_head));
  c.head_dim = optional_int(file, p + "attention.key_length").value_or(c.n_embd / c.n_head);
  if (optional_int(file, p + "attention.value_length").value_or(c.head_dim) != c.head_dim)
    bad_key(file, p + "attention.value_length", "differs from key_length, which is not supported");

  if (auto v = optional_int(file, p + "vocab_size")) {
    c.n_vocab = *v;
  } else if (const auto* tokens = find_key(file, "tokenizer.ggml.tokens"); tokens && !tokens->array.empty()) {
    c.n_vocab = static_cast<std::int64_t>(tokens->array.size());
  } else {
    throw_error(Status::kNotFound, "{}: neither '{}vocab_size' nor 'tokenizer.ggml.tokens' gives the vocabulary size",
                file.path(), p);
  }

  c.rope.freq_base = optional_float(file, p + "rope.freq_base").value_or(10000.0f);
  c.rope.dims = optional_int(file, p + "rope.dimension_count").value_or(c.head_dim);
  if (c.rope.dims <= 0 || c.rope.dims > c.head_dim || c.rope.dims % 2 != 0)
    bad_key(file, p + "rope.dimension_count", fmt::format("is {}; expected an even count up to the head dimension {}",
                                                          c.rope.dims, c.head_dim));
  c.rope.pairing = c.architecture == "qwen2" ? RopePairing::kHalves : RopePairing::kAdjacent;
  const std::string scaling = optional_string(file, p + "rope.scaling.type").value_or("none");
  const auto factor = optional_float(file, p + "rope.scaling.factor");
  if (scaling == "linear" && factor && *factor > 0.0f) {
    c.rope.freq_scale = 1.0f / *factor;
  } else if (scaling != "none" && scaling != "linear" && !(factor && *factor == 1.0f)) {
    throw_error(Status::kUnsupported, "{}: {}rope.scaling.type '{}' is not supported (none and linear are)", file.path(),
                p, scaling);
  }
  c.qkv_bias = file.find("blk.0.attn_q.bias") != nullptr;
  return c;
}

// ---- the name table ----------------------------------------------------------------------------
// Every tensor of a Llama-family model, in the three naming schemes. `{}` stands for the layer.
enum class LlamaTensor {
  kTokenEmbd, kOutputNorm, kOutput, kRopeFreqs,
  kAttnNorm, kAttnQ, kAttnK, kAttnV, kAttnQBias, kAttnKBias, kAttnVBias, kAttnOutput,
  kFfnNorm, kFfnGate, kFfnUp, kFfnDown,
};

// Which rows llama.cpp's converter permutes (Llama's Q and K, weights and biases).
enum class QkPermutation { kNone, kQuery, kKey };

struct LlamaTensorName {
  LlamaTensor id;
  bool per_layer;
  std::string_view gguf, hf, module;
  QkPermutation permutation;
};

inline constexpr std::array<LlamaTensorName, 16> kLlamaTensorNames = {{
    {LlamaTensor::kTokenEmbd, false, "token_embd.weight", "model.embed_tokens.weight", "embed.weight", QkPermutation::kNone},
    {LlamaTensor::kOutputNorm, false, "output_norm.weight", "model.norm.weight", "norm.weight", QkPermutation::kNone},
    {LlamaTensor::kOutput, false, "output.weight", "lm_head.weight", "head.weight", QkPermutation::kNone},
    {LlamaTensor::kRopeFreqs, false, "rope_freqs.weight", "", "rope.freq_factors", QkPermutation::kNone},
    {LlamaTensor::kAttnNorm, true, "blk.{}.attn_norm.weight", "model.layers.{}.input_layernorm.weight",
     "layers.{}.attn_norm.weight", QkPermutation::kNone},
    {LlamaTensor::kAttnQ, true, "blk.{}.attn_q.weight", "model.layers.{}.self_attn.q_proj.weight",
     "layers.{}.attn.q.weight", QkPermutation::kQuery},
    {LlamaTensor::kAttnK, true, "blk.{}.attn_k.weight", "model.layers.{}.self_attn.k_proj.weight",
     "layers.{}.attn.k.weight", QkPermutation::kKey},
    {LlamaTensor::kAttnV, true, "blk.{}.attn_v.weight", "model.layers.{}.self_attn.v_proj.weight",
     "layers.{}.attn.v.weight", QkPermutation::kNone},
    {LlamaTensor::kAttnQBias, true, "blk.{}.attn_q.bias", "model.layers.{}.self_attn.q_proj.bias",
     "layers.{}.attn.q.bias", QkPermutation::kQuery},
    {LlamaTensor::kAttnKBias, true, "blk.{}.attn_k.bias", "model.layers.{}.self_attn.k_proj.bias",
     "layers.{}.attn.k.bias", QkPermutation::kKey},
    {LlamaTensor::kAttnVBias, true, "blk.{}.attn_v.bias", "model.layers.{}.self_attn.v_proj.bias",
     "layers.{}.attn.v.bias", QkPermutation::kNone},
    {LlamaTensor::kAttnOutput, true, "blk.{}.attn_output.weight", "model.layers.{}.self_attn.o_proj.weight",
     "layers.{}.attn.o.weight", QkPermutation::kNone},
    {LlamaTensor::kFfnNorm, true, "blk.{}.ffn_norm.weight", "model.layers.{}.post_attention_layernorm.weight",
     "layers.{}.mlp_norm.weight", QkPermutation::kNone},
    {LlamaTensor::kFfnGate, true, "blk.{}.ffn_gate.weight", "model.layers.{}.mlp.gate_proj.weight",
     "layers.{}.mlp.gate.weight", QkPermutation::kNone},
    {LlamaTensor::kFfnUp, true, "blk.{}.ffn_up.weight", "model.layers.{}.mlp.up_proj.weight",
     "layers.{}.mlp.up.weight", QkPermutation::kNone},
    {LlamaTensor::kFfnDown, true, "blk.{}.ffn_down.weight", "model.layers.{}.mlp.down_proj.weight",
     "layers.{}.mlp.down.weight", QkPermutation::kNone},
}};

enum class NameScheme { kGguf, kHf, kModule };

inline const LlamaTensorName& llama_tensor_row(LlamaTensor id) {
  for (const auto& row : kLlamaTensorNames)
    if (row.id == id) return row;
  throw_error(Status::kInternal, "LlamaTensor {} has no row in kLlamaTensorNames", static_cast<int>(id));
}

inline std::string_view scheme_pattern(const LlamaTensorName& row, NameScheme scheme) {
  return scheme == NameScheme::kGguf ? row.gguf : scheme == NameScheme::kHf ? row.hf : row.module;
}

// The name of tensor `id` (of layer `layer` for per-layer tensors) in `scheme`.
inline std::string llama_tensor_name(LlamaTensor id, NameScheme scheme, std::int64_t layer = -1) {
  const auto& row = llama_tensor_row(id);
  const std::string_view pattern = scheme_pattern(row, scheme);
  if (pattern.empty())
    throw_error(Status::kNotFound, "tensor '{}' has no name in this naming scheme", row.gguf);
  if (!row.per_layer) return std::string(pattern);
  if (layer < 0) throw_error(Status::kInvalidArgument, "tensor '{}' is per layer: a layer index is needed", row.gguf);
  return fmt::format(fmt::runtime(pattern), layer);
}

struct ParsedTensorName {
  LlamaTensor id;
  std::int64_t layer = -1;  // -1 for tensors outside the layers
};

// Recognizes `name` in `scheme`; nullopt when it is no tensor of a Llama-family model.
inline std::optional<ParsedTensorName> parse_llama_tensor_name(std::string_view name, NameScheme scheme) {
  for (const auto& row : kLlamaTensorNames) {
    const std::string_view pattern = scheme_pattern(row, scheme);
    if (pattern.empty()) continue;
    if (!row.per_layer) {
      if (name == pattern) return ParsedTensorName{row.id, -1};
      continue;
    }
    const auto brace = pattern.find("{}");
    const std::string_view head = pattern.substr(0, brace), tail = pattern.substr(brace + 2);
    if (name.size() <= head.size() + tail.size() || !name.starts_with(head) || !name.ends_with(tail)) continue;
    const std::string_view digits = name.substr(head.size(), name.size() - head.size() - tail.size());
    if (digits.size() > 9 || (digits.size() > 1 && digits[0] == '0')) continue;
    std::int64_t layer = 0;
    bool ok = true;
    for (char ch : digits) {
      ok = ok && ch >= '0' && ch <= '9';
      layer = layer * 10 + (ch - '0');
    }
    if (ok) return ParsedTensorName{row.id, layer};
  }
  return std::nullopt;
}

// Renames a tensor between schemes; throws naming the tensor when it is not in the table.
inline std::string rename_llama_tensor(std::string_view name, NameScheme from, NameScheme to) {
  const auto parsed = parse_llama_tensor_name(name, from);
  if (!parsed) throw_error(Status::kNotFound, "'{}' is not a Llama-family tensor name", name);
  return llama_tensor_name(parsed->id, to, parsed->layer);
}

// ---- the Q/K row permutation -------------------------------------------------------------------
// llama.cpp's converter reorders the rows of each head of Q and K (and their biases) so that the
// two halves Hugging Face rotates together become adjacent pairs. With head dimension hd and
// i < hd/2, j in {0, 1}: GGUF row h*hd + 2i + j holds HF row h*hd + j*hd/2 + i. K uses the KV
// head count. `rows` of `row_bytes` each are moved whole, so this works for any element type
// (including GGUF blocks, since blocks never span rows).
inline std::int64_t gguf_row_of_hf_row(std::int64_t hf_row, std::int64_t head_dim) {
  const std::int64_t h = hf_row / head_dim, r = hf_row % head_dim, half = head_dim / 2;
  return h * head_dim + 2 * (r % half) + r / half;
}

namespace detail {
struct QkRows {
  std::size_t row_bytes;
  std::int64_t head_dim;
};
inline QkRows check_qk_rows(std::span<const std::uint8_t> src, std::span<std::uint8_t> dst, std::int64_t rows,
                            std::int64_t n_heads, std::string_view what) {
  if (n_heads <= 0 || rows % n_heads != 0 || (rows / n_heads) % 2 != 0)
    throw_error(Status::kShapeMismatch, "{}: {} rows do not split into {} heads of an even dimension", what, rows,
                n_heads);
  if (src.size() != dst.size() || src.size() % static_cast<std::size_t>(rows) != 0)
    throw_error(Status::kShapeMismatch, "{}: {} bytes do not hold {} equal rows", what, src.size(), rows);
  return {src.size() / static_cast<std::size_t>(rows), rows / n_heads};
}
}  // namespace detail

// dst row gguf_row_of_hf_row(r) = src row r (HF -> GGUF).
inline void permute_qk_rows_hf_to_gguf(std::span<const std::uint8_t> src, std::span<std::uint8_t> dst,
                                       std::int64_t rows, std::int64_t n_heads, std::string_view what) {
  const auto [row_bytes, head_dim] = detail::check_qk_rows(src, dst, rows, n_heads, what);
  for (std::int64_t r = 0; r < rows; ++r)
    std::memcpy(dst.data() + gguf_row_of_hf_row(r, head_dim) * row_bytes, src.data() + r * row_bytes, row_bytes);
}

// The inverse: dst row r = src row gguf_row_of_hf_row(r) (GGUF -> HF).
inline void permute_qk_rows_gguf_to_hf(std::span<const std::uint8_t> src, std::span<std::uint8_t> dst,
                                       std::int64_t rows, std::int64_t n_heads, std::string_view what) {
  const auto [row_bytes, head_dim] = detail::check_qk_rows(src, dst, rows, n_heads, what);
  for (std::int64_t r = 0; r < rows; ++r)
    std::memcpy(dst.data() + r * row_bytes, src.data() + gguf_row_of_hf_row(r, head_dim) * row_bytes, row_bytes);
}

// The head count a tensor's permutation uses (0: not permuted). Qwen2 is converted unpermuted.
inline std::int64_t permutation_heads(const LlamaConfig& c, LlamaTensor id) {
  if (c.rope.pairing == RopePairing::kHalves) return 0;
  switch (llama_tensor_row(id).permutation) {
    case QkPermutation::kQuery: return c.n_head;
    case QkPermutation::kKey: return c.n_head_kv;
    case QkPermutation::kNone: return 0;
  }
  return 0;
}

}  // namespace qforge::models
