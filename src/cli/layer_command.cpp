// `qforge layer`: quantize one [out, in] float32 matrix with RTN, GPTQ, QEP+GPTQ or JointQ from
// calibration inputs or precomputed Hessians. A stable contract (docs/algorithms.md): scripts
// parse its JSON line and its output tensors.
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli_util.hpp"
#include "command.hpp"
#include "qforge/algorithms/hessian_error.hpp"
#include "qforge/algorithms/jointq.hpp"
#include "qforge/algorithms/qep.hpp"
#include "qforge/algorithms/statistics.hpp"
#include "qforge/formats/safetensors.hpp"

namespace {
namespace qa = qforge::algorithms;
namespace qf = qforge::formats;
namespace cli = qforge::cli;
using qforge::Status;
using qforge::throw_error;

struct LayerArgs {
  std::string method = "gptq", weight, inputs, hessian, inputs_q, hessian_delta, qtype = "int4", out;
  std::int64_t group_size = 0, block_size = 128, tokens = 0;
  bool sym = false, asym = false, act_order = false, static_groups = false, mse = false;
  bool fresh_group_params = false, fix_sym = false;
  double damp = 0.01, alpha = 0.5, qep_damp = 0.01;
  double regularization_lambda = 0.1, regularization_gamma = 0.5;
  std::string regularization_mode = "diagonal", lambda_mode = "fixed_lambda";
  int threads = 0;
};

struct Matrix {
  std::int64_t rows = 0, cols = 0;
  std::vector<double> data;
};

// PATH[:NAME]: NAME defaults to the file's only tensor, else "weight".
Matrix load_matrix(const std::string& spec, std::string_view what) {
  std::string path = spec, name;
  const auto colon = spec.rfind(':');
  if (colon != std::string::npos && spec.find('/', colon) == std::string::npos && colon > 1) {
    path = spec.substr(0, colon);
    name = spec.substr(colon + 1);
  }
  qf::SafetensorsFile f(path);
  if (name.empty()) {
    if (f.tensors().size() == 1) name = f.tensors()[0].name;
    else if (f.find("weight")) name = "weight";
    else throw_error(Status::kNotFound, "{} {}: holds {} tensors; name one as {}:NAME", what, path, f.tensors().size(), path);
  }
  const auto* e = f.find(name);
  if (!e) throw_error(Status::kNotFound, "{} {}: no tensor '{}'", what, path, name);
  if (e->shape.size() != 2) throw_error(Status::kShapeMismatch, "{} {}:{} must be 2-D, has shape of rank {}", what, path, name, e->shape.size());
  Matrix m{e->shape[0], e->shape[1], {}};
  m.data.resize(static_cast<std::size_t>(e->numel()));
  if (e->dtype == qf::Dtype::kF64) {
    std::memcpy(m.data.data(), f.bytes(*e).data(), m.data.size() * sizeof(double));
  } else {
    const auto t = f.to_float(name);
    for (std::size_t i = 0; i < m.data.size(); ++i) m.data[i] = t[static_cast<std::int64_t>(i)];
  }
  return m;
}

std::vector<float> to_f32(const Matrix& m) { return {m.data.begin(), m.data.end()}; }

template <class T>
std::vector<std::uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<std::uint8_t> b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// ‖A − B‖² / ‖A‖² of y = x wᵀ for two (x, w) pairs, through the backend GEMM.
double output_rel_err(const std::vector<float>& x, const std::vector<float>& xq, std::int64_t tokens, std::int64_t cols,
                      const std::vector<float>& w, const std::vector<float>& wq, std::int64_t rows) {
  std::vector<float> y(static_cast<std::size_t>(tokens * rows)), yq(y.size());
  using qforge::backend::GemmF32Op;
  qforge::backend::run(GemmF32Op{.M = tokens, .N = rows, .K = cols, .a = x.data(), .lda = cols, .b = w.data(), .ldb = cols, .dst = y.data(), .ldd = rows});
  qforge::backend::run(GemmF32Op{.M = tokens, .N = rows, .K = cols, .a = xq.data(), .lda = cols, .b = wq.data(), .ldb = cols, .dst = yq.data(), .ldd = rows});
  double num = 0, den = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    num += (static_cast<double>(y[i]) - yq[i]) * (static_cast<double>(y[i]) - yq[i]);
    den += static_cast<double>(y[i]) * y[i];
  }
  return den > 0 ? num / den : 0.0;
}

void run_layer(const LayerArgs& a) {
  const cli::Stopwatch total;
  if (a.method != "rtn" && a.method != "gptq" && a.method != "qep" && a.method != "jointq")
    throw_error(Status::kInvalidArgument, "--method '{}' is not rtn, gptq, qep or jointq", a.method);
  if (a.sym && a.asym) throw_error(Status::kInvalidArgument, "--sym and --asym exclude each other");
  const Matrix wm = load_matrix(a.weight, "--weight");
  const std::int64_t rows = wm.rows, cols = wm.cols;
  const auto w = to_f32(wm);
  const std::string site = a.weight;

  qa::GridSpec grid = qa::parse_grid(a.qtype);
  if (!qa::is_ggml_grid(grid.kind)) grid.group_size = a.group_size;
  else if (a.group_size != 0 && a.group_size != 32)
    throw_error(Status::kInvalidArgument, "--qtype {} uses groups of 32; --group-size {} does not apply", a.qtype, a.group_size);
  grid.sym = a.sym;
  grid.fix_sym_nonnegative = a.fix_sym;
  if (a.mse) grid.range = qa::RangeMethod::kMse;
  (void)qa::effective_group_size(grid, cols, site);

  // Statistics: from inputs (exact sums) or from the given matrices.
  std::vector<float> x, xq;
  std::int64_t tokens = a.tokens;
  std::vector<double> h, hd;
  if (!a.inputs.empty() && !a.hessian.empty()) throw_error(Status::kInvalidArgument, "give --inputs or --hessian, not both");
  if (!a.inputs_q.empty() && !a.hessian_delta.empty())
    throw_error(Status::kInvalidArgument, "give --inputs-quantized or --hessian-delta, not both");
  if (!a.inputs.empty()) {
    const Matrix xm = load_matrix(a.inputs, "--inputs");
    if (xm.cols != cols) throw_error(Status::kShapeMismatch, "--inputs has {} features per token, the weight has {} input columns", xm.cols, cols);
    x = to_f32(xm);
    tokens = xm.rows;
    xq = x;
    if (!a.inputs_q.empty()) {
      const Matrix qm = load_matrix(a.inputs_q, "--inputs-quantized");
      if (qm.rows != xm.rows || qm.cols != xm.cols)
        throw_error(Status::kShapeMismatch, "--inputs-quantized is [{}, {}], --inputs is [{}, {}]", qm.rows, qm.cols, xm.rows, xm.cols);
      xq = to_f32(qm);
    }
    qa::LayerStatistics s(cols, !a.inputs_q.empty());
    s.add(x.data(), a.inputs_q.empty() ? nullptr : xq.data(), tokens, site);
    h = std::move(s.h);
    hd = std::move(s.h_delta);
  } else if (!a.hessian.empty()) {
    if (!a.inputs_q.empty()) throw_error(Status::kInvalidArgument, "--inputs-quantized needs --inputs");
    const Matrix hm = load_matrix(a.hessian, "--hessian");
    if (hm.rows != cols || hm.cols != cols) throw_error(Status::kShapeMismatch, "--hessian is [{}, {}], needs [{}, {}]", hm.rows, hm.cols, cols, cols);
    h = hm.data;
    if (!a.hessian_delta.empty()) {
      const Matrix dm = load_matrix(a.hessian_delta, "--hessian-delta");
      if (dm.rows != cols || dm.cols != cols) throw_error(Status::kShapeMismatch, "--hessian-delta is [{}, {}], needs [{}, {}]", dm.rows, dm.cols, cols, cols);
      hd = dm.data;
    }
  } else if (a.method != "rtn") {
    throw_error(Status::kInvalidArgument, "--method {} needs --inputs or --hessian", a.method);
  }
  if (!a.hessian_delta.empty() && a.hessian.empty()) throw_error(Status::kInvalidArgument, "--hessian-delta needs --hessian");

  qa::GptqOptions g;
  g.grid = grid;
  g.percdamp = a.damp;
  g.block_size = a.block_size;
  g.act_order = a.act_order;
  g.static_groups = a.static_groups;
  g.fresh_group_params = a.fresh_group_params;
  qa::QuantizedLayer q;
  std::optional<double> accepted_lambda;
  const cli::Stopwatch method_time;
  if (a.method == "rtn") {
    q = qa::quantize_rtn(w.data(), rows, cols, grid, site);
  } else if (a.method == "gptq") {
    q = qa::gptq(w.data(), rows, cols, h.data(), g, site);
  } else if (a.method == "qep") {
    qa::QepOptions o;
    o.correction_factor = a.alpha;
    o.damping_factor = a.qep_damp;
    if (hd.empty()) hd.assign(h.size(), 0.0);  // X̂ = X: the correction is zero
    q = qa::qep_gptq(w.data(), rows, cols, h.data(), hd.data(), o, g, site);
  } else {
    qa::JointqOptions o;
    o.grid = grid;
    o.regularization_lambda = a.regularization_lambda;
    o.regularization_mode = a.regularization_mode;
    o.regularization_gamma = a.regularization_gamma;
    o.lambda_mode = a.lambda_mode;
    o.act_order = a.act_order;
    o.gptq_percdamp = a.damp;
    o.gptq_block_size = a.block_size;
    o.threads = a.threads;
    auto r = qa::jointq(w.data(), rows, cols, h.data(), static_cast<double>(tokens > 0 ? tokens : 1), o, site);
    q = std::move(r.layer);
    accepted_lambda = r.accepted_lambda;
  }
  const double method_seconds = method_time.seconds();

  // Outputs: scale/zero in [out, groups] as the layer's group_index defines the groups.
  std::vector<float> scale(static_cast<std::size_t>(rows * q.groups)), offset(scale.size());
  std::vector<std::int8_t> zero(scale.size());
  for (std::size_t i = 0; i < scale.size(); ++i) {
    scale[i] = q.params[i].scale;
    zero[i] = static_cast<std::int8_t>(q.params[i].zero);
    offset[i] = q.params[i].offset;
  }
  qf::SafetensorsWriter out;
  out.add("weight", qf::Dtype::kF32, {rows, cols}, bytes_of(q.weight));
  out.add("qvalue", qf::Dtype::kI8, {rows, cols}, bytes_of(q.codes));
  out.add("scale", qf::Dtype::kF32, {rows, q.groups}, bytes_of(scale));
  const bool asym = grid.kind == qa::GridKind::kInt && !grid.sym;
  if (asym) out.add("zero_point", qf::Dtype::kI8, {rows, q.groups}, bytes_of(zero));
  if (grid.kind == qa::GridKind::kQ4_1) out.add("min", qf::Dtype::kF32, {rows, q.groups}, bytes_of(offset));
  if (!q.perm.empty()) {
    out.add("perm", qf::Dtype::kI32, {cols}, bytes_of(q.perm));
    out.add("g_idx", qf::Dtype::kI32, {cols}, bytes_of(q.group_index));
  }
  out.set_metadata("method", a.method);
  out.set_metadata("qtype", a.qtype);
  out.set_metadata("group_size", std::to_string(q.group_size));

  double wn = 0, wd = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    wn += static_cast<double>(w[i]) * w[i];
    wd += (static_cast<double>(w[i]) - q.weight[i]) * (static_cast<double>(w[i]) - q.weight[i]);
  }
  nlohmann::json j;
  j["method"] = a.method;
  j["qtype"] = a.qtype;
  j["group_size"] = q.group_size == cols && grid.group_size == 0 ? 0 : q.group_size;
  j["weight_rel_err"] = wn > 0 ? wd / wn : 0.0;
  if (!x.empty()) j["output_rel_err"] = output_rel_err(x, xq, tokens, cols, w, q.weight, rows);
  else if (!h.empty() && a.hessian_delta.empty())
    j["output_rel_err"] = qa::hessian_rel_err(h.data(), w.data(), q.weight.data(), rows, cols);
  else j["output_rel_err"] = nullptr;  // H_δ without X: ‖XWᵀ − X̂Ŵᵀ‖² needs XᵀX, which is not given
  j["loss"] = q.loss;
  if (a.method != "rtn") j["damp"] = q.damp_used;
  if (accepted_lambda) j["accepted_lambda"] = *accepted_lambda;
  j["notes"] = q.notes;
  out.write(a.out);
  j["seconds"] = method_seconds;          // the algorithm alone
  j["total_seconds"] = total.seconds();  // reading, statistics, the algorithm, metrics, writing
  fmt::print("{}\n", j.dump());
}

void setup_layer(CLI::App& root) {
  auto* cmd = root.add_subcommand("layer", "Quantize one [out, in] matrix with RTN, GPTQ, QEP or JointQ");
  static LayerArgs a;
  cmd->add_option("--method", a.method, "rtn | gptq | qep | jointq")->required();
  cmd->add_option("--weight", a.weight, "W.safetensors[:NAME], float [out, in]")->required();
  cmd->add_option("--inputs", a.inputs, "X.safetensors[:NAME], float [tokens, in]");
  cmd->add_option("--hessian", a.hessian, "H.safetensors[:NAME], [in, in]");
  cmd->add_option("--inputs-quantized", a.inputs_q, "XQ.safetensors[:NAME]: inputs from the quantized prefix");
  cmd->add_option("--hessian-delta", a.hessian_delta, "HD.safetensors[:NAME]: (X - XQ)^T XQ");
  cmd->add_option("--qtype", a.qtype, "int1..int8 | nf4 | q4_0 | q4_1 | q8_0")->required();
  cmd->add_option("--group-size", a.group_size, "group size (0 = per-channel)");
  cmd->add_flag("--sym", a.sym, "symmetric integer grid");
  cmd->add_flag("--asym", a.asym, "asymmetric integer grid (default)");
  cmd->add_option("--damp", a.damp, "GPTQ relative damping (percdamp)");
  cmd->add_option("--block-size", a.block_size, "GPTQ lazy block size");
  cmd->add_flag("--act-order", a.act_order, "process columns by decreasing Hessian diagonal");
  cmd->add_flag("--static-groups", a.static_groups, "group params from the original weight");
  cmd->add_flag("--mse", a.mse, "MSE range search (quant.py grid)");
  cmd->add_flag("--fresh-group-params", a.fresh_group_params, "fix: dynamic group params see in-block updates");
  cmd->add_flag("--fix-sym", a.fix_sym, "fix: symmetric groups without negatives use [-max, max]");
  cmd->add_option("--alpha", a.alpha, "QEP correction_factor");
  cmd->add_option("--qep-damp", a.qep_damp, "QEP damping_factor");
  cmd->add_option("--regularization-lambda", a.regularization_lambda, "JointQ lambda");
  cmd->add_option("--regularization-mode", a.regularization_mode, "JointQ identity | diagonal");
  cmd->add_option("--regularization-gamma", a.regularization_gamma, "JointQ gamma (diagonal mode)");
  cmd->add_option("--lambda-mode", a.lambda_mode, "JointQ fixed_lambda | incremental_lambda");
  cmd->add_option("--tokens", a.tokens, "token count behind --hessian (JointQ's n lambda)");
  cmd->add_option("--threads", a.threads, "threads (JointQ rows)");
  cmd->add_option("-o,--output", a.out, "OUT.safetensors")->required();
  cmd->callback([] { run_layer(a); });
}
}  // namespace
QFORGE_CLI_COMMAND(setup_layer);
