// `qforge quantize IN -o OUT`: quantizes a checkpoint's weight tensors.
//
// IN and OUT are GGUF or safetensors by extension. GGUF output takes ggml block types (q4_0,
// q4_1, q8_0, f16, f32); safetensors output takes qforge qtypes (int8, int4, nf4, fp8_e4m3, ...)
// stored in qforge's quantized layout (docs/formats.md). By default every tensor of rank >= 2 gets
// --type and 1-D tensors (norms, biases) stay float; --rules overrides per tensor name. The output
// is written to a temporary file and renamed at the end, so a failed or interrupted run leaves
// no partial OUT, and IN is only ever read.
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli_util.hpp"
#include "command.hpp"
#include "qforge/algorithms/gptq.hpp"
#include "qforge/algorithms/hessian_error.hpp"
#include "qforge/algorithms/jointq.hpp"
#include "qforge/algorithms/qep.hpp"
#include "qforge/algorithms/statistics.hpp"
#include "qforge/analysis/metrics.hpp"
#include "qforge/core/parallel.hpp"
#include "qforge/formats/checkpoint.hpp"
#include "qforge/rules/report.hpp"
#include "tensor_rules.hpp"

namespace {

using namespace qforge;

struct QuantizeArgs {
  std::string input, output, type = "q8_0", rules_path, method = "rtn", calib, report_path;
  std::int64_t group_size = -1;  // -1: the qtype's default
  std::string calibration;        // empty: absmax, or minmax for unsigned qtypes
  bool dry_run = false;
  int threads = 0;
  int jointq_threads = 1;  // row threads inside one JointQ tensor (set by run_quantize)
  // JointQ's options, named as in `qforge layer` and OneComp; unset means JointqOptions' default.
  std::optional<double> regularization_lambda, regularization_gamma;
  std::optional<std::string> regularization_mode, lambda_mode;
  bool any_jointq_option() const {
    return regularization_lambda || regularization_gamma || regularization_mode || lambda_mode;
  }
};

// What one tensor becomes.
struct Target {
  enum class Kind { kKeep, kGgml, kQType } kind = Kind::kKeep;
  formats::GgmlType ggml = formats::GgmlType::kF32;
  QType qtype = QType::kInt8;
  std::int64_t group = 0;
  std::string calibration = "absmax";
  std::string kept_as;  // for an already-quantized tensor that is kept: how OUT stores it
  std::string label() const {
    switch (kind) {
      case Kind::kKeep: return kept_as.empty() ? "float" : kept_as;
      case Kind::kGgml: return std::string(formats::ggml_traits(ggml).name);
      default: {
        std::string l = group > 0 ? fmt::format("{} g{}", to_string(qtype), group) : std::string(to_string(qtype));
        return calibration == "absmax" ? l : l + " " + calibration;
      }
    }
  }
};

struct Planned {
  const formats::CheckpointTensor* tensor = nullptr;
  Target target;
  std::string rule;  // which rule decided, for --dry-run and the report
  int rule_index = -1;  // position of that rule in the rules file, -1 for a default
  std::string note;
};

std::int64_t default_group(QType t) {
  if (t == QType::kNf4 || t == QType::kFp4E2M1) return 64;  // bitsandbytes' default block
  if (info(t).bits <= 4) return 128;                        // GPTQ/AWQ's usual group
  return 0;                                                  // 8 bits and up: per row
}

// Calibration for a qtype: the one asked for, else absmax, or minmax (with zero points) for the
// unsigned types, whose range cannot hold the negative half of a symmetric grid.
std::string calibration_for(QType t, const std::string& asked, const std::string& where) {
  const std::string method = !asked.empty() ? asked : (info(t).is_signed || !is_integer(t) ? "absmax" : "minmax");
  try {
    const CalibrationMethod m = parse_calibration_method(method);
    if (!m.symmetric() && !has_asymmetric_range(t))
      throw_error(Status::kInvalidArgument, "calibration '{}' is asymmetric but {} has no zero point", method, to_string(t));
  } catch (const Error& e) {
    throw_error(Status::kInvalidArgument, "{}: {}", where, e.what());
  }
  return method;
}

Target parse_target(const std::string& text, formats::FileFormat out_format, std::int64_t group, const std::string& calibration,
                    const std::string& where) {
  Target t;
  if (text == "float" || text == "keep" || text == "none") return t;
  if (const auto g = formats::parse_ggml_type(text)) {
    const auto& traits = formats::ggml_traits(*g);
    if (!traits.codec || traits.type == formats::GgmlType::kQ8_1)
      throw_error(Status::kUnsupported, "{}: type '{}' cannot be written (q4_0, q4_1, q8_0, f16, bf16, f32)", where, text);
    if (out_format != formats::FileFormat::kGguf && traits.quantized)
      throw_error(Status::kInvalidArgument, "{}: type '{}' is a GGUF block type; write a .gguf file, or use a qtype such as int4 or int8", where, text);
    if (*g == formats::GgmlType::kF32) return t;
    t.kind = Target::Kind::kGgml;
    t.ggml = *g;
    return t;
  }
  const auto q = try_parse_qtype(text);
  if (!q) throw_error(Status::kInvalidArgument, "{}: unknown type '{}' (GGUF: q4_0 q4_1 q8_0 f16 f32; qtypes: see `qforge qtypes`)", where, text);
  if (out_format == formats::FileFormat::kGguf)
    throw_error(Status::kInvalidArgument, "{}: qtype '{}' has no GGUF block type; use q4_0, q4_1 or q8_0, or write .safetensors", where, text);
  t.kind = Target::Kind::kQType;
  t.qtype = *q;
  t.group = group >= 0 ? group : default_group(*q);
  t.calibration = calibration_for(*q, calibration, where);
  return t;
}

// A kept tensor is copied as stored when OUT can hold its type: always within one format (GGUF
// blocks to GGUF, qforge's layout to safetensors); across formats for the plain types both share,
// except that float tensors go to GGUF as F32, as llama.cpp's converters write norms and biases.
// Otherwise (GGUF blocks into safetensors) it is dequantized to F32.
bool keeps_stored_bytes(const formats::CheckpointTensor& t, formats::FileFormat in_format, formats::FileFormat out_format) {
  if (in_format == out_format) return true;
  if (t.quantized || !cli::plain_type(t.type)) return false;
  return out_format == formats::FileFormat::kSafetensors || !cli::is_float_type(t.type);
}

std::vector<Planned> plan(const formats::Checkpoint& in, const QuantizeArgs& a, std::vector<cli::TensorRule>& rules,
                          formats::FileFormat out_format) {
  const Target default_target = parse_target(a.type, out_format, a.group_size, a.calibration, "--type");
  std::vector<Planned> out;
  for (const auto& t : in.tensors()) {
    Planned p;
    p.tensor = &t;
    bool decided = false;
    for (std::size_t ri = 0; ri < rules.size(); ++ri) {
      auto& r = rules[ri];
      const auto subject = r.subject(t.name, t.shape.size());
      if (!subject || !std::regex_match(*subject, r.regex)) continue;
      p.rule_index = static_cast<int>(ri);
      ++r.hits;
      p.target = parse_target(r.type, out_format, r.group_size.value_or(a.group_size), r.calibration.value_or(a.calibration),
                              fmt::format("{}:{}", a.rules_path, r.line));
      p.rule = fmt::format("rule line {} '{}'", r.line, r.match);
      decided = true;
      break;
    }
    if (!decided) {
      if (numel(t.shape) == 0) {
        p.rule = "default (empty tensor kept)";
      } else if (!t.quantized && !cli::is_float_type(t.type)) {
        p.rule = fmt::format("default ({} tensor kept)", t.type);
        p.target.kept_as = t.type;
      } else if (t.quantized) {
        p.rule = "already quantized";
        p.target.kept_as = keeps_stored_bytes(t, in.format(), out_format) ? t.type + " (kept)" : "F32 (dequantized)";
      } else if (t.shape.size() >= 2) {
        p.target = default_target;
        p.rule = "default (rank >= 2)";
      } else {
        p.rule = "default (1-D stays float)";
      }
    }
    if (t.quantized && p.target.kind != Target::Kind::kKeep)
      throw_error(Status::kUnsupported, "{}: tensor '{}' is already quantized ({}); dequantize the file first", in.path(), t.name, t.type);
    if (!t.quantized && !cli::is_float_type(t.type) && p.target.kind != Target::Kind::kKeep)
      throw_error(Status::kUnsupported, "{}: tensor '{}' holds {} integers, which qforge does not quantize ({})", in.path(),
                  t.name, t.type, p.rule);
    if (numel(t.shape) == 0 && p.target.kind != Target::Kind::kKeep) {
      p.note = "empty: kept";
      p.target = Target{};
    }
    const std::int64_t row = t.shape.empty() ? 1 : t.shape.back();
    if (p.target.kind == Target::Kind::kGgml && row % formats::ggml_traits(p.target.ggml).block_elems != 0) {
      p.note = fmt::format("row length {} is not a multiple of {}: kept float", row, formats::ggml_traits(p.target.ggml).block_elems);
      p.target = Target{};
    }
    if (p.target.kind == Target::Kind::kQType && p.target.group > 0 && row % p.target.group != 0) {
      p.note = fmt::format("group {} does not divide row length {}: one scale per row", p.target.group, row);
      p.target.group = 0;
    }
    out.push_back(std::move(p));
  }
  return out;
}

// Size the tensor will have in the output.
std::uint64_t planned_bytes(const Planned& p, formats::FileFormat in_format, formats::FileFormat out_format) {
  const auto& t = *p.tensor;
  const std::int64_t n = numel(t.shape);
  const std::int64_t row = t.shape.empty() ? 1 : t.shape.back();
  switch (p.target.kind) {
    case Target::Kind::kKeep:
      if (keeps_stored_bytes(t, in_format, out_format)) return t.nbytes;
      return static_cast<std::uint64_t>(n) * 4;
    case Target::Kind::kGgml: return static_cast<std::uint64_t>(row == 0 ? 0 : n / row * formats::ggml_row_bytes(p.target.ggml, row));
    default: {
      const std::int64_t cells = p.target.group > 0 ? n / p.target.group : (row == 0 ? 0 : n / row);
      const bool zp = !parse_calibration_method(p.target.calibration).symmetric();
      const std::uint64_t zp_bytes = zp ? (info(p.target.qtype).storage_bits > 8 ? 2 : 1) : 0;
      return QArray::storage_bytes_for(p.target.qtype, n) + static_cast<std::uint64_t>(cells) * (4 + zp_bytes);
    }
  }
}

struct Result {
  std::vector<std::uint8_t> bytes;  // GGUF tensor bytes or safetensors float bytes
  formats::GgmlType ggml = formats::GgmlType::kF32;
  formats::Dtype dtype = formats::Dtype::kF32;
  std::optional<QArray> qarray;
  analysis::ErrorStats error;
  std::uint64_t out_bytes = 0;
  double seconds = 0.0;  // the quantizer alone: not reading, decoding or measuring
  // gptq / qep / jointq tensors: what the report's layer-algorithm fields hold.
  struct LayerMethod {
    std::string method;
    double loss = 0.0, hessian_rel_err = 0.0, damping = 0.0;
  };
  std::optional<LayerMethod> layer;
};

// A tensor copied as stored: its bytes (or QArray) and type, no conversion and no error.
Result copy_stored(const formats::Checkpoint& in, const formats::CheckpointTensor& t, formats::FileFormat out_format) {
  Result r;
  if (const auto* g = in.gguf()) {
    const auto& info = g->at(t.name);
    const auto src = g->bytes(info);
    r.bytes.assign(src.begin(), src.end());
    r.ggml = info.type;
    if (out_format == formats::FileFormat::kSafetensors) r.dtype = cli::plain_type(t.type)->dtype;
  } else if (t.quantized) {
    r.qarray = formats::load_qarray(*in.safetensors(), t.name);
  } else {
    const auto& e = in.safetensors()->at(t.name);
    const auto src = in.safetensors()->bytes(e);
    r.bytes.assign(src.begin(), src.end());
    r.dtype = e.dtype;
    if (out_format == formats::FileFormat::kGguf) r.ggml = cli::plain_type(t.type)->ggml;
  }
  r.out_bytes = t.nbytes;
  r.error.count = numel(t.shape);
  r.error.sqnr_db = std::numeric_limits<double>::infinity();
  return r;
}

// GGML blocks from a layer algorithm's codes and group parameters (groups of 32 along a row):
// Q4_0/Q4_1 store code + 8 as nibbles (value j low, j + 16 high), Q8_0 the code; d (and Q4_1's m)
// are the fp16-rounded group parameters, so decoding the blocks gives the layer's own weights.
std::vector<std::uint8_t> pack_ggml_blocks(const algorithms::QuantizedLayer& q, formats::GgmlType type) {
  const std::int64_t row_bytes = formats::ggml_row_bytes(type, q.cols);
  std::vector<std::uint8_t> out(static_cast<std::size_t>(q.rows * row_bytes));
  for (std::int64_t r = 0; r < q.rows; ++r)
    for (std::int64_t b = 0; b < q.cols / 32; ++b) {
      std::uint8_t* dst = out.data() + r * row_bytes + b * formats::ggml_traits(type).block_bytes;
      const auto& prm = q.param(r, b * 32);
      auto code = [&](std::int64_t j) { return q.codes[static_cast<std::size_t>(r * q.cols + b * 32 + j)]; };
      const std::uint16_t d = fp32_to_fp16(prm.scale);
      if (type == formats::GgmlType::kQ8_0) {
        formats::BlockQ8_0 blk{d, {}};
        for (int j = 0; j < 32; ++j) blk.qs[j] = code(j);
        std::memcpy(dst, &blk, sizeof blk);
      } else {
        std::uint8_t qs[16];
        for (int j = 0; j < 16; ++j)
          qs[j] = static_cast<std::uint8_t>((code(j) + 8) | ((code(j + 16) + 8) << 4));
        if (type == formats::GgmlType::kQ4_0) {
          formats::BlockQ4_0 blk{d, {}};
          std::memcpy(blk.qs, qs, 16);
          std::memcpy(dst, &blk, sizeof blk);
        } else {
          formats::BlockQ4_1 blk{d, fp32_to_fp16(prm.offset), {}};
          std::memcpy(blk.qs, qs, 16);
          std::memcpy(dst, &blk, sizeof blk);
        }
      }
    }
  return out;
}

// The calibration statistics of a weight: by its module path (name without ".weight"), else by
// the tensor name.
const algorithms::LayerStatistics& statistics_for(const algorithms::StatisticsSet& stats, const std::string& calib,
                                                  const formats::CheckpointTensor& t) {
  const std::string module = t.name.ends_with(".weight") ? t.name.substr(0, t.name.size() - 7) : t.name;
  for (const auto& key : {module, t.name})
    if (auto it = stats.find(key); it != stats.end()) {
      if (it->second.cols != t.shape.back())
        throw_error(Status::kShapeMismatch, "{}: statistics '{}' are for {} inputs, tensor '{}' has {}", calib, key,
                    it->second.cols, t.name, t.shape.back());
      return it->second;
    }
  throw_error(Status::kNotFound, "{}: no statistics for tensor '{}' (looked for sites '{}' and '{}')", calib, t.name, module, t.name);
}

// GPTQ, QEP (correction then GPTQ) or JointQ (OneComp defaults: λ 0.1, diagonal R; solved on the
// block type's integer lattice, scales rounded to fp16) of one [out, in] weight into a GGML block type.
Result run_layer_method(const TensorF& x, const formats::CheckpointTensor& t, const Planned& p, const QuantizeArgs& a,
                        const algorithms::StatisticsSet& stats) {
  if (x.rank() != 2)
    throw_error(Status::kUnsupported, "--method {}: tensor '{}' has rank {}; layer methods take [out, in] matrices", a.method,
                t.name, x.rank());
  const auto& st = statistics_for(stats, a.calib, t);
  algorithms::GptqOptions opt;
  opt.grid = algorithms::parse_grid(std::string(formats::ggml_traits(p.target.ggml).name == "Q4_0"   ? "q4_0"
                                                : formats::ggml_traits(p.target.ggml).name == "Q4_1" ? "q4_1"
                                                                                                     : "q8_0"));
  const std::int64_t rows = x.dim(0), cols = x.dim(1);
  algorithms::QuantizedLayer q;
  const cli::Stopwatch method_time;
  if (a.method == "jointq") {
    algorithms::JointqOptions jo;
    jo.grid = opt.grid;
    jo.threads = a.jointq_threads;
    jo.regularization_lambda = a.regularization_lambda.value_or(jo.regularization_lambda);
    jo.regularization_gamma = a.regularization_gamma.value_or(jo.regularization_gamma);
    jo.regularization_mode = a.regularization_mode.value_or(jo.regularization_mode);
    jo.lambda_mode = a.lambda_mode.value_or(jo.lambda_mode);
    q = algorithms::jointq(x.data(), rows, cols, st.h.data(), static_cast<double>(std::max<std::int64_t>(st.tokens, 1)), jo,
                           t.name).layer;
  } else if (a.method == "qep") {
    if (st.h_delta.empty())
      throw_error(Status::kInvalidArgument, "--method qep: {} has no hessian_delta for tensor '{}' (collect statistics with "
                  "a quantized stream)", a.calib, t.name);
    q = algorithms::qep_gptq(x.data(), rows, cols, st.h.data(), st.h_delta.data(), algorithms::QepOptions{}, opt, t.name);
  } else {
    q = algorithms::gptq(x.data(), rows, cols, st.h.data(), opt, t.name);
  }
  Result r;
  r.seconds = method_time.seconds();
  r.ggml = p.target.ggml;
  r.bytes = pack_ggml_blocks(q, r.ggml);
  r.out_bytes = r.bytes.size();
  TensorF back(x.shape());
  const std::int64_t row_bytes = formats::ggml_row_bytes(r.ggml, cols, t.name);
  for (std::int64_t i = 0; i < rows; ++i) formats::decode_row(r.ggml, r.bytes.data() + i * row_bytes, back.data() + i * cols, cols);
  r.error = analysis::compare(x.data(), back.data(), x.size());  // of what is written
  r.layer = Result::LayerMethod{.method = a.method, .loss = q.loss, .damping = q.damp_used};
  if (!a.report_path.empty())  // two n³ GEMMs per tensor: only when a report asks for it
    r.layer->hessian_rel_err = algorithms::hessian_rel_err(st.h.data(), x.data(), back.data(), rows, cols);
  return r;
}

Result run_one(const formats::Checkpoint& in, const Planned& p, formats::FileFormat out_format, const QuantizeArgs& a,
               const algorithms::StatisticsSet& stats) {
  const auto& t = *p.tensor;
  if (p.target.kind == Target::Kind::kKeep && keeps_stored_bytes(t, in.format(), out_format))
    return copy_stored(in, t, out_format);
  if (a.method != "rtn" && p.target.kind == Target::Kind::kGgml && formats::ggml_traits(p.target.ggml).quantized) {
    const TensorF x = in.to_float(t.name);
    check_finite(x.data(), QuantLayout(x.shape(), x.shape(), t.name), t.name);
    return run_layer_method(x, t, p, a, stats);
  }
  Result r;
  const TensorF x = in.to_float(t.name);
  const std::int64_t row = t.shape.empty() ? 1 : t.shape.back();
  const std::int64_t rows = row == 0 ? 0 : x.size() / row;
  if (p.target.kind != Target::Kind::kKeep) check_finite(x.data(), QuantLayout(x.shape(), x.shape(), t.name), t.name);
  TensorF back;
  switch (p.target.kind) {
    case Target::Kind::kKeep:  // written as float32
      back = x;
      r.bytes.resize(static_cast<std::size_t>(x.size()) * 4);
      if (x.size()) std::memcpy(r.bytes.data(), x.data(), r.bytes.size());
      r.out_bytes = r.bytes.size();
      break;
    case Target::Kind::kGgml: {  // a GGML block type, or f16/bf16 (which safetensors holds too)
      r.ggml = p.target.ggml;
      if (out_format == formats::FileFormat::kSafetensors) r.dtype = cli::plain_type(formats::ggml_traits(r.ggml).name)->dtype;
      const std::int64_t row_bytes = formats::ggml_row_bytes(r.ggml, row, t.name);
      r.bytes.resize(static_cast<std::size_t>(rows * row_bytes));
      const cli::Stopwatch method_time;
      for (std::int64_t i = 0; i < rows; ++i)
        formats::encode_row(r.ggml, x.data() + i * row, r.bytes.data() + i * row_bytes, row);
      r.seconds = method_time.seconds();
      back = TensorF(x.shape());
      for (std::int64_t i = 0; i < rows; ++i)
        formats::decode_row(r.ggml, r.bytes.data() + i * row_bytes, back.data() + i * row, row);
      r.out_bytes = r.bytes.size();
      break;
    }
    case Target::Kind::kQType: {
      HowToQuantize how;
      how.qtype = p.target.qtype;
      how.calibration_method = p.target.calibration;
      for (int ax = 0; ax + 1 < static_cast<int>(x.shape().size()); ++ax) how.channelwise_axes.push_back(ax);
      if (p.target.group > 0) how.tiled_axes[static_cast<int>(x.shape().size()) - 1] = p.target.group;
      QuantizeOptions opts;
      opts.name = t.name;
      const cli::Stopwatch method_time;
      r.qarray = quantize(x, how, opts);
      r.seconds = method_time.seconds();
      back = dequantize(*r.qarray);
      r.out_bytes = r.qarray->nbytes();
      break;
    }
  }
  r.error = analysis::compare(x.data(), back.data(), x.size());
  return r;
}

std::uint32_t gguf_file_type(const std::vector<Planned>& planned) {
  // llama.cpp's LLAMA_FTYPE: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q4_0 2, MOSTLY_Q4_1 3, MOSTLY_Q8_0 7, MOSTLY_BF16 32.
  std::map<formats::GgmlType, int> count;
  for (const auto& p : planned)
    if (p.target.kind == Target::Kind::kGgml) ++count[p.target.ggml];
  formats::GgmlType most = formats::GgmlType::kF32;
  int best = 0;
  for (const auto& [type, n] : count)
    if (n > best) best = n, most = type;
  switch (most) {
    case formats::GgmlType::kF16: return 1;
    case formats::GgmlType::kQ4_0: return 2;
    case formats::GgmlType::kQ4_1: return 3;
    case formats::GgmlType::kQ8_0: return 7;
    case formats::GgmlType::kBF16: return 32;
    default: return 0;
  }
}

void write_output(const formats::Checkpoint& in, const QuantizeArgs& a, const std::vector<Planned>& planned,
                  std::vector<Result>& results, formats::FileFormat out_format) {
  if (out_format == formats::FileFormat::kGguf) {
    formats::GgufWriter w;
    if (const auto* g = in.gguf())
      for (const auto& [k, v] : g->metadata())
        if (k != "general.file_type" && k != "general.quantization_version" && k != "general.alignment") w.set(k, v);
    w.set("general.file_type", formats::GgufValue::u32(gguf_file_type(planned)));
    for (std::size_t i = 0; i < planned.size(); ++i)
      w.add(planned[i].tensor->name, results[i].ggml, planned[i].tensor->shape, std::move(results[i].bytes));
    w.write(a.output);
    return;
  }
  formats::SafetensorsWriter w;
  for (std::size_t i = 0; i < planned.size(); ++i) {
    auto& r = results[i];
    if (r.qarray) formats::add_qarray(w, planned[i].tensor->name, *r.qarray);
    else w.add(planned[i].tensor->name, r.dtype, planned[i].tensor->shape, std::move(r.bytes));
  }
  w.set_metadata("qforge.quantized_from", std::filesystem::path(a.input).filename().string());
  w.write(a.output);
}

// The run as a QuantizationReport (include/qforge/rules/report.hpp, the type the providers fill),
// one site per tensor, plus what only a file run has: paths, method, time, and per tensor its
// shape, source type, output type and the rule in words.
nlohmann::json report_json(const QuantizeArgs& a, const std::vector<Planned>& planned, const std::vector<Result>& results,
                           const std::vector<cli::TensorRule>& rules, double total_seconds) {
  rules::QuantizationReport report;
  report.provider = "qforge quantize (" + a.method + ")";
  for (std::size_t i = 0; i < planned.size(); ++i) {
    const auto& p = planned[i];
    const auto& r = results[i];
    rules::SiteReport site;
    site.site = p.tensor->name;
    site.weight = p.tensor->name;
    site.module_path = p.tensor->name.size() > 7 && p.tensor->name.ends_with(".weight")
                           ? p.tensor->name.substr(0, p.tensor->name.size() - 7)
                           : p.tensor->name;
    site.rule_index = p.rule_index;
    site.mode = p.target.kind == Target::Kind::kKeep ? "float" : "weight-only";
    if (p.target.kind != Target::Kind::kKeep) site.weight_qtype = p.target.label();
    if (r.qarray && p.target.kind == Target::Kind::kQType) site.weight_scale_shape = r.qarray->scale().shape();
    if (p.target.kind == Target::Kind::kGgml && formats::ggml_traits(p.target.ggml).quantized) {
      site.weight_scale_shape = p.tensor->shape;  // one scale per block along the row
      site.weight_scale_shape.back() /= formats::ggml_traits(p.target.ggml).block_elems;
    }
    site.weight_error = r.error;
    site.bytes_before = p.tensor->nbytes;
    site.bytes_after = r.out_bytes;
    site.note = p.note;
    if (r.layer) {
      site.method = r.layer->method;
      site.loss = r.layer->loss;
      site.hessian_rel_err = r.layer->hessian_rel_err;
      site.damping = r.layer->damping;
    }
    report.sites.push_back(std::move(site));
  }
  for (std::size_t ri = 0; ri < rules.size(); ++ri)
    if (rules[ri].hits == 0) report.unused_rules.push_back(static_cast<int>(ri));
  nlohmann::json j = report.to_json();
  double method_seconds = 0.0;
  for (std::size_t i = 0; i < planned.size(); ++i) {
    auto& site = j["sites"][i];
    site["shape"] = planned[i].tensor->shape;
    site["source_type"] = planned[i].tensor->type;
    site["type"] = planned[i].target.label();
    site["rule"] = planned[i].rule;
    site["seconds"] = results[i].seconds;
    method_seconds += results[i].seconds;
  }
  j["input"] = a.input;
  j["output"] = a.output;
  j["method"] = a.method;
  j["seconds"] = method_seconds;
  j["total_seconds"] = total_seconds;
  return j;
}

void check_paths(const QuantizeArgs& a) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(a.output) && fs::equivalent(a.input, a.output, ec))
    throw_error(Status::kInvalidArgument, "{}: output is the input file; refusing to overwrite it", a.output);
  if (a.method != "rtn" && a.method != "gptq" && a.method != "qep" && a.method != "jointq")
    throw_error(Status::kInvalidArgument, "--method {}: unknown (rtn, gptq, qep, jointq)", a.method);
  if (a.method == "rtn" && !a.calib.empty()) throw_error(Status::kInvalidArgument, "--calib is only used by --method gptq|qep|jointq");
  if (a.method != "jointq" && a.any_jointq_option())
    throw_error(Status::kInvalidArgument, "--regularization-*/--lambda-mode are JointQ's options; they need --method jointq");
  if (a.regularization_mode && *a.regularization_mode != "identity" && *a.regularization_mode != "diagonal")
    throw_error(Status::kInvalidArgument, "--regularization-mode {}: not identity or diagonal", *a.regularization_mode);
  if (a.lambda_mode && *a.lambda_mode != "fixed_lambda" && *a.lambda_mode != "incremental_lambda")
    throw_error(Status::kInvalidArgument, "--lambda-mode {}: not fixed_lambda or incremental_lambda", *a.lambda_mode);
  if (a.method != "rtn" && a.calib.empty())
    throw_error(Status::kInvalidArgument, "--method {} needs --calib STATS.safetensors (per-layer Hessians, see `qforge stats`)", a.method);
  if (a.method != "rtn" && formats::format_of(a.output) != formats::FileFormat::kGguf)
    throw_error(Status::kUnsupported, "--method {}: writes GGUF block types (q4_0, q4_1, q8_0) only in this build; use a .gguf output", a.method);
}

void run_quantize(QuantizeArgs a) {
  const cli::Stopwatch total;
  cli::install_interrupt_handler();
  check_paths(a);
  const auto out_format = formats::format_of(a.output);
  if (a.type == "q8_0" && out_format == formats::FileFormat::kSafetensors) a.type = "int8";  // the natural default per format
  const formats::Checkpoint in(a.input);
  std::vector<cli::TensorRule> rules;
  if (!a.rules_path.empty()) rules = cli::load_tensor_rules(a.rules_path);
  const std::vector<Planned> planned = plan(in, a, rules, out_format);
  for (const auto& r : rules)
    if (r.hits == 0) fmt::print(stderr, "qforge: warning: {}:{}: rule '{}' matched no tensor\n", a.rules_path, r.line, r.match);

  std::size_t width = 6;
  for (const auto& p : planned) width = std::max(width, p.tensor->name.size());
  if (a.dry_run) {
    std::uint64_t before = 0, after = 0;
    fmt::print("{:<{}}  {:<20} {:<10} {:<10} {:>12} {:>12}  {}\n", "tensor", width, "shape", "from", "to", "bytes", "after", "rule");
    for (const auto& p : planned) {
      const auto size = planned_bytes(p, in.format(), out_format);
      before += p.tensor->nbytes;
      after += size;
      fmt::print("{:<{}}  {:<20} {:<10} {:<10} {:>12} {:>12}  {}{}\n", p.tensor->name, width, shape_str(p.tensor->shape),
                 p.tensor->type, p.target.label(), p.tensor->nbytes, size, p.rule, p.note.empty() ? "" : " (" + p.note + ")");
    }
    fmt::print("dry run: {} -> {} ({} -> {}); nothing written\n", a.input, a.output, cli::human_bytes(double(before)),
               cli::human_bytes(double(after)));
    return;
  }

  const algorithms::StatisticsSet stats = a.calib.empty() ? algorithms::StatisticsSet{} : algorithms::load_statistics(a.calib);
  std::vector<Result> results(planned.size());
  // JointQ threads over rows inside a tensor; split the threads so tensors x rows stays at --threads.
  const int threads = a.threads > 0 ? a.threads : default_threads();
  const auto layer_tensors = std::count_if(planned.begin(), planned.end(), [](const Planned& p) {
    return p.target.kind == Target::Kind::kGgml && formats::ggml_traits(p.target.ggml).quantized;
  });
  a.jointq_threads = std::max(1, threads / static_cast<int>(std::clamp<std::int64_t>(layer_tensors, 1, threads)));
  cli::Progress progress("quantize", static_cast<std::int64_t>(planned.size()));
  parallel_for_each(static_cast<std::int64_t>(planned.size()), threads, [&](std::int64_t i) {
    cli::throw_if_interrupted();
    const auto& p = planned[static_cast<std::size_t>(i)];
    results[static_cast<std::size_t>(i)] = run_one(in, p, out_format, a, stats);
    progress.advance(p.tensor->name + " -> " + p.target.label());
  });
  cli::throw_if_interrupted();
  write_output(in, a, planned, results, out_format);

  fmt::print("{:<{}}  {:<20} {:<10} {:>12} {:>10} {:>9} {:>11}\n", "tensor", width, "shape", "type", "bytes", "rel rmse",
             "sqnr dB", "max |err|");
  std::uint64_t before = 0, after = 0;
  for (std::size_t i = 0; i < planned.size(); ++i) {
    const auto& p = planned[i];
    const auto& e = results[i].error;
    before += p.tensor->nbytes;
    after += results[i].out_bytes;
    fmt::print("{:<{}}  {:<20} {:<10} {:>12} {:>10.3g} {:>9} {:>11.3g}\n", p.tensor->name, width, shape_str(p.tensor->shape),
               p.target.label(), results[i].out_bytes, e.relative,
               std::isfinite(e.sqnr_db) ? fmt::format("{:.2f}", e.sqnr_db) : std::string("exact"), e.max_abs);
  }
  for (const auto& p : planned)
    if (!p.note.empty()) fmt::print("note: {}: {}\n", p.tensor->name, p.note);
  fmt::print("wrote {}: {} -> {} ({:.2f}x smaller) in {:.2f} s\n", a.output, cli::human_bytes(double(before)),
             cli::human_bytes(double(after)), after ? double(before) / double(after) : 0.0, total.seconds());
  if (!a.report_path.empty()) {
    formats::AtomicFile f(a.report_path);
    const std::string text = report_json(a, planned, results, rules, total.seconds()).dump(2) + "\n";
    f.write(text.data(), text.size());
    f.commit();
  }
}

void setup_quantize(CLI::App& root) {
  static QuantizeArgs args;
  auto* cmd = root.add_subcommand("quantize", "Quantize the weights of a GGUF or safetensors checkpoint");
  cmd->add_option("input", args.input, "Input .gguf or .safetensors")->required()->check(CLI::ExistingFile);
  cmd->add_option("-o,--output", args.output, "Output .gguf or .safetensors (written atomically)")->required();
  cmd->add_option("-t,--type", args.type,
                  "Type for tensors of rank >= 2: q4_0 q4_1 q8_0 f16 (GGUF) or a qtype int8 int4 nf4 fp8_e4m3 ... "
                  "(safetensors); default q8_0 / int8")
      ->capture_default_str();
  cmd->add_option("--group-size", args.group_size, "Values per scale along each row for qtypes (0 = one per row)")
      ->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--calibration", args.calibration,
                  "qtypes: absmax | minmax | absmax,F | rms,K | percentile,P | mse | fixed,A (default absmax; minmax for "
                  "uint4/uint8)");
  cmd->add_option("--rules", args.rules_path, "YAML/JSON list of {match, type, group_size, calibration}; first full match wins")
      ->check(CLI::ExistingFile);
  cmd->add_option("--method", args.method, "rtn (round to nearest), gptq, qep or jointq (GGUF q4_0/q4_1/q8_0, with --calib)")
      ->capture_default_str();
  cmd->add_option("--calib", args.calib, "Per-layer statistics (H, H_delta) from `qforge stats`, for gptq/qep/jointq")
      ->check(CLI::ExistingFile);
  cmd->add_option("--regularization-lambda", args.regularization_lambda, "JointQ lambda (default 0.1)");
  cmd->add_option("--regularization-mode", args.regularization_mode, "JointQ identity | diagonal (default diagonal)");
  cmd->add_option("--regularization-gamma", args.regularization_gamma, "JointQ gamma, diagonal mode (default 0.5)");
  cmd->add_option("--lambda-mode", args.lambda_mode, "JointQ fixed_lambda | incremental_lambda (default fixed_lambda)");
  cmd->add_option("--report", args.report_path, "Write the per-tensor report as JSON");
  cmd->add_flag("--dry-run", args.dry_run, "Print which rule hits which tensor and the sizes; write nothing");
  cmd->add_option("--threads", args.threads, "Worker threads (default: all cores)")->check(CLI::Range(0, 1 << 30));
  cmd->callback([] { run_quantize(args); });
}

}  // namespace
QFORGE_CLI_COMMAND(setup_quantize);
