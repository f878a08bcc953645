// qforge umbrella header: the header-only core. Include area headers directly to compile less.
#pragma once

#include "qforge/core/calibration.hpp"
#include "qforge/core/error.hpp"
#include "qforge/core/layout.hpp"
#include "qforge/core/matmul.hpp"
#include "qforge/core/numerics.hpp"
#include "qforge/core/qarray.hpp"
#include "qforge/core/qtype.hpp"
#include "qforge/core/stats.hpp"
#include "qforge/core/tensor.hpp"
#include "qforge/backend/registry.hpp"
