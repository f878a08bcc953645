// The AVX2 + FMA + F16C kernel set (compiled with those flags; see src/cpu/CMakeLists.txt).
#include "simd_x86_impl.hpp"

namespace qforge::backend::cpu {

const KernelSet& avx2_kernels() {
  static const KernelSet set{"avx2",           absmax_avx2,         quantize_s8_avx2,       dot_s8_avx2, fma_i32_avx2,
                             unpack_s4_avx2,   w4_prepare_identity, dot_w4_f32_avx2,     encode_q8_0_avx2,       encode_q4_0_avx2,
                             encode_q4_1_avx2, vec_dot_q4_0_q8_0_avx2, vec_dot_q4_1_q8_1_avx2, vec_dot_q8_0_q8_0_avx2,
                             w4_prepare_identity, dot_nf4_avx2};
  return set;
}

}  // namespace qforge::backend::cpu
