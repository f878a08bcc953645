// Saving a model's parameters to safetensors and loading them back from any checkpoint qforge
// reads (GGUF or safetensors, quantized tensors dequantized), by parameter path.
#pragma once

#include <string>

#include "qforge/formats/checkpoint.hpp"
#include "qforge/nn/module.hpp"

namespace qforge::nn {

inline void save_parameters(Module& model, const std::string& path,
                            const std::map<std::string, std::string>& metadata = {}) {
  formats::SafetensorsWriter w;
  for (auto& [name, p] : model.named_parameters()) w.add_f32(name, p->var.value());
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  w.write(path);
}

// Every parameter must be in the file with its shape; extra tensors in the file are an error
// too, so a checkpoint of another model is never half-loaded. Nothing is changed on error.
inline void load_parameters(Module& model, const formats::Checkpoint& ckpt) {
  std::vector<std::pair<Parameter*, TensorF>> loaded;
  std::size_t used = 0;
  for (auto& [name, p] : model.named_parameters()) {
    if (!ckpt.find(name)) throw_error(Status::kNotFound, "{}: no tensor for parameter '{}'", ckpt.path(), name);
    TensorF t = ckpt.to_float(name);
    if (t.size() != p->var.value().size())
      throw_error(Status::kShapeMismatch, "{}: tensor '{}' has shape {} but the parameter is {}", ckpt.path(), name,
                  shape_str(t.shape()), shape_str(p->var.value().shape()));
    loaded.emplace_back(p, TensorF(p->var.value().shape(), std::move(t.vec())));
    ++used;
  }
  if (used != ckpt.tensors().size())
    throw_error(Status::kInvalidArgument, "{}: holds {} tensors but the model has {} parameters", ckpt.path(),
                ckpt.tensors().size(), used);
  for (auto& [p, t] : loaded) p->var.value() = std::move(t);
}

}  // namespace qforge::nn
