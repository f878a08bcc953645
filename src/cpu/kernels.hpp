// The CPU backend's kernel table (FBGEMM's Ref/Avx2/Avx512 sets): one KernelSet per instruction
// set, each defined in its own translation unit (kernels_scalar.cpp, kernels_avx2.cpp,
// kernels_avx512.cpp) compiled with that ISA's flags. cpu_backend.cpp picks the set from
// active_isa() at every op, so QFORGE_MAX_CPU_ISA / set_max_cpu_isa() switch paths at run time.
//
// This header includes nothing but <cstdint>: an ISA translation unit must not instantiate
// inline functions from shared headers (fmt, formats), because the linker could then keep the
// AVX-512-compiled copy for every caller. The block structs below mirror formats/gguf_blocks.hpp
// (static_asserts in cpu_backend.cpp check the layouts agree).
#pragma once

#include <cstdint>

namespace qforge::backend::cpu {

// Packed (alignment 1): block buffers start at any byte offset (tensor data in files, callers'
// pointers), and a uint16 field read in place at an odd address would be undefined behaviour.
// x86 loads unaligned data at no cost, so the kernels lose nothing.
struct __attribute__((packed)) Q4_0Block { std::uint16_t d; std::uint8_t qs[16]; };
struct __attribute__((packed)) Q4_1Block { std::uint16_t d, m; std::uint8_t qs[16]; };
struct __attribute__((packed)) Q8_0Block { std::uint16_t d; std::int8_t qs[32]; };
struct __attribute__((packed)) Q8_1Block { std::uint16_t d, s; std::int8_t qs[32]; };

struct KernelSet {
  const char* name;
  // max |x[i]| over n floats (0 for n = 0).
  float (*absmax)(const float* x, std::int64_t n);
  // q[i] = clamp(rne(x[i] * inv), -qmax, qmax).
  void (*quantize_s8)(const float* x, std::int64_t n, float inv, int qmax, std::int8_t* q);
  // Exact sum a[i] * b[i]; codes of a must lie in [-127, 127].
  std::int32_t (*dot_s8)(const std::int8_t* a, const std::int8_t* b, std::int64_t n);
  // acc[i] = fma(float(part[i]), scale[i], acc[i]) (fused: one rounding, like std::fma).
  void (*fma_i32)(float* acc, const std::int32_t* part, const float* scale, std::int64_t n);
  // Packed int4 (element 2i low nibble) -> int8, n elements (n even).
  void (*unpack_s4)(const std::uint8_t* w, std::int64_t n, std::int8_t* out);
  // Reorders one activation row into the order dot_w4_f32 consumes (identity for most sets; the
  // AVX-512 set puts each 32-element chunk's even elements before its odd ones, matching the low
  // and high nibbles of 16 packed bytes, so the kernel never interleaves).
  void (*w4_prepare)(const float* a, std::int64_t K, std::int64_t group, float* out);
  // sum_k a[k] * scales[k / group] * code[k] over one packed int4 row of K elements, with a
  // already passed through w4_prepare.
  float (*dot_w4_f32)(const std::uint8_t* w, const float* scales, std::int64_t group, const float* a, std::int64_t K);
  // ggml block encoders, byte-exact with formats::quantize_row_*_ref.
  void (*encode_q8_0)(const float* x, void* dst, std::int64_t n);
  void (*encode_q4_0)(const float* x, void* dst, std::int64_t n);
  void (*encode_q4_1)(const float* x, void* dst, std::int64_t n);
  // ggml vec_dot of one weight row (K / 32 blocks) against one activation row.
  float (*vec_dot_q4_0_q8_0)(std::int64_t K, const void* w, const void* x);
  float (*vec_dot_q4_1_q8_1)(std::int64_t K, const void* w, const void* x);
  float (*vec_dot_q8_0_q8_0)(std::int64_t K, const void* w, const void* x);
  // Reorders the NF4 GEMV's x once per call into the order dot_nf4 consumes (identity, or the
  // AVX-512 set's evens-then-odds per 32-element chunk of each block, as w4_prepare).
  void (*nf4_prepare)(const float* x, std::int64_t K, std::int64_t block, float* out);
  // One NF4 row: codes (high nibble first), absmax per block, x; table = the 16 code values.
  float (*dot_nf4)(const std::uint8_t* codes, const float* absmax, std::int64_t block, const float* x,
                   std::int64_t K, const float* table);
};

const KernelSet& scalar_kernels();
const KernelSet& avx2_kernels();
const KernelSet& avx512_kernels();

}  // namespace qforge::backend::cpu
