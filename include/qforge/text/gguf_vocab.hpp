// Reads a byte-level BPE tokenizer from GGUF metadata (the tokenizer.ggml.* keys llama.cpp's
// converter writes), with llama.cpp's defaults where a key is absent.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "qforge/core/error.hpp"
#include "qforge/formats/gguf_file.hpp"
#include "qforge/text/tokenizer_spec.hpp"

namespace qforge::text::detail {

class GgufKeys {
 public:
  GgufKeys(const formats::GgufFile& f, const std::string& file) : f_(f), file_(file) {}

  const formats::GgufValue& required(const std::string& key) const {
    if (const auto* v = f_.find_kv(key)) return *v;
    throw_error(Status::kNotFound, "{}: missing key '{}' (needed for the tokenizer)", file_, key);
  }
  std::string string(const std::string& key) const {
    const auto& v = required(key);
    if (v.type != formats::GgufType::kString) fail(key, "is not a string");
    return std::get<std::string>(v.scalar);
  }
  std::vector<std::string> strings(const std::string& key) const {
    return array_values<std::string>(key, formats::GgufType::kString, "strings");
  }
  std::vector<std::int64_t> integers(const std::string& key) const {
    return array_values<std::int64_t>(key, formats::GgufType::kI32, "INT32 values");
  }
  std::optional<std::int64_t> optional_integer(const std::string& key) const {
    const auto* v = f_.find_kv(key);
    if (!v) return std::nullopt;
    if (const auto* u = std::get_if<std::uint64_t>(&v->scalar); u && v->type != formats::GgufType::kArray)
      return static_cast<std::int64_t>(*u);
    if (const auto* i = std::get_if<std::int64_t>(&v->scalar); i && v->type != formats::GgufType::kArray) return *i;
    fail(key, "is not an integer");
  }
  std::optional<bool> optional_bool(const std::string& key) const {
    const auto* v = f_.find_kv(key);
    if (!v) return std::nullopt;
    if (v->type != formats::GgufType::kBool) fail(key, "is not a bool");
    return std::get<bool>(v->scalar);
  }
  bool has(const std::string& key) const { return f_.find_kv(key) != nullptr; }
  [[noreturn]] void fail(const std::string& key, std::string_view what) const {
    throw_error(Status::kFormatError, "{}: key '{}' {}", file_, key, what);
  }

 private:
  template <class T>
  std::vector<T> array_values(const std::string& key, formats::GgufType elem, std::string_view what) const {
    const auto& v = required(key);
    if (v.type != formats::GgufType::kArray || v.elem_type != elem) fail(key, fmt::format("is not an array of {}", what));
    std::vector<T> out;
    out.reserve(v.array.size());
    for (const auto& e : v.array) out.push_back(std::get<T>(e.scalar));
    return out;
  }

  const formats::GgufFile& f_;
  const std::string& file_;
};

// Splits a merge "left right" at its first space after the first character, as llama.cpp does
// (a merge's left part never begins with a space in a byte-level vocabulary, where ' ' is 'Ġ').
inline std::pair<std::string, std::string> split_merge(const std::string& merge, const std::string& file,
                                                       std::string_view key, std::size_t index) {
  const auto space = merge.find(' ', 1);
  if (space == std::string::npos)
    throw_error(Status::kFormatError, "{}: key '{}': merge {} '{}' is not two tokens separated by a space", file, key,
                index, merge);
  return {merge.substr(0, space), merge.substr(space + 1)};
}

inline std::int32_t checked_token_id(std::int64_t id, std::size_t vocab, const GgufKeys& keys, const std::string& key) {
  if (id < 0 || static_cast<std::size_t>(id) >= vocab)
    keys.fail(key, fmt::format("is token id {}, outside the vocabulary of {} tokens", id, vocab));
  return static_cast<std::int32_t>(id);
}

inline TokenizerSpec spec_from_gguf(const formats::GgufFile& f, const std::string& file) {
  const GgufKeys keys(f, file);
  TokenizerSpec spec;
  spec.source = file;
  if (const auto model = keys.string("tokenizer.ggml.model"); model != "gpt2")
    throw_error(Status::kUnsupported,
                "{}: key 'tokenizer.ggml.model' is '{}'; only byte-level BPE ('gpt2') tokenizers are supported", file,
                model);
  if (!keys.has("tokenizer.ggml.pre"))
    throw_error(Status::kUnsupported,
                "{}: missing key 'tokenizer.ggml.pre' (llama.cpp falls back to its 'default' pre-tokenizer, which "
                "qforge does not implement; known: {})",
                file, kKnownGgufPreTokenizers);
  spec.pre_name = keys.string("tokenizer.ggml.pre");
  const PreTokenizerInfo* pre = find_gguf_pre_tokenizer(spec.pre_name);
  if (!pre)
    throw_error(Status::kUnsupported, "{}: key 'tokenizer.ggml.pre' is '{}', not a known pre-tokenizer (known: {})",
                file, spec.pre_name, kKnownGgufPreTokenizers);
  spec.split_rules = pre->rules;
  spec.ignore_merges = pre->ignore_merges;

  spec.tokens = keys.strings("tokenizer.ggml.tokens");
  if (spec.tokens.empty()) keys.fail("tokenizer.ggml.tokens", "is empty");
  spec.types.assign(spec.tokens.size(), TokenType::kNormal);
  if (keys.has("tokenizer.ggml.token_type")) {
    const auto types = keys.integers("tokenizer.ggml.token_type");
    if (types.size() != spec.tokens.size())
      keys.fail("tokenizer.ggml.token_type",
                fmt::format("has {} entries for {} tokens", types.size(), spec.tokens.size()));
    for (std::size_t i = 0; i < types.size(); ++i) {
      if (types[i] < 0 || types[i] > 6)
        keys.fail("tokenizer.ggml.token_type", fmt::format("gives token {} the unknown type {}", i, types[i]));
      spec.types[i] = static_cast<TokenType>(types[i]);
    }
  }
  if (!keys.has("tokenizer.ggml.merges"))
    throw_error(Status::kFormatError, "{}: missing key 'tokenizer.ggml.merges' (a BPE vocabulary needs its merges)",
                file);
  const auto merges = keys.strings("tokenizer.ggml.merges");
  spec.merges.reserve(merges.size());
  for (std::size_t i = 0; i < merges.size(); ++i)
    spec.merges.push_back(split_merge(merges[i], file, "tokenizer.ggml.merges", i));

  const auto id_key = [&](const std::string& key) -> std::int32_t {
    const auto id = keys.optional_integer(key);
    return id ? checked_token_id(*id, spec.tokens.size(), keys, key) : -1;
  };
  spec.bos_id = id_key("tokenizer.ggml.bos_token_id");
  spec.eos_id = id_key("tokenizer.ggml.eos_token_id");
  spec.add_bos = keys.optional_bool("tokenizer.ggml.add_bos_token").value_or(pre->add_bos);
  spec.add_eos = keys.optional_bool("tokenizer.ggml.add_eos_token").value_or(false);
  return spec;
}

}  // namespace qforge::text::detail
