// safetensors: a memory-mapped reader that checks every length and offset, and an atomic writer.
//
// Layout: u64 little-endian header length N, N bytes of JSON ({name: {dtype, shape,
// data_offsets: [begin, end)}, "__metadata__": {str: str}}), then the data buffer. The reader
// enforces what the reference implementation does: N <= 100 MB, tensors tile the buffer from 0
// with no gaps or overlaps, end - begin = numel * bits / 8, the buffer ends at the end of the
// file, no duplicate names. The writer pads the header with spaces to a multiple of 8 and
// orders tensors by dtype alignment, then name, as the reference writer does.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "qforge/core/half.hpp"
#include "qforge/core/numerics.hpp"
#include "qforge/core/tensor.hpp"
#include "qforge/formats/file_io.hpp"

namespace qforge::formats {

enum class Dtype { kBool, kU8, kI8, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64, kF8E4M3, kF8E5M2 };

struct DtypeInfo {
  Dtype dtype;
  std::string_view name;
  int bits;
};
inline constexpr DtypeInfo kDtypes[] = {
    {Dtype::kBool, "BOOL", 8}, {Dtype::kU8, "U8", 8},       {Dtype::kI8, "I8", 8},     {Dtype::kI16, "I16", 16},
    {Dtype::kU16, "U16", 16},  {Dtype::kF16, "F16", 16},    {Dtype::kBF16, "BF16", 16}, {Dtype::kI32, "I32", 32},
    {Dtype::kU32, "U32", 32},  {Dtype::kF32, "F32", 32},    {Dtype::kF64, "F64", 64},   {Dtype::kI64, "I64", 64},
    {Dtype::kU64, "U64", 64},  {Dtype::kF8E4M3, "F8_E4M3", 8}, {Dtype::kF8E5M2, "F8_E5M2", 8},
};
inline const DtypeInfo& dtype_info(Dtype d) {
  for (const auto& i : kDtypes)
    if (i.dtype == d) return i;
  throw_error(Status::kInternal, "dtype without a table entry");
}
inline std::optional<Dtype> parse_dtype(std::string_view s) {
  for (const auto& i : kDtypes)
    if (i.name == s) return i.dtype;
  return std::nullopt;
}
inline std::string_view to_string(Dtype d) { return dtype_info(d).name; }

struct SafetensorsEntry {
  std::string name;
  Dtype dtype = Dtype::kF32;
  Shape shape;
  std::uint64_t begin = 0, end = 0;  // relative to the data buffer
  std::int64_t numel() const { return qforge::numel(shape); }
  std::uint64_t nbytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  static constexpr std::uint64_t kMaxHeader = 100'000'000;

  explicit SafetensorsFile(const std::string& path) : file_(std::make_shared<MappedFile>(path)) { parse(); }

  const std::string& path() const { return file_->path(); }
  const std::vector<SafetensorsEntry>& tensors() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(std::string_view name) const {
    for (const auto& e : entries_)
      if (e.name == name) return &e;
    return nullptr;
  }
  const SafetensorsEntry& at(std::string_view name) const {
    if (const auto* e = find(name)) return *e;
    throw_error(Status::kNotFound, "{}: no tensor '{}'", path(), name);
  }
  std::span<const std::uint8_t> bytes(const SafetensorsEntry& e) const {
    return file_->bytes().subspan(data_start_ + e.begin, e.nbytes());
  }
  // Any numeric dtype converted to float32 (integers exactly where float32 can hold them).
  TensorF to_float(std::string_view name) const {
    const auto& e = at(name);
    TensorF out(e.shape);
    const auto src = bytes(e);
    const std::int64_t n = e.numel();
    auto read = [&](auto tag, auto convert) {
      using T = decltype(tag);
      for (std::int64_t i = 0; i < n; ++i) {
        T v;
        std::memcpy(&v, src.data() + static_cast<std::size_t>(i) * sizeof(T), sizeof(T));
        out[i] = convert(v);
      }
    };
    auto cast = [](auto v) { return static_cast<float>(v); };
    switch (e.dtype) {
      case Dtype::kF32: read(float{}, cast); break;
      case Dtype::kF64: read(double{}, cast); break;
      case Dtype::kF16: read(std::uint16_t{}, [](std::uint16_t h) { return fp16_to_fp32(h); }); break;
      case Dtype::kBF16: read(std::uint16_t{}, [](std::uint16_t h) { return bf16_to_fp32(h); }); break;
      case Dtype::kF8E4M3:
        read(std::uint8_t{}, [](std::uint8_t c) { return static_cast<float>(minifloat_decode(c, kE4M3)); });
        break;
      case Dtype::kF8E5M2:
        read(std::uint8_t{}, [](std::uint8_t c) { return static_cast<float>(minifloat_decode(c, kE5M2)); });
        break;
      case Dtype::kBool: case Dtype::kU8: read(std::uint8_t{}, cast); break;
      case Dtype::kI8: read(std::int8_t{}, cast); break;
      case Dtype::kI16: read(std::int16_t{}, cast); break;
      case Dtype::kU16: read(std::uint16_t{}, cast); break;
      case Dtype::kI32: read(std::int32_t{}, cast); break;
      case Dtype::kU32: read(std::uint32_t{}, cast); break;
      case Dtype::kI64: read(std::int64_t{}, cast); break;
      case Dtype::kU64: read(std::uint64_t{}, cast); break;
    }
    return out;
  }

 private:
  [[noreturn]] void fail(std::string_view what) const {
    throw_error(Status::kFormatError, "{}: not a valid safetensors file: {}", path(), what);
  }
  [[noreturn]] void fail_tensor(std::string_view name, std::string_view what) const {
    throw_error(Status::kFormatError, "{}: tensor '{}': {}", path(), name, what);
  }

  void parse() {
    const auto all = file_->bytes();
    if (all.size() < 8) fail(fmt::format("file is {} bytes, shorter than the 8-byte header length", all.size()));
    std::uint64_t n;
    std::memcpy(&n, all.data(), 8);
    if (n > kMaxHeader) fail(fmt::format("header length {} exceeds the 100 MB limit", n));
    if (n > all.size() - 8) fail(fmt::format("header length {} runs past the end of the {}-byte file", n, all.size()));
    data_start_ = 8 + n;
    const std::string_view text(reinterpret_cast<const char*>(all.data() + 8), n);
    if (text.empty() || text.front() != '{') fail("header does not start with '{'");
    nlohmann::json header = parse_json_without_duplicates(text);
    if (!header.is_object()) fail("header is not a JSON object");
    for (auto& [key, value] : header.items()) {
      if (key == "__metadata__") {
        parse_metadata(value);
        continue;
      }
      entries_.push_back(parse_entry(key, value));
    }
    check_tiling(all.size() - data_start_);
  }

  nlohmann::json parse_json_without_duplicates(std::string_view text) const {
    std::set<std::string> top_keys;
    std::string duplicate;
    auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
      if (event == nlohmann::json::parse_event_t::key && depth == 1 && !top_keys.insert(parsed.get<std::string>()).second)
        duplicate = parsed.get<std::string>();
      return true;
    };
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text.begin(), text.end(), callback);
    } catch (const nlohmann::json::exception& e) {
      fail(fmt::format("header is not valid JSON: {}", e.what()));
    }
    if (!duplicate.empty()) fail_tensor(duplicate, "name appears twice in the header");
    return j;
  }

  void parse_metadata(const nlohmann::json& value) {
    if (!value.is_object()) fail("__metadata__ is not an object");
    for (auto& [k, v] : value.items()) {
      if (!v.is_string()) fail(fmt::format("__metadata__ value of '{}' is not a string", k));
      metadata_[k] = v.get<std::string>();
    }
  }

  SafetensorsEntry parse_entry(const std::string& name, const nlohmann::json& v) const {
    if (!v.is_object()) fail_tensor(name, "entry is not an object");
    SafetensorsEntry e;
    e.name = name;
    if (!v.contains("dtype") || !v["dtype"].is_string()) fail_tensor(name, "missing dtype");
    const auto dtype = parse_dtype(v["dtype"].get<std::string>());
    if (!dtype) fail_tensor(name, fmt::format("unknown dtype '{}'", v["dtype"].get<std::string>()));
    e.dtype = *dtype;
    if (!v.contains("shape") || !v["shape"].is_array()) fail_tensor(name, "missing shape");
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) fail_tensor(name, fmt::format("shape entry {} is not a non-negative integer", d.dump()));
      e.shape.push_back(static_cast<std::int64_t>(d.get<std::uint64_t>()));
    }
    const auto& off = v.contains("data_offsets") ? v["data_offsets"] : nlohmann::json();
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail_tensor(name, "data_offsets must be two non-negative integers");
    e.begin = off[0].get<std::uint64_t>();
    e.end = off[1].get<std::uint64_t>();
    if (e.end < e.begin) fail_tensor(name, fmt::format("data_offsets [{}, {}] end before they begin", e.begin, e.end));
    // numel * bits with overflow checks: a hostile shape must not wrap around into a match.
    std::uint64_t bits = static_cast<std::uint64_t>(dtype_info(e.dtype).bits);
    for (auto d : e.shape)
      if (__builtin_mul_overflow(bits, static_cast<std::uint64_t>(d), &bits)) fail_tensor(name, "shape is impossibly large");
    if (bits % 8 != 0) fail_tensor(name, "numel * bits is not a whole number of bytes");
    if (e.end - e.begin != bits / 8)
      fail_tensor(name, fmt::format("data_offsets [{}, {}] hold {} bytes but {} {} needs {}", e.begin, e.end,
                                    e.end - e.begin, to_string(e.dtype), shape_str(e.shape), bits / 8));
    return e;
  }

  void check_tiling(std::uint64_t buffer_size) {
    std::vector<const SafetensorsEntry*> order;
    for (const auto& e : entries_) order.push_back(&e);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
    std::uint64_t pos = 0;
    for (const auto* e : order) {
      if (e->begin > pos) fail_tensor(e->name, fmt::format("gap of {} bytes before its data at offset {}", e->begin - pos, e->begin));
      if (e->begin < pos) fail_tensor(e->name, fmt::format("data at offset {} overlaps the previous tensor (which ends at {})", e->begin, pos));
      pos = e->end;
    }
    if (pos != buffer_size)
      fail(fmt::format("tensors end at buffer offset {} but the buffer holds {} bytes{}", pos, buffer_size,
                       pos > buffer_size ? " (file truncated?)" : " (trailing bytes)"));
  }

  std::shared_ptr<MappedFile> file_;
  std::uint64_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors and metadata; write() produces the file atomically.
class SafetensorsWriter {
 public:
  void add(std::string name, Dtype dtype, Shape shape, std::vector<std::uint8_t> bytes) {
    for (const auto& t : tensors_)
      if (t.name == name) throw_error(Status::kInvalidArgument, "safetensors writer: tensor '{}' added twice", name);
    const auto want = static_cast<std::size_t>(numel(shape) * dtype_info(dtype).bits / 8);
    if (bytes.size() != want)
      throw_error(Status::kShapeMismatch, "safetensors writer: tensor '{}' has {} bytes, {} {} needs {}", name,
                  bytes.size(), to_string(dtype), shape_str(shape), want);
    tensors_.push_back({std::move(name), dtype, std::move(shape), std::move(bytes)});
  }
  void add_f32(std::string name, const TensorF& t) {
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(t.size()) * 4);
    if (!bytes.empty()) std::memcpy(bytes.data(), t.data(), bytes.size());
    add(std::move(name), Dtype::kF32, t.shape(), std::move(bytes));
  }
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }
  bool contains(std::string_view name) const {
    return std::any_of(tensors_.begin(), tensors_.end(), [&](const auto& t) { return t.name == name; });
  }

  void write(const std::string& path) {
    std::vector<const Pending*> order;
    for (const auto& t : tensors_) order.push_back(&t);
    std::stable_sort(order.begin(), order.end(), [](auto* a, auto* b) {
      const int ba = dtype_info(a->dtype).bits, bb = dtype_info(b->dtype).bits;
      return ba != bb ? ba > bb : a->name < b->name;
    });
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (const auto* t : order) {
      header[t->name] = {{"dtype", std::string(to_string(t->dtype))}, {"shape", t->shape},
                         {"data_offsets", {offset, offset + t->bytes.size()}}};
      offset += t->bytes.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    const std::uint64_t n = text.size();
    AtomicFile out(path);
    out.write(&n, 8);
    out.write(text.data(), text.size());
    for (const auto* t : order) out.write(t->bytes);
    out.commit();
  }

 private:
  struct Pending {
    std::string name;
    Dtype dtype;
    Shape shape;
    std::vector<std::uint8_t> bytes;
  };
  std::vector<Pending> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace qforge::formats
