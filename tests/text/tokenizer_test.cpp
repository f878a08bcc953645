// Byte-level BPE on a small hand-made vocabulary: the pre-tokenizer regexes piece by piece, merge
// order, special tokens, BOS, decoding, and the GGUF and tokenizer.json loaders with their errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "qforge/text/tokenizer.hpp"

namespace qforge::text {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> pieces(std::string_view text, std::vector<SplitRule> rules) {
  const auto cps = utf8_decode(text);
  std::vector<std::string> out;
  std::size_t begin = 0;
  for (const auto end : pre_tokenize(cps, rules)) {
    std::string s;
    for (std::size_t i = begin; i < end; ++i) utf8_append(s, cps[i]);
    out.push_back(s);
    begin = end;
  }
  return out;
}

using Pieces = std::vector<std::string>;

TEST(PreTokenizer, Gpt2Regex) {
  const std::vector<SplitRule> gpt2{SplitRule::kGpt2};
  EXPECT_EQ(pieces("Hello world", gpt2), (Pieces{"Hello", " world"}));
  EXPECT_EQ(pieces("it's  fine", gpt2), (Pieces{"it", "'s", " ", " fine"}));
  EXPECT_EQ(pieces("a\n\nb", gpt2), (Pieces{"a", "\n", "\n", "b"}));
  EXPECT_EQ(pieces("x   ", gpt2), (Pieces{"x", "   "}));
  EXPECT_EQ(pieces("don't!!! 42", gpt2), (Pieces{"don", "'t", "!!!", " 42"}));
  EXPECT_EQ(pieces("I'M", gpt2), (Pieces{"I", "'", "M"}));  // contractions are case-sensitive here
  EXPECT_EQ(pieces("Ünïcödé 中文 🙂", gpt2), (Pieces{"Ünïcödé", " 中文", " 🙂"}));
}

TEST(PreTokenizer, SmollmIsolatesEveryDigitFirst) {
  const std::vector<SplitRule> smollm{SplitRule::kDigits, SplitRule::kGpt2};
  EXPECT_EQ(pieces("abc 123", smollm), (Pieces{"abc", " ", "1", "2", "3"}));
  EXPECT_EQ(pieces("x٣y", smollm), (Pieces{"x", "٣", "y"}));  // Arabic-Indic three is \p{N}
}

TEST(PreTokenizer, Llama3AndQwen2Regexes) {
  const std::vector<SplitRule> llama3{SplitRule::kLlama3};
  EXPECT_EQ(pieces("Hello, world!\n\n  How", llama3), (Pieces{"Hello", ",", " world", "!\n\n", " ", " How"}));
  EXPECT_EQ(pieces("12345", llama3), (Pieces{"123", "45"}));
  EXPECT_EQ(pieces("12345", {SplitRule::kQwen2}), (Pieces{"1", "2", "3", "4", "5"}));
  EXPECT_EQ(pieces("I'M here", llama3), (Pieces{"I", "'M", " here"}));
  EXPECT_EQ(pieces("a \n b", llama3), (Pieces{"a", " \n", " b"}));
  EXPECT_EQ(pieces("x\tfoo", llama3), (Pieces{"x", "\tfoo"}));
  EXPECT_EQ(pieces("end  ", llama3), (Pieces{"end", "  "}));
}

TEST(Unicode, CharClassesAndDecoding) {
  EXPECT_EQ(char_class(U'é'), CharClass::kLetter);
  EXPECT_EQ(char_class(U'中'), CharClass::kLetter);
  EXPECT_EQ(char_class(U'٣'), CharClass::kNumber);
  EXPECT_EQ(char_class(U'½'), CharClass::kNumber);
  EXPECT_EQ(char_class(0x3000), CharClass::kWhitespace);
  EXPECT_EQ(char_class(0xA0), CharClass::kWhitespace);
  EXPECT_EQ(char_class(U'🙂'), CharClass::kOther);
  EXPECT_EQ(char_class(0x0301), CharClass::kOther);  // a combining accent is \p{M}
  EXPECT_EQ(char_class(0x10FFFF), CharClass::kOther);
  EXPECT_EQ(utf8_decode("a\xC3"), (std::vector<char32_t>{U'a', kReplacementChar}));
  EXPECT_EQ(utf8_decode("\x80z"), (std::vector<char32_t>{kReplacementChar, U'z'}));
  EXPECT_TRUE(is_valid_utf8("añ中🙂"));
  EXPECT_FALSE(is_valid_utf8("a\xE4\xB8"));
}

// All 256 byte characters (token id = byte), then merged tokens, then specials.
TokenizerSpec toy_spec() {
  TokenizerSpec s;
  s.source = "toy";
  const auto& alphabet = byte_alphabet();
  for (int b = 0; b < 256; ++b) s.tokens.push_back(alphabet.utf8(static_cast<unsigned char>(b)));
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"o", "r"},
      {"Ġ", "w"}, {"Ġw", "or"}, {"l", "d"}, {"Ġwor", "ld"}, {"x", "y"}};
  for (const auto& [l, r] : merges) {
    s.merges.emplace_back(l, r);
    if (l + r != "xy") s.tokens.push_back(l + r);  // "xy" merges but is not a token
  }
  s.tokens.push_back("abc");
  s.types.assign(s.tokens.size(), TokenType::kNormal);
  s.tokens.push_back("<|im_start|>");
  s.types.push_back(TokenType::kControl);
  s.tokens.push_back("<tool>");
  s.types.push_back(TokenType::kUserDefined);
  s.split_rules = {SplitRule::kDigits, SplitRule::kGpt2};
  s.pre_name = "smollm";
  s.bos_id = static_cast<std::int32_t>(s.tokens.size()) - 2;
  return s;
}

std::vector<std::int32_t> ids_of(const Tokenizer& t, std::vector<std::string> texts) {
  std::vector<std::int32_t> out;
  for (const auto& s : texts) {
    const auto id = t.find_token(s);
    EXPECT_GE(id, 0) << "no token '" << s << "'";
    out.push_back(id);
  }
  return out;
}

TEST(Tokenizer, MergesLowestRankFirst) {
  const Tokenizer t(toy_spec());
  EXPECT_EQ(t.encode("hello world", false, false), ids_of(t, {"hello", "Ġworld"}));
  // Equal ranks merge leftmost first: "lll" is "ll" + "l", not "l" + "ll".
  EXPECT_EQ(t.encode("lll", false, false), ids_of(t, {"ll", "l"}));
  // A merge whose result is not a token falls back to its bytes' tokens.
  EXPECT_EQ(t.encode("xy", false, false), ids_of(t, {"x", "y"}));
  EXPECT_EQ(t.encode("abc", false, false), ids_of(t, {"a", "b", "c"}));
  auto spec = toy_spec();
  spec.ignore_merges = true;
  EXPECT_EQ(Tokenizer(spec).encode("abc", false, false), ids_of(t, {"abc"}));
}

TEST(Tokenizer, SpecialTokensAndBos) {
  const Tokenizer t(toy_spec());
  const std::int32_t im_start = t.find_token("<|im_start|>"), tool = t.find_token("<tool>");
  const auto plain = t.encode("<|im_start|>", false, false);
  EXPECT_GT(plain.size(), 1u);  // a control token is only text unless special tokens are parsed
  EXPECT_EQ(t.encode("a<|im_start|>b", false, true), (std::vector<std::int32_t>{'a', im_start, 'b'}));
  EXPECT_EQ(t.encode("a<tool><tool>", false, false), (std::vector<std::int32_t>{'a', tool, tool}));
  EXPECT_EQ(t.encode("ab", true, false), (std::vector<std::int32_t>{'a', 'b'}));  // the flag says no BOS
  auto spec = toy_spec();
  spec.add_bos = true;
  const Tokenizer with_bos(spec);
  EXPECT_EQ(with_bos.encode("ab", true, false), (std::vector<std::int32_t>{with_bos.bos_id(), 'a', 'b'}));
  EXPECT_EQ(with_bos.encode("ab", false, false), (std::vector<std::int32_t>{'a', 'b'}));
  EXPECT_TRUE(t.encode("", false, true).empty());
}

TEST(Tokenizer, DecodeInvertsEncodeOnRandomText) {
  const Tokenizer t(toy_spec());
  const std::vector<char32_t> pool = {U'a', U'h', U'e', U'l', U'o', U'w', U'r', U'd', U'x', U'y', U' ', U'\n',
                                      U'\t', U'1', U'\'', U's', U'é', U'中', U'🙂', 0x3000, 0xA0, U'<', U'|', U'>'};
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (int trial = 0; trial < 200; ++trial) {
    std::string text;
    const int n = static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) utf8_append(text, pool[rng() % pool.size()]);
    if (rng() % 3 == 0) text += "<tool>";
    const auto ids = t.encode(text, false, true);
    ASSERT_EQ(t.decode(ids), text) << "text '" << text << "'";
  }
  EXPECT_EQ(t.decode(ids_of(t, {"Ġworld", "<tool>"})), " world<tool>");
  EXPECT_THROW((void)t.decode(std::vector<std::int32_t>{t.vocab_size()}), Error);
}

struct TempPath {
  fs::path dir = fs::temp_directory_path() /
                 ("qforge-text-" + std::to_string(::getpid()) + "-" + std::to_string(reinterpret_cast<std::uintptr_t>(this)));
  TempPath() { fs::create_directories(dir); }
  ~TempPath() { fs::remove_all(dir); }
};

void write_toy_gguf(const std::string& path, const std::string& pre, bool with_merges = true) {
  const auto spec = toy_spec();
  formats::GgufWriter w;
  w.set("tokenizer.ggml.model", formats::GgufValue::string("gpt2"));
  w.set("tokenizer.ggml.pre", formats::GgufValue::string(pre));
  w.set("tokenizer.ggml.tokens", formats::GgufValue::strings(spec.tokens));
  formats::GgufValue types{formats::GgufType::kArray, std::uint64_t{0}, formats::GgufType::kI32, {}};
  for (const auto t : spec.types) types.array.push_back(formats::GgufValue::i32(static_cast<std::int32_t>(t)));
  w.set("tokenizer.ggml.token_type", types);
  std::vector<std::string> merges;
  for (const auto& [l, r] : spec.merges) merges.push_back(l + " " + r);
  if (with_merges) w.set("tokenizer.ggml.merges", formats::GgufValue::strings(merges));
  w.set("tokenizer.ggml.bos_token_id", formats::GgufValue::u32(static_cast<std::uint32_t>(spec.bos_id)));
  w.set("tokenizer.ggml.add_bos_token", formats::GgufValue::boolean(true));
  w.write(path);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Tokenizer, FromGgufMatchesTheSpec) {
  TempPath tmp;
  const auto path = (tmp.dir / "toy.gguf").string();
  write_toy_gguf(path, "smollm");
  const formats::GgufFile f(path);
  const auto t = Tokenizer::from_gguf(f, path);
  const Tokenizer direct(toy_spec());
  EXPECT_EQ(t.vocab_size(), direct.vocab_size());
  EXPECT_EQ(t.pre_tokenizer_name(), "smollm");
  EXPECT_TRUE(t.adds_bos());
  EXPECT_EQ(t.token_type(t.find_token("<tool>")), TokenType::kUserDefined);
  EXPECT_EQ(t.encode("hello world <|im_start|>12", true, true),
            (std::vector<std::int32_t>{t.bos_id(), t.find_token("hello"), t.find_token("Ġworld"), ' ',
                                       t.find_token("<|im_start|>"), '1', '2'}));
}

TEST(Tokenizer, GgufErrorsNameTheFileAndKey) {
  TempPath tmp;
  const auto path = (tmp.dir / "bad.gguf").string();
  write_toy_gguf(path, "tekken");
  auto msg = error_of([&] { (void)Tokenizer::from_gguf(formats::GgufFile(path), path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("tokenizer.ggml.pre"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tekken"), std::string::npos) << msg;
  write_toy_gguf(path, "smollm", false);
  msg = error_of([&] { (void)Tokenizer::from_gguf(formats::GgufFile(path), path); });
  EXPECT_NE(msg.find("tokenizer.ggml.merges"), std::string::npos) << msg;
}

void write_text(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

std::string toy_tokenizer_json(const std::string& pre_tokenizer, const std::string& post_processor = "null") {
  const auto spec = toy_spec();
  nlohmann::json vocab = nlohmann::json::object(), merges = nlohmann::json::array(), added = nlohmann::json::array();
  for (std::size_t id = 0; id < spec.tokens.size(); ++id) {
    if (spec.types[id] == TokenType::kNormal)
      vocab[spec.tokens[id]] = id;
    else
      added.push_back({{"id", id}, {"content", spec.tokens[id]}, {"special", spec.types[id] == TokenType::kControl}});
  }
  for (const auto& [l, r] : spec.merges) merges.push_back({l, r});
  return fmt::format(R"({{"version": "1.0", "added_tokens": {}, "normalizer": null, "pre_tokenizer": {},
    "post_processor": {}, "model": {{"type": "BPE", "vocab": {}, "merges": {}}}}})",
                     added.dump(), pre_tokenizer, post_processor, vocab.dump(), merges.dump());
}

TEST(Tokenizer, FromTokenizerJson) {
  TempPath tmp;
  const auto path = tmp.dir / "tokenizer.json";
  write_text(path, toy_tokenizer_json(
                       R"({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true},
                           {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]})",
                       R"({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<tool>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {}})"));
  const auto t = Tokenizer::from_tokenizer_json(path);
  const Tokenizer direct(toy_spec());
  EXPECT_EQ(t.pre_tokenizer_name(), "smollm");
  EXPECT_EQ(t.bos_id(), t.find_token("<tool>"));
  EXPECT_TRUE(t.adds_bos());
  const std::string text = "hello world <|im_start|>12 lll";
  auto want = direct.encode(text, false, true);
  want.insert(want.begin(), t.bos_id());
  EXPECT_EQ(t.encode(text, true, true), want);
}

TEST(Tokenizer, TokenizerJsonErrorsNameTheKey) {
  TempPath tmp;
  const auto path = tmp.dir / "tokenizer.json";
  write_text(path, toy_tokenizer_json(R"({"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated"})"));
  auto msg = error_of([&] { (void)Tokenizer::from_tokenizer_json(path); });
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("pre_tokenizer.pattern.Regex"), std::string::npos) << msg;
  write_text(path, toy_tokenizer_json(R"({"type": "ByteLevel", "add_prefix_space": true})"));
  msg = error_of([&] { (void)Tokenizer::from_tokenizer_json(path); });
  EXPECT_NE(msg.find("add_prefix_space"), std::string::npos) << msg;
  write_text(path, "{not json");
  msg = error_of([&] { (void)Tokenizer::from_tokenizer_json(path); });
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
}

}  // namespace
}  // namespace qforge::text
