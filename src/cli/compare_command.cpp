// `qforge compare A B`: per-tensor error of B against A (both dequantized to float), for the
// tensors the two files share.
#include <fmt/format.h>

#include <cmath>

#include "cli_util.hpp"
#include "command.hpp"
#include "qforge/analysis/metrics.hpp"
#include "qforge/formats/checkpoint.hpp"

namespace {

void run_compare(const std::string& a_path, const std::string& b_path) {
  using namespace qforge;
  const formats::Checkpoint a(a_path), b(b_path);
  std::size_t width = 6;
  for (const auto& t : a.tensors()) width = std::max(width, t.name.size());
  fmt::print("{:<{}}  {:<8} {:<8} {:>12} {:>10} {:>10} {:>12}\n", "tensor", width, "A", "B", "rmse", "rel rmse",
             "sqnr dB", "max |err|");
  int shared = 0;
  for (const auto& ta : a.tensors()) {
    const auto* tb = b.find(ta.name);
    if (!tb) {
      fmt::print("{:<{}}  only in {}\n", ta.name, width, a_path);
      continue;
    }
    const TensorF xa = a.to_float(ta.name), xb = b.to_float(ta.name);
    if (xa.size() != xb.size()) {
      fmt::print("{:<{}}  shapes differ: {} vs {}\n", ta.name, width, shape_str(xa.shape()), shape_str(xb.shape()));
      continue;
    }
    ++shared;
    const auto s = analysis::compare(xa.data(), xb.data(), xa.size());
    fmt::print("{:<{}}  {:<8} {:<8} {:>12.4g} {:>10.4g} {:>10} {:>12.4g}\n", ta.name, width, ta.type, tb->type, s.rmse,
               s.relative, std::isfinite(s.sqnr_db) ? fmt::format("{:.2f}", s.sqnr_db) : std::string("exact"), s.max_abs);
  }
  for (const auto& tb : b.tensors())
    if (!a.find(tb.name)) fmt::print("{:<{}}  only in {}\n", tb.name, width, b_path);
  fmt::print("{} tensors compared\n", shared);
}

void setup_compare(CLI::App& root) {
  static std::string a, b;
  auto* cmd = root.add_subcommand("compare", "Per-tensor error table of file B against reference file A");
  cmd->add_option("a", a, "Reference file (GGUF or safetensors)")->required()->check(CLI::ExistingFile);
  cmd->add_option("b", b, "File to compare (GGUF or safetensors)")->required()->check(CLI::ExistingFile);
  cmd->callback([] { run_compare(a, b); });
}

}  // namespace
QFORGE_CLI_COMMAND(setup_compare);
