// Running statistics for static-range quantization and calibration.
//
// RunningMean is Qwix's SimpleMovingAverage: {count, sum}; value() = sum / count, the current
// batch included. It is a cumulative mean, not an EMA. Two RunningMeans merge exactly (counts
// and sums add), so statistics gathered on shards of the calibration data can be combined.
// ExponentialMovingAverage is offered as an option; it does not merge.
#pragma once

#include <cstdint>
#include <string_view>

#include "qforge/core/tensor.hpp"

namespace qforge {

class RunningMean {
 public:
  RunningMean() = default;
  explicit RunningMean(Shape shape) : sum_(std::move(shape)) {}

  void update(const TensorF& value, std::string_view what = "statistic") {
    if (count_ == 0 && sum_.empty() && sum_.shape().empty()) sum_ = TensorF(value.shape());
    check_shape(value.shape(), what);
    for (std::int64_t i = 0; i < value.size(); ++i) sum_[i] += value[i];
    ++count_;
  }
  void merge(const RunningMean& other, std::string_view what = "statistic") {
    if (other.count_ == 0) return;
    if (count_ == 0) {
      *this = other;
      return;
    }
    check_shape(other.sum_.shape(), what);
    for (std::int64_t i = 0; i < sum_.size(); ++i) sum_[i] += other.sum_[i];
    count_ += other.count_;
  }
  TensorF value() const {
    if (count_ == 0) throw_error(Status::kInvalidArgument, "running mean has no samples yet");
    TensorF v(sum_.shape());
    for (std::int64_t i = 0; i < v.size(); ++i) v[i] = sum_[i] / static_cast<float>(count_);
    return v;
  }
  std::int64_t count() const noexcept { return count_; }
  const TensorF& sum() const noexcept { return sum_; }
  // Restores a saved state (e.g. from a statistics file).
  static RunningMean from_state(std::int64_t count, TensorF sum) {
    RunningMean m;
    m.count_ = count;
    m.sum_ = std::move(sum);
    return m;
  }

 private:
  void check_shape(const Shape& s, std::string_view what) const {
    if (s != sum_.shape())
      throw_error(Status::kShapeMismatch, "{}: update of shape {} does not match running shape {}", what,
                  shape_str(s), shape_str(sum_.shape()));
  }
  std::int64_t count_ = 0;
  TensorF sum_;
};

class ExponentialMovingAverage {
 public:
  explicit ExponentialMovingAverage(double decay = 0.99) : decay_(decay) {
    if (!(decay >= 0.0 && decay < 1.0))
      throw_error(Status::kInvalidArgument, "EMA decay {} must be in [0, 1)", decay);
  }
  void update(const TensorF& v, std::string_view what = "statistic") {
    if (!initialized_) {
      value_ = v;
      initialized_ = true;
      return;
    }
    if (v.shape() != value_.shape())
      throw_error(Status::kShapeMismatch, "{}: update of shape {} does not match EMA shape {}", what,
                  shape_str(v.shape()), shape_str(value_.shape()));
    const auto d = static_cast<float>(decay_);
    for (std::int64_t i = 0; i < v.size(); ++i) value_[i] = d * value_[i] + (1.0f - d) * v[i];
  }
  const TensorF& value() const {
    if (!initialized_) throw_error(Status::kInvalidArgument, "moving average has no samples yet");
    return value_;
  }
  bool initialized() const noexcept { return initialized_; }

 private:
  double decay_;
  bool initialized_ = false;
  TensorF value_;
};

}  // namespace qforge
