// `qforge inspect FILE`: format, metadata, and every tensor with its type, shape and size.
#include <fmt/format.h>

#include "cli_util.hpp"
#include "command.hpp"
#include "qforge/formats/checkpoint.hpp"

namespace {

// How a quantized tensor is scaled: GGML's blocks, or the scale shape (and zero points) of
// qforge's layout, read from the safetensors header alone.
std::string scales_of(const qforge::formats::Checkpoint& ckpt, const qforge::formats::CheckpointTensor& t) {
  using namespace qforge;
  if (!t.quantized) return "";
  if (const auto* g = ckpt.gguf()) return fmt::format("blocks of {}", formats::ggml_traits(g->at(t.name).type).block_elems);
  const auto* st = ckpt.safetensors();
  const auto* scale = st->find(t.name + ".scale");
  if (!scale) return "";
  return fmt::format("{}{}", shape_str(scale->shape), st->find(t.name + ".zero_point") ? " + zero points" : "");
}

void run_inspect(const std::string& path, bool show_metadata) {
  using namespace qforge;
  const formats::Checkpoint ckpt(path);
  fmt::print("{}: {}", path, ckpt.format() == formats::FileFormat::kGguf ? "GGUF" : "safetensors");
  if (const auto* g = ckpt.gguf()) fmt::print(" v{}, alignment {}", g->version(), g->alignment());
  fmt::print(", {} tensors\n", ckpt.tensors().size());
  if (show_metadata) {
    const auto meta = ckpt.metadata();
    if (!meta.empty()) fmt::print("metadata:\n");
    for (const auto& [k, v] : meta) fmt::print("  {} = {}\n", k, v.size() > 100 ? v.substr(0, 97) + "..." : v);
  }
  std::size_t width = 6;
  for (const auto& t : ckpt.tensors()) width = std::max(width, t.name.size());
  fmt::print("{:<{}}  {:<9} {:<20} {:>12} {:>14}  {}\n", "tensor", width, "type", "shape", "elements", "bytes", "scales");
  std::uint64_t total = 0;
  std::int64_t elements = 0;
  for (const auto& t : ckpt.tensors()) {
    std::string line = fmt::format("{:<{}}  {:<9} {:<20} {:>12} {:>14}  {}", t.name, width, t.type, shape_str(t.shape),
                                   numel(t.shape), t.nbytes, scales_of(ckpt, t));
    line.erase(line.find_last_not_of(' ') + 1);
    fmt::print("{}\n", line);
    total += t.nbytes;
    elements += numel(t.shape);
  }
  fmt::print("total: {} elements, {} ({:.3f} bits per element)\n", elements, cli::human_bytes(static_cast<double>(total)),
             elements ? 8.0 * static_cast<double>(total) / static_cast<double>(elements) : 0.0);
}

void setup_inspect(CLI::App& root) {
  auto* cmd = root.add_subcommand("inspect", "List the tensors (type, shape, size) and metadata of a GGUF or safetensors file");
  static std::string path;
  static bool no_metadata = false;
  cmd->add_option("file", path, "GGUF or safetensors file")->required()->check(CLI::ExistingFile);
  cmd->add_flag("--no-metadata", no_metadata, "Do not print the metadata");
  cmd->callback([] { run_inspect(path, !no_metadata); });
}

}  // namespace
QFORGE_CLI_COMMAND(setup_inspect);
