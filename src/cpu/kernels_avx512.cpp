// The AVX-512 (F/BW/VL/DQ + VNNI) kernel set. The int8 dot product and the float reductions use
// 512-bit registers; the block kernels reuse the 256-bit bodies, which under these flags use
// VNNI's vpdpbusd for their int8 dot products.
#include "simd_x86_impl.hpp"

namespace qforge::backend::cpu {
namespace {

float absmax_avx512(const float* x, std::int64_t n) {
  __m512 m = _mm512_setzero_ps();
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const auto mask = static_cast<__mmask16>((1u << (n - i)) - 1u);
    m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps(mask, x + i)));
  }
  return _mm512_reduce_max_ps(m);
}

// vpdpbusd multiplies unsigned by signed bytes: |a| times b with a's sign moved onto b.
std::int32_t dot_s8_avx512(const std::int8_t* a, const std::int8_t* b, std::int64_t n) {
  __m512i acc = _mm512_setzero_si512();
  const __m512i zero = _mm512_setzero_si512();
  for (std::int64_t i = 0; i < n; i += 64) {
    const std::int64_t left = n - i;
    const __mmask64 mask = left >= 64 ? ~__mmask64{0} : ((__mmask64{1} << left) - 1);
    const __m512i va = _mm512_maskz_loadu_epi8(mask, a + i), vb = _mm512_maskz_loadu_epi8(mask, b + i);
    const __mmask64 neg = _mm512_movepi8_mask(va);
    acc = _mm512_dpbusd_epi32(acc, _mm512_abs_epi8(va), _mm512_mask_sub_epi8(vb, neg, zero, vb));
  }
  return _mm512_reduce_add_epi32(acc);
}

float dot_w4_f32_avx512(const std::uint8_t* w, const float* scales, std::int64_t group, const float* a, std::int64_t K) {
  if (group % 32 != 0) return dot_w4_f32_avx2(w, scales, group, a, K);
  __m512 acc = _mm512_setzero_ps();
  for (std::int64_t g = 0; g < K / group; ++g) {
    __m512 p0 = _mm512_setzero_ps(), p1 = _mm512_setzero_ps();
    for (std::int64_t k = g * group; k < (g + 1) * group; k += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k / 2) + 1024, _MM_HINT_T0);
      const __m256i c = unpack32_s4(w + k / 2);
      p0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(c))), _mm512_loadu_ps(a + k), p0);
      p1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(c, 1))),
                           _mm512_loadu_ps(a + k + 16), p1);
    }
    acc = _mm512_fmadd_ps(_mm512_add_ps(p0, p1), _mm512_set1_ps(scales[g]), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

}  // namespace

const KernelSet& avx512_kernels() {
  static const KernelSet set{"avx512",         absmax_avx512,       quantize_s8_avx2,       dot_s8_avx512, fma_i32_avx2,
                             unpack_s4_avx2,   dot_w4_f32_avx512,   encode_q8_0_avx2,       encode_q4_0_avx2,
                             encode_q4_1_avx2, vec_dot_q4_0_q8_0_avx2, vec_dot_q4_1_q8_1_avx2, vec_dot_q8_0_q8_0_avx2,
                             dot_nf4_avx2};
  return set;
}

}  // namespace qforge::backend::cpu
