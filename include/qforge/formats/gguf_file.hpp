// GGUF v3 files: a validating memory-mapped reader and an atomic writer.
//
// Layout (formats.md §1.8): "GGUF", u32 version, u64 n_tensors, u64 n_kv; the key/values; the
// tensor infos (name, n_dims, ne[] innermost first, type, offset); zero padding to the
// alignment; then the tensors, each padded to the alignment, the last one included. Shapes in
// this API are row-major (PyTorch order, [out, in]); GGUF's ne[] is their reverse.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "qforge/core/tensor.hpp"
#include "qforge/formats/file_io.hpp"
#include "qforge/formats/gguf_blocks.hpp"

namespace qforge::formats {

enum class GgufType : std::uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

struct GgufValue {
  GgufType type = GgufType::kU32;
  std::variant<std::uint64_t, std::int64_t, double, bool, std::string> scalar;  // unused for arrays
  GgufType elem_type = GgufType::kU32;                                         // arrays only
  std::vector<GgufValue> array;

  static GgufValue u32(std::uint32_t v) { return {GgufType::kU32, std::uint64_t{v}, {}, {}}; }
  static GgufValue u64(std::uint64_t v) { return {GgufType::kU64, v, {}, {}}; }
  static GgufValue i32(std::int32_t v) { return {GgufType::kI32, std::int64_t{v}, {}, {}}; }
  static GgufValue f32(float v) { return {GgufType::kF32, double{v}, {}, {}}; }
  static GgufValue boolean(bool v) { return {GgufType::kBool, v, {}, {}}; }
  static GgufValue string(std::string v) { return {GgufType::kString, std::move(v), {}, {}}; }
  static GgufValue strings(const std::vector<std::string>& v) {
    GgufValue a{GgufType::kArray, std::uint64_t{0}, GgufType::kString, {}};
    for (const auto& s : v) a.array.push_back(string(s));
    return a;
  }

  std::string to_display() const {
    switch (type) {
      case GgufType::kString: return std::get<std::string>(scalar);
      case GgufType::kBool: return std::get<bool>(scalar) ? "true" : "false";
      case GgufType::kF32: case GgufType::kF64: return fmt::format("{}", std::get<double>(scalar));
      case GgufType::kI8: case GgufType::kI16: case GgufType::kI32: case GgufType::kI64:
        return fmt::format("{}", std::get<std::int64_t>(scalar));
      case GgufType::kArray: return fmt::format("[{} values]", array.size());
      default: return fmt::format("{}", std::get<std::uint64_t>(scalar));
    }
  }
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  Shape shape;               // row-major, outermost first
  std::uint64_t offset = 0;  // relative to the data section
  std::uint64_t nbytes = 0;
  std::int64_t numel() const { return qforge::numel(shape); }
};

namespace detail {
inline std::uint64_t pad_to(std::uint64_t n, std::uint64_t align) { return (n + align - 1) / align * align; }
inline std::size_t gguf_scalar_size(GgufType t) {
  switch (t) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kBool: return 1;
    case GgufType::kU16: case GgufType::kI16: return 2;
    case GgufType::kU32: case GgufType::kI32: case GgufType::kF32: return 4;
    case GgufType::kU64: case GgufType::kI64: case GgufType::kF64: return 8;
    default: return 0;
  }
}
}  // namespace detail

class GgufFile {
 public:
  static constexpr std::size_t kMaxNameBytes = 63;  // ggml's GGML_MAX_NAME is 64 including the NUL

  explicit GgufFile(const std::string& path) : file_(std::make_shared<MappedFile>(path)) { parse(); }

  const std::string& path() const { return file_->path(); }
  std::uint32_t version() const { return version_; }
  std::uint32_t alignment() const { return alignment_; }
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const GgufValue* find_kv(const std::string& key) const {
    const auto it = kv_.find(key);
    return it == kv_.end() ? nullptr : &it->second;
  }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find(std::string_view name) const {
    for (const auto& t : tensors_)
      if (t.name == name) return &t;
    return nullptr;
  }
  const GgufTensorInfo& at(std::string_view name) const {
    if (const auto* t = find(name)) return *t;
    throw_error(Status::kNotFound, "{}: no tensor '{}'", path(), name);
  }
  std::span<const std::uint8_t> bytes(const GgufTensorInfo& t) const {
    return file_->bytes().subspan(data_start_ + t.offset, t.nbytes);
  }
  TensorF to_float(std::string_view name) const {
    const auto& t = at(name);
    TensorF out(t.shape);
    const std::int64_t row = t.shape.empty() ? 1 : t.shape.back();
    const std::int64_t rows = row == 0 ? 0 : t.numel() / row;
    const std::int64_t row_bytes = ggml_row_bytes(t.type, row, t.name);
    const auto src = bytes(t);
    try {
      for (std::int64_t r = 0; r < rows; ++r) decode_row(t.type, src.data() + r * row_bytes, out.data() + r * row, row);
    } catch (const Error& e) {
      throw_error(e.status(), "{}: tensor '{}': {}", path(), t.name, e.what());
    }
    return out;
  }

 private:
  class Cursor {
   public:
    Cursor(const GgufFile& f, std::span<const std::uint8_t> b) : f_(f), b_(b) {}
    template <class T>
    T read(std::string_view what) {
      need(sizeof(T), what);
      T v;
      std::memcpy(&v, b_.data() + pos_, sizeof(T));
      pos_ += sizeof(T);
      return v;
    }
    std::string read_string(std::string_view what) {
      const auto n = read<std::uint64_t>(what);
      need(n, what);
      std::string s(reinterpret_cast<const char*>(b_.data() + pos_), n);
      pos_ += n;
      return s;
    }
    void need(std::uint64_t n, std::string_view what) const {
      if (n > b_.size() - pos_) f_.fail(fmt::format("{} runs past the end of the file at byte {} (file truncated?)", what, pos_));
    }
    std::uint64_t pos() const { return pos_; }

   private:
    const GgufFile& f_;
    std::span<const std::uint8_t> b_;
    std::uint64_t pos_ = 0;
  };

  [[noreturn]] void fail(std::string_view what) const {
    throw_error(Status::kFormatError, "{}: not a valid GGUF file: {}", path(), what);
  }
  [[noreturn]] void fail_tensor(std::string_view name, std::string_view what) const {
    throw_error(Status::kFormatError, "{}: tensor '{}': {}", path(), name, what);
  }

  GgufValue read_value(Cursor& c, GgufType type, const std::string& key, bool in_array) const {
    GgufValue v;
    v.type = type;
    switch (type) {
      case GgufType::kU8: v.scalar = std::uint64_t{c.read<std::uint8_t>(key)}; break;
      case GgufType::kI8: v.scalar = std::int64_t{c.read<std::int8_t>(key)}; break;
      case GgufType::kU16: v.scalar = std::uint64_t{c.read<std::uint16_t>(key)}; break;
      case GgufType::kI16: v.scalar = std::int64_t{c.read<std::int16_t>(key)}; break;
      case GgufType::kU32: v.scalar = std::uint64_t{c.read<std::uint32_t>(key)}; break;
      case GgufType::kI32: v.scalar = std::int64_t{c.read<std::int32_t>(key)}; break;
      case GgufType::kF32: v.scalar = double{c.read<float>(key)}; break;
      case GgufType::kBool: {
        const auto b = c.read<std::uint8_t>(key);
        if (b > 1) fail(fmt::format("key '{}': bool value {} is not 0 or 1", key, b));
        v.scalar = b == 1;
        break;
      }
      case GgufType::kString: v.scalar = c.read_string(key); break;
      case GgufType::kU64: v.scalar = c.read<std::uint64_t>(key); break;
      case GgufType::kI64: v.scalar = c.read<std::int64_t>(key); break;
      case GgufType::kF64: v.scalar = c.read<double>(key); break;
      case GgufType::kArray: {
        if (in_array) fail(fmt::format("key '{}': nested arrays are not allowed", key));
        const auto et = c.read<std::uint32_t>(key);
        if (et > 12) fail(fmt::format("key '{}': unknown array element type {}", key, et));
        v.elem_type = static_cast<GgufType>(et);
        const auto n = c.read<std::uint64_t>(key);
        // Every element takes at least one byte: a count beyond the file is a lie, not a loop.
        c.need(n * std::max<std::size_t>(1, detail::gguf_scalar_size(v.elem_type)), key);
        v.array.reserve(n);
        for (std::uint64_t i = 0; i < n; ++i) v.array.push_back(read_value(c, v.elem_type, key, true));
        break;
      }
      default: fail(fmt::format("key '{}': unknown value type {}", key, static_cast<std::uint32_t>(type)));
    }
    return v;
  }

  void parse() {
    const auto all = file_->bytes();
    Cursor c(*this, all);
    const auto magic = c.read<std::uint32_t>("magic");
    if (std::memcmp(&magic, "GGUF", 4) != 0) fail("missing the GGUF magic");
    version_ = c.read<std::uint32_t>("version");
    if (version_ < 2 || version_ > 3) fail(fmt::format("version {} is not supported (2 or 3)", version_));
    const auto n_tensors = c.read<std::uint64_t>("tensor count");
    const auto n_kv = c.read<std::uint64_t>("key/value count");
    if (n_tensors > all.size() || n_kv > all.size()) fail("tensor or key/value count exceeds the file size");
    for (std::uint64_t i = 0; i < n_kv; ++i) {
      std::string key = c.read_string("key");
      if (key.empty()) fail(fmt::format("key/value {} has an empty key", i));
      const auto type = c.read<std::uint32_t>(key);
      if (type > 12) fail(fmt::format("key '{}': unknown value type {}", key, type));
      GgufValue v = read_value(c, static_cast<GgufType>(type), key, false);
      if (!kv_.emplace(key, std::move(v)).second) fail(fmt::format("key '{}' appears twice", key));
    }
    if (const auto* a = find_kv("general.alignment")) {
      if (a->type != GgufType::kU32) fail("general.alignment is not a UINT32");
      const auto v = std::get<std::uint64_t>(a->scalar);
      if (v == 0 || (v & (v - 1)) != 0) fail(fmt::format("general.alignment {} is not a power of two", v));
      alignment_ = static_cast<std::uint32_t>(v);
    }
    std::set<std::string> names;
    std::uint64_t expected_offset = 0;
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
      GgufTensorInfo t;
      t.name = c.read_string("tensor name");
      if (t.name.size() > kMaxNameBytes) fail_tensor(t.name, fmt::format("name is {} bytes, over ggml's limit of 63", t.name.size()));
      if (!names.insert(t.name).second) fail_tensor(t.name, "name appears twice");
      const auto n_dims = c.read<std::uint32_t>(t.name);
      if (n_dims > 4) fail_tensor(t.name, fmt::format("{} dimensions (at most 4)", n_dims));
      Shape ne(n_dims);
      for (auto& d : ne) {
        d = c.read<std::int64_t>(t.name);
        if (d < 0) fail_tensor(t.name, fmt::format("negative dimension {}", d));
      }
      t.shape.assign(ne.rbegin(), ne.rend());
      const auto type_id = c.read<std::uint32_t>(t.name);
      const auto traits = find_ggml_type(type_id);
      if (!traits) fail_tensor(t.name, fmt::format("type id {} is unknown or was removed from ggml", type_id));
      t.type = traits->type;
      const std::int64_t row = ne.empty() ? 1 : ne[0];
      if (row % traits->block_elems != 0)
        fail_tensor(t.name, fmt::format("row length {} is not a multiple of the {} block size {}", row, traits->name, traits->block_elems));
      // The product of the non-zero dimensions must fit int64, so that an element count taken in
      // any order (a zero dimension may come last) cannot overflow.
      std::uint64_t nonzero = 1;
      for (auto d : ne)
        if (d != 0 && (__builtin_mul_overflow(nonzero, static_cast<std::uint64_t>(d), &nonzero) ||
                       nonzero > static_cast<std::uint64_t>(INT64_MAX)))
          fail_tensor(t.name, "shape is impossibly large");
      std::uint64_t blocks = 1;
      for (auto d : ne)
        if (__builtin_mul_overflow(blocks, static_cast<std::uint64_t>(d), &blocks)) fail_tensor(t.name, "shape is impossibly large");
      blocks /= static_cast<std::uint64_t>(traits->block_elems);
      if (__builtin_mul_overflow(blocks, static_cast<std::uint64_t>(traits->block_bytes), &t.nbytes))
        fail_tensor(t.name, "shape is impossibly large");
      t.offset = c.read<std::uint64_t>(t.name);
      if (t.offset != expected_offset)
        fail_tensor(t.name, fmt::format("data offset {} should be {} (tensors are stored in order, each padded to {})",
                                        t.offset, expected_offset, alignment_));
      expected_offset = detail::pad_to(t.offset + t.nbytes, alignment_);
      tensors_.push_back(std::move(t));
    }
    data_start_ = detail::pad_to(c.pos(), alignment_);
    if (data_start_ > all.size() || expected_offset > all.size() - data_start_)
      fail(fmt::format("the tensor data needs {} bytes from offset {} but the file has {} bytes (file truncated?)",
                       expected_offset, data_start_, all.size()));
  }

  std::shared_ptr<MappedFile> file_;
  std::uint32_t version_ = 3;
  std::uint32_t alignment_ = 32;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::uint64_t data_start_ = 0;
};

class GgufWriter {
 public:
  GgufWriter() {
    set("general.architecture", GgufValue::string("qforge"));
  }
  void set(const std::string& key, GgufValue v) {
    for (auto& [k, old] : kv_)
      if (k == key) {
        old = std::move(v);
        return;
      }
    kv_.emplace_back(key, std::move(v));
  }
  // Adds a tensor of row-major `shape` whose bytes are already encoded as `type`.
  void add(std::string name, GgmlType type, Shape shape, std::vector<std::uint8_t> bytes) {
    if (name.size() > GgufFile::kMaxNameBytes)
      throw_error(Status::kInvalidArgument, "GGUF writer: tensor name '{}' is over 63 bytes", name);
    for (const auto& t : tensors_)
      if (t.name == name) throw_error(Status::kInvalidArgument, "GGUF writer: tensor '{}' added twice", name);
    if (shape.size() > 4) throw_error(Status::kInvalidArgument, "GGUF writer: tensor '{}' has more than 4 dimensions", name);
    const std::int64_t row = shape.empty() ? 1 : shape.back();
    const std::int64_t rows = row == 0 ? 0 : numel(shape) / row;
    const auto want = static_cast<std::size_t>(rows * ggml_row_bytes(type, row, name));
    if (bytes.size() != want)
      throw_error(Status::kShapeMismatch, "GGUF writer: tensor '{}' has {} bytes, {} {} needs {}", name, bytes.size(),
                  ggml_traits(type).name, shape_str(shape), want);
    tensors_.push_back({std::move(name), type, std::move(shape), std::move(bytes)});
  }
  // Encodes float rows as `type` (every row separately, as ggml does).
  void add_float(std::string name, GgmlType type, const TensorF& t) {
    const std::int64_t row = t.shape().empty() ? 1 : t.shape().back();
    const std::int64_t rows = row == 0 ? 0 : t.size() / row;
    const std::int64_t row_bytes = ggml_row_bytes(type, row, name);
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(rows * row_bytes));
    for (std::int64_t r = 0; r < rows; ++r) encode_row(type, t.data() + r * row, bytes.data() + r * row_bytes, row);
    add(std::move(name), type, t.shape(), std::move(bytes));
  }

  void write(const std::string& path) {
    bool quantized = false;
    for (const auto& t : tensors_) quantized = quantized || ggml_traits(t.type).quantized;
    if (quantized && !has("general.quantization_version")) set("general.quantization_version", GgufValue::u32(2));
    if (!has("general.file_type"))
      if (const auto ftype = default_file_type()) set("general.file_type", GgufValue::u32(*ftype));
    std::uint32_t alignment = 32;
    for (const auto& [k, v] : kv_)
      if (k == "general.alignment") alignment = static_cast<std::uint32_t>(std::get<std::uint64_t>(v.scalar));
    AtomicFile out(path);
    out.write("GGUF", 4);
    put<std::uint32_t>(out, 3);
    put<std::uint64_t>(out, tensors_.size());
    put<std::uint64_t>(out, kv_.size());
    for (const auto& [k, v] : kv_) {
      put_string(out, k);
      put<std::uint32_t>(out, static_cast<std::uint32_t>(v.type));
      put_value(out, v);
    }
    std::uint64_t offset = 0;
    for (const auto& t : tensors_) {
      put_string(out, t.name);
      // ggml drops trailing 1-dims (after reversal) but keeps at least one dimension.
      Shape ne(t.shape.rbegin(), t.shape.rend());
      while (ne.size() > 1 && ne.back() == 1) ne.pop_back();
      if (ne.empty()) ne.push_back(1);
      put<std::uint32_t>(out, static_cast<std::uint32_t>(ne.size()));
      for (auto d : ne) put<std::int64_t>(out, d);
      put<std::uint32_t>(out, static_cast<std::uint32_t>(t.type));
      put<std::uint64_t>(out, offset);
      offset = detail::pad_to(offset + t.bytes.size(), alignment);
    }
    out.write_zeros(detail::pad_to(out.written(), alignment) - out.written());
    for (const auto& t : tensors_) {
      out.write(t.bytes);
      out.write_zeros(detail::pad_to(t.bytes.size(), alignment) - t.bytes.size());
    }
    out.commit();
  }

 private:
  struct Pending {
    std::string name;
    GgmlType type;
    Shape shape;
    std::vector<std::uint8_t> bytes;
  };
  // llama.cpp's LLAMA_FTYPE of the type holding most of the values (what llama-quantize records):
  // ALL_F32 0, MOSTLY_F16 1, Q4_0 2, Q4_1 3, Q8_0 7, Q4_K_S 14, Q6_K 18, BF16 32.
  std::optional<std::uint32_t> default_file_type() const {
    std::map<GgmlType, std::int64_t> values;
    for (const auto& t : tensors_) values[t.type] += numel(t.shape);
    if (values.empty()) return std::nullopt;
    const auto top = std::max_element(values.begin(), values.end(), [](auto& a, auto& b) { return a.second < b.second; });
    switch (top->first) {
      case GgmlType::kF32: return 0;
      case GgmlType::kF16: return 1;
      case GgmlType::kQ4_0: return 2;
      case GgmlType::kQ4_1: return 3;
      case GgmlType::kQ8_0: return 7;
      case GgmlType::kQ4_K: return 14;
      case GgmlType::kQ6_K: return 18;
      case GgmlType::kBF16: return 32;
      default: return std::nullopt;
    }
  }
  bool has(const std::string& key) const {
    for (const auto& [k, v] : kv_)
      if (k == key) return true;
    return false;
  }
  template <class T>
  static void put(AtomicFile& out, T v) {
    out.write(&v, sizeof(T));
  }
  static void put_string(AtomicFile& out, const std::string& s) {
    put<std::uint64_t>(out, s.size());
    out.write(s.data(), s.size());
  }
  static void put_value(AtomicFile& out, const GgufValue& v) {
    switch (v.type) {
      case GgufType::kU8: put<std::uint8_t>(out, static_cast<std::uint8_t>(std::get<std::uint64_t>(v.scalar))); break;
      case GgufType::kI8: put<std::int8_t>(out, static_cast<std::int8_t>(std::get<std::int64_t>(v.scalar))); break;
      case GgufType::kU16: put<std::uint16_t>(out, static_cast<std::uint16_t>(std::get<std::uint64_t>(v.scalar))); break;
      case GgufType::kI16: put<std::int16_t>(out, static_cast<std::int16_t>(std::get<std::int64_t>(v.scalar))); break;
      case GgufType::kU32: put<std::uint32_t>(out, static_cast<std::uint32_t>(std::get<std::uint64_t>(v.scalar))); break;
      case GgufType::kI32: put<std::int32_t>(out, static_cast<std::int32_t>(std::get<std::int64_t>(v.scalar))); break;
      case GgufType::kF32: put<float>(out, static_cast<float>(std::get<double>(v.scalar))); break;
      case GgufType::kBool: put<std::uint8_t>(out, std::get<bool>(v.scalar) ? 1 : 0); break;
      case GgufType::kString: put_string(out, std::get<std::string>(v.scalar)); break;
      case GgufType::kU64: put<std::uint64_t>(out, std::get<std::uint64_t>(v.scalar)); break;
      case GgufType::kI64: put<std::int64_t>(out, std::get<std::int64_t>(v.scalar)); break;
      case GgufType::kF64: put<double>(out, std::get<double>(v.scalar)); break;
      case GgufType::kArray:
        put<std::uint32_t>(out, static_cast<std::uint32_t>(v.elem_type));
        put<std::uint64_t>(out, v.array.size());
        for (const auto& e : v.array) put_value(out, e);
        break;
    }
  }

  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<Pending> tensors_;
};

// Writes a copy of `src` to `path` in which every tensor of a quantized type is widened to
// `type` (F32, F16 or BF16): a float baseline of a quantized model that llama.cpp still loads.
// Every key is kept except general.file_type (recomputed by the writer) and, when nothing stays
// quantized, general.quantization_version.
inline void write_gguf_widened(const GgufFile& src, const std::string& path, GgmlType type) {
  if (type != GgmlType::kF32 && type != GgmlType::kF16 && type != GgmlType::kBF16)
    throw_error(Status::kInvalidArgument, "{}: widening writes F32, F16 or BF16, not {}", path, ggml_traits(type).name);
  GgufWriter out;
  for (const auto& [key, value] : src.metadata())
    if (key != "general.file_type" && key != "general.quantization_version") out.set(key, value);
  for (const auto& t : src.tensors()) {
    const auto bytes = src.bytes(t);
    if (ggml_traits(t.type).quantized)
      out.add_float(t.name, type, src.to_float(t.name));
    else
      out.add(t.name, t.type, t.shape, std::vector<std::uint8_t>(bytes.begin(), bytes.end()));
  }
  out.write(path);
}

}  // namespace qforge::formats
