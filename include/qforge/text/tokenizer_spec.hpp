// What a byte-level BPE tokenizer is made of, whichever file it came from (GGUF metadata or a
// Hugging Face tokenizer.json): the loaders fill a TokenizerSpec and Tokenizer indexes it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "qforge/text/pre_tokenizer.hpp"

namespace qforge::text {

// llama.cpp's token types (the values of tokenizer.ggml.token_type).
enum class TokenType : std::int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // e.g. <|im_start|>: matched in text only when special tokens are parsed
  kUserDefined = 4,  // added by the model's authors: always matched in text as a whole token
  kUnused = 5,
  kByte = 6,
};

struct TokenizerSpec {
  std::string source;  // the file, for error messages
  std::vector<std::string> tokens;
  std::vector<TokenType> types;
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  std::string pre_name;
  std::vector<SplitRule> split_rules;
  bool ignore_merges = false;
  std::int32_t bos_id = -1;  // -1: none
  std::int32_t eos_id = -1;
  bool add_bos = false;
  bool add_eos = false;
};

}  // namespace qforge::text
