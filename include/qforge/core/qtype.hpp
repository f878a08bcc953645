// QType: the quantized value types qforge knows, with their bounds and storage.
//
// Bounds follow Qwix (qwix/_src/core/numerics.py), see docs/user-guide.md §QTypes:
//  - symmetric bound B: signed intN -> 2^(N-1) - 0.5 (int8 127.5, int4 7.5), int16 32768,
//    uint8 255.5, uint4 15.5, nf4 1, fp4 e2m1 6, fp8 e4m3fn 448, fp8 e5m2 57344;
//    the symmetric scale is absmax / B, so +absmax rounds to qmax and -absmax to qmin.
//  - asymmetric range (qmin, qmax): every integer type. Qwix allows only int4/int8/int16; we also
//    allow int2..int7 and the unsigned types because GPTQ-style asymmetric int3 is common.
//    Float and codebook types have no asymmetric range.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "qforge/core/error.hpp"

namespace qforge {

enum class QType : std::uint8_t {
  kInt2, kInt3, kInt4, kInt5, kInt6, kInt7, kInt8, kInt16,
  kUInt4, kUInt8,
  kNf4,       // bitsandbytes NormalFloat4 codebook, 16 values in [-1, 1]
  kFp4E2M1,   // OCP FP4: 1 sign, 2 exponent, 1 mantissa bit; max 6
  kFp8E4M3,   // OCP FP8 E4M3 "fn": no infinities, max 448
  kFp8E5M2,   // OCP FP8 E5M2: IEEE-like, max 57344
};

enum class QKind : std::uint8_t { kInteger, kFloat, kCodebook };

struct QTypeInfo {
  std::string_view name;
  QKind kind;
  int bits;           // information bits per value
  int storage_bits;   // bits one value occupies in QArray storage (4, 8 or 16)
  bool is_signed;
  double symmetric_bound;  // B: scale = absmax / B
  std::int32_t qmin;       // integer range (integers only; codes range for others)
  std::int32_t qmax;
};

namespace detail {
constexpr QTypeInfo int_info(std::string_view name, int bits) {
  const std::int32_t half = std::int32_t{1} << (bits - 1);
  const int storage = bits <= 4 ? 4 : (bits <= 8 ? 8 : 16);
  const double bound = bits == 16 ? 32768.0 : static_cast<double>(half) - 0.5;
  return {name, QKind::kInteger, bits, storage, true, bound, -half, half - 1};
}
inline constexpr std::array<QTypeInfo, 14> kQTypeTable = {{
    int_info("int2", 2), int_info("int3", 3), int_info("int4", 4), int_info("int5", 5),
    int_info("int6", 6), int_info("int7", 7), int_info("int8", 8), int_info("int16", 16),
    {"uint4", QKind::kInteger, 4, 4, false, 15.5, 0, 15},
    {"uint8", QKind::kInteger, 8, 8, false, 255.5, 0, 255},
    {"nf4", QKind::kCodebook, 4, 4, false, 1.0, 0, 15},
    {"fp4_e2m1", QKind::kFloat, 4, 4, true, 6.0, 0, 15},
    {"fp8_e4m3", QKind::kFloat, 8, 8, true, 448.0, 0, 255},
    {"fp8_e5m2", QKind::kFloat, 8, 8, true, 57344.0, 0, 255},
}};
}  // namespace detail

constexpr const QTypeInfo& info(QType t) { return detail::kQTypeTable[static_cast<std::size_t>(t)]; }
constexpr std::string_view to_string(QType t) { return info(t).name; }
constexpr bool is_integer(QType t) { return info(t).kind == QKind::kInteger; }
constexpr bool is_subbyte(QType t) { return info(t).storage_bits == 4; }
constexpr bool has_asymmetric_range(QType t) { return is_integer(t); }

inline constexpr std::array<QType, 14> kAllQTypes = {
    QType::kInt2, QType::kInt3, QType::kInt4, QType::kInt5, QType::kInt6, QType::kInt7,
    QType::kInt8, QType::kInt16, QType::kUInt4, QType::kUInt8, QType::kNf4, QType::kFp4E2M1,
    QType::kFp8E4M3, QType::kFp8E5M2};

// Accepts the canonical names plus common aliases ("fp8" = fp8_e4m3, "e4m3", "fp8_e4m3fn",
// "float8_e4m3fn", "e5m2", "fp4", "e2m1"). Throws Error naming the string and the valid names.
inline std::optional<QType> try_parse_qtype(std::string_view s) {
  for (QType t : kAllQTypes)
    if (s == to_string(t)) return t;
  static constexpr std::array<std::pair<std::string_view, QType>, 8> kAliases = {{
      {"fp8", QType::kFp8E4M3}, {"e4m3", QType::kFp8E4M3}, {"fp8_e4m3fn", QType::kFp8E4M3},
      {"float8_e4m3fn", QType::kFp8E4M3}, {"e5m2", QType::kFp8E5M2},
      {"float8_e5m2", QType::kFp8E5M2}, {"fp4", QType::kFp4E2M1}, {"e2m1", QType::kFp4E2M1}}};
  for (auto [alias, t] : kAliases)
    if (s == alias) return t;
  return std::nullopt;
}

inline QType parse_qtype(std::string_view s) {
  if (auto t = try_parse_qtype(s)) return *t;
  std::string names;
  for (QType t : kAllQTypes) {
    if (!names.empty()) names += ", ";
    names += to_string(t);
  }
  throw_error(Status::kInvalidArgument, "unknown qtype '{}' (expected one of: {})", s, names);
}

}  // namespace qforge
