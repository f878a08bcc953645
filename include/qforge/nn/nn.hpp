// Umbrella header for qforge::nn: module tree, layers, autograd, losses, optimizers, op sites.
#pragma once

#include "qforge/nn/autograd.hpp"
#include "qforge/nn/context.hpp"
#include "qforge/nn/layers.hpp"
#include "qforge/nn/module.hpp"
#include "qforge/nn/ops.hpp"
#include "qforge/nn/optim.hpp"
