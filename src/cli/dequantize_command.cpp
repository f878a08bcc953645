// `qforge dequantize IN -o OUT.safetensors`: every tensor of IN as float32 (or float16); integer
// tensors (position ids) keep their dtype.
#include <fmt/format.h>

#include "cli_util.hpp"
#include "command.hpp"
#include "qforge/formats/checkpoint.hpp"

namespace {

struct DequantizeArgs {
  std::string input, output;
  bool f16 = false;
};

void run_dequantize(const DequantizeArgs& a) {
  using namespace qforge;
  cli::install_interrupt_handler();
  if (formats::format_of(a.output) != formats::FileFormat::kSafetensors)
    throw_error(Status::kInvalidArgument, "{}: dequantize writes safetensors (.safetensors)", a.output);
  const formats::Checkpoint in(a.input);
  formats::SafetensorsWriter out;
  cli::Progress progress("dequantize", static_cast<std::int64_t>(in.tensors().size()));
  for (const auto& t : in.tensors()) {
    cli::throw_if_interrupted();
    if (!t.quantized && !cli::is_float_type(t.type)) {  // integers (position ids) keep their dtype
      const auto plain = cli::plain_type(t.type);
      if (!plain) throw_error(Status::kUnsupported, "{}: tensor '{}' has type {}, which safetensors cannot hold", a.input, t.name, t.type);
      const auto src = in.gguf() ? in.gguf()->bytes(in.gguf()->at(t.name)) : in.safetensors()->bytes(in.safetensors()->at(t.name));
      out.add(t.name, plain->dtype, t.shape, std::vector<std::uint8_t>(src.begin(), src.end()));
      progress.advance(t.name);
      continue;
    }
    const TensorF x = in.to_float(t.name);
    if (a.f16) {
      std::vector<std::uint8_t> bytes(static_cast<std::size_t>(x.size()) * 2);
      for (std::int64_t i = 0; i < x.size(); ++i) {
        const std::uint16_t h = fp32_to_fp16(x[i]);
        std::memcpy(&bytes[static_cast<std::size_t>(i) * 2], &h, 2);
      }
      out.add(t.name, formats::Dtype::kF16, x.shape(), std::move(bytes));
    } else {
      out.add_f32(t.name, x);
    }
    progress.advance(t.name);
  }
  out.set_metadata("qforge.dequantized_from", a.input);
  out.write(a.output);
  fmt::print("wrote {} ({} tensors)\n", a.output, in.tensors().size());
}

void setup_dequantize(CLI::App& root) {
  static DequantizeArgs args;
  auto* cmd = root.add_subcommand("dequantize", "Write every tensor of a GGUF or safetensors file as float to safetensors");
  cmd->add_option("input", args.input, "GGUF or safetensors file")->required()->check(CLI::ExistingFile);
  cmd->add_option("-o,--output", args.output, "Output .safetensors file")->required();
  cmd->add_flag("--f16", args.f16, "Write float16 instead of float32");
  cmd->callback([] { run_dequantize(args); });
}

}  // namespace
QFORGE_CLI_COMMAND(setup_dequantize);
