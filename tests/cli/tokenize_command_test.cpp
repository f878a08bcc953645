// `qforge tokenize` end to end on a small GGUF vocabulary: ids equal the library's, pieces, errors.
#include <gtest/gtest.h>

#include "cli_test_util.hpp"
#include "qforge/text/tokenizer.hpp"

namespace qf = qforge::formats;
using qforge::testing::run_qforge;
using qforge::testing::ScratchDir;

namespace {

// The 256 byte characters (id = byte), "he", "llo", "hello", and the control token <|im_start|>.
void write_vocab(const std::string& path, const std::string& pre) {
  std::vector<std::string> tokens;
  const auto& alphabet = qforge::text::byte_alphabet();
  for (int b = 0; b < 256; ++b) tokens.push_back(alphabet.utf8(static_cast<unsigned char>(b)));
  for (const char* t : {"he", "ll", "llo", "hello", "<|im_start|>"}) tokens.push_back(t);
  qf::GgufValue types{qf::GgufType::kArray, std::uint64_t{0}, qf::GgufType::kI32, {}};
  for (std::size_t i = 0; i < tokens.size(); ++i) types.array.push_back(qf::GgufValue::i32(i + 1 == tokens.size() ? 3 : 1));
  qf::GgufWriter w;
  w.set("tokenizer.ggml.model", qf::GgufValue::string("gpt2"));
  w.set("tokenizer.ggml.pre", qf::GgufValue::string(pre));
  w.set("tokenizer.ggml.tokens", qf::GgufValue::strings(tokens));
  w.set("tokenizer.ggml.token_type", types);
  w.set("tokenizer.ggml.merges", qf::GgufValue::strings({"h e", "l l", "ll o", "he llo"}));
  w.write(path);
}

TEST(TokenizeCommand, PrintsTheLibrarysIdsAndPieces) {
  ScratchDir dir;
  const auto model = dir / "vocab.gguf";
  write_vocab(model, "smollm");
  const std::string text = "hello\t<|im_start|>42";
  const auto t = qforge::text::Tokenizer::from_gguf(qf::GgufFile(model), model);
  const auto ids = t.encode(text, false, true);
  auto r = run_qforge("tokenize " + model + " --ids -p 'hello\t<|im_start|>42'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(fmt::format("[{}]", fmt::join(ids, ", "))), std::string::npos) << r.output;
  EXPECT_EQ(ids.size(), 5u);  // hello, \t, <|im_start|>, 4, 2
  r = run_qforge("tokenize " + model + " -p 'hello\t<|im_start|>'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("'hello'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("'\\t'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("'<|im_start|>'"), std::string::npos) << r.output;
  r = run_qforge("tokenize " + model + " --no-special --ids -p '<|im_start|>'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find(fmt::format("{}]", t.find_token("<|im_start|>"))), std::string::npos) << r.output;
}

TEST(TokenizeCommand, ErrorsNameTheFileAndKey) {
  ScratchDir dir;
  const auto model = dir / "vocab.gguf";
  write_vocab(model, "no-such-pre");
  auto r = run_qforge("tokenize " + model + " -p hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find(model), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tokenizer.ggml.pre"), std::string::npos) << r.output;
  write_vocab(model, "smollm");
  const auto text = dir / "latin1.txt";
  qforge::testing::write_text(text, "caf\xE9\n");
  r = run_qforge("tokenize " + model + " -f " + text);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find(text + ": the text is not valid UTF-8"), std::string::npos) << r.output;
}

}  // namespace
