// qforge's quantized layout on safetensors (docs/formats.md): a QArray named NAME is stored as
//   NAME.qvalue      codes: I8 / U8 / I16 / F8_E4M3 / F8_E5M2 with the array's shape, or for
//                    4-bit qtypes U8 of shape [ceil(n / 2)], two codes a byte, element 2k low
//   NAME.scale       F32, the scale (same rank as the array)
//   NAME.zero_point  I32, only for asymmetric arrays
// and a metadata entry "NAME.qforge" = {"qtype", "shape", "channelwise_axes", "tiled_axes",
// "calibration_method"} (JSON text), so a reader recovers the QArray exactly.
#pragma once

#include <charconv>
#include <cstring>
#include <string>
#include <system_error>

#include <nlohmann/json.hpp>

#include "qforge/core/qarray.hpp"
#include "qforge/formats/safetensors.hpp"

namespace qforge::formats {

inline constexpr std::string_view kQArrayFormat = "qforge.qarray/1";

inline Dtype qvalue_dtype(QType t) {
  switch (t) {
    case QType::kFp8E4M3: return Dtype::kF8E4M3;
    case QType::kFp8E5M2: return Dtype::kF8E5M2;
    case QType::kInt16: return Dtype::kI16;
    default: break;
  }
  if (info(t).storage_bits == 4) return Dtype::kU8;
  return is_integer(t) && info(t).is_signed ? Dtype::kI8 : Dtype::kU8;
}

inline void add_qarray(SafetensorsWriter& w, const std::string& name, const QArray& q) {
  const auto storage = q.storage();
  const Shape qshape = info(q.qtype()).storage_bits == 4 ? Shape{static_cast<std::int64_t>(storage.size())} : q.shape();
  w.add(name + ".qvalue", qvalue_dtype(q.qtype()), qshape, {storage.begin(), storage.end()});
  w.add_f32(name + ".scale", q.scale());
  if (q.zero_point()) {
    const auto& zp = *q.zero_point();
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(zp.size()) * 4);
    if (!bytes.empty()) std::memcpy(bytes.data(), zp.data(), bytes.size());
    w.add(name + ".zero_point", Dtype::kI32, zp.shape(), std::move(bytes));
  }
  const QuantLayout layout = q.layout();
  nlohmann::json tiles = nlohmann::json::object(), channelwise = nlohmann::json::array();
  for (std::size_t a = 0; a < q.shape().size(); ++a) {
    if (layout.divisor()[a] == 1 && q.shape()[a] > 1) channelwise.push_back(a);
    else if (layout.divisor()[a] != q.shape()[a]) tiles[std::to_string(a)] = layout.divisor()[a];
  }
  nlohmann::json meta = {{"qtype", std::string(to_string(q.qtype()))},
                         {"shape", q.shape()},
                         {"channelwise_axes", channelwise},
                         {"tiled_axes", tiles},
                         {"calibration_method", q.how().calibration_method}};
  w.set_metadata(name + ".qforge", meta.dump());
  w.set_metadata("qforge.format", std::string(kQArrayFormat));
}

// Names of the QArrays stored in a file (from its metadata).
inline std::vector<std::string> qarray_names(const SafetensorsFile& f) {
  std::vector<std::string> names;
  for (const auto& [k, v] : f.metadata())
    if (k.size() > 7 && k.ends_with(".qforge")) names.push_back(k.substr(0, k.size() - 7));
  return names;
}

inline QArray load_qarray(const SafetensorsFile& f, const std::string& name) {
  const auto it = f.metadata().find(name + ".qforge");
  if (it == f.metadata().end()) throw_error(Status::kNotFound, "{}: no quantized tensor '{}'", f.path(), name);
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(it->second);
    const QType qtype = parse_qtype(meta.at("qtype").get<std::string>());
    const Shape shape = meta.at("shape").get<Shape>();
    HowToQuantize how;
    how.qtype = qtype;
    how.channelwise_axes = meta.at("channelwise_axes").get<std::vector<int>>();
    for (auto& [axis, tile] : meta.at("tiled_axes").items()) {
      // The key is an axis written as text; anything else is a malformed file, not an exception
      // from deep inside the standard library.
      int a = 0;
      const auto [end, ec] = std::from_chars(axis.data(), axis.data() + axis.size(), a);
      if (ec != std::errc{} || end != axis.data() + axis.size())
        throw_error(Status::kFormatError, "{}: quantized tensor '{}': tiled_axes key '{}' is not an axis", f.path(), name,
                    axis);
      how.tiled_axes[a] = tile.get<std::int64_t>();
    }
    how.calibration_method = meta.at("calibration_method").get<std::string>();
    const std::string what = f.path() + ": " + name;
    TensorF scale = f.to_float(name + ".scale");
    std::optional<Tensor<std::int32_t>> zp;
    if (const auto* z = f.find(name + ".zero_point")) {
      if (z->dtype != Dtype::kI32) throw_error(Status::kFormatError, "{}.zero_point: dtype {} is not I32", what, to_string(z->dtype));
      zp = Tensor<std::int32_t>(z->shape);
      std::memcpy(zp->data(), f.bytes(*z).data(), f.bytes(*z).size());
    }
    QArray q(qtype, shape, std::move(scale), std::move(zp), how, what);
    const auto& qv = f.at(name + ".qvalue");
    if (qv.dtype != qvalue_dtype(qtype) || qv.nbytes() != q.storage().size())
      throw_error(Status::kFormatError, "{}.qvalue: {} {} does not hold {} codes of {}", what, to_string(qv.dtype),
                  shape_str(qv.shape), numel(shape), to_string(qtype));
    std::memcpy(q.storage().data(), f.bytes(qv).data(), q.storage().size());
    return q;
  } catch (const nlohmann::json::exception& e) {
    throw_error(Status::kFormatError, "{}: metadata of quantized tensor '{}' is malformed: {}", f.path(), name, e.what());
  }
}

}  // namespace qforge::formats
