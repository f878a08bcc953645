// ReferenceBackend: plain scalar loops that define the semantics of every op. Always present,
// always last in the registry's priority list; every other backend is tested against it.
#pragma once

#include <algorithm>
#include <cstdint>

#include "qforge/backend/backend.hpp"

namespace qforge::backend {

class ReferenceBackend final : public Backend {
 public:
  std::string_view name() const override { return "reference"; }
  DeviceKind device_kind() const override { return DeviceKind::kCpu; }
  Support supports(const Op&) const override { return Support::yes(); }
  Status run(const Op& op) override {
    return std::visit([](const auto& o) { return run_op(o); }, op);
  }

  // Float reductions accumulate in double, so the reference is at least as accurate as any
  // float32 kernel and tolerances can be derived from the kernel's own error alone.
  static Status run_op(const GemmF32Op& o) {
    for (std::int64_t m = 0; m < o.M; ++m)
      for (std::int64_t n = 0; n < o.N; ++n) {
        double acc = 0;
        for (std::int64_t k = 0; k < o.K; ++k) acc += double(o.a[m * o.lda + k]) * o.b[n * o.ldb + k];
        float& d = o.dst[m * o.ldd + n];
        d = o.accumulate ? static_cast<float>(d + acc) : static_cast<float>(acc);
      }
    return Status::kSuccess;
  }
  static Status run_op(const SyrkOp& o) {
    for (std::int64_t i = 0; i < o.K; ++i)
      for (std::int64_t j = i; j < o.K; ++j) {
        double acc = 0;
        for (std::int64_t t = 0; t < o.T; ++t) acc += double(o.x[t * o.ldx + i]) * o.x[t * o.ldx + j];
        const auto v = static_cast<float>(o.alpha * acc);
        o.h[i * o.K + j] += v;
        if (j != i) o.h[j * o.K + i] += v;
      }
    return Status::kSuccess;
  }
  static Status run_op(const GemmS8S8S32Op& o) {
    for (std::int64_t m = 0; m < o.M; ++m)
      for (std::int64_t n = 0; n < o.N; ++n) {
        std::int32_t acc = 0;
        for (std::int64_t k = 0; k < o.K; ++k) acc += std::int32_t{o.a[m * o.K + k]} * o.b[n * o.K + k];
        o.dst[m * o.N + n] = acc;
      }
    return Status::kSuccess;
  }
  static Status run_op(const QuantizedMatmulOp& o) {
    const TensorF d = integer_matmul(*o.a, *o.b);
    std::copy(d.data(), d.data() + d.size(), o.dst);
    return Status::kSuccess;
  }
};

}  // namespace qforge::backend
