// How a quantized array's elements map onto its scale cells.
//
// A scale has the same rank as its array and every scale dimension divides the array dimension
// (Qwix's generic broadcast): element index i_a on axis a belongs to scale cell i_a / (dim_a /
// scale_dim_a). Channelwise axes have divisor 1, tiled axes divisor = tile, other axes divisor =
// dim (one cell). HowToQuantize describes the same thing in user terms (see qarray.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "qforge/core/qtype.hpp"
#include "qforge/core/tensor.hpp"

namespace qforge {

// A tile on one axis: an element count, or a fraction of the axis (Qwix: tile = round(dim * t)).
// Tile 1 means one cell per element (per-channel); fraction 1.0 means one cell for the axis.
using TileSize = std::variant<std::int64_t, double>;

struct HowToQuantize {
  QType qtype = QType::kInt8;
  std::vector<int> channelwise_axes;     // one scale per index along these axes
  std::map<int, TileSize> tiled_axes;    // one scale per tile along these axes
  std::string calibration_method = "absmax";
};

class QuantLayout {
 public:
  // From a shape and a HowToQuantize; validates axes and tiles, naming `what` in errors.
  QuantLayout(const Shape& shape, const HowToQuantize& how, std::string_view what = "tensor")
      : shape_(shape), divisor_(shape.size(), 1), scale_shape_(shape.size(), 1) {
    std::vector<bool> channelwise(shape.size(), false);
    for (int axis : how.channelwise_axes) channelwise[static_cast<std::size_t>(normalize_axis(axis, shape.size(), what))] = true;
    for (std::size_t a = 0; a < shape.size(); ++a) divisor_[a] = channelwise[a] ? 1 : shape[a];
    for (const auto& [axis_raw, tile_spec] : how.tiled_axes) {
      const auto a = static_cast<std::size_t>(normalize_axis(axis_raw, shape.size(), what));
      if (channelwise[a])
        throw_error(Status::kInvalidArgument, "{}: axis {} is both channelwise and tiled", what, axis_raw);
      const std::int64_t tile = resolve_tile(tile_spec, shape[a], axis_raw, what);
      divisor_[a] = tile;
    }
    finish();
  }

  // From an array shape and its scale shape (every scale dim must divide the array dim).
  QuantLayout(const Shape& shape, const Shape& scale_shape, std::string_view what = "tensor")
      : shape_(shape), divisor_(shape.size(), 1), scale_shape_(scale_shape) {
    if (scale_shape.size() != shape.size())
      throw_error(Status::kShapeMismatch, "{}: scale rank {} differs from array rank {} (shape {}, scale {})",
                  what, scale_shape.size(), shape.size(), shape_str(shape), shape_str(scale_shape));
    for (std::size_t a = 0; a < shape.size(); ++a) {
      if (scale_shape[a] <= 0 || shape[a] % scale_shape[a] != 0)
        throw_error(Status::kShapeMismatch, "{}: scale shape {} does not divide array shape {} on axis {}",
                    what, shape_str(scale_shape), shape_str(shape), a);
      divisor_[a] = scale_shape[a] == 0 ? 1 : shape[a] / scale_shape[a];
    }
    finish();
  }

  const Shape& shape() const noexcept { return shape_; }
  const Shape& scale_shape() const noexcept { return scale_shape_; }
  // Elements per cell along each axis (1 = channelwise, dim = reduced).
  const Shape& divisor() const noexcept { return divisor_; }
  std::int64_t num_cells() const { return numel(scale_shape_); }
  std::int64_t num_elements() const { return numel(shape_); }

  // Calls f(element_index, cell_index) for every element, in row-major order.
  template <class F>
  void for_each(F&& f) const {
    const std::int64_t n = num_elements();
    if (n == 0) return;
    if (shape_.empty()) {
      f(std::int64_t{0}, std::int64_t{0});
      return;
    }
    const std::size_t rank = shape_.size();
    const std::int64_t inner = shape_.back();
    const Shape cell_strides = strides_of(scale_shape_);
    std::vector<std::int64_t> inner_cell(static_cast<std::size_t>(inner));
    for (std::int64_t i = 0; i < inner; ++i) inner_cell[static_cast<std::size_t>(i)] = (i / divisor_.back()) * cell_strides.back();
    std::vector<std::int64_t> idx(rank, 0);
    for (std::int64_t base = 0; base < n; base += inner) {
      std::int64_t cell_base = 0;
      for (std::size_t a = 0; a + 1 < rank; ++a) cell_base += (idx[a] / divisor_[a]) * cell_strides[a];
      for (std::int64_t i = 0; i < inner; ++i) f(base + i, cell_base + inner_cell[static_cast<std::size_t>(i)]);
      for (std::size_t a = rank - 1; a-- > 0;) {  // advance the outer multi-index
        if (++idx[a] < shape_[a]) break;
        idx[a] = 0;
      }
    }
  }

  // The multi-index of a flat element index, for error messages.
  std::string index_str(std::int64_t flat) const {
    Shape idx(shape_.size());
    for (std::size_t a = shape_.size(); a-- > 0;) {
      idx[a] = shape_[a] ? flat % shape_[a] : 0;
      flat = shape_[a] ? flat / shape_[a] : 0;
    }
    return shape_str(idx);
  }

 private:
  static std::int64_t resolve_tile(const TileSize& spec, std::int64_t dim, int axis, std::string_view what) {
    std::int64_t tile;
    if (const auto* t = std::get_if<std::int64_t>(&spec)) {
      tile = *t;
    } else {
      const double frac = std::get<double>(spec);
      if (!(frac > 0.0 && frac <= 1.0))
        throw_error(Status::kInvalidArgument, "{}: tile fraction {} on axis {} must be in (0, 1]", what, frac, axis);
      tile = static_cast<std::int64_t>(std::llround(static_cast<double>(dim) * frac));
    }
    if (tile <= 0 || dim % tile != 0)
      throw_error(Status::kShapeMismatch, "{}: tile {} does not divide axis {} of size {}", what, tile, axis, dim);
    return tile;
  }
  void finish() {
    for (std::size_t a = 0; a < shape_.size(); ++a) scale_shape_[a] = divisor_[a] ? shape_[a] / divisor_[a] : 0;
  }

  Shape shape_;
  Shape divisor_;
  Shape scale_shape_;
};

}  // namespace qforge
