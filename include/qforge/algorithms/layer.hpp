// One quantized [out, in] matrix as every layer algorithm returns it, and RTN.
//
// codes are signed int8 in original column order; scales/zeros/offsets are [rows, groups] where
// the group of original column j is group_index[j] (j / g, or invperm[j] / g under act-order
// with dynamic groups: the g_idx of AutoGPTQ, algorithms.md §1.4).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qforge/algorithms/grid.hpp"

namespace qforge::algorithms {

struct QuantizedLayer {
  std::int64_t rows = 0, cols = 0, group_size = 0, groups = 0;
  GridSpec grid;
  std::vector<float> weight;          // dequantized [rows, cols]
  std::vector<std::int8_t> codes;     // [rows, cols]
  std::vector<GroupParams> params;    // [rows, groups]
  std::vector<std::int32_t> group_index;  // [cols]
  std::vector<std::int32_t> perm;     // act-order permutation (empty without act-order)
  double loss = 0.0;                  // the algorithm's own objective (GPTQ: sum (w-q)^2/d^2/2)
  double damp_used = 0.0;             // absolute damping added to the Hessian diagonal
  std::vector<std::string> notes;     // retries, fallbacks: what the report should say

  const GroupParams& param(std::int64_t r, std::int64_t j) const {
    return params[static_cast<std::size_t>(r * groups + group_index[static_cast<std::size_t>(j)])];
  }
  // Recomputes weight from codes and params (used after algorithms that edit codes/params).
  void dequantize_all() {
    weight.assign(static_cast<std::size_t>(rows * cols), 0.0f);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < cols; ++j) {
        const auto k = static_cast<std::size_t>(r * cols + j);
        weight[k] = dequantize_code(grid, param(r, j), codes[k]);
      }
  }
};

inline QuantizedLayer make_layer(const GridSpec& grid, std::int64_t rows, std::int64_t cols, std::string_view site) {
  QuantizedLayer q;
  q.rows = rows;
  q.cols = cols;
  q.grid = grid;
  q.group_size = effective_group_size(grid, cols, site);
  q.groups = cols / q.group_size;
  q.weight.assign(static_cast<std::size_t>(rows * cols), 0.0f);
  q.codes.assign(static_cast<std::size_t>(rows * cols), 0);
  q.params.assign(static_cast<std::size_t>(rows * q.groups), GroupParams{});
  q.group_index.resize(static_cast<std::size_t>(cols));
  for (std::int64_t j = 0; j < cols; ++j) q.group_index[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(j / q.group_size);
  return q;
}

// Round to nearest on the grid: per row and group, params from the group's own values.
inline QuantizedLayer quantize_rtn(const float* w, std::int64_t rows, std::int64_t cols, const GridSpec& grid,
                                   std::string_view site = "layer") {
  QuantizedLayer q = make_layer(grid, rows, cols, site);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t t = 0; t < q.groups; ++t) {
      const float* x = w + r * cols + t * q.group_size;
      const GroupParams p = find_params(grid, {x, static_cast<std::size_t>(q.group_size)});
      q.params[static_cast<std::size_t>(r * q.groups + t)] = p;
      for (std::int64_t j = 0; j < q.group_size; ++j) {
        const auto k = static_cast<std::size_t>(r * cols + t * q.group_size + j);
        q.codes[k] = static_cast<std::int8_t>(quantize_code(grid, p, x[j]));
        q.weight[k] = dequantize_code(grid, p, q.codes[k]);
      }
    }
  return q;
}

}  // namespace qforge::algorithms
