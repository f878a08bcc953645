// QArray: a quantized tensor — codes, scales, optional zero points, the qtype, and how it was
// quantized. dequantize(q) = (value(code) - zero_point) * scale, with the scale broadcast over
// each cell (see layout.hpp). Sub-byte codes are packed two per byte (element 2k in the low
// nibble, 2k+1 in the high nibble); code()/set_code() hide the packing.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "qforge/core/calibration.hpp"
#include "qforge/core/layout.hpp"
#include "qforge/core/numerics.hpp"
#include "qforge/core/tensor.hpp"

namespace qforge {

class QArray {
 public:
  QArray() = default;
  // Codes start at the qtype's zero code. Validates that scale (and zero_point) fit the shape.
  QArray(QType qtype, Shape shape, TensorF scale, std::optional<Tensor<std::int32_t>> zero_point = std::nullopt,
         HowToQuantize how = {}, std::string_view what = "tensor")
      : qtype_(qtype), shape_(std::move(shape)), scale_(std::move(scale)), zero_point_(std::move(zero_point)),
        how_(std::move(how)) {
    how_.qtype = qtype_;
    QuantLayout check(shape_, scale_.shape(), what);  // throws on a mismatch
    if (zero_point_ && zero_point_->shape() != scale_.shape())
      throw_error(Status::kShapeMismatch, "{}: zero point shape {} differs from scale shape {}", what,
                  shape_str(zero_point_->shape()), shape_str(scale_.shape()));
    if (zero_point_ && !has_asymmetric_range(qtype_))
      throw_error(Status::kInvalidArgument, "{}: qtype {} cannot carry a zero point", what, to_string(qtype_));
    storage_.assign(storage_bytes_for(qtype_, numel(shape_)), 0);
  }

  QType qtype() const noexcept { return qtype_; }
  const Shape& shape() const noexcept { return shape_; }
  std::int64_t size() const { return numel(shape_); }
  const TensorF& scale() const noexcept { return scale_; }
  TensorF& scale() noexcept { return scale_; }
  const std::optional<Tensor<std::int32_t>>& zero_point() const noexcept { return zero_point_; }
  const HowToQuantize& how() const noexcept { return how_; }
  QuantLayout layout() const { return QuantLayout(shape_, scale_.shape()); }

  // The raw code of element i: the integer for integer qtypes, the bit pattern for minifloats,
  // the codebook index for NF4.
  std::int32_t code(std::int64_t i) const {
    const auto u = static_cast<std::size_t>(i);
    switch (info(qtype_).storage_bits) {
      case 4: {
        const std::uint8_t nib = (storage_[u / 2] >> ((u & 1) * 4)) & 0xF;
        return is_integer(qtype_) && info(qtype_).is_signed ? static_cast<std::int32_t>(nib ^ 8) - 8 : nib;
      }
      case 8:
        return is_integer(qtype_) && info(qtype_).is_signed ? static_cast<std::int8_t>(storage_[u]) : storage_[u];
      default: {
        std::int16_t v;
        std::memcpy(&v, &storage_[2 * u], 2);
        return v;
      }
    }
  }
  void set_code(std::int64_t i, std::int32_t c) {
    const auto u = static_cast<std::size_t>(i);
    switch (info(qtype_).storage_bits) {
      case 4: {
        const int shift = static_cast<int>(u & 1) * 4;
        storage_[u / 2] = static_cast<std::uint8_t>((storage_[u / 2] & ~(0xF << shift)) | ((c & 0xF) << shift));
        break;
      }
      case 8: storage_[u] = static_cast<std::uint8_t>(c); break;
      default: {
        const auto v = static_cast<std::int16_t>(c);
        std::memcpy(&storage_[2 * u], &v, 2);
      }
    }
  }
  // The value a code stands for, before scale and zero point.
  double value(std::int64_t i) const { return qtype_decode(qtype_, code(i)); }

  std::span<const std::uint8_t> storage() const noexcept { return storage_; }
  std::span<std::uint8_t> storage() noexcept { return storage_; }
  // Bytes of codes plus scales (fp32) plus zero points (one byte each where the qtype fits).
  std::size_t nbytes() const {
    return storage_.size() + static_cast<std::size_t>(scale_.size()) * sizeof(float) +
           (zero_point_ ? static_cast<std::size_t>(zero_point_->size()) * (info(qtype_).storage_bits > 8 ? 2 : 1) : 0);
  }

  static std::size_t storage_bytes_for(QType t, std::int64_t n) {
    const auto count = static_cast<std::size_t>(n);
    switch (info(t).storage_bits) {
      case 4: return (count + 1) / 2;
      case 8: return count;
      default: return 2 * count;
    }
  }

 private:
  QType qtype_ = QType::kInt8;
  Shape shape_;
  TensorF scale_;
  std::optional<Tensor<std::int32_t>> zero_point_;
  HowToQuantize how_;
  std::vector<std::uint8_t> storage_;
};

struct QuantizeOptions {
  std::string_view name = "tensor";            // used in error messages
  std::optional<std::uint64_t> stochastic_seed;  // stochastic rounding for integer qtypes
};

namespace detail {
// The one quantization loop; x is read by row-major flat index (see calibration.hpp).
template <class Elements>
QArray quantize_elements(const Elements& x, const Shape& shape, const HowToQuantize& how, ScaleAndZeroPoint sz,
                         const QuantizeOptions& opts) {
  QArray q(how.qtype, shape, std::move(sz.scale), std::move(sz.zero_point), how, opts.name);
  const float* s = q.scale().data();
  const std::int32_t* zp = q.zero_point() ? q.zero_point()->data() : nullptr;
  const QType t = how.qtype;
  std::optional<StochasticRounder> rounder;
  if (opts.stochastic_seed) rounder.emplace(*opts.stochastic_seed);
  // x / scale as Qwix computes it under XLA (CPU): x times the scale's float32 reciprocal, so
  // results match it element for element (tests/interop/check_qwix.py).
  std::vector<float> reciprocal(static_cast<std::size_t>(q.scale().size()));
  for (std::size_t c = 0; c < reciprocal.size(); ++c) reciprocal[c] = 1.0f / s[c];
  q.layout().for_each([&](std::int64_t e, std::int64_t c) {
    float v = x[e] * reciprocal[static_cast<std::size_t>(c)];
    if (zp) v += static_cast<float>(zp[c]);
    q.set_code(e, rounder ? rounder->encode(t, v) : qtype_encode(t, v));
  });
  return q;
}
}  // namespace detail

// Quantizes with given scales (static range, or scales computed elsewhere). A strided view is
// read in place; the result is the same as for a contiguous copy of it.
inline QArray quantize_with_scale(TensorView<const float> x, const HowToQuantize& how, ScaleAndZeroPoint sz,
                                  const QuantizeOptions& opts = {}) {
  return with_elements(x, [&](const auto& elements) {
    return detail::quantize_elements(elements, x.shape(), how, std::move(sz), opts);
  });
}
inline QArray quantize_with_scale(const TensorF& x, const HowToQuantize& how, ScaleAndZeroPoint sz,
                                  const QuantizeOptions& opts = {}) {
  return quantize_with_scale(TensorView<const float>(x), how, std::move(sz), opts);
}

// Calibrates per `how` and quantizes. Throws Error naming opts.name for bad axes, tiles,
// methods, or non-finite input. A strided view is read in place (no copy, no transpose).
inline QArray quantize(TensorView<const float> x, const HowToQuantize& how, const QuantizeOptions& opts = {}) {
  const QuantLayout layout(x.shape(), how, opts.name);
  const CalibrationMethod method = parse_calibration_method(how.calibration_method);
  return with_elements(x, [&](const auto& elements) {
    const CalibratedRange range = calibrate(elements, layout, method, how.qtype, opts.name);
    return detail::quantize_elements(elements, x.shape(), how, compute_scale(range, how.qtype), opts);
  });
}
inline QArray quantize(const TensorF& x, const HowToQuantize& how, const QuantizeOptions& opts = {}) {
  return quantize(TensorView<const float>(x), how, opts);
}

// Writes dequantize(q) into `dst`, which must have q's shape; a strided destination (a column-
// major matrix, a slice) is written in place element by element.
inline void dequantize_into(const QArray& q, TensorView<float> dst) {
  if (dst.shape() != q.shape())
    throw_error(Status::kShapeMismatch, "dequantize: destination shape {} differs from the quantized array's {}",
                shape_str(dst.shape()), shape_str(q.shape()));
  const float* s = q.scale().data();
  const std::int32_t* zp = q.zero_point() ? q.zero_point()->data() : nullptr;
  with_elements(dst, [&](const auto& out) {
    q.layout().for_each([&](std::int64_t e, std::int64_t c) {
      const double v = q.value(e) - (zp ? zp[c] : 0);
      out[e] = static_cast<float>(v * s[c]);
    });
  });
}

inline TensorF dequantize(const QArray& q) {
  TensorF out(q.shape());
  dequantize_into(q, out);
  return out;
}

// Fake quantization: quantize then dequantize (what QAT's forward computes).
inline TensorF fake_quantize(const TensorF& x, const HowToQuantize& how, const QuantizeOptions& opts = {}) {
  return dequantize(quantize(x, how, opts));
}

}  // namespace qforge
