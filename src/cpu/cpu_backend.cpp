// The CPU backend: oneDNN for float and int8 matrix products; our own kernels (added per ISA in
// this folder) where oneDNN has no equivalent.
#include <memory>

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
    (void)op;
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
