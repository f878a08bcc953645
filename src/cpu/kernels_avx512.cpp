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

void fma_i32_avx512(float* acc, const std::int32_t* part, const float* scale, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 p = _mm512_cvtepi32_ps(_mm512_loadu_si512(part + i));
    _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(p, _mm512_loadu_ps(scale + i), _mm512_loadu_ps(acc + i)));
  }
  fma_i32_avx2(acc + i, part + i, scale + i, n - i);
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

// Full 32-element chunks of each group: evens then odds (the nibble order of 16 packed bytes).
void w4_prepare_avx512(const float* a, std::int64_t K, std::int64_t group, float* out) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (std::int64_t g0 = 0; g0 < K; g0 += group) {
    std::int64_t k = g0;
    for (; k + 32 <= g0 + group; k += 32) {
      const __m512 lo = _mm512_loadu_ps(a + k), hi = _mm512_loadu_ps(a + k + 16);
      _mm512_storeu_ps(out + k, _mm512_permutex2var_ps(lo, even, hi));
      _mm512_storeu_ps(out + k + 16, _mm512_permutex2var_ps(lo, odd, hi));
    }
    for (; k < g0 + group; ++k) out[k] = a[k];
  }
}

// Codes become floats by a 16-entry table lookup (vpermps on the nibble): no sign extension,
// no int-to-float conversion.
float dot_w4_f32_avx512(const std::uint8_t* w, const float* scales, std::int64_t group, const float* a, std::int64_t K) {
  const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1);
  const __m128i mask = _mm_set1_epi8(0x0F);
  __m512 acc = _mm512_setzero_ps();
  float tail = 0.0f;
  for (std::int64_t g = 0; g < K / group; ++g) {
    __m512 p0 = _mm512_setzero_ps(), p1 = _mm512_setzero_ps();
    std::int64_t k = g * group;
    const std::int64_t end = k + group;
    for (; k + 32 <= end; k += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k / 2) + 1024, _MM_HINT_T0);
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k / 2));
      const __m512i lo = _mm512_cvtepu8_epi32(_mm_and_si128(b, mask));
      const __m512i hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), mask));
      p0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(lo, table), _mm512_loadu_ps(a + k), p0);
      p1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(hi, table), _mm512_loadu_ps(a + k + 16), p1);
    }
    float part = 0.0f;
    for (; k < end; k += 2) {
      part += a[k] * static_cast<float>(static_cast<int>((w[k / 2] & 0x0Fu) ^ 8u) - 8);
      part += a[k + 1] * static_cast<float>(static_cast<int>((w[k / 2] >> 4) ^ 8u) - 8);
    }
    acc = _mm512_fmadd_ps(_mm512_add_ps(p0, p1), _mm512_set1_ps(scales[g]), acc);
    tail += part * scales[g];
  }
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
  return hsum256(h) + tail;
}

// NF4 packs element 2i in the HIGH nibble: on evens-then-odds x, high nibbles meet the evens.
float dot_nf4_avx512(const std::uint8_t* codes, const float* absmax, std::int64_t block, const float* x, std::int64_t K,
                     const float* table) {
  const __m512 t = _mm512_loadu_ps(table);
  const __m128i mask = _mm_set1_epi8(0x0F);
  __m512 acc = _mm512_setzero_ps();
  float tail = 0.0f;
  for (std::int64_t b = 0; b < K / block; ++b) {
    __m512 p0 = _mm512_setzero_ps(), p1 = _mm512_setzero_ps();
    std::int64_t k = b * block;
    const std::int64_t end = k + block;
    for (; k + 32 <= end; k += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(codes + k / 2) + 1024, _MM_HINT_T0);
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k / 2));
      const __m512i hi = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(v, 4), mask));
      const __m512i lo = _mm512_cvtepu8_epi32(_mm_and_si128(v, mask));
      p0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(hi, t), _mm512_loadu_ps(x + k), p0);
      p1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(lo, t), _mm512_loadu_ps(x + k + 16), p1);
    }
    float part = 0.0f;
    for (; k < end; k += 2) part += table[codes[k / 2] >> 4] * x[k] + table[codes[k / 2] & 0x0F] * x[k + 1];
    acc = _mm512_fmadd_ps(_mm512_add_ps(p0, p1), _mm512_set1_ps(absmax[b]), acc);
    tail += part * absmax[b];
  }
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
  return hsum256(h) + tail;
}

}  // namespace

const KernelSet& avx512_kernels() {
  static const KernelSet set{"avx512",         absmax_avx512,       quantize_s8_avx2,       dot_s8_avx512, fma_i32_avx512,
                             unpack_s4_avx2,   w4_prepare_avx512, dot_w4_f32_avx512,   encode_q8_0_avx2,       encode_q4_0_avx2,
                             encode_q4_1_avx2, vec_dot_q4_0_q8_0_avx2, vec_dot_q4_1_q8_1_avx2, vec_dot_q8_0_q8_0_avx2,
                             w4_prepare_avx512, dot_nf4_avx512};
  return set;
}

}  // namespace qforge::backend::cpu
