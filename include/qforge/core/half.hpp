// IEEE binary16 and bfloat16 conversions, written out bit by bit so the result does not depend
// on the compiler, the instruction set or the floating-point environment. fp32 -> fp16 rounds to
// nearest, ties to even, as ggml's GGML_FP32_TO_FP16 and F16C's vcvtps2ph do: overflow becomes
// +/-inf and NaN becomes a quiet NaN (0x7E00 with the sign), so GGUF scales match ggml byte for byte.
#pragma once

#include <cstdint>
#include <cstring>

namespace qforge {

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float float_from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline std::uint16_t fp32_to_fp16(float f) {
  const std::uint32_t x = float_bits(f);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t abs = x & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u);  // NaN
  if (abs >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // rounds past 65504
  if (abs < 0x38800000u) {
    // Subnormal (or zero) in fp16: the value in units of 2^-24, rounded half to even.
    if (abs < 0x33000000u) return sign;  // below half the smallest subnormal: +/-0
    const std::uint32_t exp = abs >> 23;
    const std::uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t shift = 126u - exp;  // value / 2^-24 = mant * 2^(exp - 126)
    const std::uint32_t q = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    const std::uint32_t rounded = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    return static_cast<std::uint16_t>(sign | rounded);
  }
  // Normal: rebias the exponent, round the 13 dropped mantissa bits half to even. A carry out of
  // the mantissa correctly bumps the exponent (and 65520 and up became inf above).
  const std::uint32_t rebased = abs - 0x38000000u;  // exponent bias 127 -> 15
  const std::uint32_t q = rebased >> 13;
  const std::uint32_t rem = rebased & 0x1FFFu;
  const std::uint32_t rounded = q + ((rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ? 1u : 0u);
  return static_cast<std::uint16_t>(sign | rounded);
}

inline float fp16_to_fp32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return float_from_bits(sign | 0x7F800000u | (mant << 13));  // inf / NaN
  if (exp != 0) return float_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return float_from_bits(sign);
  int e = 113;  // normalise the subnormal
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return float_from_bits(sign | (static_cast<std::uint32_t>(e) << 23) | ((mant & 0x3FFu) << 13));
}

// bfloat16: the top 16 bits of fp32, rounded half to even; NaN stays a quiet NaN.
inline std::uint16_t fp32_to_bf16(float f) {
  const std::uint32_t x = float_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  return static_cast<std::uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_to_fp32(std::uint16_t b) { return float_from_bits(static_cast<std::uint32_t>(b) << 16); }

}  // namespace qforge
