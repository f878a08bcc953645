// The scalar kernel set: plain loops with the reference semantics. Compiled with baseline flags,
// so it may use the shared headers (formats' reference encoders) directly.
#include <algorithm>
#include <cmath>

#include "kernels.hpp"
#include "qforge/backend/reference.hpp"
#include "qforge/formats/gguf_blocks.hpp"

namespace qforge::backend::cpu {
namespace {

float absmax(const float* x, std::int64_t n) {
  float m = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

void quantize_s8(const float* x, std::int64_t n, float inv, int qmax, std::int8_t* q) {
  const auto hi = static_cast<float>(qmax);
  for (std::int64_t i = 0; i < n; ++i) q[i] = static_cast<std::int8_t>(std::clamp(std::nearbyint(x[i] * inv), -hi, hi));
}

std::int32_t dot_s8(const std::int8_t* a, const std::int8_t* b, std::int64_t n) {
  std::int32_t s = 0;
  for (std::int64_t i = 0; i < n; ++i) s += std::int32_t{a[i]} * b[i];
  return s;
}

void fma_i32(float* acc, const std::int32_t* part, const float* scale, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) acc[i] = std::fma(static_cast<float>(part[i]), scale[i], acc[i]);
}

std::int8_t sext4(unsigned nib) { return static_cast<std::int8_t>(static_cast<int>(nib ^ 8u) - 8); }

void unpack_s4(const std::uint8_t* w, std::int64_t n, std::int8_t* out) {
  for (std::int64_t i = 0; i < n / 2; ++i) {
    out[2 * i] = sext4(w[i] & 0x0Fu);
    out[2 * i + 1] = sext4(w[i] >> 4);
  }
}

float dot_w4_f32(const std::uint8_t* w, const float* scales, std::int64_t group, const float* a, std::int64_t K) {
  float acc = 0.0f;
  for (std::int64_t g = 0; g < K / group; ++g) {
    float part = 0.0f;
    for (std::int64_t k = g * group; k < (g + 1) * group; k += 2) {
      part += a[k] * static_cast<float>(sext4(w[k / 2] & 0x0Fu));
      part += a[k + 1] * static_cast<float>(sext4(w[k / 2] >> 4));
    }
    acc += part * scales[g];
  }
  return acc;
}

void w4_prepare(const float* a, std::int64_t K, std::int64_t, float* out) { std::copy(a, a + K, out); }

float vec_dot_q4_0_q8_0(std::int64_t K, const void* w, const void* x) {
  return ReferenceBackend::vec_dot_blocks(formats::GgmlType::kQ4_0, K, w, x);
}
float vec_dot_q4_1_q8_1(std::int64_t K, const void* w, const void* x) {
  return ReferenceBackend::vec_dot_blocks(formats::GgmlType::kQ4_1, K, w, x);
}
float vec_dot_q8_0_q8_0(std::int64_t K, const void* w, const void* x) {
  return ReferenceBackend::vec_dot_blocks(formats::GgmlType::kQ8_0, K, w, x);
}

float dot_nf4(const std::uint8_t* codes, const float* absmax_, std::int64_t block, const float* x, std::int64_t K,
              const float* table) {
  float acc = 0.0f;
  for (std::int64_t b = 0; b < K / block; ++b) {
    float part = 0.0f;
    for (std::int64_t k = b * block; k < (b + 1) * block; k += 2) {
      part += table[codes[k / 2] >> 4] * x[k];
      part += table[codes[k / 2] & 0x0F] * x[k + 1];
    }
    acc += part * absmax_[b];
  }
  return acc;
}

}  // namespace

const KernelSet& scalar_kernels() {
  static const KernelSet set{"scalar",
                             absmax,
                             quantize_s8,
                             dot_s8,
                             fma_i32,
                             unpack_s4,
                             w4_prepare,
                             dot_w4_f32,
                             formats::quantize_row_q8_0_ref,
                             formats::quantize_row_q4_0_ref,
                             formats::quantize_row_q4_1_ref,
                             vec_dot_q4_0_q8_0,
                             vec_dot_q4_1_q8_1,
                             vec_dot_q8_0_q8_0,
                             w4_prepare,
                             dot_nf4};
  return set;
}

}  // namespace qforge::backend::cpu
