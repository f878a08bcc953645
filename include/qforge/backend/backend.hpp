// Backend: the one interface every heavy operation goes through.
//
// Contract (oneDNN implementation lists + ggml supports_op + CUTLASS can_implement/run):
//  - supports(op) says whether this backend can run op, and if not, why (a reason string);
//  - run(op) executes it and returns a Status; backends never throw and never print.
// The registry (registry.hpp) picks the first backend, in priority order, that supports an op.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "qforge/backend/ops.hpp"
#include "qforge/core/error.hpp"

namespace qforge::backend {

enum class DeviceKind { kCpu, kCuda };

struct Support {
  bool ok = true;
  std::string reason;  // why not, when !ok
  static Support yes() { return {}; }
  static Support no(std::string why) { return {false, std::move(why)}; }
  explicit operator bool() const noexcept { return ok; }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  virtual DeviceKind device_kind() const = 0;
  virtual Support supports(const Op& op) const = 0;
  virtual Status run(const Op& op) = 0;
};

}  // namespace qforge::backend
