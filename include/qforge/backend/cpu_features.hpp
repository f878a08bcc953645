// Run-time CPU feature detection (cpuid + xgetbv) and the instruction-set cap.
//
// Kernels compiled with ISA flags (src/cpu/*_avx2.cpp, *_avx512.cpp) run only when active_isa()
// allows them: the CPU must have the features AND the OS must save the wider registers (xgetbv),
// and the level must not exceed the cap. The cap comes from set_max_cpu_isa() if called, else
// from QFORGE_MAX_CPU_ISA=scalar|avx2|avx512, so every kernel path can be tested on one machine.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "qforge/core/error.hpp"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define QFORGE_X86 1
#include <cpuid.h>
#endif

namespace qforge::backend {

// Ordered levels: each includes the previous. kAvx2 = AVX2+FMA+F16C; kAvx512 = F/BW/VL/DQ+VNNI.
enum class CpuIsa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

inline std::string_view to_string(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
  }
  return "?";
}

inline std::optional<CpuIsa> parse_cpu_isa(std::string_view s) {
  if (s == "scalar") return CpuIsa::kScalar;
  if (s == "avx2") return CpuIsa::kAvx2;
  if (s == "avx512") return CpuIsa::kAvx512;
  return std::nullopt;
}

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false, amx_int8 = false, amx_bf16 = false;
  std::string model;  // the brand string, e.g. "Intel(R) Xeon(R) Platinum 8480+"

  // The highest level this CPU and OS support.
  CpuIsa best_isa() const {
    if (avx512f && avx512bw && avx512vl && avx512dq && avx512vnni && avx2 && fma && f16c) return CpuIsa::kAvx512;
    if (avx2 && fma && f16c) return CpuIsa::kAvx2;
    return CpuIsa::kScalar;
  }
};

namespace detail {
inline CpuFeatures detect_cpu_features() {
  CpuFeatures f;
#if defined(QFORGE_X86)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(1, 0, a, b, c, d);
  const bool osxsave = (c >> 27) & 1;
  const bool fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
  std::uint64_t xcr0 = 0;
  if (osxsave) {
    std::uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (std::uint64_t{hi} << 32) | lo;
  }
  const bool os_avx = (xcr0 & 0x6) == 0x6;             // XMM + YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xE0) == 0xE0;  // opmask + ZMM state
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;      // XTILECFG + XTILEDATA
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = os_avx && ((b >> 5) & 1);
  f.fma = os_avx && fma;
  f.f16c = os_avx && f16c;
  f.bmi2 = (b >> 8) & 1;
  f.avx512f = os_avx512 && ((b >> 16) & 1);
  f.avx512dq = os_avx512 && ((b >> 17) & 1);
  f.avx512bw = os_avx512 && ((b >> 30) & 1);
  f.avx512vl = os_avx512 && ((b >> 31) & 1);
  f.avx512vnni = os_avx512 && ((c >> 11) & 1);
  f.amx_bf16 = os_amx && ((d >> 22) & 1);
  f.amx_int8 = os_amx && ((d >> 25) & 1);
  unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  __cpuid_count(7, 1, a1, b1, c1, d1);
  f.avx512bf16 = os_avx512 && ((a1 >> 5) & 1);
  if (__get_cpuid_max(0x80000000, nullptr) >= 0x80000004) {
    char brand[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      unsigned r[4];
      __cpuid(0x80000002 + i, r[0], r[1], r[2], r[3]);
      for (int j = 0; j < 4; ++j)
        for (int k = 0; k < 4; ++k) brand[i * 16 + j * 4 + k] = static_cast<char>((r[j] >> (8 * k)) & 0xFF);
    }
    f.model = brand;
    while (!f.model.empty() && f.model.back() == ' ') f.model.pop_back();
    while (!f.model.empty() && f.model.front() == ' ') f.model.erase(0, 1);
  }
#endif
  return f;
}

// -1: no programmatic cap (use the environment).
inline std::atomic<int>& isa_cap_override() {
  static std::atomic<int> cap{-1};
  return cap;
}
}  // namespace detail

inline const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detail::detect_cpu_features();
  return features;
}

// The cap from QFORGE_MAX_CPU_ISA (unset: no cap). An unknown name is an error, not a silent
// fallback, so a typo in a test script cannot quietly test the wrong path.
inline CpuIsa env_max_cpu_isa() {
  const char* env = std::getenv("QFORGE_MAX_CPU_ISA");
  if (!env || !*env) return CpuIsa::kAvx512;
  if (auto isa = parse_cpu_isa(env)) return *isa;
  throw_error(Status::kInvalidArgument, "QFORGE_MAX_CPU_ISA={}: unknown instruction set (use scalar, avx2 or avx512)",
              env);
}

// Caps the instruction set for this process (overrides QFORGE_MAX_CPU_ISA); reset_max_cpu_isa()
// returns to the environment's cap.
inline void set_max_cpu_isa(CpuIsa isa) { detail::isa_cap_override().store(static_cast<int>(isa)); }
inline void reset_max_cpu_isa() { detail::isa_cap_override().store(-1); }

inline CpuIsa max_cpu_isa() {
  const int o = detail::isa_cap_override().load();
  return o >= 0 ? static_cast<CpuIsa>(o) : env_max_cpu_isa();
}

// The level kernels use: the best this CPU supports, limited by the cap.
inline CpuIsa active_isa() {
  const CpuIsa best = cpu_features().best_isa(), cap = max_cpu_isa();
  return static_cast<int>(best) < static_cast<int>(cap) ? best : cap;
}

}  // namespace qforge::backend
