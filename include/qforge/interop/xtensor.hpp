// xtensor in and out of qforge, without copies where the memory allows (docs/user-guide.md,
// "xtensor and Eigen arrays"). Include this header only where xtensor is wanted; link
// qforge::xtensor. Nothing in the core includes it.
//
//  - view_of(a): any xtensor array whose elements sit in memory at fixed strides (xarray, xtensor,
//    xt::adapt, row- or column-major, xt::view with integer/range/all slices, xt::strided_view) as a
//    TensorView, read in place with its strides and its own logical shape (never transposed).
//    A lazy expression (a + b, xt::cast) has no memory to view: evaluate it first with xt::eval,
//    a copy the caller makes and sees; only float32 arrays are accepted.
//  - quantize(a, how): qforge::quantize on view_of(a); the QArray equals the one from a Tensor
//    holding the same values.
//  - dequantize_into(q, a): writes into the caller's array or view of q's shape, in its layout;
//    dequantize_xarray<L>(q) makes a new xt::xarray with layout L.
//  - scale_view(q), zero_point_view(q), codes_view<Code>(q), storage_view(q): read-only
//    xt::adapt views of the QArray's own buffers (no copy); unpacked_codes(q) is a copy.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>

#include "qforge/core/qarray.hpp"

namespace qforge::interop {

using qforge::dequantize_into;
using qforge::quantize;

// An xtensor expression whose elements are in memory at fixed strides.
template <class E>
concept XStridedArray = requires(const E& e) {
  e.data();
  e.data_offset();
  e.strides();
  e.shape();
};

namespace detail {

inline std::vector<std::size_t> xt_shape(const Shape& shape) { return {shape.begin(), shape.end()}; }

// A TensorView of e's memory; of const elements when e is const.
template <class E>
auto strided_view_of(E& e) {
  static_assert(std::is_same_v<std::remove_const_t<typename E::value_type>, float>,
                "qforge quantizes float32 arrays: convert with xt::eval(xt::cast<float>(a)), a copy made explicitly");
  static_assert(XStridedArray<E>,
                "this xtensor expression has no strided memory to view (a lazy expression, or a view with index or "
                "keep/drop slices): evaluate it with xt::eval(...) first, a copy made explicitly");
  if constexpr (XStridedArray<E>) {
    using Element = std::remove_pointer_t<decltype(e.data())>;
    Shape shape(e.shape().begin(), e.shape().end());
    Shape strides(e.strides().begin(), e.strides().end());
    return TensorView<Element>(e.data() + e.data_offset(), std::move(shape), std::move(strides));
  }
}

// A read-only xt::adapt view of `count` elements at `data` with q's logical `shape`.
template <class T>
auto adapt_readonly(const T* data, std::size_t count, const Shape& shape) {
  return xt::adapt(data, count, xt::no_ownership(), xt_shape(shape));
}

}  // namespace detail

// The elements of an xtensor array in place (see the top of this file). The array must outlive
// the view.
template <class E>
TensorView<const float> view_of(const xt::xexpression<E>& array) {
  return detail::strided_view_of(array.derived_cast());
}

template <class E>
QArray quantize(const xt::xexpression<E>& array, const HowToQuantize& how, const QuantizeOptions& opts = {}) {
  return qforge::quantize(view_of(array), how, opts);
}

// Writes dequantize(q) into `dst` (an array, adaptor or strided view of q's shape) in place; a
// shape mismatch is an Error naming both shapes.
template <class E>
  requires std::derived_from<std::remove_cvref_t<E>, xt::xexpression<std::remove_cvref_t<E>>>
void dequantize_into(const QArray& q, E&& dst) {
  auto& target = dst;  // a named lvalue: views passed as temporaries are written through too
  qforge::dequantize_into(q, detail::strided_view_of(target));
}

// dequantize(q) as a new xt::xarray of layout L (column-major keeps the logical shape).
template <xt::layout_type L = xt::layout_type::row_major>
xt::xarray<float, L> dequantize_xarray(const QArray& q) {
  auto out = xt::xarray<float, L>::from_shape(detail::xt_shape(q.shape()));
  dequantize_into(q, out);
  return out;
}

// The scales, shaped as the scale tensor (same rank as q: channelwise axes keep their size, tiled
// axes are dim / tile, other axes 1). A view of q's buffer: q must outlive it.
inline auto scale_view(const QArray& q) {
  return detail::adapt_readonly(q.scale().data(), static_cast<std::size_t>(q.scale().size()), q.scale().shape());
}

// The zero points (int32, shaped as the scales); an Error when q has none (symmetric qtypes).
inline auto zero_point_view(const QArray& q) {
  if (!q.zero_point())
    throw_error(Status::kInvalidArgument, "zero_point_view: the {} array has no zero point", to_string(q.qtype()));
  const auto& zp = *q.zero_point();
  return detail::adapt_readonly(zp.data(), static_cast<std::size_t>(zp.size()), zp.shape());
}

// The codes of an 8-bit qtype, shaped as q, viewed in place: Code is std::int8_t for the signed
// integer qtypes and std::uint8_t for the others (unsigned integers, FP8 bit patterns), the values
// QArray::code returns. Sub-byte codes (packed two per byte) and int16 codes have no such view:
// use unpacked_codes (a copy) or storage_view (the bytes).
template <class Code>
  requires(std::same_as<Code, std::int8_t> || std::same_as<Code, std::uint8_t>)
auto codes_view(const QArray& q) {
  const QTypeInfo& qi = info(q.qtype());
  if (qi.storage_bits != 8)
    throw_error(Status::kUnsupported,
                "codes_view: {} codes take {} bits each in storage; only 8-bit codes can be viewed as elements "
                "(use unpacked_codes for a copy, storage_view for the bytes)",
                to_string(q.qtype()), qi.storage_bits);
  const bool signed_codes = is_integer(q.qtype()) && qi.is_signed;
  if (signed_codes != std::is_signed_v<Code>)
    throw_error(Status::kInvalidArgument, "codes_view: {} codes are {}, not {}", to_string(q.qtype()),
                signed_codes ? "std::int8_t" : "std::uint8_t", signed_codes ? "std::uint8_t" : "std::int8_t");
  // int8_t is the signed type corresponding to the stored uint8_t: reading through it is allowed.
  const auto* codes = reinterpret_cast<const Code*>(q.storage().data());
  return detail::adapt_readonly(codes, q.storage().size(), q.shape());
}

// Every code as an int32 (QArray::code: the integer, the FP bit pattern, the NF4 index), shaped
// as q. A copy: sub-byte codes are unpacked.
inline xt::xarray<std::int32_t> unpacked_codes(const QArray& q) {
  auto out = xt::xarray<std::int32_t>::from_shape(detail::xt_shape(q.shape()));
  for (std::int64_t i = 0; i < q.size(); ++i) out.flat(static_cast<std::size_t>(i)) = q.code(i);
  return out;
}

// The stored bytes in place, shaped as q with the last axis in bytes (dim / 2 for 4-bit codes,
// dim for 8-bit, 2 * dim for 16-bit): row r of a packed int4 [N, K] weight is storage_view(q)[r].
// An Error where a row does not fill whole bytes (an odd last dimension of 4-bit codes), since
// packing runs over the flat index and a byte would then straddle two rows.
inline auto storage_view(const QArray& q) {
  const int bits = info(q.qtype()).storage_bits;
  const auto bytes = q.storage().size();
  if (q.shape().empty()) return detail::adapt_readonly(q.storage().data(), bytes, {static_cast<std::int64_t>(bytes)});
  Shape shape = q.shape();
  if (shape.back() * bits % 8 != 0)
    throw_error(Status::kShapeMismatch, "storage_view: the last dimension of {} ({} codes of {} bits) is not whole bytes",
                shape_str(q.shape()), shape.back(), bits);
  shape.back() = shape.back() * bits / 8;
  return detail::adapt_readonly(q.storage().data(), bytes, shape);
}

}  // namespace qforge::interop
