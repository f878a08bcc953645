// Host-only factory for the CUDA backend (target qforge::cuda). No CUDA type appears here, so
// users never include cuda_runtime.h through qforge.
#pragma once

#include <memory>

#include "qforge/backend/backend.hpp"

namespace qforge::backend {
// Number of CUDA devices visible to this process (0 when none, or no driver).
int cuda_device_count();
std::unique_ptr<Backend> make_cuda_backend();
}  // namespace qforge::backend
