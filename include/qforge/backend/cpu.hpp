// Host-only factory for the compiled CPU backend (target qforge::cpu). Linking qforge::cpu
// defines QFORGE_HAS_CPU_BACKEND for every translation unit, and the registry registers it.
#pragma once

#include <memory>

#include "qforge/backend/backend.hpp"

namespace qforge::backend {
std::unique_ptr<Backend> make_cpu_backend();
}  // namespace qforge::backend
