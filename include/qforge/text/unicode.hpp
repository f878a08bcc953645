// UTF-8 decoding and encoding, the character classes the pre-tokenizers split on, and GPT-2's
// byte-level alphabet (every byte drawn as one printable code point, so BPE works on strings).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "qforge/text/unicode_classes.hpp"

namespace qforge::text {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Decodes UTF-8 as llama.cpp does: a byte that does not start a well-formed sequence becomes
// U+FFFD and decoding resumes at the next byte, so any input gives a result.
inline std::vector<char32_t> utf8_decode(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const auto continuation = [&](std::size_t i) { return i < s.size() && (byte(i) & 0xC0) == 0x80; };
  std::size_t i = 0;
  while (i < s.size()) {
    const unsigned char b = byte(i);
    std::size_t extra = 0;
    char32_t cp = 0;
    if (b < 0x80) {
      cp = b;
    } else if ((b & 0xE0) == 0xC0) {
      extra = 1, cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      extra = 2, cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      extra = 3, cp = b & 0x07;
    } else {
      out.push_back(kReplacementChar), ++i;
      continue;
    }
    bool ok = true;
    for (std::size_t k = 1; k <= extra; ++k) ok = ok && continuation(i + k);
    if (!ok) {
      out.push_back(kReplacementChar), ++i;
      continue;
    }
    for (std::size_t k = 1; k <= extra; ++k) cp = (cp << 6) | (byte(i + k) & 0x3F);
    out.push_back(cp);
    i += extra + 1;
  }
  return out;
}

inline void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Whether a string is well-formed UTF-8 (no stray continuation bytes, no truncated sequences).
inline bool is_valid_utf8(std::string_view s) {
  const auto cps = utf8_decode(s);
  std::string round_trip;
  round_trip.reserve(s.size());
  for (char32_t cp : cps) utf8_append(round_trip, cp);
  return round_trip == s;
}

inline CharClass char_class(char32_t cp) {
  if (cp < 0x80) {  // the common case, without the search
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::kLetter;
    if (cp >= '0' && cp <= '9') return CharClass::kNumber;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CharClass::kWhitespace;
    return CharClass::kOther;
  }
  const auto& ranges = detail::kCharClassRanges;
  const auto it = std::upper_bound(ranges.begin(), ranges.end(), cp,
                                   [](char32_t c, const detail::CharClassRange& r) { return c < r.first; });
  if (it == ranges.begin()) return CharClass::kOther;
  const auto& r = *(it - 1);
  return cp <= r.last ? r.cls : CharClass::kOther;
}

inline const char* unicode_version() { return detail::kUnicodeVersion; }

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
// take the code points 256, 257, ... in byte order.
class ByteAlphabet {
 public:
  ByteAlphabet() {
    cp_to_byte_.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      byte_to_cp_[b] = printable ? static_cast<char32_t>(b) : next++;
      cp_to_byte_[byte_to_cp_[b]] = static_cast<std::int16_t>(b);
      utf8_append(byte_to_utf8_[b], byte_to_cp_[b]);
    }
  }
  char32_t code_point(unsigned char b) const { return byte_to_cp_[b]; }
  const std::string& utf8(unsigned char b) const { return byte_to_utf8_[b]; }
  // The byte a code point of the alphabet stands for, or -1 when it is not in the alphabet.
  int byte_of(char32_t cp) const { return cp < cp_to_byte_.size() ? cp_to_byte_[cp] : -1; }

 private:
  std::array<char32_t, 256> byte_to_cp_{};
  std::array<std::string, 256> byte_to_utf8_{};
  std::array<std::int16_t, 256 + 68> cp_to_byte_{};  // the alphabet ends at code point 323
};

inline const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

}  // namespace qforge::text
