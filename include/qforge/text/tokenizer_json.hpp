// Reads a byte-level BPE tokenizer from a Hugging Face tokenizer.json (model.type "BPE", with a
// ByteLevel pre-tokenizer, alone or in a Sequence with Digits and Split), and BOS/EOS from the
// post-processor's template or a tokenizer_config.json beside it. Anything the encoder would not
// reproduce exactly (a normalizer, prefix spaces, an unknown Split regex) is an error naming the key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "qforge/core/error.hpp"
#include "qforge/text/tokenizer_spec.hpp"

namespace qforge::text::detail {

class JsonTokenizerReader {
 public:
  explicit JsonTokenizerReader(std::filesystem::path path) : path_(std::move(path)), file_(path_.string()) {}

  TokenizerSpec read() {
    const nlohmann::json j = parse_file(path_);
    spec_.source = file_;
    if (const auto* n = find(j, "normalizer"); n && !n->is_null())
      fail("normalizer", fmt::format("is '{}'; only tokenizers without a normalizer are supported",
                                     n->value("type", std::string("?"))));
    const auto& model = member(j, "model", "model");
    if (const auto type = model.value("type", std::string()); type != "BPE")
      fail("model.type", fmt::format("is '{}'; only BPE models are supported", type));
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (const auto* v = find(model, key); v && !v->is_null() && !(v->is_string() && v->get<std::string>().empty()))
        fail(std::string("model.") + key, "is set; byte-level BPE does not use it");
    if (const auto* v = find(model, "byte_fallback"); v && v->is_boolean() && v->get<bool>())
      fail("model.byte_fallback", "is true; that is a SentencePiece-style BPE, not byte-level BPE");
    if (const auto* v = find(model, "ignore_merges"); v && v->is_boolean()) spec_.ignore_merges = v->get<bool>();
    read_vocab(model, member(j, "added_tokens", "added_tokens"));
    read_merges(member(model, "merges", "model.merges"));
    bool byte_level = false;
    read_pre_tokenizer(member(j, "pre_tokenizer", "pre_tokenizer"), "pre_tokenizer", byte_level);
    if (!byte_level) fail("pre_tokenizer", "has no ByteLevel step; only byte-level BPE is supported");
    spec_.pre_name = name_of_rules();
    if (const auto* post = find(j, "post_processor")) read_post_processor(*post, "post_processor");
    read_tokenizer_config();
    return std::move(spec_);
  }

 private:
  static nlohmann::json parse_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw_error(Status::kIoError, "{}: cannot open", path.string());
    std::stringstream ss;
    ss << in.rdbuf();
    try {
      return nlohmann::json::parse(ss.str());
    } catch (const nlohmann::json::exception& e) {
      throw_error(Status::kFormatError, "{}: not valid JSON: {}", path.string(), e.what());
    }
  }
  static const nlohmann::json* find(const nlohmann::json& j, const std::string& key) {
    if (!j.is_object()) return nullptr;
    const auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  }
  const nlohmann::json& member(const nlohmann::json& j, const std::string& key, const std::string& path) const {
    const auto* v = find(j, key);
    if (!v) fail(path, "is missing");
    return *v;
  }
  [[noreturn]] void fail(const std::string& key, std::string_view what) const {
    throw_error(Status::kFormatError, "{}: key '{}' {}", file_, key, what);
  }
  std::int32_t token_id(const nlohmann::json& v, const std::string& key) const {
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() > INT32_MAX)
      fail(key, "is not a token id");
    return static_cast<std::int32_t>(v.get<std::int64_t>());
  }

  void place_token(std::int32_t id, const std::string& text, TokenType type) {
    if (static_cast<std::size_t>(id) >= spec_.tokens.size()) {
      spec_.tokens.resize(id + 1);
      spec_.types.resize(id + 1, TokenType::kUndefined);
    }
    spec_.tokens[id] = text;
    spec_.types[id] = type;
  }

  void read_vocab(const nlohmann::json& model, const nlohmann::json& added) {
    const auto& vocab = member(model, "vocab", "model.vocab");
    if (!vocab.is_object()) fail("model.vocab", "is not an object of token: id");
    for (const auto& [text, id] : vocab.items()) place_token(token_id(id, "model.vocab." + text), text, TokenType::kNormal);
    if (!added.is_array()) fail("added_tokens", "is not an array");
    for (std::size_t i = 0; i < added.size(); ++i) {
      const auto& t = added[i];
      const std::string key = fmt::format("added_tokens[{}]", i);
      const auto content = member(t, "content", key + ".content").get<std::string>();
      for (const char* flag : {"lstrip", "rstrip", "single_word"})
        if (t.value(flag, false)) fail(key + "." + flag, fmt::format("is true for '{}'; not supported", content));
      place_token(token_id(member(t, "id", key + ".id"), key + ".id"), content,
                  t.value("special", false) ? TokenType::kControl : TokenType::kUserDefined);
    }
    for (std::size_t id = 0; id < spec_.tokens.size(); ++id)
      if (spec_.types[id] == TokenType::kUndefined) fail("model.vocab", fmt::format("has no token with id {}", id));
  }

  void read_merges(const nlohmann::json& merges) {
    if (!merges.is_array()) fail("model.merges", "is not an array");
    spec_.merges.reserve(merges.size());
    for (std::size_t i = 0; i < merges.size(); ++i) {
      const auto& m = merges[i];
      if (m.is_string()) {  // the older "left right" form
        const auto s = m.get<std::string>();
        const auto space = s.find(' ', 1);
        if (space == std::string::npos) fail(fmt::format("model.merges[{}]", i), fmt::format("'{}' has no space", s));
        spec_.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        spec_.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        fail(fmt::format("model.merges[{}]", i), "is neither \"left right\" nor [left, right]");
      }
    }
  }

  void read_pre_tokenizer(const nlohmann::json& p, const std::string& key, bool& byte_level) {
    if (p.is_null()) fail(key, "is null; byte-level BPE needs a ByteLevel pre-tokenizer");
    const auto type = p.value("type", std::string());
    if (type == "Sequence") {
      const auto& steps = member(p, "pretokenizers", key + ".pretokenizers");
      for (std::size_t i = 0; i < steps.size(); ++i)
        read_pre_tokenizer(steps[i], fmt::format("{}.pretokenizers[{}]", key, i), byte_level);
    } else if (type == "ByteLevel") {
      if (p.value("add_prefix_space", false)) fail(key + ".add_prefix_space", "is true; not supported");
      if (p.value("use_regex", true)) spec_.split_rules.push_back(SplitRule::kGpt2);
      byte_level = true;
    } else if (type == "Digits") {
      if (!p.value("individual_digits", false)) fail(key + ".individual_digits", "is false; not supported");
      spec_.split_rules.push_back(SplitRule::kDigits);
    } else if (type == "Split") {
      read_split(p, key);
    } else {
      fail(key + ".type", fmt::format("is '{}'; supported: Sequence, ByteLevel, Digits, Split", type));
    }
  }

  void read_split(const nlohmann::json& p, const std::string& key) {
    const auto& pattern = member(p, "pattern", key + ".pattern");
    const auto* regex = find(pattern, "Regex");
    if (!regex || !regex->is_string()) fail(key + ".pattern", "is not a Regex");
    const SplitRule* rule = find_split_regex(regex->get<std::string>());
    if (!rule) fail(key + ".pattern.Regex", fmt::format("'{}' is not a known pre-tokenizer regex", regex->get<std::string>()));
    if (p.value("behavior", std::string()) != "Isolated") fail(key + ".behavior", "is not 'Isolated'; not supported");
    if (p.value("invert", false)) fail(key + ".invert", "is true; not supported");
    spec_.split_rules.push_back(*rule);
  }

  // The GGUF pre-tokenizer name with the same rules, so both loaders describe themselves alike.
  std::string name_of_rules() const {
    for (const char* name : {"smollm", "gpt-2", "llama-bpe", "qwen2"})
      if (find_gguf_pre_tokenizer(name)->rules == spec_.split_rules) return name;
    return "custom";
  }

  // TemplateProcessing's single-sequence template: a special token before $A is a BOS, after it an EOS.
  void read_post_processor(const nlohmann::json& p, const std::string& key) {
    const auto type = p.is_object() ? p.value("type", std::string()) : std::string();
    if (type == "Sequence") {
      const auto& steps = member(p, "processors", key + ".processors");
      for (std::size_t i = 0; i < steps.size(); ++i) read_post_processor(steps[i], fmt::format("{}.processors[{}]", key, i));
      return;
    }
    if (type != "TemplateProcessing") return;
    const auto& single = member(p, "single", key + ".single");
    bool seen_text = false;
    for (const auto& piece : single) {
      if (find(piece, "Sequence")) {
        seen_text = true;
      } else if (const auto* special = find(piece, "SpecialToken")) {
        const auto name = member(*special, "id", key + ".single.SpecialToken.id").get<std::string>();
        const auto id = token_named(name, key + ".single");
        (seen_text ? spec_.add_eos : spec_.add_bos) = true;
        (seen_text ? spec_.eos_id : spec_.bos_id) = id;
      }
    }
  }

  std::int32_t token_named(const std::string& text, const std::string& key) const {
    for (std::size_t id = 0; id < spec_.tokens.size(); ++id)
      if (spec_.tokens[id] == text) return static_cast<std::int32_t>(id);
    fail(key, fmt::format("names '{}', which is not a token", text));
  }

  // tokenizer_config.json (when present) names the BOS and EOS tokens the template may not show.
  void read_tokenizer_config() {
    const auto config_path = path_.parent_path() / "tokenizer_config.json";
    if (!std::filesystem::exists(config_path)) return;
    const nlohmann::json config = parse_file(config_path);
    const auto token_text = [&](const char* key) -> std::optional<std::string> {
      const auto* v = find(config, key);
      if (!v || v->is_null()) return std::nullopt;
      if (v->is_string()) return v->get<std::string>();
      if (const auto* content = find(*v, "content"); content && content->is_string()) return content->get<std::string>();
      return std::nullopt;
    };
    if (const auto bos = token_text("bos_token"); bos && spec_.bos_id < 0)
      spec_.bos_id = token_named(*bos, "bos_token (of tokenizer_config.json)");
    if (const auto eos = token_text("eos_token"); eos && spec_.eos_id < 0)
      spec_.eos_id = token_named(*eos, "eos_token (of tokenizer_config.json)");
  }

  std::filesystem::path path_;
  std::string file_;
  TokenizerSpec spec_;
};

inline TokenizerSpec spec_from_tokenizer_json(const std::filesystem::path& path) {
  return JsonTokenizerReader(path).read();
}

}  // namespace qforge::text::detail
