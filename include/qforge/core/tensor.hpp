// Tensor<T>: a contiguous, row-major, owning N-d array; TensorView<T>: a non-owning view of one
// in someone else's memory, contiguous or strided.
//
// Why not xtensor here: every heavy operation hands raw pointers plus shapes to a backend, so the
// core needs exactly one layout (contiguous row-major) with explicit ownership, and it must stay
// cheap to compile in every translation unit. Linear algebra maps these buffers into Eigen
// (core/eigen.hpp); xtensor users adapt them with xt::adapt(t.data(), t.size(), ...), and hand
// their own arrays in as TensorViews (include/qforge/interop/).
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <numeric>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "qforge/core/error.hpp"

namespace qforge {

using Shape = std::vector<std::int64_t>;

inline std::int64_t numel(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
}

inline std::string shape_str(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// Row-major strides in elements.
inline Shape strides_of(const Shape& shape) {
  Shape strides(shape.size(), 1);
  for (std::size_t i = shape.size(); i-- > 1;) strides[i - 1] = strides[i] * shape[i];
  return strides;
}

// Normalises a possibly negative axis (-1 = last) and checks it is in range.
inline int normalize_axis(int axis, std::size_t rank, std::string_view what = "tensor") {
  const int r = static_cast<int>(rank);
  const int a = axis < 0 ? axis + r : axis;
  if (a < 0 || a >= r)
    throw_error(Status::kInvalidArgument, "{}: axis {} is out of range for rank {}", what, axis, r);
  return a;
}

template <class T>
class Tensor {
 public:
  using value_type = T;

  Tensor() = default;
  explicit Tensor(Shape shape, T fill = T{}) : shape_(std::move(shape)) {
    check_shape();
    data_.assign(static_cast<std::size_t>(numel(shape_)), fill);
  }
  Tensor(Shape shape, std::vector<T> data) : shape_(std::move(shape)), data_(std::move(data)) {
    check_shape();
    if (static_cast<std::int64_t>(data_.size()) != numel(shape_))
      throw_error(Status::kShapeMismatch, "tensor of shape {} needs {} values, got {}",
                  shape_str(shape_), numel(shape_), data_.size());
  }
  Tensor(Shape shape, std::initializer_list<T> data) : Tensor(std::move(shape), std::vector<T>(data)) {}

  const Shape& shape() const noexcept { return shape_; }
  std::int64_t dim(int axis) const { return shape_[static_cast<std::size_t>(normalize_axis(axis, shape_.size()))]; }
  int rank() const noexcept { return static_cast<int>(shape_.size()); }
  std::int64_t size() const noexcept { return static_cast<std::int64_t>(data_.size()); }
  bool empty() const noexcept { return data_.empty(); }

  T* data() noexcept { return data_.data(); }
  const T* data() const noexcept { return data_.data(); }
  std::span<T> span() noexcept { return data_; }
  std::span<const T> span() const noexcept { return data_; }
  std::vector<T>& vec() noexcept { return data_; }
  const std::vector<T>& vec() const noexcept { return data_; }

  T& operator[](std::int64_t i) noexcept { return data_[static_cast<std::size_t>(i)]; }
  const T& operator[](std::int64_t i) const noexcept { return data_[static_cast<std::size_t>(i)]; }
  // 2-D convenience for [rows, cols] matrices, the common case for weights.
  T& at(std::int64_t r, std::int64_t c) noexcept { return data_[static_cast<std::size_t>(r * shape_.back() + c)]; }
  const T& at(std::int64_t r, std::int64_t c) const noexcept {
    return data_[static_cast<std::size_t>(r * shape_.back() + c)];
  }

  // Same data, new shape with the same element count.
  Tensor reshaped(Shape shape) const& { return Tensor(std::move(shape), data_); }
  Tensor reshaped(Shape shape) && { return Tensor(std::move(shape), std::move(data_)); }

  friend bool operator==(const Tensor& a, const Tensor& b) { return a.shape_ == b.shape_ && a.data_ == b.data_; }

 private:
  void check_shape() const {
    for (auto d : shape_)
      if (d < 0) throw_error(Status::kShapeMismatch, "negative dimension in shape {}", shape_str(shape_));
  }
  Shape shape_;
  std::vector<T> data_;
};

using TensorF = Tensor<float>;

// A non-owning view of an N-d array: a data pointer, a shape, and strides in elements (any sign;
// the stride of a size-1 axis is never used). Elements are addressed by their row-major flat index,
// the order every quantizer walks, so a column-major or sliced array is read in place and its
// logical shape is kept: a view never transposes. The caller keeps the memory alive.
template <class T>
class TensorView {
 public:
  using value_type = T;

  // Contiguous row-major memory.
  TensorView(T* data, Shape shape) : TensorView(data, shape, strides_of(shape)) {}
  TensorView(T* data, Shape shape, Shape strides) : data_(data), shape_(std::move(shape)), strides_(std::move(strides)) {
    if (strides_.size() != shape_.size())
      throw_error(Status::kShapeMismatch, "tensor view: {} strides for shape {}", strides_.size(), shape_str(shape_));
    for (auto d : shape_)
      if (d < 0) throw_error(Status::kShapeMismatch, "tensor view: negative dimension in shape {}", shape_str(shape_));
    if (data_ == nullptr && numel(shape_) > 0)
      throw_error(Status::kInvalidArgument, "tensor view: null data for shape {}", shape_str(shape_));
  }
  // Every Tensor is a contiguous view of itself (a const Tensor gives a view of const elements).
  template <class U>
    requires std::is_same_v<std::remove_const_t<T>, U>
  TensorView(Tensor<U>& t) : TensorView(t.data(), t.shape()) {}
  template <class U>
    requires(std::is_same_v<const U, T>)
  TensorView(const Tensor<U>& t) : TensorView(t.data(), t.shape()) {}

  T* data() const noexcept { return data_; }
  const Shape& shape() const noexcept { return shape_; }
  const Shape& strides() const noexcept { return strides_; }
  int rank() const noexcept { return static_cast<int>(shape_.size()); }
  std::int64_t size() const { return numel(shape_); }

  // True when element i sits at data()[i]: row-major with no gaps (size-1 axes' strides ignored).
  bool is_contiguous() const {
    std::int64_t expected = 1;
    for (std::size_t a = shape_.size(); a-- > 0;) {
      if (shape_[a] == 1) continue;
      if (strides_[a] != expected) return false;
      expected *= shape_[a];
    }
    return true;
  }

  // The element with row-major flat index `flat`.
  T& operator[](std::int64_t flat) const noexcept {
    std::int64_t offset = 0;
    for (std::size_t a = shape_.size(); a-- > 0;) {
      offset += (flat % shape_[a]) * strides_[a];
      flat /= shape_[a];
    }
    return data_[offset];
  }

 private:
  T* data_ = nullptr;
  Shape shape_;
  Shape strides_;
};

// Calls f with the fastest element source that reads `view` by row-major flat index: the raw
// pointer when the view is contiguous, the strided view otherwise. Both paths do the same
// arithmetic on the same values, so results do not depend on the memory layout.
template <class T, class F>
decltype(auto) with_elements(const TensorView<T>& view, F&& f) {
  if (view.is_contiguous()) return f(view.data());
  return f(view);
}

}  // namespace qforge
