// ReferenceBackend: plain scalar loops that define the semantics of every op. Always present,
// always last in the registry's priority list; every other backend is tested against it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "qforge/backend/backend.hpp"

namespace qforge::backend {

class ReferenceBackend final : public Backend {
 public:
  std::string_view name() const override { return "reference"; }
  DeviceKind device_kind() const override { return DeviceKind::kCpu; }
  Support supports(const Op&) const override { return Support::yes(); }
  Status run(const Op& op) override {
    return std::visit([](const auto& o) { return run_op(o); }, op);
  }

  // Float reductions accumulate in double, so the reference is at least as accurate as any
  // float32 kernel and tolerances can be derived from the kernel's own error alone.
  static Status run_op(const GemmF32Op& o) {
    for (std::int64_t m = 0; m < o.M; ++m)
      for (std::int64_t n = 0; n < o.N; ++n) {
        double acc = 0;
        for (std::int64_t k = 0; k < o.K; ++k)
          acc += double(o.a_km ? o.a[k * o.lda + m] : o.a[m * o.lda + k]) *
                 (o.b_kn ? o.b[k * o.ldb + n] : o.b[n * o.ldb + k]);
        acc *= o.alpha;
        float& d = o.dst[m * o.ldd + n];
        d = o.accumulate ? static_cast<float>(d + acc) : static_cast<float>(acc);
      }
    return Status::kSuccess;
  }
  static Status run_op(const SyrkOp& o) {
    for (std::int64_t i = 0; i < o.K; ++i)
      for (std::int64_t j = i; j < o.K; ++j) {
        double acc = 0;
        for (std::int64_t t = 0; t < o.T; ++t) acc += double(o.x[t * o.ldx + i]) * o.x[t * o.ldx + j];
        const auto v = static_cast<float>(o.alpha * acc);
        o.h[i * o.K + j] += v;
        if (j != i) o.h[j * o.K + i] += v;
      }
    return Status::kSuccess;
  }
  static Status run_op(const GemmS8S8S32Op& o) {
    for (std::int64_t m = 0; m < o.M; ++m)
      for (std::int64_t n = 0; n < o.N; ++n) {
        std::int32_t acc = 0;
        for (std::int64_t k = 0; k < o.K; ++k) acc += std::int32_t{o.a[m * o.K + k]} * o.b[n * o.K + k];
        o.dst[m * o.N + n] = acc;
      }
    return Status::kSuccess;
  }
  static Status run_op(const QuantizedMatmulOp& o) {
    const TensorF d = integer_matmul(*o.a, *o.b);
    std::copy(d.data(), d.data() + d.size(), o.dst);
    return Status::kSuccess;
  }
  // ---- row quantization --------------------------------------------------------------------
  static std::int8_t int4_at(const std::uint8_t* row, std::int64_t c) {
    const std::uint8_t byte = row[c / 2];
    const auto nib = static_cast<std::uint8_t>((c & 1) ? byte >> 4 : byte & 0x0F);
    return static_cast<std::int8_t>(nib >= 8 ? int{nib} - 16 : int{nib});
  }
  // One group: scale and codes exactly as QuantizeRowsOp documents.
  static float quantize_group(const float* x, std::int64_t n, int qmax, std::int8_t* q) {
    float amax = 0.0f;
    for (std::int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float s = amax / static_cast<float>(qmax);
    const float inv = s != 0.0f ? 1.0f / s : 0.0f;
    for (std::int64_t i = 0; i < n; ++i) {
      const float r = std::nearbyint(x[i] * inv);
      q[i] = static_cast<std::int8_t>(std::clamp(r, static_cast<float>(-qmax), static_cast<float>(qmax)));
    }
    return s;
  }
  static Status run_op(const QuantizeRowsOp& o) {
    const int qmax = row_format_qmax(o.format);
    const std::int64_t groups = o.cols / o.group, row_bytes = row_format_bytes(o.format, o.cols);
    std::vector<std::int8_t> q(static_cast<std::size_t>(o.cols));
    for (std::int64_t r = 0; r < o.rows; ++r) {
      for (std::int64_t g = 0; g < groups; ++g)
        o.scales[r * groups + g] = quantize_group(o.x + r * o.ldx + g * o.group, o.group, qmax, q.data() + g * o.group);
      auto* out = static_cast<std::uint8_t*>(o.codes) + r * row_bytes;
      if (o.format == RowFormat::kInt8) {
        std::memcpy(out, q.data(), q.size());
      } else {
        for (std::int64_t i = 0; i < o.cols / 2; ++i)
          out[i] = static_cast<std::uint8_t>((q[2 * i] & 0x0F) | ((q[2 * i + 1] & 0x0F) << 4));
      }
    }
    return Status::kSuccess;
  }
  static Status run_op(const DequantizeRowsOp& o) {
    const std::int64_t groups = o.cols / o.group, row_bytes = row_format_bytes(o.format, o.cols);
    for (std::int64_t r = 0; r < o.rows; ++r) {
      const auto* row = static_cast<const std::uint8_t*>(o.codes) + r * row_bytes;
      for (std::int64_t c = 0; c < o.cols; ++c) {
        const int q = o.format == RowFormat::kInt8 ? static_cast<std::int8_t>(row[c]) : int4_at(row, c);
        o.y[r * o.ldy + c] = o.scales[r * groups + c / o.group] * static_cast<float>(q);
      }
    }
    return Status::kSuccess;
  }

  // ---- quantized GEMMs -------------------------------------------------------------------------
  // Activation row m quantized per row to int8 (QuantizeRowsOp, group = K).
  static float quantize_activation_row(const float* a, std::int64_t K, std::int8_t* q) {
    return quantize_group(a, K, 127, q);
  }
  static Status run_op(const GemmW8A8Op& o) {
    std::vector<std::int8_t> qa(static_cast<std::size_t>(o.K));
    for (std::int64_t m = 0; m < o.M; ++m) {
      const float sa = quantize_activation_row(o.a + m * o.lda, o.K, qa.data());
      for (std::int64_t n = 0; n < o.N; ++n) {
        std::int32_t acc = 0;
        for (std::int64_t k = 0; k < o.K; ++k) acc += std::int32_t{qa[static_cast<std::size_t>(k)]} * o.w[n * o.K + k];
        o.dst[m * o.ldd + n] = (static_cast<float>(acc) * sa) * o.w_scales[n];
      }
    }
    return Status::kSuccess;
  }
  static Status run_op(const GemmW4A8Op& o) {
    std::vector<std::int8_t> qa(static_cast<std::size_t>(o.K));
    const std::int64_t groups = o.K / o.group;
    for (std::int64_t m = 0; m < o.M; ++m) {
      const float sa = quantize_activation_row(o.a + m * o.lda, o.K, qa.data());
      for (std::int64_t n = 0; n < o.N; ++n) {
        const std::uint8_t* row = o.w + n * (o.K / 2);
        float acc = 0.0f;
        for (std::int64_t g = 0; g < groups; ++g) {
          std::int32_t isum = 0;
          for (std::int64_t k = g * o.group; k < (g + 1) * o.group; ++k)
            isum += std::int32_t{qa[static_cast<std::size_t>(k)]} * int4_at(row, k);
          acc = std::fma(static_cast<float>(isum), o.w_scales[n * groups + g], acc);
        }
        o.dst[m * o.ldd + n] = acc * sa;
      }
    }
    return Status::kSuccess;
  }
  static Status run_op(const GemmW4A16Op& o) {
    const std::int64_t groups = o.K / o.group;
    for (std::int64_t m = 0; m < o.M; ++m)
      for (std::int64_t n = 0; n < o.N; ++n) {
        const std::uint8_t* row = o.w + n * (o.K / 2);
        double acc = 0;
        for (std::int64_t k = 0; k < o.K; ++k) {
          const float w = o.w_scales[n * groups + k / o.group] * static_cast<float>(int4_at(row, k));
          acc += double(o.a[m * o.lda + k]) * w;
        }
        o.dst[m * o.ldd + n] = static_cast<float>(acc);
      }
    return Status::kSuccess;
  }

  // ---- GGUF blocks -------------------------------------------------------------------------------
  static Status run_op(const EncodeBlocksOp& o) {
    const std::int64_t row_bytes = formats::ggml_row_bytes(o.type, o.cols);
    for (std::int64_t r = 0; r < o.rows; ++r)
      formats::encode_row(o.type, o.x + r * o.ldx, static_cast<std::uint8_t*>(o.dst) + r * row_bytes, o.cols);
    return Status::kSuccess;
  }
  // ggml's scalar vec_dot for one weight row against one activation row.
  static float vec_dot_blocks(formats::GgmlType type, std::int64_t K, const void* w, const void* x) {
    using namespace formats;
    float sumf = 0.0f;
    const std::int64_t nb = K / 32;
    if (type == GgmlType::kQ4_0) {
      for (std::int64_t b = 0; b < nb; ++b) {
        const auto wblk = formats::detail::load_block<BlockQ4_0>(w, b);
        const auto xblk = formats::detail::load_block<BlockQ8_0>(x, b);
        int isum = 0;
        for (int j = 0; j < 16; ++j)
          isum += ((wblk.qs[j] & 0x0F) - 8) * xblk.qs[j] + ((wblk.qs[j] >> 4) - 8) * xblk.qs[j + 16];
        sumf += static_cast<float>(isum) * (fp16_to_fp32(wblk.d) * fp16_to_fp32(xblk.d));
      }
    } else if (type == GgmlType::kQ4_1) {
      for (std::int64_t b = 0; b < nb; ++b) {
        const auto wblk = formats::detail::load_block<BlockQ4_1>(w, b);
        const auto xblk = formats::detail::load_block<BlockQ8_1>(x, b);
        int isum = 0;
        for (int j = 0; j < 16; ++j) isum += (wblk.qs[j] & 0x0F) * xblk.qs[j] + (wblk.qs[j] >> 4) * xblk.qs[j + 16];
        sumf += (fp16_to_fp32(wblk.d) * fp16_to_fp32(xblk.d)) * static_cast<float>(isum) +
                fp16_to_fp32(wblk.m) * fp16_to_fp32(xblk.s);
      }
    } else {
      for (std::int64_t b = 0; b < nb; ++b) {
        const auto wblk = formats::detail::load_block<BlockQ8_0>(w, b);
        const auto xblk = formats::detail::load_block<BlockQ8_0>(x, b);
        int isum = 0;
        for (int j = 0; j < 32; ++j) isum += wblk.qs[j] * xblk.qs[j];
        sumf += static_cast<float>(isum) * (fp16_to_fp32(wblk.d) * fp16_to_fp32(xblk.d));
      }
    }
    return sumf;
  }
  static formats::GgmlType activation_type(formats::GgmlType weight_type) {
    return weight_type == formats::GgmlType::kQ4_1 ? formats::GgmlType::kQ8_1 : formats::GgmlType::kQ8_0;
  }
  static Status run_op(const GemvBlocksOp& o) {
    const std::int64_t row_bytes = formats::ggml_row_bytes(o.weight_type, o.K);
    for (std::int64_t n = 0; n < o.N; ++n)
      o.y[n] = vec_dot_blocks(o.weight_type, o.K, static_cast<const std::uint8_t*>(o.w) + n * row_bytes, o.x);
    return Status::kSuccess;
  }
  static Status run_op(const GemmBlocksOp& o) {
    const formats::GgmlType at = activation_type(o.weight_type);
    std::vector<std::uint8_t> xq(static_cast<std::size_t>(formats::ggml_row_bytes(at, o.K)));
    for (std::int64_t m = 0; m < o.M; ++m) {
      formats::encode_row(at, o.a + m * o.lda, xq.data(), o.K);
      run_op(GemvBlocksOp{o.weight_type, o.N, o.K, o.w, xq.data(), o.dst + m * o.ldd});
    }
    return Status::kSuccess;
  }

  // ---- NF4 and GPTQ ------------------------------------------------------------------------------
  static float nf4_weight(const GemvNf4Op& o, std::int64_t flat) {
    const std::uint8_t byte = o.codes[flat / 2];
    const int code = (flat & 1) ? (byte & 0x0F) : (byte >> 4);
    return o.absmax[flat / o.block] * kNf4Codebook[code];
  }
  static Status run_op(const GemvNf4Op& o) {
    for (std::int64_t n = 0; n < o.N; ++n) {
      double acc = 0;
      for (std::int64_t k = 0; k < o.K; ++k) acc += double(nf4_weight(o, n * o.K + k)) * o.x[k];
      o.y[n] = static_cast<float>(acc);
    }
    return Status::kSuccess;
  }
  static Status run_op(const GptqBlockUpdateOp& o) {
    for (std::int64_t r = 0; r < o.rows; ++r)
      for (std::int64_t c = 0; c < o.cols; ++c) {
        double acc = 0;
        for (std::int64_t j = 0; j < o.B; ++j) acc += double(o.err[r * o.lde + j]) * o.hinv[j * o.ldh + c];
        o.w[r * o.ldw + c] = static_cast<float>(o.w[r * o.ldw + c] - acc);
      }
    return Status::kSuccess;
  }
};

}  // namespace qforge::backend
