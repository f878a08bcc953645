// Byte-level BPE tokenizer of Llama-family models (SmolLM, GPT-2, Llama 3, Qwen2), built from GGUF
// metadata or a Hugging Face tokenizer.json, token-for-token equal to llama.cpp's tokenizer.
//
// encode: special-token strings are cut out first (longest first, as llama.cpp does); each
// remaining stretch of text is split by the model's pre-tokenizer; each piece's bytes are drawn in
// GPT-2's byte alphabet and merged by BPE, the pair of lowest merge rank first (leftmost on ties).
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "qforge/core/error.hpp"
#include "qforge/formats/gguf_file.hpp"
#include "qforge/text/gguf_vocab.hpp"
#include "qforge/text/pre_tokenizer.hpp"
#include "qforge/text/tokenizer_json.hpp"
#include "qforge/text/tokenizer_spec.hpp"
#include "qforge/text/unicode.hpp"

namespace qforge::text {

class Tokenizer {
 public:
  static Tokenizer from_gguf(const formats::GgufFile& f, const std::string& file_for_errors) {
    return Tokenizer(detail::spec_from_gguf(f, file_for_errors));
  }
  static Tokenizer from_tokenizer_json(const std::filesystem::path& path) {
    return Tokenizer(detail::spec_from_tokenizer_json(path));
  }
  explicit Tokenizer(TokenizerSpec spec) : spec_(std::move(spec)) { index(); }

  // `add_bos` is llama.cpp's add_special: it prepends BOS (and appends EOS) only where the model's
  // flags ask for them (adds_bos(), adds_eos()); SmolLM2's files ask for neither. `parse_special`
  // lets control tokens such as <|im_start|> be recognised in the text; user-defined tokens are
  // recognised either way.
  std::vector<std::int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const {
    std::vector<std::int32_t> out;
    if (add_bos && spec_.add_bos && spec_.bos_id >= 0) out.push_back(spec_.bos_id);
    for (const Fragment& f : split_special(text, parse_special)) {
      if (f.token >= 0)
        out.push_back(f.token);
      else
        encode_text(text.substr(f.begin, f.size), out);
    }
    if (add_bos && spec_.add_eos && spec_.eos_id >= 0) out.push_back(spec_.eos_id);
    return out;
  }

  // The text the tokens stand for: ordinary tokens through the byte alphabet, special tokens as
  // written. Tokens that end inside a multi-byte character give that character's partial bytes.
  std::string decode(std::span<const std::int32_t> ids) const {
    std::string out;
    const auto& alphabet = byte_alphabet();
    for (const std::int32_t id : ids) {
      check_id(id);
      const std::string& text = spec_.tokens[id];
      if (is_special(spec_.types[id])) {
        out += text;
        continue;
      }
      for (const char32_t cp : utf8_decode(text)) {
        const int b = alphabet.byte_of(cp);
        if (b >= 0)
          out += static_cast<char>(b);
        else
          utf8_append(out, cp);
      }
    }
    return out;
  }

  // The token as the vocabulary spells it (byte-level form: "Ġthe" for " the").
  std::string token_text(std::int32_t id) const {
    check_id(id);
    return spec_.tokens[id];
  }
  TokenType token_type(std::int32_t id) const {
    check_id(id);
    return spec_.types[id];
  }
  // The id of a token spelled exactly `text` in the vocabulary, or -1.
  std::int32_t find_token(std::string_view text) const {
    const auto it = token_ids_.find(std::string(text));
    return it == token_ids_.end() ? -1 : it->second;
  }
  std::int32_t bos_id() const { return spec_.bos_id; }
  std::int32_t eos_id() const { return spec_.eos_id; }
  bool adds_bos() const { return spec_.add_bos; }
  bool adds_eos() const { return spec_.add_eos; }
  std::int32_t vocab_size() const { return static_cast<std::int32_t>(spec_.tokens.size()); }
  std::size_t merge_count() const { return spec_.merges.size(); }
  const std::string& pre_tokenizer_name() const { return spec_.pre_name; }

 private:
  struct Fragment {
    std::size_t begin = 0;
    std::size_t size = 0;
    std::int32_t token = -1;  // -1: text still to be encoded
  };
  struct Merge {
    std::int32_t rank;
    std::int32_t merged;  // symbol id of the joined string
  };

  static bool is_special(TokenType t) {
    return t == TokenType::kControl || t == TokenType::kUserDefined || t == TokenType::kUnknown;
  }
  static std::uint64_t pair_key(std::int32_t left, std::int32_t right) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
  }

  void check_id(std::int32_t id) const {
    if (id < 0 || id >= vocab_size())
      throw_error(Status::kInvalidArgument, "{}: token id {} is outside the vocabulary of {} tokens", spec_.source, id,
                  vocab_size());
  }

  // Symbols are the strings BPE works on: every token, plus any merge part or result that is not
  // a token (ids from vocab_size() on), so merging never compares strings.
  std::int32_t symbol_id(const std::string& s) {
    const auto [it, added] = symbol_ids_.emplace(s, vocab_size() + static_cast<std::int32_t>(extra_symbols_.size()));
    if (added) extra_symbols_.push_back(s);
    return it->second;
  }
  const std::string& symbol_text(std::int32_t sym) const {
    return sym < vocab_size() ? spec_.tokens[sym] : extra_symbols_[sym - vocab_size()];
  }

  void index() {
    if (spec_.tokens.size() != spec_.types.size() || spec_.tokens.empty() || spec_.tokens.size() > INT32_MAX)
      throw_error(Status::kFormatError, "{}: {} tokens with {} token types", spec_.source, spec_.tokens.size(),
                  spec_.types.size());
    // Later duplicates win, as in llama.cpp's token-to-id map.
    for (std::size_t id = 0; id < spec_.tokens.size(); ++id) token_ids_[spec_.tokens[id]] = static_cast<std::int32_t>(id);
    symbol_ids_ = token_ids_;
    merges_.reserve(spec_.merges.size());
    for (std::size_t rank = 0; rank < spec_.merges.size(); ++rank) {
      const auto& [left, right] = spec_.merges[rank];
      const std::int32_t l = symbol_id(left), r = symbol_id(right), m = symbol_id(left + right);
      merges_.emplace(pair_key(l, r), Merge{static_cast<std::int32_t>(rank), m});  // the first rank wins
    }
    const auto& alphabet = byte_alphabet();
    for (int b = 0; b < 256; ++b) {
      const auto it = symbol_ids_.find(alphabet.utf8(static_cast<unsigned char>(b)));
      byte_symbols_[b] = it == symbol_ids_.end() ? -1 : it->second;
    }
    for (std::size_t id = 0; id < spec_.tokens.size(); ++id)
      if (is_special(spec_.types[id]) && !spec_.tokens[id].empty()) special_tokens_.push_back(static_cast<std::int32_t>(id));
    std::stable_sort(special_tokens_.begin(), special_tokens_.end(),
                     [&](std::int32_t a, std::int32_t b) { return spec_.tokens[a].size() > spec_.tokens[b].size(); });
  }

  // Cuts every occurrence of each special token out of the text, longest tokens first.
  std::vector<Fragment> split_special(std::string_view text, bool parse_special) const {
    std::vector<Fragment> fragments;
    if (!text.empty()) fragments.push_back({0, text.size(), -1});
    std::vector<Fragment> next;
    for (const std::int32_t id : special_tokens_) {
      if (!parse_special && spec_.types[id] != TokenType::kUserDefined) continue;
      const std::string& special = spec_.tokens[id];
      next.clear();
      for (const Fragment& f : fragments) {
        if (f.token >= 0) {
          next.push_back(f);
          continue;
        }
        const std::string_view piece = text.substr(f.begin, f.size);
        std::size_t from = 0;
        for (auto at = piece.find(special); at != std::string_view::npos; at = piece.find(special, from)) {
          if (at > from) next.push_back({f.begin + from, at - from, -1});
          next.push_back({f.begin + at, special.size(), id});
          from = at + special.size();
        }
        if (from < piece.size()) next.push_back({f.begin + from, piece.size() - from, -1});
      }
      fragments.swap(next);
    }
    return fragments;
  }

  void encode_text(std::string_view text, std::vector<std::int32_t>& out) const {
    const std::vector<char32_t> cps = utf8_decode(text);
    std::string piece;
    std::size_t begin = 0;
    for (const std::size_t end : pre_tokenize(cps, spec_.split_rules)) {
      piece.clear();
      for (std::size_t i = begin; i < end; ++i) utf8_append(piece, cps[i]);
      encode_piece(piece, out);
      begin = end;
    }
  }

  void encode_piece(std::string_view bytes, std::vector<std::int32_t>& out) const {
    const auto& alphabet = byte_alphabet();
    if (spec_.ignore_merges) {
      std::string drawn;
      for (const char c : bytes) drawn += alphabet.utf8(static_cast<unsigned char>(c));
      if (const auto it = token_ids_.find(drawn); it != token_ids_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    // A byte whose character is not a symbol is kept as -(byte + 2): it never merges.
    std::vector<std::int32_t> symbols;
    symbols.reserve(bytes.size());
    for (const char c : bytes) {
      const auto b = static_cast<unsigned char>(c);
      symbols.push_back(byte_symbols_[b] >= 0 ? byte_symbols_[b] : -(static_cast<std::int32_t>(b) + 2));
    }
    merge_symbols(symbols);
    for (const std::int32_t sym : symbols) emit_symbol(sym, out);
  }

  std::int32_t rank_of(std::int32_t left, std::int32_t right) const {
    if (left < 0 || right < 0) return INT32_MAX;
    const auto it = merges_.find(pair_key(left, right));
    return it == merges_.end() ? INT32_MAX : it->second.rank;
  }

  // Repeatedly joins the adjacent pair of lowest rank (the leftmost of equal ranks).
  void merge_symbols(std::vector<std::int32_t>& symbols) const {
    if (symbols.size() < 2) return;
    std::vector<std::int32_t> ranks(symbols.size() - 1);
    for (std::size_t i = 0; i + 1 < symbols.size(); ++i) ranks[i] = rank_of(symbols[i], symbols[i + 1]);
    while (!ranks.empty()) {
      const auto best = std::min_element(ranks.begin(), ranks.end());
      if (*best == INT32_MAX) break;
      const auto i = static_cast<std::size_t>(best - ranks.begin());
      symbols[i] = merges_.at(pair_key(symbols[i], symbols[i + 1])).merged;
      symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(i) + 1);
      ranks.erase(ranks.begin() + static_cast<std::ptrdiff_t>(i));
      if (i > 0) ranks[i - 1] = rank_of(symbols[i - 1], symbols[i]);
      if (i < ranks.size()) ranks[i] = rank_of(symbols[i], symbols[i + 1]);
    }
  }

  // A symbol that is not a token falls back, as in llama.cpp, to the tokens of its single bytes.
  void emit_symbol(std::int32_t sym, std::vector<std::int32_t>& out) const {
    if (sym >= 0 && sym < vocab_size()) {
      out.push_back(sym);
      return;
    }
    const std::string& text = sym >= 0 ? symbol_text(sym) : byte_alphabet().utf8(static_cast<unsigned char>(-sym - 2));
    for (const char c : text)
      if (const auto it = token_ids_.find(std::string(1, c)); it != token_ids_.end()) out.push_back(it->second);
  }

  TokenizerSpec spec_;
  std::unordered_map<std::string, std::int32_t> token_ids_;
  std::unordered_map<std::string, std::int32_t> symbol_ids_;
  std::vector<std::string> extra_symbols_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::array<std::int32_t, 256> byte_symbols_{};
  std::vector<std::int32_t> special_tokens_;  // longest first
};

}  // namespace qforge::text
