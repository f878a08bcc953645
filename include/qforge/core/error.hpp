// qforge::Error and qforge::Status: how the public API reports misuse.
//
// Public functions throw qforge::Error (a std::runtime_error carrying a Status) for user mistakes:
// a bad rule, a shape mismatch, a corrupt file. The message always names what was wrong and where
// (tensor, rule index, file, site). Kernels and backends return Status and never throw.
// QFORGE_ASSERT is for broken internal invariants only; it calls a replaceable abort handler.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace qforge {

enum class Status {
  kSuccess = 0,
  kInvalidArgument,  // a value the API cannot accept (bad qtype string, bad calibration method)
  kShapeMismatch,    // shapes, tiles or axes that do not fit together
  kUnsupported,      // a valid request this build or backend cannot serve
  kIoError,          // the operating system refused a read or write
  kFormatError,      // a file's content breaks its format's rules
  kNumericalError,   // NaN/Inf in data, a Hessian that is not positive definite
  kNotFound,         // a tensor, key or site that does not exist
  kInternal,         // a bug in qforge
};

constexpr std::string_view to_string(Status s) noexcept {
  switch (s) {
    case Status::kSuccess: return "success";
    case Status::kInvalidArgument: return "invalid argument";
    case Status::kShapeMismatch: return "shape mismatch";
    case Status::kUnsupported: return "unsupported";
    case Status::kIoError: return "I/O error";
    case Status::kFormatError: return "format error";
    case Status::kNumericalError: return "numerical error";
    case Status::kNotFound: return "not found";
    case Status::kInternal: return "internal error";
  }
  return "unknown status";
}

class Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  Status status() const noexcept { return status_; }

 private:
  Status status_;
};

// throw_error(Status::kShapeMismatch, "tensor '{}': tile {} does not divide axis {}", ...)
template <class... Args>
[[noreturn]] void throw_error(Status status, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(status, fmt::format(format, std::forward<Args>(args)...));
}

// ---- invariant checks ------------------------------------------------------------------------
using AbortHandler = void (*)(const char* file, int line, const char* message);

namespace detail {
inline void default_abort_handler(const char* file, int line, const char* message) {
  std::fprintf(stderr, "qforge: internal invariant violated at %s:%d: %s\n", file, line, message);
  std::abort();
}
inline AbortHandler& abort_handler_slot() {
  static AbortHandler handler = &default_abort_handler;
  return handler;
}
}  // namespace detail

// Replaces the handler QFORGE_ASSERT calls (e.g. to throw in a test harness). Returns the old one.
inline AbortHandler set_abort_handler(AbortHandler handler) {
  return std::exchange(detail::abort_handler_slot(), handler ? handler : &detail::default_abort_handler);
}

}  // namespace qforge

#define QFORGE_ASSERT(cond)                                                          \
  do {                                                                               \
    if (!(cond)) ::qforge::detail::abort_handler_slot()(__FILE__, __LINE__, #cond);  \
  } while (0)
