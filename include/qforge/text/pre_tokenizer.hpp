// The pre-tokenizers of byte-level BPE models: text is cut into pieces ("words") before BPE runs
// inside each one. Each model's pre-tokenizer is a list of regular expressions over Unicode
// classes, applied in order, each one re-splitting the pieces of the one before (as llama.cpp and
// Hugging Face's Sequence pre-tokenizer do). std::regex cannot express \p{L}, so every expression
// is written out here as a scanner with the regex's leftmost-alternative semantics.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "qforge/text/unicode.hpp"

namespace qforge::text {

enum class SplitRule {
  kDigits,  // \p{N}: every number code point alone (HF Digits with individual_digits)
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,
  kQwen2,  // as kLlama3 with \p{N} in place of \p{N}{1,3}
};

namespace detail {

// Cuts [begin, end) of `cps` into pieces by one rule, appending each piece's end offset. Look-ahead
// stops at `end`, as a regex applied to that piece alone would.
class PieceSplitter {
 public:
  PieceSplitter(std::span<const char32_t> cps, std::size_t begin, std::size_t end) : cps_(cps), end_(end), pos_(begin) {}

  void split(SplitRule rule, std::vector<std::size_t>& ends) {
    while (pos_ < end_) {
      switch (rule) {
        case SplitRule::kDigits: pos_ = next_digits(); break;
        case SplitRule::kGpt2: pos_ = next_gpt2(); break;
        case SplitRule::kLlama3: pos_ = next_llama3(3); break;
        case SplitRule::kQwen2: pos_ = next_llama3(1); break;
      }
      ends.push_back(pos_);
    }
  }

 private:
  char32_t at(std::size_t i) const { return i < end_ ? cps_[i] : 0; }
  CharClass cls(std::size_t i) const { return i < end_ ? char_class(cps_[i]) : CharClass::kOther; }
  bool in_piece(std::size_t i) const { return i < end_; }
  bool is(std::size_t i, CharClass c) const { return in_piece(i) && cls(i) == c; }
  bool is_newline(std::size_t i) const { return in_piece(i) && (cps_[i] == '\r' || cps_[i] == '\n'); }
  std::size_t skip(std::size_t i, CharClass c) const {
    while (is(i, c)) ++i;
    return i;
  }

  std::size_t next_digits() const {
    if (is(pos_, CharClass::kNumber)) return pos_ + 1;
    std::size_t i = pos_;
    while (in_piece(i) && !is(i, CharClass::kNumber)) ++i;
    return i;
  }

  // 's|'t|'re|'ve|'m|'ll|'d, optionally ignoring case; the end of the match or 0.
  std::size_t contraction(bool any_case) const {
    if (at(pos_) != '\'' || !in_piece(pos_ + 1)) return 0;
    const auto lower = [&](std::size_t i) {
      const char32_t c = at(i);
      return any_case && c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
    };
    const char32_t a = lower(pos_ + 1);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return pos_ + 2;
    if (!in_piece(pos_ + 2)) return 0;
    const char32_t b = lower(pos_ + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return pos_ + 3;
    return 0;
  }

  // The whitespace alternatives every rule ends with: \s+(?!\S) leaves the last white space of
  // a run to the word after it; a lone white space before a word is a piece of its own (\s+).
  std::size_t whitespace_run() const {
    const std::size_t run_end = skip(pos_, CharClass::kWhitespace);
    const std::size_t n = run_end - pos_;
    if (n > 1 && in_piece(run_end)) return run_end - 1;
    if (n > 0) return run_end;
    return pos_ + 1;  // unreachable: every code point is a letter, number, white space or other
  }

  std::size_t next_gpt2() const {
    if (const auto e = contraction(false)) return e;
    const std::size_t start = at(pos_) == ' ' ? pos_ + 1 : pos_;
    if (is(start, CharClass::kLetter)) return skip(start, CharClass::kLetter);
    if (is(start, CharClass::kNumber)) return skip(start, CharClass::kNumber);
    if (is(start, CharClass::kOther)) return skip(start, CharClass::kOther);
    return whitespace_run();
  }

  std::size_t next_llama3(std::size_t max_digits) const {
    if (const auto e = contraction(true)) return e;
    const CharClass c = cls(pos_);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (!is_newline(pos_) && c != CharClass::kNumber && (c == CharClass::kLetter || is(pos_ + 1, CharClass::kLetter)))
      return skip(pos_ + 1, CharClass::kLetter);
    if (c == CharClass::kNumber) {
      std::size_t i = pos_;
      while (i - pos_ < max_digits && is(i, CharClass::kNumber)) ++i;
      return i;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    const std::size_t start = at(pos_) == ' ' ? pos_ + 1 : pos_;
    if (is(start, CharClass::kOther)) {
      std::size_t i = skip(start, CharClass::kOther);
      while (is_newline(i)) ++i;
      return i;
    }
    // \s*[\r\n]+ : a white-space run up to and including its last line break
    std::size_t last_break = 0;
    for (std::size_t i = pos_; is(i, CharClass::kWhitespace); ++i)
      if (is_newline(i)) last_break = i + 1;
    if (last_break > 0) return last_break;
    return whitespace_run();
  }

  std::span<const char32_t> cps_;
  std::size_t end_;
  std::size_t pos_;
};

}  // namespace detail

// Cuts `cps` into pieces by `rules` applied in order; returns each piece's end offset.
inline std::vector<std::size_t> pre_tokenize(std::span<const char32_t> cps, std::span<const SplitRule> rules) {
  std::vector<std::size_t> ends;
  if (!cps.empty()) ends.push_back(cps.size());
  std::vector<std::size_t> next;
  for (const SplitRule rule : rules) {
    next.clear();
    std::size_t begin = 0;
    for (const std::size_t end : ends) {
      detail::PieceSplitter(cps, begin, end).split(rule, next);
      begin = end;
    }
    ends.swap(next);
  }
  return ends;
}

struct PreTokenizerInfo {
  std::string_view name;  // the name this project documents (llama.cpp's tokenizer.ggml.pre)
  std::vector<SplitRule> rules;
  bool ignore_merges;  // a piece that is itself a token is taken whole (llama.cpp's Llama 3 setting)
  bool add_bos;        // llama.cpp's default for the add-BOS flag when the file does not set it
};

// llama.cpp's tokenizer.ggml.pre names that use one of the implemented rule lists.
inline const PreTokenizerInfo* find_gguf_pre_tokenizer(std::string_view pre) {
  static const std::vector<std::pair<std::vector<std::string_view>, PreTokenizerInfo>> known = {
      {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"},
       {"smollm", {SplitRule::kDigits, SplitRule::kGpt2}, false, false}},
      {{"gpt-2"}, {"gpt-2", {SplitRule::kGpt2}, false, false}},
      {{"llama-bpe", "llama3", "llama-v3", "falcon3"}, {"llama-bpe", {SplitRule::kLlama3}, true, true}},
      {{"qwen2", "deepseek-r1-qwen", "megrez"}, {"qwen2", {SplitRule::kQwen2}, false, false}},
  };
  for (const auto& [names, info] : known)
    for (const auto n : names)
      if (n == pre) return &info;
  return nullptr;
}

inline constexpr std::string_view kKnownGgufPreTokenizers =
    "smollm (also starcoder, refact, command-r, codeshell, exaone, minerva-7b), gpt-2, "
    "llama-bpe (also llama3, llama-v3, falcon3), qwen2 (also deepseek-r1-qwen, megrez)";

// The Split regexes of Hugging Face tokenizer.json files that match an implemented rule.
inline const SplitRule* find_split_regex(std::string_view pattern) {
  static const std::vector<std::pair<std::string_view, SplitRule>> known = {
      {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
       "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
       SplitRule::kLlama3},
      {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
       "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
       SplitRule::kQwen2},
      {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", SplitRule::kGpt2},
      {"\\p{N}", SplitRule::kDigits},
  };
  for (const auto& [p, rule] : known)
    if (p == pattern) return &rule;
  return nullptr;
}

}  // namespace qforge::text
