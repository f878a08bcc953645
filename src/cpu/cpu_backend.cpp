// The CPU backend: oneDNN for float and int8 matrix products; our own kernels (added per ISA in
// this folder) where oneDNN has no equivalent.
#include <memory>
#include <vector>

#include "qforge/backend/cpu.hpp"
#include "qforge/backend/reference.hpp"

#if defined(QFORGE_HAS_ONEDNN)
#include <dnnl.h>
#endif

namespace qforge::backend {
namespace {

class CpuBackend final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }
  DeviceKind device_kind() const override { return DeviceKind::kCpu; }

  Support supports(const Op& op) const override {
#if defined(QFORGE_HAS_ONEDNN)
    if (const auto* q = std::get_if<QuantizedMatmulOp>(&op)) return supports_quantized(*q);
    return Support::yes();
#else
    return Support::no("built without oneDNN");
#endif
  }

  Status run(const Op& op) override {
    return std::visit([](const auto& o) { return run_op(o); }, op);
  }

 private:
#if defined(QFORGE_HAS_ONEDNN)
  static Status status_of(dnnl_status_t s) { return s == dnnl_success ? Status::kSuccess : Status::kInternal; }
  static Status run_op(const GemmF32Op& o) {
    return status_of(dnnl_sgemm('N', 'T', o.M, o.N, o.K, 1.0f, o.a, o.lda, o.b, o.ldb,
                                o.accumulate ? 1.0f : 0.0f, o.dst, o.ldd));
  }
  static Status run_op(const SyrkOp& o) {
    return status_of(dnnl_sgemm('T', 'N', o.K, o.K, o.T, o.alpha, o.x, o.ldx, o.x, o.ldx, 1.0f, o.h, o.K));
  }
  // oneDNN's s8s8s32 GEMM covers int8 x int8 with one scale per row of each operand; tiles along
  // K and zero points stay with the reference backend.
  static Support supports_quantized(const QuantizedMatmulOp& o) {
    for (const QArray* q : {o.a, o.b}) {
      if (q->qtype() != QType::kInt8) return Support::no("quantized_matmul: only int8 x int8");
      if (q->zero_point()) return Support::no("quantized_matmul: zero points");
      if (q->shape().size() != 2 || q->scale().shape()[1] != 1) return Support::no("quantized_matmul: tiles along K");
    }
    return Support::yes();
  }
  static Status run_op(const QuantizedMatmulOp& o) {
    const std::int64_t M = o.a->shape()[0], N = o.b->shape()[0], K = o.a->shape()[1];
    std::vector<std::int32_t> acc(static_cast<std::size_t>(M * N));
    const auto* a = reinterpret_cast<const std::int8_t*>(o.a->storage().data());
    const auto* b = reinterpret_cast<const std::int8_t*>(o.b->storage().data());
    if (Status s = run_op(GemmS8S8S32Op{M, N, K, a, b, acc.data()}); s != Status::kSuccess) return s;
    const float* sa = o.a->scale().data();
    const float* sb = o.b->scale().data();
    const bool per_row_a = o.a->scale().shape()[0] == M, per_row_b = o.b->scale().shape()[0] == N;
    for (std::int64_t m = 0; m < M; ++m)
      for (std::int64_t n = 0; n < N; ++n) {
        // Same order of operations as the reference: exact integer, then double products.
        const double v = static_cast<double>(acc[static_cast<std::size_t>(m * N + n)]) * sa[per_row_a ? m : 0] * sb[per_row_b ? n : 0];
        o.dst[m * N + n] = static_cast<float>(v);
      }
    return Status::kSuccess;
  }
  static Status run_op(const GemmS8S8S32Op& o) {
    const std::int32_t zero = 0;
    return status_of(dnnl_gemm_s8s8s32('N', 'T', 'F', o.M, o.N, o.K, 1.0f, o.a, o.K, 0, o.b, o.K, 0, 0.0f,
                                       o.dst, o.N, &zero));
  }
#else
  template <class O>
  static Status run_op(const O&) { return Status::kUnsupported; }
#endif
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace qforge::backend
