// Scalar numerics shared by every quantizer: rounding, saturation and the value codecs of each
// QType (integers, FP8 E4M3/E5M2, FP4 E2M1, NF4). These functions define the semantics that every
// kernel must reproduce; they are QFORGE_HOST_DEVICE so CUDA kernels can call the same code.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "qforge/core/qtype.hpp"

#if defined(__CUDACC__)
#define QFORGE_HOST_DEVICE __host__ __device__ inline
#else
#define QFORGE_HOST_DEVICE inline
#endif

namespace qforge {

// Round half to even, independent of the floating-point environment's rounding mode.
QFORGE_HOST_DEVICE double round_half_even(double x) {
  const double r = std::floor(x);
  const double diff = x - r;
  if (diff > 0.5) return r + 1.0;
  if (diff < 0.5) return r;
  return std::fmod(r, 2.0) == 0.0 ? r : r + 1.0;
}

// Round half to even, then saturate to [lo, hi]. NaN maps to 0 (calibration rejects NaN input
// before it gets here; this only keeps the cast defined). +/-inf saturate.
QFORGE_HOST_DEVICE std::int32_t round_saturate(double x, std::int32_t lo, std::int32_t hi) {
  if (std::isnan(x)) return 0;
  if (x <= lo) return lo;
  if (x >= hi) return hi;
  return static_cast<std::int32_t>(round_half_even(x));
}

// ---- minifloats (FP8 E4M3 "fn", FP8 E5M2, FP4 E2M1) ------------------------------------------
struct MiniFloatSpec {
  int exp_bits;
  int man_bits;
  int bias;
  double max_finite;
  std::uint8_t nan_code;  // positive NaN pattern; 0 when the format has no NaN
};
inline constexpr MiniFloatSpec kE4M3 = {4, 3, 7, 448.0, 0x7F};
inline constexpr MiniFloatSpec kE5M2 = {5, 2, 15, 57344.0, 0x7F};
inline constexpr MiniFloatSpec kE2M1 = {2, 1, 1, 6.0, 0x00};

// Encodes with round-to-nearest-even after saturating to +/-max_finite (the OCP "SAT" mode;
// infinities saturate too). NaN becomes the format's NaN (or 0 for E2M1, which has none).
QFORGE_HOST_DEVICE std::uint8_t minifloat_encode(double x, const MiniFloatSpec& f) {
  const std::uint8_t sign_bit = static_cast<std::uint8_t>(1u << (f.exp_bits + f.man_bits));
  if (std::isnan(x)) return f.nan_code;
  const std::uint8_t sign = std::signbit(x) ? sign_bit : 0;
  double a = std::fabs(x);
  if (a > f.max_finite) a = f.max_finite;
  const int min_normal_exp = 1 - f.bias;
  const double man_scale = std::ldexp(1.0, f.man_bits);
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  const int unbiased = e - 1;
  if (a == 0.0) return sign;
  if (unbiased < min_normal_exp) {
    // Subnormal: code = round(a / 2^(min_normal_exp - man_bits)); a rounded-up value of 2^man_bits
    // is exactly the smallest normal's code, so no special case is needed.
    const double q = round_half_even(std::ldexp(a, f.man_bits - min_normal_exp));
    return static_cast<std::uint8_t>(sign | static_cast<std::uint8_t>(q));
  }
  const double mant = std::ldexp(a, -unbiased) - 1.0;  // [0, 1)
  double m = round_half_even(mant * man_scale);
  int biased = unbiased + f.bias;
  if (m >= man_scale) {
    m = 0;
    ++biased;
  }
  return static_cast<std::uint8_t>(sign | (biased << f.man_bits) | static_cast<int>(m));
}

QFORGE_HOST_DEVICE double minifloat_decode(std::uint8_t code, const MiniFloatSpec& f) {
  const int sign_shift = f.exp_bits + f.man_bits;
  const bool negative = (code >> sign_shift) & 1u;
  const int e = (code >> f.man_bits) & ((1 << f.exp_bits) - 1);
  const int m = code & ((1 << f.man_bits) - 1);
  double v;
  if (f.exp_bits == 4 && e == 15 && m == 7) {
    v = std::numeric_limits<double>::quiet_NaN();  // E4M3fn: only S.1111.111 is NaN, no Inf
  } else if (f.exp_bits == 5 && e == 31) {
    v = m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(m), 1 - f.bias - f.man_bits);
  } else {
    v = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -f.man_bits), e - f.bias);
  }
  return negative ? -v : v;
}

// ---- NF4 ----------------------------------------------------------------------------------------
// bitsandbytes' NormalFloat4 codebook (get_4bit_type / kernels.cu), index = 4-bit code.
inline constexpr std::array<float, 16> kNf4Codebook = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// Nearest code; an exact tie goes to the lower code (Qwix argmin, bitsandbytes strict '>').
QFORGE_HOST_DEVICE std::uint8_t nf4_encode(float x) {
  std::uint8_t code = 0;
  for (int i = 0; i < 15; ++i) {
    const float mid = (kNf4Codebook[i] + kNf4Codebook[i + 1]) * 0.5f;
    if (x > mid) code = static_cast<std::uint8_t>(i + 1);
  }
  return code;
}
QFORGE_HOST_DEVICE float nf4_decode(std::uint8_t code) { return kNf4Codebook[code & 15u]; }

// ---- QType codecs ------------------------------------------------------------------------------
// A QType value is stored as a code: the integer itself for integer types, the bit pattern for
// minifloats, the codebook index for NF4. encode() takes x already divided by the scale (and
// shifted by the zero point); decode() gives the value the code stands for.
QFORGE_HOST_DEVICE std::int32_t qtype_encode(QType t, double x) {
  switch (t) {
    case QType::kNf4: return nf4_encode(static_cast<float>(x));
    case QType::kFp4E2M1: return minifloat_encode(x, kE2M1);
    case QType::kFp8E4M3: return minifloat_encode(x, kE4M3);
    case QType::kFp8E5M2: return minifloat_encode(x, kE5M2);
    default: return round_saturate(x, info(t).qmin, info(t).qmax);
  }
}

QFORGE_HOST_DEVICE double qtype_decode(QType t, std::int32_t code) {
  switch (t) {
    case QType::kNf4: return nf4_decode(static_cast<std::uint8_t>(code));
    case QType::kFp4E2M1: return minifloat_decode(static_cast<std::uint8_t>(code), kE2M1);
    case QType::kFp8E4M3: return minifloat_decode(static_cast<std::uint8_t>(code), kE4M3);
    case QType::kFp8E5M2: return minifloat_decode(static_cast<std::uint8_t>(code), kE5M2);
    default: return static_cast<double>(code);
  }
}

// Stochastic rounding for integer qtypes: adds uniform noise in [-0.5, 0.5) before rounding, so
// E[round(x)] = x inside the range. Seeded, so a run can be reproduced.
class StochasticRounder {
 public:
  explicit StochasticRounder(std::uint64_t seed) : engine_(seed) {}
  double noise() { return dist_(engine_); }
  std::int32_t encode(QType t, double x) {
    return is_integer(t) ? qtype_encode(t, x + noise()) : qtype_encode(t, x);
  }

 private:
  std::mt19937_64 engine_;
  std::uniform_real_distribution<double> dist_{-0.5, 0.5};
};

}  // namespace qforge
