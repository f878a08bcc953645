// bitsandbytes' 4-bit blockwise formats (NF4, FP4) with optional double quantization of the block
// absmax values, and FP8 (E4M3 "fn" / E5M2) tensors with a per-tensor scale.
//
// 4-bit, as bitsandbytes' quantize_4bit does it:
//   * the tensor is flattened row-major and cut into blocks of `blocksize` (default 64; a tail
//     block gets its own absmax); absmax = max|x| per block, kept as fp32;
//   * xn = x * (1 / absmax); the code is the nearest codebook entry, an exact midpoint going to the
//     lower code (the CUDA kernels' strict '>' decision tree). FP4 sets the sign bit (0b1000)
//     only when x < 0. An all-zero block gives 0 * inf = NaN, which both decision trees send to
//     code 0, as bitsandbytes does; it decodes to 0 because absmax is 0;
//   * packing: element 2i in the HIGH nibble, 2i+1 in the low nibble (the opposite of ggml); an
//     odd count is padded with a zero code. The packed weight is U8 of shape [(n + 1) / 2, 1].
// Double quantization (bitsandbytes' compress_statistics): offset = mean(absmax); the values
// absmax - offset are quantized blockwise (nested blocks of 256) to uint8 codes of the signed
// 8-bit "dynamic" map (create_dynamic_map(signed=True)), nearest value, ties to the lower code,
// with an fp32 absmax per nested block. absmax_i = map[code_i] * nested_absmax[i / 256] + offset.
//
// Serialized form (Linear4bit._save_to_state_dict), for a weight named W:
//   W                                U8  [(n+1)/2, 1]  packed codes
//   W.absmax                         F32 [blocks], or U8 [blocks] codes when double-quantized
//   W.quant_map                      F32 [16]          the 4-bit codebook
//   W.nested_absmax                  F32 [nested blocks]        (double quantization only)
//   W.nested_quant_map               F32 [256]                  (double quantization only)
//   W.quant_state.bitsandbytes__nf4  U8  JSON bytes (or __fp4): quant_type, blocksize, dtype,
//                                    shape and, when nested, nested_blocksize, nested_dtype,
//                                    nested_offset.
// Decoding uses the stored quant_map / nested_quant_map, as bitsandbytes does.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <optional>

#include "qforge/core/error.hpp"
#include "qforge/core/numerics.hpp"
#include "qforge/core/tensor.hpp"
#include "qforge/formats/safetensors.hpp"

namespace qforge::formats {

enum class Bnb4Type { kNf4, kFp4 };
inline std::string_view to_string(Bnb4Type t) { return t == Bnb4Type::kNf4 ? "nf4" : "fp4"; }

// bitsandbytes' FP4 (E2M1 with its own exponent bias) codebook in code order: value / 12.
inline constexpr std::array<float, 16> kBnbFp4Codebook = {
    0.0f,  0.0625f / 12.0f,  8.0f / 12.0f,  12.0f / 12.0f,  4.0f / 12.0f,  6.0f / 12.0f,  2.0f / 12.0f,  3.0f / 12.0f,
    -0.0f, -0.0625f / 12.0f, -8.0f / 12.0f, -12.0f / 12.0f, -4.0f / 12.0f, -6.0f / 12.0f, -2.0f / 12.0f, -3.0f / 12.0f};

inline const std::array<float, 16>& bnb4_codebook(Bnb4Type t) {
  return t == Bnb4Type::kNf4 ? kNf4Codebook : kBnbFp4Codebook;
}

// FP4 code of a normalized value: magnitude by nearest entry (ties to the smaller magnitude),
// sign bit only for x < 0. NaN gives code 0, as the bitsandbytes decision tree does.
inline std::uint8_t bnb_fp4_encode(float x) {
  // Positive codes sorted by value, and the midpoints between neighbours.
  static constexpr std::array<std::uint8_t, 8> kByValue = {0, 1, 6, 7, 4, 5, 2, 3};
  const std::uint8_t sign = x < 0.0f ? 0b1000 : 0;
  const float a = std::fabs(x);
  std::uint8_t code = 0;
  for (int i = 0; i < 7; ++i) {
    const float mid = (kBnbFp4Codebook[kByValue[i]] + kBnbFp4Codebook[kByValue[i + 1]]) * 0.5f;
    if (a > mid) code = kByValue[i + 1];
  }
  return static_cast<std::uint8_t>(code | sign);
}

inline std::uint8_t bnb4_encode(Bnb4Type t, float xn) { return t == Bnb4Type::kNf4 ? nf4_encode(xn) : bnb_fp4_encode(xn); }

// torch.linspace(start, end, steps) in float32: the first half counts up from start, the second
// half down from end, so both ends are exact.
inline std::vector<float> torch_linspace_f32(float start, float end, int steps) {
  std::vector<float> v(static_cast<std::size_t>(steps));
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int half = steps / 2;
  for (int i = 0; i < steps; ++i)
    v[static_cast<std::size_t>(i)] = i < half ? start + step * static_cast<float>(i)
                                              : end - step * static_cast<float>(steps - i - 1);
  return v;
}

// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for each
// decade 10^-6 .. 10^0, 2^i midpoints of linspace(0.1, 1) (and their negatives), plus 0 and 1,
// sorted: 256 values in [-1, 1].
inline const std::array<float, 256>& bnb_dynamic_map() {
  static const std::array<float, 256> map = [] {
    std::vector<float> data;
    for (int i = 0; i < 7; ++i) {
      const auto bounds = torch_linspace_f32(0.1f, 1.0f, (1 << i) + 1);
      const auto decade = static_cast<float>(std::pow(10.0, -6 + i));
      for (std::size_t k = 0; k + 1 < bounds.size(); ++k) {
        const float mean = (bounds[k] + bounds[k + 1]) / 2.0f;
        data.push_back(decade * mean);
        data.push_back(-decade * mean);
      }
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    std::sort(data.begin(), data.end());
    std::array<float, 256> out{};
    std::copy(data.begin(), data.end(), out.begin());
    return out;
  }();
  return map;
}

// Index of the nearest entry of a sorted map; ties go to the lower index (argmin).
inline std::uint8_t nearest_code(const std::array<float, 256>& map, float x) {
  const auto it = std::lower_bound(map.begin(), map.end(), x);
  if (it == map.begin()) return 0;
  if (it == map.end()) return 255;
  const auto hi = static_cast<std::size_t>(it - map.begin());
  return static_cast<std::uint8_t>(x - map[hi - 1] <= map[hi] - x ? hi - 1 : hi);
}

struct Bnb4Options {
  Bnb4Type type = Bnb4Type::kNf4;
  std::int64_t blocksize = 64;        // 32, 64, ..., 4096 (powers of two), as bitsandbytes allows
  bool double_quant = false;          // quantize the absmax values too (compress_statistics)
  std::int64_t nested_blocksize = 256;
  std::string dtype = "float32";      // the original dtype recorded in quant_state ("float16", ...)
};

// A tensor in bitsandbytes' 4-bit layout. When `nested`, `absmax_codes` + `nested_absmax` +
// `nested_offset` replace `absmax`.
struct Bnb4Tensor {
  Bnb4Type type = Bnb4Type::kNf4;
  std::int64_t blocksize = 64;
  std::string dtype = "float32";
  Shape shape;
  std::vector<std::uint8_t> packed;  // (numel + 1) / 2 bytes
  std::array<float, 16> quant_map{};
  std::vector<float> absmax;         // one per block (not nested)
  bool nested = false;
  std::vector<std::uint8_t> absmax_codes;  // one per block (nested)
  std::vector<float> nested_absmax;        // one per nested block
  std::array<float, 256> nested_quant_map{};
  std::int64_t nested_blocksize = 256;
  float nested_offset = 0.0f;

  std::int64_t numel() const { return qforge::numel(shape); }
  std::int64_t blocks() const { return (numel() + blocksize - 1) / blocksize; }
  // The per-block absmax the codes are scaled by (decoded when nested).
  std::vector<float> block_absmax() const {
    if (!nested) return absmax;
    std::vector<float> out(absmax_codes.size());
    for (std::size_t i = 0; i < out.size(); ++i)
      out[i] = nested_quant_map[absmax_codes[i]] * nested_absmax[i / static_cast<std::size_t>(nested_blocksize)] +
               nested_offset;
    return out;
  }
  std::uint8_t code(std::int64_t i) const {
    const std::uint8_t b = packed[static_cast<std::size_t>(i / 2)];
    return i % 2 == 0 ? static_cast<std::uint8_t>(b >> 4) : static_cast<std::uint8_t>(b & 0xF);
  }
};

namespace detail {
inline void check_blocksize(std::int64_t b, std::string_view what) {
  if (b < 32 || b > 4096 || (b & (b - 1)) != 0)
    throw_error(Status::kInvalidArgument, "{}: blocksize {} is not a power of two in [32, 4096]", what, b);
}
}  // namespace detail

// Quantizes n = numel(shape) floats (row-major) into bitsandbytes' 4-bit layout.
inline Bnb4Tensor bnb4_quantize(const float* x, const Shape& shape, const Bnb4Options& opt = {}) {
  detail::check_blocksize(opt.blocksize, "bnb4 quantize");
  Bnb4Tensor t;
  t.type = opt.type;
  t.blocksize = opt.blocksize;
  t.dtype = opt.dtype;
  t.shape = shape;
  t.quant_map = bnb4_codebook(opt.type);
  const std::int64_t n = t.numel();
  t.packed.assign(static_cast<std::size_t>((n + 1) / 2), 0);
  t.absmax.resize(static_cast<std::size_t>(t.blocks()));
  for (std::int64_t b = 0; b < t.blocks(); ++b) {
    const std::int64_t lo = b * opt.blocksize, hi = std::min(n, lo + opt.blocksize);
    float amax = 0.0f;
    for (std::int64_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(x[i]));
    t.absmax[static_cast<std::size_t>(b)] = amax;
    const float inv = 1.0f / amax;  // inf for an all-zero block: see the header comment
    for (std::int64_t i = lo; i < hi; ++i) {
      const std::uint8_t q = bnb4_encode(opt.type, x[i] * inv);
      auto& byte = t.packed[static_cast<std::size_t>(i / 2)];
      byte = static_cast<std::uint8_t>(byte | (i % 2 == 0 ? q << 4 : q));
    }
  }
  if (opt.double_quant) {
    if (opt.nested_blocksize <= 0)
      throw_error(Status::kInvalidArgument, "bnb4 quantize: nested blocksize {} must be positive", opt.nested_blocksize);
    t.nested = true;
    t.nested_blocksize = opt.nested_blocksize;
    t.nested_quant_map = bnb_dynamic_map();
    double sum = 0.0;
    for (float a : t.absmax) sum += a;
    t.nested_offset = t.absmax.empty() ? 0.0f : static_cast<float>(sum / static_cast<double>(t.absmax.size()));
    const auto count = static_cast<std::int64_t>(t.absmax.size());
    t.absmax_codes.resize(t.absmax.size());
    for (std::int64_t b = 0; b * opt.nested_blocksize < count; ++b) {
      const std::int64_t lo = b * opt.nested_blocksize, hi = std::min(count, lo + opt.nested_blocksize);
      float amax = 0.0f;
      for (std::int64_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(t.absmax[static_cast<std::size_t>(i)] - t.nested_offset));
      t.nested_absmax.push_back(amax);
      const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
      for (std::int64_t i = lo; i < hi; ++i)
        t.absmax_codes[static_cast<std::size_t>(i)] =
            nearest_code(t.nested_quant_map, (t.absmax[static_cast<std::size_t>(i)] - t.nested_offset) * inv);
    }
    t.absmax.clear();
  }
  return t;
}
inline Bnb4Tensor bnb4_quantize(const TensorF& x, const Bnb4Options& opt = {}) { return bnb4_quantize(x.data(), x.shape(), opt); }

// y = quant_map[code] * absmax[block], in the tensor's shape.
inline TensorF bnb4_dequantize(const Bnb4Tensor& t) {
  TensorF y(t.shape);
  const auto absmax = t.block_absmax();
  for (std::int64_t i = 0; i < t.numel(); ++i)
    y[i] = t.quant_map[t.code(i)] * absmax[static_cast<std::size_t>(i / t.blocksize)];
  return y;
}

// ---- serialization ----------------------------------------------------------------------------
namespace detail {
template <class T>
std::vector<std::uint8_t> raw_bytes(const T* p, std::size_t n) {
  std::vector<std::uint8_t> out(n * sizeof(T));
  if (n) std::memcpy(out.data(), p, out.size());
  return out;
}
inline std::string bnb_state_key(const std::string& name, Bnb4Type t) {
  return name + ".quant_state.bitsandbytes__" + std::string(to_string(t));
}
}  // namespace detail

// The quant_state JSON exactly as bitsandbytes' pack_dict_to_tensor writes it (json.dumps with
// its default ", " and ": " separators, keys in QuantState.as_dict order).
inline std::string bnb4_state_json(const Bnb4Tensor& t) {
  std::string shape;
  for (std::size_t i = 0; i < t.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(t.shape[i]);
  std::string s = fmt::format(R"({{"quant_type": "{}", "blocksize": {}, "dtype": "{}", "shape": [{}])", to_string(t.type),
                              t.blocksize, t.dtype, shape);
  if (t.nested)
    s += fmt::format(R"(, "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {})", t.nested_blocksize,
                     static_cast<double>(t.nested_offset));
  return s + "}";
}

// Adds the tensors of a 4-bit weight named `name` (e.g. "layers.0.mlp.down_proj.weight").
inline void add_bnb4(SafetensorsWriter& w, const std::string& name, const Bnb4Tensor& t) {
  w.add(name, Dtype::kU8, {static_cast<std::int64_t>(t.packed.size()), 1}, t.packed);
  if (t.nested) {
    w.add(name + ".absmax", Dtype::kU8, {static_cast<std::int64_t>(t.absmax_codes.size())}, t.absmax_codes);
    w.add(name + ".nested_absmax", Dtype::kF32, {static_cast<std::int64_t>(t.nested_absmax.size())},
          detail::raw_bytes(t.nested_absmax.data(), t.nested_absmax.size()));
    w.add(name + ".nested_quant_map", Dtype::kF32, {256}, detail::raw_bytes(t.nested_quant_map.data(), 256));
  } else {
    w.add(name + ".absmax", Dtype::kF32, {static_cast<std::int64_t>(t.absmax.size())},
          detail::raw_bytes(t.absmax.data(), t.absmax.size()));
  }
  w.add(name + ".quant_map", Dtype::kF32, {16}, detail::raw_bytes(t.quant_map.data(), 16));
  const std::string json = bnb4_state_json(t);
  w.add(detail::bnb_state_key(name, t.type), Dtype::kU8, {static_cast<std::int64_t>(json.size())},
        std::vector<std::uint8_t>(json.begin(), json.end()));
}

// True when `name` has a bitsandbytes quant_state next to it (nf4 or fp4).
inline bool has_bnb4(const SafetensorsFile& f, const std::string& name) {
  return f.find(detail::bnb_state_key(name, Bnb4Type::kNf4)) || f.find(detail::bnb_state_key(name, Bnb4Type::kFp4));
}

// Reads a 4-bit weight back; every size is checked against the quant_state, and a mismatch names
// the file, the tensor and the rule.
inline Bnb4Tensor load_bnb4(const SafetensorsFile& f, const std::string& name) {
  auto fail = [&](std::string_view what) -> void {
    throw_error(Status::kFormatError, "{}: bitsandbytes tensor '{}': {}", f.path(), name, what);
  };
  Bnb4Tensor t;
  const SafetensorsEntry* state = f.find(detail::bnb_state_key(name, Bnb4Type::kNf4));
  t.type = Bnb4Type::kNf4;
  if (!state) {
    state = f.find(detail::bnb_state_key(name, Bnb4Type::kFp4));
    t.type = Bnb4Type::kFp4;
  }
  if (!state) fail("no quant_state.bitsandbytes__nf4 or __fp4 entry");
  if (state->dtype != Dtype::kU8) fail("quant_state is not U8");
  const auto sb = f.bytes(*state);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(sb.begin(), sb.end());
    if (j.at("quant_type").get<std::string>() != to_string(t.type)) fail("quant_type disagrees with the quant_state key");
    t.blocksize = j.at("blocksize").get<std::int64_t>();
    t.dtype = j.at("dtype").get<std::string>();
    t.shape = j.at("shape").get<Shape>();
    t.nested = j.contains("nested_blocksize");
    if (t.nested) {
      t.nested_blocksize = j.at("nested_blocksize").get<std::int64_t>();
      t.nested_offset = j.at("nested_offset").get<float>();
    }
  } catch (const nlohmann::json::exception& e) {
    fail(fmt::format("quant_state JSON is invalid: {}", e.what()));
  }
  if (t.blocksize <= 0) fail(fmt::format("blocksize {} is not positive", t.blocksize));
  if (t.nested && t.nested_blocksize <= 0) fail(fmt::format("nested_blocksize {} is not positive", t.nested_blocksize));
  std::int64_t elements = 1;  // numel with overflow checks: the shape comes from the file
  for (auto d : t.shape)
    if (d < 0 || __builtin_mul_overflow(elements, d, &elements) || elements > (std::int64_t{1} << 48))
      fail(fmt::format("shape {} is negative or impossibly large", shape_str(t.shape)));
  auto expect = [&](const std::string& key, Dtype dtype, std::int64_t count) -> std::span<const std::uint8_t> {
    const auto* e = f.find(key);
    if (!e) fail(fmt::format("missing '{}'", key));
    if (e->dtype != dtype || e->numel() != count)
      fail(fmt::format("'{}' is {} {} but {} values of {} were expected", key, to_string(e->dtype), shape_str(e->shape),
                       count, to_string(dtype)));
    return f.bytes(*e);
  };
  const std::int64_t n = t.numel();
  const auto packed = expect(name, Dtype::kU8, (n + 1) / 2);
  t.packed.assign(packed.begin(), packed.end());
  const auto qmap = expect(name + ".quant_map", Dtype::kF32, 16);
  std::memcpy(t.quant_map.data(), qmap.data(), 64);
  if (t.nested) {
    const auto codes = expect(name + ".absmax", Dtype::kU8, t.blocks());
    t.absmax_codes.assign(codes.begin(), codes.end());
    const std::int64_t nested_blocks = (t.blocks() + t.nested_blocksize - 1) / t.nested_blocksize;
    const auto nab = expect(name + ".nested_absmax", Dtype::kF32, nested_blocks);
    t.nested_absmax.resize(static_cast<std::size_t>(nested_blocks));
    if (nested_blocks) std::memcpy(t.nested_absmax.data(), nab.data(), nab.size());
    const auto nmap = expect(name + ".nested_quant_map", Dtype::kF32, 256);
    std::memcpy(t.nested_quant_map.data(), nmap.data(), 1024);
  } else {
    const auto ab = expect(name + ".absmax", Dtype::kF32, t.blocks());
    t.absmax.resize(static_cast<std::size_t>(t.blocks()));
    if (!t.absmax.empty()) std::memcpy(t.absmax.data(), ab.data(), ab.size());
  }
  return t;
}

// ---- FP8 tensors --------------------------------------------------------------------------------
// An FP8 tensor with one fp32 scale: x ~= decode(code) * scale. Quantizing clamps x / scale to
// +/-max_finite and rounds to nearest even (the OCP "SAT" conversion; PyTorch's plain cast would
// give NaN/inf past the range instead), with scale = amax / max_finite unless one is given.
// Stored as NAME (F8_E4M3 / F8_E5M2, the tensor's shape) and NAME_scale (F32 scalar), the
// layout of compressed-tensors' per-tensor FP8 checkpoints.
enum class Fp8Format { kE4M3, kE5M2 };
inline const MiniFloatSpec& fp8_spec(Fp8Format f) { return f == Fp8Format::kE4M3 ? kE4M3 : kE5M2; }

struct Fp8Tensor {
  Fp8Format format = Fp8Format::kE4M3;
  Shape shape;
  std::vector<std::uint8_t> codes;
  float scale = 1.0f;
};

inline Fp8Tensor fp8_quantize(const TensorF& x, Fp8Format format, std::optional<float> scale = std::nullopt) {
  Fp8Tensor t;
  t.format = format;
  t.shape = x.shape();
  const auto& spec = fp8_spec(format);
  if (scale) {
    if (!(*scale > 0.0f) || !std::isfinite(*scale))
      throw_error(Status::kInvalidArgument, "fp8 quantize: scale {} must be positive and finite", *scale);
    t.scale = *scale;
  } else {
    float amax = 0.0f;
    for (std::int64_t i = 0; i < x.size(); ++i) {
      if (std::isnan(x[i])) throw_error(Status::kInvalidArgument, "fp8 quantize: NaN at flat index {}", i);
      amax = std::max(amax, std::fabs(x[i]));
    }
    t.scale = amax > 0.0f && std::isfinite(amax) ? static_cast<float>(amax / spec.max_finite) : 1.0f;
  }
  t.codes.resize(static_cast<std::size_t>(x.size()));
  for (std::int64_t i = 0; i < x.size(); ++i)
    t.codes[static_cast<std::size_t>(i)] = minifloat_encode(static_cast<double>(x[i]) / t.scale, spec);
  return t;
}

inline TensorF fp8_dequantize(const Fp8Tensor& t) {
  TensorF y(t.shape);
  const auto& spec = fp8_spec(t.format);
  for (std::int64_t i = 0; i < y.size(); ++i)
    y[i] = static_cast<float>(minifloat_decode(t.codes[static_cast<std::size_t>(i)], spec) * t.scale);
  return y;
}

inline void add_fp8(SafetensorsWriter& w, const std::string& name, const Fp8Tensor& t) {
  w.add(name, t.format == Fp8Format::kE4M3 ? Dtype::kF8E4M3 : Dtype::kF8E5M2, t.shape, t.codes);
  w.add(name + "_scale", Dtype::kF32, {}, detail::raw_bytes(&t.scale, 1));
}

inline Fp8Tensor load_fp8(const SafetensorsFile& f, const std::string& name) {
  const auto& e = f.at(name);
  if (e.dtype != Dtype::kF8E4M3 && e.dtype != Dtype::kF8E5M2)
    throw_error(Status::kFormatError, "{}: tensor '{}' is {}, not an FP8 dtype", f.path(), name, to_string(e.dtype));
  Fp8Tensor t;
  t.format = e.dtype == Dtype::kF8E4M3 ? Fp8Format::kE4M3 : Fp8Format::kE5M2;
  t.shape = e.shape;
  const auto b = f.bytes(e);
  t.codes.assign(b.begin(), b.end());
  if (const auto* s = f.find(name + "_scale")) {
    if (s->dtype != Dtype::kF32 || s->numel() != 1)
      throw_error(Status::kFormatError, "{}: tensor '{}_scale' must be one F32 value, is {} {}", f.path(), name,
                  to_string(s->dtype), shape_str(s->shape));
    std::memcpy(&t.scale, f.bytes(*s).data(), 4);
  }
  return t;
}

}  // namespace qforge::formats
