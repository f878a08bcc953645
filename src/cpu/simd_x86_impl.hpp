// AVX2 kernel bodies, included by kernels_avx2.cpp and kernels_avx512.cpp (which replaces some of
// them with 512-bit versions). Everything here has internal linkage, so each ISA's translation
// unit keeps its own copy compiled with its own flags. Where __AVX512VNNI__ is defined the 256-bit
// int8 dot products use vpdpbusd instead of vpmaddubsw + vpmaddwd.
#pragma once

// GCC 12's AVX-512 intrinsics self-initialise an "undefined" register (`__Y = __Y`), which its
// own -Wuninitialized reports at every use (GCC bug 105593); the warning is false here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "kernels.hpp"

namespace qforge::backend::cpu {
namespace {

inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline std::int32_t hsum256_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}
inline float hmax256(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hmin256(__m256 v) {
  __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_min_ps(s, _mm_movehl_ps(s, s));
  s = _mm_min_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline __m256 abs256(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
inline float fmax1(float a, float b) { return a < b ? b : a; }
inline float fp16_to_f32(std::uint16_t h) { return _cvtsh_ss(h); }
// F16C rounds to nearest even like formats::fp32_to_fp16 (normals, subnormals and overflow).
inline std::uint16_t f32_to_fp16(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

// Sum of products of 32 signed bytes into 8 int32 lanes (x in [-127, 127] when using the sign
// trick: |x| * sign(y, x) never saturates vpmaddubsw).
inline __m256i dot32_s8(__m256i acc, __m256i x, __m256i y) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
#else
  const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
#endif
}
// Unsigned bytes u (0..15) times signed bytes y.
inline __m256i dot32_u4s8(__m256i acc, __m256i u, __m256i y) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, y);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1)));
#endif
}

[[maybe_unused]] float absmax_avx2(const float* x, std::int64_t n) {
  __m256 m = _mm256_setzero_ps();
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, abs256(_mm256_loadu_ps(x + i)));
  float r = hmax256(m);
  for (; i < n; ++i) r = fmax1(r, std::fabs(x[i]));
  return r;
}

// 8 int32 -> clamp -> 8 int8 (low 8 bytes of the result).
inline __m128i clamp_pack8(__m256i v, int qmax) {
  v = _mm256_min_epi32(_mm256_max_epi32(v, _mm256_set1_epi32(-qmax)), _mm256_set1_epi32(qmax));
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_packs_epi16(w, w);
}

void quantize_s8_avx2(const float* x, std::int64_t n, float inv, int qmax, std::int8_t* q) {
  const __m256 vi = _mm256_set1_ps(inv);
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    // cvtps rounds with MXCSR's default mode: to nearest, ties to even (= std::nearbyint).
    const __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), clamp_pack8(r, qmax));
  }
  for (; i < n; ++i) {
    float r = std::nearbyint(x[i] * inv);
    r = r < -qmax ? static_cast<float>(-qmax) : (r > qmax ? static_cast<float>(qmax) : r);
    q[i] = static_cast<std::int8_t>(r);
  }
}

[[maybe_unused]] std::int32_t dot_s8_avx2(const std::int8_t* a, const std::int8_t* b, std::int64_t n) {
  __m256i acc = _mm256_setzero_si256();
  std::int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    acc = dot32_s8(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)),
                   _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i)));
  std::int32_t s = hsum256_epi32(acc);
  for (; i < n; ++i) s += std::int32_t{a[i]} * b[i];
  return s;
}

void fma_i32_avx2(float* acc, const std::int32_t* part, const float* scale, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 p = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(part + i)));
    _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(p, _mm256_loadu_ps(scale + i), _mm256_loadu_ps(acc + i)));
  }
  for (; i < n; ++i) acc[i] = std::fma(static_cast<float>(part[i]), scale[i], acc[i]);
}

// 16 packed bytes -> 32 sign-extended int4 codes in element order.
inline __m256i unpack32_s4(const std::uint8_t* w) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  const __m128i m = _mm_set1_epi8(0x0F), e = _mm_set1_epi8(8);
  const __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
  const __m128i v0 = _mm_sub_epi8(_mm_xor_si128(_mm_unpacklo_epi8(lo, hi), e), e);
  const __m128i v1 = _mm_sub_epi8(_mm_xor_si128(_mm_unpackhi_epi8(lo, hi), e), e);
  return _mm256_set_m128i(v1, v0);
}

void unpack_s4_avx2(const std::uint8_t* w, std::int64_t n, std::int8_t* out) {
  std::int64_t i = 0;
  const __m256i m = _mm256_set1_epi8(0x0F), e = _mm256_set1_epi8(8);
  for (; i + 64 <= n; i += 64) {
    // 32 bytes -> 64 codes: in-lane interleave of low/high nibbles, then put the lanes in order.
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i / 2));
    const __m256i lo = _mm256_sub_epi8(_mm256_xor_si256(_mm256_and_si256(b, m), e), e);
    const __m256i hi = _mm256_sub_epi8(_mm256_xor_si256(_mm256_and_si256(_mm256_srli_epi16(b, 4), m), e), e);
    const __m256i v0 = _mm256_unpacklo_epi8(lo, hi), v1 = _mm256_unpackhi_epi8(lo, hi);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_permute2x128_si256(v0, v1, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i + 32), _mm256_permute2x128_si256(v0, v1, 0x31));
  }
  for (; i + 32 <= n; i += 32) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), unpack32_s4(w + i / 2));
  for (; i < n; i += 2) {
    out[i] = static_cast<std::int8_t>(static_cast<int>((w[i / 2] & 0x0Fu) ^ 8u) - 8);
    out[i + 1] = static_cast<std::int8_t>(static_cast<int>((w[i / 2] >> 4) ^ 8u) - 8);
  }
}

[[maybe_unused]] void w4_prepare_identity(const float* a, std::int64_t K, std::int64_t, float* out) {
  std::memcpy(out, a, static_cast<std::size_t>(K) * sizeof(float));
}

[[maybe_unused]] float dot_w4_f32_avx2(const std::uint8_t* w, const float* scales, std::int64_t group, const float* a, std::int64_t K) {
  __m256 acc = _mm256_setzero_ps();
  float tail = 0.0f;
  for (std::int64_t g = 0; g < K / group; ++g) {
    __m256 p0 = _mm256_setzero_ps(), p1 = _mm256_setzero_ps();
    std::int64_t k = g * group;
    const std::int64_t end = k + group;
    for (; k + 32 <= end; k += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k / 2) + 1024, _MM_HINT_T0);
      const __m256i c = unpack32_s4(w + k / 2);
      const __m128i c0 = _mm256_castsi256_si128(c), c1 = _mm256_extracti128_si256(c, 1);
      p0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c0)), _mm256_loadu_ps(a + k), p0);
      p1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c0, 8))), _mm256_loadu_ps(a + k + 8), p1);
      p0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c1)), _mm256_loadu_ps(a + k + 16), p0);
      p1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c1, 8))), _mm256_loadu_ps(a + k + 24), p1);
    }
    float part = 0.0f;
    for (; k < end; k += 2) {
      part += a[k] * static_cast<float>(static_cast<int>((w[k / 2] & 0x0Fu) ^ 8u) - 8);
      part += a[k + 1] * static_cast<float>(static_cast<int>((w[k / 2] >> 4) ^ 8u) - 8);
    }
    acc = _mm256_fmadd_ps(_mm256_add_ps(p0, p1), _mm256_set1_ps(scales[g]), acc);
    tail += part * scales[g];
  }
  return hsum256(acc) + tail;
}

// roundf (half away from zero) of 8 floats, exactly: truncate, then step away from zero when the
// dropped fraction is at least one half (the fraction v - trunc(v) is exact in float).
inline __m256i roundf_epi32(__m256 v) {
  const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 frac = abs256(_mm256_sub_ps(v, t));
  const __m256 step = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                    _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, _mm256_set1_ps(-0.0f))));
  return _mm256_cvttps_epi32(_mm256_add_ps(t, step));
}

// 4 x 8 int32 (each < 256 in magnitude as int8) -> 32 bytes in order.
inline __m256i pack32_epi8(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
  const __m256i abcd = _mm256_packs_epi16(ab, cd);
  return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

void encode_q8_0_avx2(const float* x, void* dst, std::int64_t n) {
  auto* y = static_cast<Q8_0Block*>(dst);
  for (std::int64_t b = 0; b < n / 32; ++b, x += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(x) + 2048, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(x) + 2112, _MM_HINT_T0);
    const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8), v2 = _mm256_loadu_ps(x + 16),
                 v3 = _mm256_loadu_ps(x + 24);
    const __m256 m = _mm256_max_ps(_mm256_max_ps(abs256(v0), abs256(v1)), _mm256_max_ps(abs256(v2), abs256(v3)));
    const float d = hmax256(m) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f32_to_fp16(d);
    const __m256 vid = _mm256_set1_ps(id);
    const __m256i q = pack32_epi8(roundf_epi32(_mm256_mul_ps(v0, vid)), roundf_epi32(_mm256_mul_ps(v1, vid)),
                                  roundf_epi32(_mm256_mul_ps(v2, vid)), roundf_epi32(_mm256_mul_ps(v3, vid)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs), q);
  }
}

// Nibble codes (int32 lanes, 0..15) of elements 0-15 and 16-31 -> 16 packed bytes.
inline void store_nibbles(std::uint8_t* qs, __m256i l0, __m256i l1, __m256i h0, __m256i h1) {
  const __m256i b0 = _mm256_or_si256(l0, _mm256_slli_epi32(h0, 4));
  const __m256i b1 = _mm256_or_si256(l1, _mm256_slli_epi32(h1, 4));
  const __m256i w = _mm256_packus_epi32(b0, b1);                    // 16 x u16, lanes interleaved
  const __m256i p = _mm256_permute4x64_epi64(w, 0xD8);              // restore order
  const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(qs), bytes);
}
inline __m256i nibble_code(__m256 v) { return _mm256_min_epi32(_mm256_cvttps_epi32(v), _mm256_set1_epi32(15)); }

void encode_q4_0_avx2(const float* x, void* dst, std::int64_t n) {
  auto* y = static_cast<Q4_0Block*>(dst);
  for (std::int64_t b = 0; b < n / 32; ++b, x += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(x) + 2048, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(x) + 2112, _MM_HINT_T0);
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + 8 * i);
    const float amax = hmax256(_mm256_max_ps(_mm256_max_ps(abs256(v[0]), abs256(v[1])),
                                             _mm256_max_ps(abs256(v[2]), abs256(v[3]))));
    // The reference keeps the signed value of the FIRST element of largest magnitude.
    float max = 0.0f;
    if (amax != 0.0f) {
      const __m256 va = _mm256_set1_ps(amax);
      std::uint32_t mask = 0;
      for (int i = 0; i < 4; ++i)
        mask |= static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(abs256(v[i]), va, _CMP_EQ_OQ))) << (8 * i);
      max = x[__builtin_ctz(mask)];
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f32_to_fp16(d);
    const __m256 vid = _mm256_set1_ps(id), half = _mm256_set1_ps(8.5f);
    __m256i q[4];
    for (int i = 0; i < 4; ++i) q[i] = nibble_code(_mm256_add_ps(_mm256_mul_ps(v[i], vid), half));
    store_nibbles(y[b].qs, q[0], q[1], q[2], q[3]);
  }
}

void encode_q4_1_avx2(const float* x, void* dst, std::int64_t n) {
  auto* y = static_cast<Q4_1Block*>(dst);
  for (std::int64_t b = 0; b < n / 32; ++b, x += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(x) + 2048, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(x) + 2112, _MM_HINT_T0);
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + 8 * i);
    float min = hmin256(_mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3])));
    float max = hmax256(_mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3])));
    if (min == 0.0f || max == 0.0f) {
      // Signed zeros: the reference keeps the first of equal values, which min/max_ps do not.
      min = 3.402823466e+38f;
      max = -3.402823466e+38f;
      for (int j = 0; j < 32; ++j) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
      }
    }
    const float d = (max - min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f32_to_fp16(d);
    y[b].m = f32_to_fp16(min);
    const __m256 vid = _mm256_set1_ps(id), vmin = _mm256_set1_ps(min), half = _mm256_set1_ps(0.5f);
    __m256i q[4];
    for (int i = 0; i < 4; ++i) q[i] = nibble_code(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v[i], vmin), vid), half));
    store_nibbles(y[b].qs, q[0], q[1], q[2], q[3]);
  }
}

// 16 Q4 bytes -> 32 unsigned nibbles in element order (low nibbles = elements 0-15).
inline __m256i q4_nibbles(const std::uint8_t* qs) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

// One Q4_0 x Q8_0 block: 8 int32 partial sums scaled by d_w * d_x.
inline __m256 q4_0_q8_0_block(const Q4_0Block& w, const Q8_0Block& x) {
  const __m256i wq = _mm256_sub_epi8(q4_nibbles(w.qs), _mm256_set1_epi8(8));
  const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs));
  // Sign trick on the weights (|w| <= 8 fits u8; activations carry the sign).
  const __m256i s = dot32_s8(_mm256_setzero_si256(), wq, xq);
  return _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(fp16_to_f32(w.d) * fp16_to_f32(x.d)));
}

float vec_dot_q4_0_q8_0_avx2(std::int64_t K, const void* wv, const void* xv) {
  const auto* w = static_cast<const Q4_0Block*>(wv);
  const auto* x = static_cast<const Q8_0Block*>(xv);
  // Two accumulators: one add chain per block would cap the loop at the FP add latency.
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const std::int64_t nb = K / 32;
  std::int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    // Weights stream from memory once: fetch ~1 KB ahead (the hardware prefetcher alone leaves
    // the loop waiting on every line).
    _mm_prefetch(reinterpret_cast<const char*>(w + b) + 1024, _MM_HINT_T0);
    acc0 = _mm256_add_ps(acc0, q4_0_q8_0_block(w[b], x[b]));
    acc1 = _mm256_add_ps(acc1, q4_0_q8_0_block(w[b + 1], x[b + 1]));
  }
  if (b < nb) acc0 = _mm256_add_ps(acc0, q4_0_q8_0_block(w[b], x[b]));
  return hsum256(_mm256_add_ps(acc0, acc1));
}

float vec_dot_q4_1_q8_1_avx2(std::int64_t K, const void* wv, const void* xv) {
  const auto* w = static_cast<const Q4_1Block*>(wv);
  const auto* x = static_cast<const Q8_1Block*>(xv);
  __m256 acc = _mm256_setzero_ps();
  float mins = 0.0f;
  for (std::int64_t b = 0; b < K / 32; ++b) {
    _mm_prefetch(reinterpret_cast<const char*>(w + b) + 1024, _MM_HINT_T0);
    const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs));
    const __m256i s = dot32_u4s8(_mm256_setzero_si256(), q4_nibbles(w[b].qs), xq);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(fp16_to_f32(w[b].d) * fp16_to_f32(x[b].d)), acc);
    mins += fp16_to_f32(w[b].m) * fp16_to_f32(x[b].s);
  }
  return hsum256(acc) + mins;
}

float vec_dot_q8_0_q8_0_avx2(std::int64_t K, const void* wv, const void* xv) {
  const auto* w = static_cast<const Q8_0Block*>(wv);
  const auto* x = static_cast<const Q8_0Block*>(xv);
  __m256 acc = _mm256_setzero_ps();
  for (std::int64_t b = 0; b < K / 32; ++b) {
    _mm_prefetch(reinterpret_cast<const char*>(w + b) + 1024, _MM_HINT_T0);
    // Q8_0 codes lie in [-127, 127], so the sign trick never saturates.
    const __m256i s = dot32_s8(_mm256_setzero_si256(), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs)),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs)));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(fp16_to_f32(w[b].d) * fp16_to_f32(x[b].d)), acc);
  }
  return hsum256(acc);
}

// 16-entry float table lookup with two 8-entry permutes (bit 3 of the index selects the half).
inline __m256 lookup16(__m256 t0, __m256 t1, __m256i idx) {
  const __m256 lo = _mm256_permutevar8x32_ps(t0, idx), hi = _mm256_permutevar8x32_ps(t1, idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

[[maybe_unused]] float dot_nf4_avx2(const std::uint8_t* codes, const float* absmax, std::int64_t block, const float* x, std::int64_t K,
                   const float* table) {
  const __m256 t0 = _mm256_loadu_ps(table), t1 = _mm256_loadu_ps(table + 8);
  __m256 acc = _mm256_setzero_ps();
  float tail = 0.0f;
  for (std::int64_t b = 0; b < K / block; ++b) {
    __m256 p = _mm256_setzero_ps();
    std::int64_t k = b * block;
    const std::int64_t end = k + block;
    for (; k + 16 <= end; k += 16) {
      if (k % 128 == 0) _mm_prefetch(reinterpret_cast<const char*>(codes + k / 2) + 1024, _MM_HINT_T0);
      const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + k / 2)));
      const __m256 vh = lookup16(t0, t1, _mm256_srli_epi32(bytes, 4));
      const __m256 vl = lookup16(t0, t1, _mm256_and_si256(bytes, _mm256_set1_epi32(15)));
      const __m256 a = _mm256_unpacklo_ps(vh, vl), c = _mm256_unpackhi_ps(vh, vl);
      p = _mm256_fmadd_ps(_mm256_permute2f128_ps(a, c, 0x20), _mm256_loadu_ps(x + k), p);
      p = _mm256_fmadd_ps(_mm256_permute2f128_ps(a, c, 0x31), _mm256_loadu_ps(x + k + 8), p);
    }
    float part = 0.0f;
    for (; k < end; k += 2) part += table[codes[k / 2] >> 4] * x[k] + table[codes[k / 2] & 0x0F] * x[k + 1];
    acc = _mm256_fmadd_ps(p, _mm256_set1_ps(absmax[b]), acc);
    tail += part * absmax[b];
  }
  return hsum256(acc) + tail;
}

}  // namespace
}  // namespace qforge::backend::cpu
