// The CUDA backend (host side): float GEMM and the Hessian rank-k update through cuBLAS. Ops carry host
// pointers, so each call stages its operands on the device; the op set grows with device-side
// buffers as the CUDA kernels arrive. Without a device every op is declined with the reason.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "qforge/backend/cuda.hpp"

namespace qforge::backend {
namespace {

template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  explicit DeviceBuffer(std::size_t n) {
    if (cudaMalloc(&ptr, n * sizeof(T)) != cudaSuccess) ptr = nullptr;
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend() {
    if (cuda_device_count() > 0 && cublasCreate(&handle_) == CUBLAS_STATUS_SUCCESS) ready_ = true;
  }
  ~CudaBackend() override {
    if (ready_) cublasDestroy(handle_);
  }
  std::string_view name() const override { return "cuda"; }
  DeviceKind device_kind() const override { return DeviceKind::kCuda; }

  Support supports(const Op& op) const override {
    if (!ready_) return Support::no("no CUDA device or cuBLAS could not start");
    if (std::holds_alternative<GemmF32Op>(op) || std::holds_alternative<SyrkOp>(op)) return Support::yes();
    return Support::no("op not implemented on CUDA yet");
  }

  Status run(const Op& op) override {
    if (!ready_) return Status::kUnsupported;
    if (const auto* g = std::get_if<GemmF32Op>(&op)) return gemm(*g);
    if (const auto* s = std::get_if<SyrkOp>(&op)) return syrk(*s);
    return Status::kUnsupported;
  }

 private:
  // Row-major dst[M,N] = a[M,K] b[N,K]^T is column-major dst^T[N,M] = b (N x K) * a^T.
  Status gemm(const GemmF32Op& o) {
    if (o.M == 0 || o.N == 0) return Status::kSuccess;
    // Each operand is a row-major panel that may sit inside a larger matrix: copy from its first
    // element to its last, never a whole final stride (that could read past the caller's buffer).
    const auto span = [](std::int64_t rows, std::int64_t cols, std::int64_t ld) { return (rows - 1) * ld + cols; };
    const std::int64_t a_len = o.a_km ? span(o.K, o.M, o.lda) : span(o.M, o.K, o.lda);
    const std::int64_t b_len = o.b_kn ? span(o.K, o.N, o.ldb) : span(o.N, o.K, o.ldb);
    const std::int64_t d_len = span(o.M, o.N, o.ldd);
    DeviceBuffer<float> a(a_len), b(b_len), d(d_len);
    if (!a.ptr || !b.ptr || !d.ptr) return Status::kInternal;
    bool ok = cudaMemcpy(a.ptr, o.a, sizeof(float) * a_len, cudaMemcpyHostToDevice) == cudaSuccess &&
              cudaMemcpy(b.ptr, o.b, sizeof(float) * b_len, cudaMemcpyHostToDevice) == cudaSuccess;
    if (ok && o.accumulate) ok = cudaMemcpy(d.ptr, o.dst, sizeof(float) * d_len, cudaMemcpyHostToDevice) == cudaSuccess;
    const float alpha = o.alpha, beta = o.accumulate ? 1.0f : 0.0f;
    ok = ok && cublasSgemm(handle_, o.b_kn ? CUBLAS_OP_N : CUBLAS_OP_T, o.a_km ? CUBLAS_OP_T : CUBLAS_OP_N,
                           static_cast<int>(o.N), static_cast<int>(o.M),
                           static_cast<int>(o.K), &alpha, b.ptr, static_cast<int>(o.ldb), a.ptr,
                           static_cast<int>(o.lda), &beta, d.ptr, static_cast<int>(o.ldd)) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cudaMemcpy(o.dst, d.ptr, sizeof(float) * d_len, cudaMemcpyDeviceToHost) == cudaSuccess;
    return ok ? Status::kSuccess : Status::kInternal;
  }
  // h[K,K] += alpha x^T x; symmetric, so row- and column-major agree: h = alpha * X^T X with
  // column-major X^T of shape [K, T] and leading dimension ldx.
  Status syrk(const SyrkOp& o) {
    DeviceBuffer<float> x(o.T * o.ldx), h(o.K * o.K);
    if (!x.ptr || !h.ptr) return Status::kInternal;
    bool ok = cudaMemcpy(x.ptr, o.x, sizeof(float) * o.T * o.ldx, cudaMemcpyHostToDevice) == cudaSuccess &&
              cudaMemcpy(h.ptr, o.h, sizeof(float) * o.K * o.K, cudaMemcpyHostToDevice) == cudaSuccess;
    const float alpha = o.alpha, beta = 1.0f;
    ok = ok && cublasSgemm(handle_, CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(o.K), static_cast<int>(o.K),
                           static_cast<int>(o.T), &alpha, x.ptr, static_cast<int>(o.ldx), x.ptr,
                           static_cast<int>(o.ldx), &beta, h.ptr, static_cast<int>(o.K)) == CUBLAS_STATUS_SUCCESS;
    ok = ok && cudaMemcpy(o.h, h.ptr, sizeof(float) * o.K * o.K, cudaMemcpyDeviceToHost) == cudaSuccess;
    return ok ? Status::kSuccess : Status::kInternal;
  }

  cublasHandle_t handle_{};
  bool ready_ = false;
};

}  // namespace

int cuda_device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

std::unique_ptr<Backend> make_cuda_backend() { return std::make_unique<CudaBackend>(); }

}  // namespace qforge::backend
