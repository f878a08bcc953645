// `qforge stats merge A B [C ...] -o OUT`: adds per-site calibration statistics (H, H_delta,
// token counts) from shards of the calibration data into one file, equal to one pass over it.
#include <string>
#include <vector>

#include <fmt/format.h>

#include "command.hpp"
#include "qforge/algorithms/statistics.hpp"

namespace {
void setup_stats(CLI::App& root) {
  auto* cmd = root.add_subcommand("stats", "Calibration statistics files");
  cmd->require_subcommand(1);
  auto* merge = cmd->add_subcommand("merge", "Merge statistics from shards of the calibration data");
  static std::vector<std::string> inputs;
  static std::string output;
  merge->add_option("inputs", inputs, "statistics files")->required()->expected(2, -1);
  merge->add_option("-o,--output", output, "merged statistics file")->required();
  merge->callback([] {
    auto merged = qforge::algorithms::load_statistics(inputs[0]);
    for (std::size_t i = 1; i < inputs.size(); ++i)
      merged = qforge::algorithms::merge_statistics(std::move(merged), qforge::algorithms::load_statistics(inputs[i]));
    qforge::algorithms::save_statistics(merged, output);
    std::int64_t tokens = 0;
    for (const auto& [site, s] : merged) tokens = std::max(tokens, s.tokens);
    fmt::print("{{\"sites\": {}, \"max_tokens\": {}}}\n", merged.size(), tokens);
  });
}
}  // namespace
QFORGE_CLI_COMMAND(setup_stats);
