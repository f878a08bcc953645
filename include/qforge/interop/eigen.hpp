// Eigen matrices in and out of qforge, without copies where the memory allows (docs/user-guide.md,
// "xtensor and Eigen arrays"). Include this header only where it is wanted.
//
//  - view_of(m): an Eigen matrix with direct memory access (Matrix, Map, Ref, a block of one,
//    row- or column-major, any inner and outer stride) as a [rows, cols] TensorView read in place
//    with its strides: a column-major matrix keeps its logical shape, it is never transposed.
//    An expression without memory (a + b, m.transpose() * m) must be evaluated first with .eval(),
//    a copy the caller makes and sees; only float matrices are accepted.
//  - quantize(m, how): qforge::quantize on view_of(m); the QArray equals the one from a Tensor
//    holding the same values.
//  - dequantize_into(q, m): writes a rank-2 q into the caller's matrix, map or block of q's shape,
//    in its layout; dequantize_matrix<Options>(q) makes a new Eigen::Matrix.
#pragma once

#include <type_traits>

#include <Eigen/Core>

#include "qforge/core/qarray.hpp"

namespace qforge::interop {

using qforge::dequantize_into;
using qforge::quantize;

namespace detail {

// A [rows, cols] TensorView of m's memory; of const elements when m is const. Element (r, c) of
// an Eigen matrix with direct access sits at data() + r * rowStride() + c * colStride().
template <class Derived>
auto matrix_view_of(Derived& m) {
  using Scalar = typename std::remove_const_t<Derived>::Scalar;
  static_assert(std::is_same_v<Scalar, float>,
                "qforge quantizes float32 matrices: convert with m.cast<float>().eval(), a copy made explicitly");
  static_assert((std::remove_const_t<Derived>::Flags & Eigen::DirectAccessBit) != 0,
                "this Eigen expression has no memory to view: evaluate it with .eval() first, a copy made explicitly");
  using Element = std::remove_pointer_t<decltype(m.data())>;
  return TensorView<Element>(m.data(), Shape{m.rows(), m.cols()}, Shape{m.rowStride(), m.colStride()});
}

}  // namespace detail

// The elements of an Eigen matrix in place (see the top of this file). The matrix must outlive
// the view.
template <class Derived>
TensorView<const float> view_of(const Eigen::DenseBase<Derived>& m) {
  return detail::matrix_view_of(m.derived());
}

template <class Derived>
QArray quantize(const Eigen::DenseBase<Derived>& m, const HowToQuantize& how, const QuantizeOptions& opts = {}) {
  return qforge::quantize(view_of(m), how, opts);
}

// Writes dequantize(q) into `dst` (a matrix, map, ref or block of q's shape) in place; a shape
// mismatch is an Error naming both shapes. Blocks may be passed as temporaries.
template <class Derived>
void dequantize_into(const QArray& q, Eigen::DenseBase<Derived>& dst) {
  static_assert((Derived::Flags & Eigen::LvalueBit) != 0, "dequantize_into: this Eigen expression is read-only");
  qforge::dequantize_into(q, detail::matrix_view_of(dst.derived()));
}
template <class Derived>
void dequantize_into(const QArray& q, Eigen::DenseBase<Derived>&& dst) {
  dequantize_into(q, dst);
}

// dequantize(q) of a rank-2 q as a new Eigen matrix (Options: Eigen::RowMajor or Eigen::ColMajor).
template <int Options = Eigen::RowMajor>
Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Options> dequantize_matrix(const QArray& q) {
  if (q.shape().size() != 2)
    throw_error(Status::kShapeMismatch, "dequantize_matrix: needs a rank-2 array, got shape {}", shape_str(q.shape()));
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Options> out(q.shape()[0], q.shape()[1]);
  dequantize_into(q, out);
  return out;
}

}  // namespace qforge::interop
