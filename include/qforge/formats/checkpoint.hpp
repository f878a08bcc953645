// One read-only view over the checkpoint files qforge handles, chosen by extension: GGUF
// (.gguf) and safetensors (.safetensors), where qforge's quantized layout (NAME.qvalue /
// NAME.scale / NAME.zero_point) and bitsandbytes' 4-bit layout (NAME + NAME.absmax, NAME.quant_map,
// NAME.quant_state.bitsandbytes__nf4|fp4, ...) each appear as one logical tensor NAME. The CLI's inspect,
// dequantize, compare and quantize commands all read through this.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "qforge/formats/bnb4.hpp"
#include "qforge/formats/gguf_file.hpp"
#include "qforge/formats/qarray_io.hpp"
#include "qforge/formats/safetensors.hpp"

namespace qforge::formats {

enum class FileFormat { kSafetensors, kGguf };

inline bool ends_with_ci(std::string_view s, std::string_view suffix) {
  if (s.size() < suffix.size()) return false;
  for (std::size_t i = 0; i < suffix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[s.size() - suffix.size() + i])) != suffix[i]) return false;
  return true;
}

inline FileFormat format_of(const std::string& path) {
  if (ends_with_ci(path, ".gguf")) return FileFormat::kGguf;
  if (ends_with_ci(path, ".safetensors")) return FileFormat::kSafetensors;
  throw_error(Status::kInvalidArgument, "{}: unknown file type (expected .gguf or .safetensors)", path);
}

struct CheckpointTensor {
  std::string name;
  std::string type;  // "F32", "Q4_0", "int4", ...
  Shape shape;
  std::uint64_t nbytes = 0;  // stored bytes, scales and zero points included
  bool quantized = false;
};

class Checkpoint {
 public:
  explicit Checkpoint(const std::string& path) : path_(path), format_(format_of(path)) {
    if (format_ == FileFormat::kGguf) {
      gguf_.emplace(path);
      for (const auto& t : gguf_->tensors())
        tensors_.push_back({t.name, std::string(ggml_traits(t.type).name), t.shape, t.nbytes, ggml_traits(t.type).quantized});
      return;
    }
    st_.emplace(path);
    std::set<std::string> parts;
    for (const auto& name : qarray_names(*st_)) {
      const QArray q = load_qarray(*st_, name);
      tensors_.push_back({name, std::string(to_string(q.qtype())), q.shape(), q.nbytes(), true});
      for (const char* suffix : {".qvalue", ".scale", ".zero_point"}) parts.insert(name + suffix);
    }
    for (const auto& e : st_->tensors()) {
      for (const auto type : {Bnb4Type::kNf4, Bnb4Type::kFp4}) {
        const std::string state_suffix = ".quant_state.bitsandbytes__" + std::string(to_string(type));
        if (!e.name.ends_with(state_suffix)) continue;
        const std::string name = e.name.substr(0, e.name.size() - state_suffix.size());
        const Bnb4Tensor b = load_bnb4(*st_, name);
        std::uint64_t nbytes = 0;
        for (const char* suffix : {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"})
          if (const auto* part = st_->find(name + suffix)) {
            nbytes += part->nbytes();
            parts.insert(name + suffix);
          }
        parts.insert(e.name);
        bnb4_.insert(name);
        tensors_.push_back({name, std::string(to_string(type)) + " (bitsandbytes)", b.shape, nbytes + e.nbytes(), true});
      }
    }
    for (const auto& e : st_->tensors())
      if (!parts.count(e.name)) tensors_.push_back({e.name, std::string(to_string(e.dtype)), e.shape, e.nbytes(), false});
  }

  const std::string& path() const { return path_; }
  FileFormat format() const { return format_; }
  const std::vector<CheckpointTensor>& tensors() const { return tensors_; }
  const CheckpointTensor* find(std::string_view name) const {
    for (const auto& t : tensors_)
      if (t.name == name) return &t;
    return nullptr;
  }
  const GgufFile* gguf() const { return gguf_ ? &*gguf_ : nullptr; }
  const SafetensorsFile* safetensors() const { return st_ ? &*st_ : nullptr; }

  // The tensor as float32 (dequantized if it is stored quantized).
  TensorF to_float(const std::string& name) const {
    if (gguf_) return gguf_->to_float(name);
    const auto* t = find(name);
    if (!t) throw_error(Status::kNotFound, "{}: no tensor '{}'", path_, name);
    if (bnb4_.count(name)) return bnb4_dequantize(load_bnb4(*st_, name));
    if (t->quantized) return dequantize(load_qarray(*st_, name));
    return st_->to_float(name);
  }

  // Metadata as display strings.
  std::vector<std::pair<std::string, std::string>> metadata() const {
    std::vector<std::pair<std::string, std::string>> out;
    if (gguf_)
      for (const auto& [k, v] : gguf_->metadata()) out.emplace_back(k, v.to_display());
    if (st_)
      for (const auto& [k, v] : st_->metadata()) out.emplace_back(k, v);
    return out;
  }

 private:
  std::string path_;
  FileFormat format_;
  std::optional<GgufFile> gguf_;
  std::optional<SafetensorsFile> st_;
  std::vector<CheckpointTensor> tensors_;
  std::set<std::string> bnb4_;  // names stored in bitsandbytes' 4-bit layout
};

}  // namespace qforge::formats
