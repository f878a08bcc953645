// The backend registry: backends in priority order (best first, reference last). select(op)
// returns the first backend whose supports(op) accepts it.
//
// Environment: QFORGE_BACKEND=reference|cpu|cuda forces one backend (an op it declines is an
// error, and so is a name no backend in this build has); QFORGE_BACKEND_VERBOSE=1 prints why each
// backend declined an op to stderr. Priority: cuda (when built), cpu (when built), reference.
#pragma once

#include <cstdlib>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "qforge/backend/backend.hpp"
#include "qforge/backend/cpu_features.hpp"
#include "qforge/backend/reference.hpp"
#if defined(QFORGE_HAS_CPU_BACKEND)
#include "qforge/backend/cpu.hpp"
#endif
#if defined(QFORGE_HAS_CUDA_BACKEND)
#include "qforge/backend/cuda.hpp"
#endif

namespace qforge::backend {

class Registry {
 public:
  static Registry& instance() {
    static Registry registry;
    return registry;
  }

  const std::vector<std::unique_ptr<Backend>>& backends() const { return backends_; }

  Backend* find(std::string_view name) const {
    for (const auto& b : backends_)
      if (b->name() == name) return b.get();
    return nullptr;
  }

  // Adds a backend ahead of all others (a user's own backend wins by default).
  void add_front(std::unique_ptr<Backend> b) {
    std::lock_guard lock(mutex_);
    backends_.insert(backends_.begin(), std::move(b));
  }

  // The backends' names in priority order, comma separated (for messages).
  std::string names() const {
    std::string out;
    for (const auto& b : backends_) {
      if (!out.empty()) out += ", ";
      out += b->name();
    }
    return out;
  }

  // The first backend that accepts op; with QFORGE_BACKEND set, that backend or an error.
  Backend& select(const Op& op) const {
    if (const char* forced = std::getenv("QFORGE_BACKEND"); forced && *forced) {
      Backend* b = find(forced);
      if (!b) throw_error(Status::kNotFound, "QFORGE_BACKEND={}: no such backend in this build (have: {})", forced,
                          names());
      if (Support s = b->supports(op); !s)
        throw_error(Status::kUnsupported, "QFORGE_BACKEND={} declines {}: {}", forced, op_name(op), s.reason);
      return *b;
    }
    const bool verbose = std::getenv("QFORGE_BACKEND_VERBOSE") != nullptr;
    for (const auto& b : backends_) {
      Support s = b->supports(op);
      if (s) return *b;
      if (verbose) std::fprintf(stderr, "qforge: backend %s declines %s: %s\n", std::string(b->name()).c_str(),
                                std::string(op_name(op)).c_str(), s.reason.c_str());
    }
    std::string why;
    for (const auto& b : backends_) why += fmt::format("; {}: {}", b->name(), b->supports(op).reason);
    throw_error(Status::kUnsupported, "no backend supports {}{}", op_name(op), why);
  }

 private:
  Registry() {
#if defined(QFORGE_HAS_CUDA_BACKEND)
    backends_.push_back(make_cuda_backend());
#endif
#if defined(QFORGE_HAS_CPU_BACKEND)
    backends_.push_back(make_cpu_backend());
#endif
    backends_.push_back(std::make_unique<ReferenceBackend>());
  }
  std::mutex mutex_;
  std::vector<std::unique_ptr<Backend>> backends_;
};

// Runs op on the selected backend; throws Error if it fails.
inline void run(const Op& op) {
  (void)max_cpu_isa();  // a malformed QFORGE_MAX_CPU_ISA is an error, never a silent fallback
  if (std::string e = op_argument_error(op); !e.empty()) throw_error(Status::kShapeMismatch, "{}: {}", op_name(op), e);
  Backend& b = Registry::instance().select(op);
  if (Status s = b.run(op); s != Status::kSuccess)
    throw_error(s, "backend {} failed on {}: {}", b.name(), op_name(op), to_string(s));
}

}  // namespace qforge::backend
