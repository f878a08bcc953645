// The qforge command-line tool. Subcommands live in src/cli/*_command.cpp.
#include <cstdio>
#include <exception>

#include <fmt/format.h>

#include "command.hpp"
#include "qforge/core/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"qforge: quantize neural-network checkpoints (GGUF, safetensors, NF4, FP8)", "qforge"};
  app.set_version_flag("--version", "qforge 0.1.0");
  app.require_subcommand(1);
  for (auto setup : qforge::cli::command_registry()) setup(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const qforge::Error& e) {
    fmt::print(stderr, "qforge: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "qforge: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
