// Tensor<T>: a contiguous, row-major, owning N-d array.
//
// Why not xtensor here: every heavy operation hands raw pointers plus shapes to a backend, so the
// core needs exactly one layout (contiguous row-major) with explicit ownership, and it must stay
// cheap to compile in every translation unit. Linear algebra maps these buffers into Eigen
// (core/eigen.hpp); xtensor users adapt them with xt::adapt(t.data(), t.size(), ...).
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <numeric>
#include <span>
#include <string>
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

}  // namespace qforge
