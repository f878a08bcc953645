// `qforge qtypes`: lists the qtypes with their bounds and storage, as the library defines them.
#include <fmt/format.h>

#include "command.hpp"
#include "qforge/core/qtype.hpp"

namespace {
void setup_qtypes(CLI::App& root) {
  auto* cmd = root.add_subcommand("qtypes", "List quantized value types, their bounds and storage");
  cmd->callback([] {
    fmt::print("{:<10} {:>4} {:>8} {:>12} {:>8} {:>8}\n", "qtype", "bits", "storage", "sym bound", "qmin", "qmax");
    for (auto t : qforge::kAllQTypes) {
      const auto& i = qforge::info(t);
      fmt::print("{:<10} {:>4} {:>8} {:>12g} {:>8} {:>8}\n", i.name, i.bits, i.storage_bits, i.symmetric_bound,
                 i.qmin, i.qmax);
    }
  });
}
}  // namespace
QFORGE_CLI_COMMAND(setup_qtypes);
