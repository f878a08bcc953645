// `qforge tokenize MODEL -p TEXT`: the token ids and pieces of a text under a model's tokenizer
// (a GGUF file, a tokenizer.json, or a directory holding one), as llama.cpp's llama-tokenize prints them.
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "command.hpp"
#include "qforge/core/error.hpp"
#include "qforge/text/tokenizer.hpp"

namespace {

namespace fs = std::filesystem;

struct TokenizeOptions {
  std::string model;
  std::string prompt;
  std::string file;
  bool bos = false;
  bool no_special = false;
  bool ids_only = false;
};

qforge::text::Tokenizer load_tokenizer(const std::string& model) {
  fs::path path(model);
  if (fs::is_directory(path)) path /= "tokenizer.json";
  if (!fs::exists(path)) qforge::throw_error(qforge::Status::kNotFound, "{}: no such file", path.string());
  if (path.extension() == ".json") return qforge::text::Tokenizer::from_tokenizer_json(path);
  const qforge::formats::GgufFile f(path.string());
  return qforge::text::Tokenizer::from_gguf(f, path.string());
}

std::string read_text(const TokenizeOptions& o) {
  if (o.file.empty()) return o.prompt;
  std::ifstream in(o.file, std::ios::binary);
  if (!in) qforge::throw_error(qforge::Status::kIoError, "{}: cannot open", o.file);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A piece as it can be shown on one line: control bytes escaped, and bytes of a partial UTF-8
// character (a token that ends inside one) as \xNN.
std::string printable(const std::string& piece) {
  const bool utf8 = qforge::text::is_valid_utf8(piece);
  std::string out;
  for (const char c : piece) {
    const auto b = static_cast<unsigned char>(c);
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (b < 0x20 || b == 0x7F || (b >= 0x80 && !utf8)) out += fmt::format("\\x{:02x}", b);
    else out += c;
  }
  return out;
}

void run_tokenize(const TokenizeOptions& o) {
  const auto tokenizer = load_tokenizer(o.model);
  const std::string text = read_text(o);
  if (!qforge::text::is_valid_utf8(text))
    qforge::throw_error(qforge::Status::kInvalidArgument, "{}: the text is not valid UTF-8",
                        o.file.empty() ? std::string("-p") : o.file);
  const auto ids = tokenizer.encode(text, o.bos, !o.no_special);
  if (o.ids_only) {
    fmt::print("[{}]\n", fmt::join(ids, ", "));
    return;
  }
  for (const auto id : ids) fmt::print("{:>7} '{}'\n", id, printable(tokenizer.decode(std::span(&id, 1))));
  fmt::print(stderr, "{} tokens from {} bytes ({} vocabulary of {} tokens, pre-tokenizer {})\n", ids.size(),
             text.size(), o.model, tokenizer.vocab_size(), tokenizer.pre_tokenizer_name());
}

void setup_tokenize(CLI::App& root) {
  auto opts = std::make_shared<TokenizeOptions>();
  auto* cmd = root.add_subcommand("tokenize", "Show the token ids and pieces of a text under a model's tokenizer");
  cmd->add_option("model", opts->model, "a GGUF file, a tokenizer.json, or a directory holding tokenizer.json")->required();
  auto* prompt = cmd->add_option("-p,--prompt", opts->prompt, "the text to tokenize");
  auto* file = cmd->add_option("-f,--file", opts->file, "a UTF-8 text file to tokenize");
  prompt->excludes(file);
  cmd->add_flag("--bos", opts->bos, "add BOS/EOS where the model's add-BOS/add-EOS flags ask for them");
  cmd->add_flag("--no-special", opts->no_special, "treat control-token strings such as <|im_start|> as plain text");
  cmd->add_flag("--ids", opts->ids_only, "print only the ids, as one list");
  cmd->callback([opts, prompt, file] {
    if (prompt->count() == 0 && file->count() == 0)
      qforge::throw_error(qforge::Status::kInvalidArgument, "tokenize: give the text with -p TEXT or -f FILE");
    run_tokenize(*opts);
  });
}

}  // namespace
QFORGE_CLI_COMMAND(setup_tokenize);
