// qforge's tokenizer against the references users trust, on the SmolLM2-135M GGUF's vocabulary and
// ~140 KB of varied text built by tests/text/reference_tokens.py:
//   * llama.cpp (llama-cpp-python) on the GGUF itself and on copies of its metadata whose
//     tokenizer.ggml.pre is gpt-2, llama-bpe or qwen2, or with three user-defined tokens, in all
//     four add-BOS x parse-special modes;
//   * Hugging Face tokenizers on tokenizer.json files built from the same vocabulary and merges,
//     one per pre-tokenizer, loaded by qforge's tokenizer.json reader.
// Needs build/pyenv with scripts/llm-env.sh's packages (QFORGE_PYENV overrides) and the model file
// (QFORGE_SMOLLM2_GGUF overrides); skips, saying which is missing, without them.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <sys/wait.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qforge/text/tokenizer.hpp"

namespace qforge::text {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kPreNames = {"smollm", "gpt-2", "llama-bpe", "qwen2"};

// The GGUFs llama.cpp tokenizes: the model itself, copies of its metadata with the other
// pre-tokenizers, and one whose <repo_name>, <file_sep> and <gh_stars> are user-defined tokens
// (SmolLM2 marks all 17 of its special tokens as control tokens), which are cut out of the text
// even when special tokens are not parsed.
struct GgufVariant {
  std::string name;
  std::string pre;
  std::vector<std::int32_t> user_defined;
};
const std::vector<GgufVariant> kGgufVariants = {
    {"smollm", "smollm", {}}, {"gpt-2", "gpt-2", {}}, {"llama-bpe", "llama-bpe", {}}, {"qwen2", "qwen2", {}},
    {"smollm-user-defined", "smollm", {3, 5, 7}}};

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

std::string tail_of(const fs::path& p, std::size_t n = 2000) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const auto s = ss.str();
  return s.size() > n ? s.substr(s.size() - n) : s;
}

// The model's metadata with another pre-tokenizer or token types and no tensors: llama.cpp loads
// it vocab-only.
void write_metadata_copy(const formats::GgufFile& src, const GgufVariant& v, const std::string& path) {
  formats::GgufWriter w;
  for (const auto& [key, value] : src.metadata()) w.set(key, value);
  w.set("tokenizer.ggml.pre", formats::GgufValue::string(v.pre));
  auto types = *src.find_kv("tokenizer.ggml.token_type");
  for (const auto id : v.user_defined) {
    ASSERT_EQ(std::get<std::int64_t>(types.array.at(id).scalar), 3) << "token " << id << " is not a control token";
    types.array.at(id) = formats::GgufValue::i32(static_cast<std::int32_t>(TokenType::kUserDefined));
  }
  w.set("tokenizer.ggml.token_type", types);
  w.write(path);
}

std::string variant_path(const fs::path& dir, const std::string& model, const GgufVariant& v) {
  return v.name == "smollm" ? model : (dir / (v.name + ".gguf")).string();
}

class TokenizerReference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string source = QFORGE_SOURCE_DIR;
    model_ = env_or("QFORGE_SMOLLM2_GGUF", source + "/build/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    const std::string python = env_or("QFORGE_PYENV", source + "/build/pyenv") + "/bin/python";
    if (!fs::exists(model_)) {
      skip_ = "no model file " + model_ + " (run scripts/llm-env.sh)";
      return;
    }
    if (!fs::exists(python)) {
      skip_ = "no Python environment " + python + " (run scripts/python-env.sh and scripts/llm-env.sh)";
      return;
    }
    dir_ = fs::temp_directory_path() / ("qforge-tokref-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    const formats::GgufFile f(model_);
    std::string ggufs = fmt::format(" --gguf smollm='{}'", model_);
    for (const auto& v : kGgufVariants) {
      const auto path = variant_path(dir_, model_, v);
      if (path != model_) {
        write_metadata_copy(f, v, path);
        ggufs += fmt::format(" --gguf {}='{}'", v.name, path);
      }
    }
    const auto log = dir_ / "reference.log";
    const auto cmd = fmt::format("'{}' '{}/tests/text/reference_tokens.py' --out '{}'{} > '{}' 2>&1", python, source,
                                 dir_.string(), ggufs, log.string());
    const int status = std::system(cmd.c_str());
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (code == 77) skip_ = "reference tools missing: " + tail_of(log, 300);
    if (code != 0 && code != 77) error_ = fmt::format("{} failed ({}):\n{}", cmd, code, tail_of(log));
    if (code == 0) corpus_ = read_json(dir_ / "corpus.json");
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << skip_;
    ASSERT_TRUE(error_.empty()) << error_;
  }

  // Compares every document; reports the first difference with the tokens around it.
  static void expect_same(const Tokenizer& t, const nlohmann::json& modes, const std::string& who,
                          std::size_t& bytes_compared) {
    for (const auto& [mode, per_doc] : modes.items()) {
      const bool add_bos = mode.find("bos=1") != std::string::npos;
      const bool special = mode.find("special=1") != std::string::npos;
      for (std::size_t d = 0; d < corpus_["docs"].size(); ++d) {
        const auto& doc = corpus_["docs"][d];
        const auto text = doc["text"].get<std::string>();
        const auto want = per_doc[d].get<std::vector<std::int32_t>>();
        const auto got = t.encode(text, add_bos, special);
        bytes_compared += text.size();
        if (got == want) continue;
        std::size_t i = 0;
        while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
        ADD_FAILURE() << who << ", " << mode << ", document '" << doc["name"].get<std::string>() << "': first difference at token "
                      << i << " of " << want.size() << " (qforge has " << got.size() << ")\n"
                      << "  text before: '" << context_before(t, want, i) << "'\n"
                      << "  reference: " << around(t, want, i) << "\n  qforge:    " << around(t, got, i);
        return;
      }
    }
  }
  static std::string context_before(const Tokenizer& t, const std::vector<std::int32_t>& ids, std::size_t i) {
    const std::size_t from = i > 8 ? i - 8 : 0;
    return t.decode(std::span(ids).subspan(from, i - from));
  }
  static std::string around(const Tokenizer& t, const std::vector<std::int32_t>& ids, std::size_t i) {
    std::string s;
    for (std::size_t k = i > 2 ? i - 2 : 0; k < std::min(ids.size(), i + 4); ++k)
      s += fmt::format("{}{}='{}' ", k == i ? "*" : "", ids[k], t.token_text(ids[k]));
    return s;
  }

  static double best_encode_seconds(const Tokenizer& t, const std::string& text) {
    double best = 1e9;
    for (int r = 0; r < 3; ++r) {
      const auto start = std::chrono::steady_clock::now();
      const auto ids = t.encode(text, false, false);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      EXPECT_FALSE(ids.empty());
    }
    return best;
  }

  static inline std::string model_, skip_, error_;
  static inline fs::path dir_;
  static inline nlohmann::json corpus_;
};

TEST_F(TokenizerReference, EqualsLlamaCppOnEveryPreTokenizer) {
  for (const auto& v : kGgufVariants) {
    const std::string path = variant_path(dir_, model_, v);
    const formats::GgufFile f(path);
    const auto t = Tokenizer::from_gguf(f, path);
    const auto ref = read_json(dir_ / ("llama-" + v.name + ".json"));
    std::size_t bytes = 0;
    expect_same(t, ref["modes"], "llama.cpp " + v.name, bytes);
    const std::string whole = corpus_["whole"].get<std::string>();
    const double ours = best_encode_seconds(t, whole), theirs = ref["seconds"].get<double>();
    std::printf("llama.cpp %-19s: %zu bytes compared in 4 modes; whole corpus (%zu bytes, %zu tokens) qforge %.1f ms, "
                "llama.cpp %.1f ms (%.2fx)\n",
                v.name.c_str(), bytes, whole.size(), t.encode(whole, false, false).size(), ours * 1e3, theirs * 1e3,
                theirs / ours);
    EXPECT_EQ(t.encode(whole, false, false).size(), ref["whole_tokens"].get<std::size_t>());
    EXPECT_GE(bytes, 4u * 100'000u);
    EXPECT_LT(ours, 2.0) << "encoding " << whole.size() << " bytes should take well under a second";
  }
}

TEST_F(TokenizerReference, EqualsHuggingFaceTokenizersFromTokenizerJson) {
  for (const auto& pre : kPreNames) {
    const auto t = Tokenizer::from_tokenizer_json(dir_ / ("hf-" + pre) / "tokenizer.json");
    EXPECT_EQ(t.pre_tokenizer_name(), pre);
    const auto ref = read_json(dir_ / ("hf-" + pre + ".json"));
    std::size_t bytes = 0;
    expect_same(t, ref["modes"], "tokenizers " + pre, bytes);
    const std::string whole = corpus_["whole"].get<std::string>();
    const double ours = best_encode_seconds(t, whole), theirs = ref["seconds"].get<double>();
    std::printf("tokenizers %-9s: %zu bytes compared; whole corpus qforge %.1f ms, tokenizers %.1f ms (%.2fx)\n",
                pre.c_str(), bytes, ours * 1e3, theirs * 1e3, theirs / ours);
    EXPECT_GE(bytes, 100'000u);
  }
}

TEST_F(TokenizerReference, DecodeGivesBackTheText) {
  const formats::GgufFile f(model_);
  const auto t = Tokenizer::from_gguf(f, model_);
  for (const auto& doc : corpus_["docs"]) {
    const auto text = doc["text"].get<std::string>();
    EXPECT_EQ(t.decode(t.encode(text, false, true)), text) << doc["name"].get<std::string>();
  }
}

}  // namespace
}  // namespace qforge::text
