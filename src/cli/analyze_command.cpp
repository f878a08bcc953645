// `qforge analyze [FILE]`: what quantization would cost, before choosing a type.
//
// Without FILE it runs the benchmark suite over generated weight families (gaussian, uniform,
// outliers, multi-channel) and prints one table. With FILE (GGUF or safetensors) it measures every
// weight tensor of rank >= 2 under each requested type and granularity, and optionally the outlier
// impact and scale sensitivity per tensor. Nothing is written except the optional JSON.
#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli_util.hpp"
#include "command.hpp"
#include "qforge/analysis/error_analysis.hpp"
#include "qforge/analysis/weight_suite.hpp"
#include "qforge/formats/checkpoint.hpp"
#include "qforge/formats/file_io.hpp"

namespace {

using namespace qforge;

struct AnalyzeArgs {
  std::string input;
  std::vector<std::string> types{"int8", "int4", "nf4", "fp8_e4m3", "q8_0", "q4_0"};
  std::vector<std::string> granularities{"tensor", "channel", "group"};
  std::int64_t group = 64;
  std::int64_t outliers = 0;
  std::vector<double> scales;
  std::string json_path;
  std::vector<std::string> families;
  std::int64_t rows = 256, cols = 512;
  std::uint64_t seed = 1234;
};

// A requested type: a GGML block type or a qtype.
struct TypeChoice {
  std::optional<formats::GgmlType> ggml;
  QType qtype = QType::kInt8;
};

TypeChoice parse_type(const std::string& text) {
  if (const auto g = formats::parse_ggml_type(text)) {
    const auto& t = formats::ggml_traits(*g);
    if (!t.quantized || !t.codec || *g == formats::GgmlType::kQ4_K || *g == formats::GgmlType::kQ6_K)
      throw_error(Status::kUnsupported, "--types: '{}' has no encoder here (GGML: q4_0, q4_1, q8_0, q8_1)", text);
    return {g, QType::kInt8};
  }
  const auto q = try_parse_qtype(text);
  if (!q) throw_error(Status::kInvalidArgument, "--types: unknown type '{}' (a qtype such as int4, or q4_0/q4_1/q8_0)", text);
  return {std::nullopt, *q};
}

// The granularities asked for, applied to a tensor whose last axis has `row` elements. Leading
// axes are channelwise for "channel" and "group"; "group" tiles the last axis.
std::vector<HowToQuantize> granularities_for(QType t, const AnalyzeArgs& a, int rank, std::int64_t row) {
  std::vector<HowToQuantize> out;
  for (const auto& g : a.granularities) {
    HowToQuantize how{t, {}, {}, "absmax"};
    if (g == "channel" || g == "group")
      for (int ax = 0; ax + 1 < rank; ++ax) how.channelwise_axes.push_back(ax);
    if (g == "group") {
      if (a.group <= 0 || row % a.group != 0) continue;  // the group does not tile this row
      how.tiled_axes[rank - 1] = TileSize{a.group};
    } else if (g != "tensor" && g != "channel") {
      throw_error(Status::kInvalidArgument, "--granularity: unknown '{}' (tensor, channel, group)", g);
    }
    out.push_back(std::move(how));
  }
  return out;
}

std::vector<analysis::QuantErrorReport> analyze_tensor(const TensorF& x, const std::string& name, const AnalyzeArgs& a,
                                                       const std::vector<TypeChoice>& types) {
  std::vector<analysis::QuantErrorReport> out;
  const std::int64_t row = x.shape().back();
  for (const auto& t : types) {
    if (t.ggml) {
      if (row % formats::ggml_traits(*t.ggml).block_elems == 0) out.push_back(analysis::analyze_ggml(x, *t.ggml, name));
      continue;
    }
    for (const auto& how : granularities_for(t.qtype, a, x.rank(), row)) out.push_back(analysis::analyze(x, how, name));
  }
  return out;
}

// The per-channel outlier and scale-sensitivity lines for one tensor and qtype.
std::vector<std::string> extra_lines(const TensorF& x, const std::string& name, QType t, const AnalyzeArgs& a) {
  std::vector<std::string> out;
  HowToQuantize how{t, {}, {}, "absmax"};
  for (int ax = 0; ax + 1 < x.rank(); ++ax) how.channelwise_axes.push_back(ax);
  const std::string config = analysis::describe(how);
  if (a.outliers > 0) {
    const auto o = analysis::outlier_impact(x, how, a.outliers, name);
    out.push_back(fmt::format("{}  {}: top {} values carry {:.1f}% of the energy; inlier SQNR {} dB with them, {} dB "
                              "without (MSE x{:.2f})",
                              name, config, o.k, 100 * o.outlier_energy_fraction,
                              analysis::fmt_db(o.inliers_with_outliers.sqnr_db),
                              analysis::fmt_db(o.inliers_without_outliers.sqnr_db), o.mse_ratio()));
  }
  if (!a.scales.empty()) {
    const auto pts = analysis::scale_sensitivity(x, how, a.scales, name);
    std::string line = fmt::format("{}  {}: scale x", name, config);
    for (const auto& p : pts) line += fmt::format("  {:g}: {} dB", p.factor, analysis::fmt_db(p.error.sqnr_db));
    out.push_back(fmt::format("{}  (best x{:g})", line, analysis::best_scale(pts).factor));
  }
  return out;
}

void write_json(const std::string& path, const nlohmann::json& j) {
  formats::AtomicFile f(path);
  const std::string text = j.dump(2) + "\n";
  f.write(text.data(), text.size());
  f.commit();
}

void run_suite(const AnalyzeArgs& a, const std::vector<TypeChoice>& types) {
  analysis::SuiteOptions o;
  o.rows = a.rows;
  o.cols = a.cols;
  o.group = a.group;
  o.seed = a.seed;
  o.qtypes.clear();
  o.ggml_types.clear();
  for (const auto& t : types) {
    if (t.ggml) o.ggml_types.push_back(*t.ggml);
    else o.qtypes.push_back(t.qtype);
  }
  if (!a.families.empty()) {
    o.families.clear();
    for (const auto& f : a.families) o.families.push_back(analysis::parse_weight_family(f));
  }
  if (o.rows <= 0 || o.cols <= 0) throw_error(Status::kInvalidArgument, "--rows and --cols must be positive");
  const bool groups_asked = std::find(a.granularities.begin(), a.granularities.end(), "group") != a.granularities.end();
  if (groups_asked && (o.group <= 0 || o.cols % o.group != 0))
    throw_error(Status::kInvalidArgument, "--group {} must divide --cols {}", o.group, o.cols);
  if (!groups_asked) o.group = o.cols;  // any divisor will do; those rows are not shown
  fmt::print("generated [{}, {}] weights (std 0.02, seed {}); granularities per-tensor, per-channel, group {}\n", o.rows,
             o.cols, o.seed, o.group);
  // The suite measures every granularity; keep those asked for (GGML types have their own blocks).
  auto wanted = [&](const std::string& config) {
    auto asked = [&](const char* g) { return std::find(a.granularities.begin(), a.granularities.end(), g) != a.granularities.end(); };
    if (config.find("per-tensor") != std::string::npos) return asked("tensor");
    if (config.find("per-channel") != std::string::npos) return asked("channel");
    if (config.find(" group ") != std::string::npos) return asked("group");
    return true;
  };
  nlohmann::json j = nlohmann::json::array();
  std::vector<analysis::QuantErrorReport> shown;
  for (const auto& row : analysis::run_suite(o)) {
    if (!wanted(row.report.config)) continue;
    j.push_back(row.report.to_json());
    shown.push_back(row.report);
  }
  fmt::print("{}", analysis::format_report_table(shown));
  if (a.outliers > 0 || !a.scales.empty()) {
    for (auto f : o.families) {
      const TensorF w = analysis::generate_weights(f, o.rows, o.cols, o.seed);
      for (const auto& t : types)
        if (!t.ggml)
          for (const auto& line : extra_lines(w, std::string(analysis::family_name(f)), t.qtype, a)) fmt::print("{}\n", line);
    }
  }
  if (!a.json_path.empty()) write_json(a.json_path, j);
}

void run_file(const AnalyzeArgs& a, const std::vector<TypeChoice>& types) {
  const formats::Checkpoint ckpt(a.input);
  nlohmann::json j = nlohmann::json::array();
  std::vector<analysis::QuantErrorReport> reports;
  std::vector<const formats::CheckpointTensor*> chosen;
  for (const auto& t : ckpt.tensors())
    if (t.shape.size() >= 2 && numel(t.shape) > 0 && (t.quantized || cli::is_float_type(t.type))) chosen.push_back(&t);
  if (chosen.empty()) throw_error(Status::kInvalidArgument, "{}: no tensor of rank >= 2 to analyze", a.input);
  cli::install_interrupt_handler();
  cli::Progress progress("analyze", static_cast<std::int64_t>(chosen.size()));
  std::vector<std::string> extra;
  for (const auto* t : chosen) {
    cli::throw_if_interrupted();
    const TensorF x = ckpt.to_float(t->name);
    check_finite(x.data(), QuantLayout(x.shape(), x.shape()), t->name);
    const std::string name = t->quantized ? t->name + " (from " + t->type + ")" : t->name;
    for (auto& r : analyze_tensor(x, name, a, types)) {
      j.push_back(r.to_json());
      reports.push_back(std::move(r));
    }
    for (const auto& ty : types)
      if (!ty.ggml)
        for (auto& line : extra_lines(x, t->name, ty.qtype, a)) extra.push_back(std::move(line));
    progress.advance(t->name);
  }
  fmt::print("{}", analysis::format_report_table(reports));
  for (const auto& line : extra) fmt::print("{}\n", line);
  if (!a.json_path.empty()) write_json(a.json_path, j);
}

void run_analyze(const AnalyzeArgs& a) {
  std::vector<TypeChoice> types;
  for (const auto& t : a.types) types.push_back(parse_type(t));
  if (types.empty()) throw_error(Status::kInvalidArgument, "--types: give at least one type");
  if (a.outliers < 0) throw_error(Status::kInvalidArgument, "--outliers must be >= 0");
  for (const auto& g : a.granularities)
    if (g != "tensor" && g != "channel" && g != "group")
      throw_error(Status::kInvalidArgument, "--granularity: unknown '{}' (tensor, channel, group)", g);
  if (a.input.empty()) run_suite(a, types);
  else run_file(a, types);
}

void setup_analyze(CLI::App& root) {
  static AnalyzeArgs args;
  auto* cmd = root.add_subcommand(
      "analyze", "Quantization error per tensor (or over generated weight families without FILE): SQNR vs theory, "
                 "error vs the scale/2 bound, granularities, bit widths, outliers, scale sensitivity");
  cmd->add_option("file", args.input, "GGUF or safetensors file; omit to run the generated-weights suite")
      ->check(CLI::ExistingFile);
  cmd->add_option("--types", args.types, "qtypes (int2..int8, nf4, fp4_e2m1, fp8_e4m3, ...) and GGML types (q4_0, q4_1, q8_0)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--granularity", args.granularities, "Any of tensor, channel, group")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--group", args.group, "Values per scale along a row for the 'group' granularity")->capture_default_str();
  cmd->add_option("--outliers", args.outliers, "Also report the impact of the K largest magnitudes (per-channel)");
  cmd->add_option("--scales", args.scales, "Also report the SQNR with the scales multiplied by these factors (per-channel)")
      ->delimiter(',');
  cmd->add_option("--json", args.json_path, "Write every row of the table as JSON");
  cmd->add_option("--family", args.families, "Suite only: gaussian, uniform, outliers, multi-channel (default all)")
      ->delimiter(',');
  cmd->add_option("--rows", args.rows, "Suite only: rows of each generated weight")->capture_default_str();
  cmd->add_option("--cols", args.cols, "Suite only: columns of each generated weight")->capture_default_str();
  cmd->add_option("--seed", args.seed, "Suite only: generator seed")->capture_default_str();
  cmd->callback([] { run_analyze(args); });
}

}  // namespace
QFORGE_CLI_COMMAND(setup_analyze);
