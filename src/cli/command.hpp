// Subcommands register themselves: each src/cli/<name>_command.cpp defines a setup function and
// QFORGE_CLI_COMMAND(setup). main.cpp calls every registered setup on the root CLI::App.
#pragma once

#include <vector>

#include <CLI/CLI.hpp>

namespace qforge::cli {

using CommandSetup = void (*)(CLI::App& root);

inline std::vector<CommandSetup>& command_registry() {
  static std::vector<CommandSetup> commands;
  return commands;
}

}  // namespace qforge::cli

#define QFORGE_CLI_COMMAND(setup_fn) \
  [[maybe_unused]] static const bool setup_fn##_registered = (::qforge::cli::command_registry().push_back(&setup_fn), true)
