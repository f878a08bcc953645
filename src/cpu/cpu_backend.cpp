// The CPU backend: oneDNN for float and int8 matrix products; our own kernels (kernels_*.cpp, one
// translation unit per ISA, chosen at run time from active_isa()) for row quantization, 4-bit
// weights, ggml block formats and NF4, where oneDNN has no equivalent.
//
// Determinism: work is cut into fixed-size chunks of output rows whose boundaries do not depend
// on the thread count, and every output element is reduced by one thread in one order, so results
// are bit-identical for any QFORGE_THREADS / set_num_threads().
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "kernels.hpp"
#include "qforge/backend/cpu.hpp"
#include "qforge/backend/cpu_features.hpp"
#include "qforge/backend/reference.hpp"
#include "qforge/backend/threads.hpp"
#include "qforge/core/parallel.hpp"
#include "qforge/formats/gguf_blocks.hpp"

#if defined(QFORGE_HAS_OPENMP)
#include <omp.h>
#endif

#if defined(QFORGE_HAS_ONEDNN)
#include <dnnl.h>

#include <dnnl.hpp>
// Debian's oneDNN runs on OpenMP; its thread count follows the calling thread's OpenMP setting.
// Declared weak so that a oneDNN built on another runtime links without libgomp.
extern "C" void omp_set_num_threads(int) __attribute__((weak));
#endif

namespace qforge::backend {
namespace {

static_assert(sizeof(cpu::Q4_0Block) == sizeof(formats::BlockQ4_0) && sizeof(cpu::Q4_1Block) == sizeof(formats::BlockQ4_1) &&
              sizeof(cpu::Q8_0Block) == sizeof(formats::BlockQ8_0) && sizeof(cpu::Q8_1Block) == sizeof(formats::BlockQ8_1));

const cpu::KernelSet& kernels() {
  CpuIsa isa = CpuIsa::kScalar;
  try {
    isa = active_isa();
  } catch (const Error&) {
    // registry's run() has already reported a malformed QFORGE_MAX_CPU_ISA; stay safe here.
  }
  switch (isa) {
    case CpuIsa::kAvx512: return cpu::avx512_kernels();
    case CpuIsa::kAvx2: return cpu::avx2_kernels();
    case CpuIsa::kScalar: break;
  }
  return cpu::scalar_kernels();
}

// Runs fn(begin, end) over [0, n) in chunks of `chunk` items. Chunk boundaries depend only on n
// and chunk; small jobs (fewer than two chunks) stay on the calling thread. parallel_for_each
// hands the chunks to the OpenMP team oneDNN uses (make_cpu_backend installs it as the runner),
// so our kernels and oneDNN's never spin against each other.
template <class F>
void for_chunks(std::int64_t n, std::int64_t chunk, F&& fn) {
  const std::int64_t chunks = (n + chunk - 1) / chunk;
  parallel_for_each(chunks, num_threads(), [&](std::int64_t c) { fn(c * chunk, std::min(n, (c + 1) * chunk)); });
}

// Rows per chunk so that each chunk carries roughly `bytes_per_chunk` of work.
std::int64_t rows_per_chunk(std::int64_t bytes_per_row, std::int64_t bytes_per_chunk = 1 << 18) {
  return std::max<std::int64_t>(1, bytes_per_chunk / std::max<std::int64_t>(1, bytes_per_row));
}

// One group's scale s = absmax / qmax and the reciprocal its codes are multiplied by.
struct RowScale {
  float scale, inv;
};
RowScale row_scale(const cpu::KernelSet& ks, const float* x, std::int64_t n, int qmax) {
  const float s = ks.absmax(x, n) / static_cast<float>(qmax);
  return {s, s != 0.0f ? 1.0f / s : 0.0f};
}

// One group: s = absmax / qmax, codes = clamp(rne(x / s)).
float quantize_group(const cpu::KernelSet& ks, const float* x, std::int64_t n, int qmax, std::int8_t* q) {
  const RowScale rs = row_scale(ks, x, n, qmax);
  ks.quantize_s8(x, n, rs.inv, qmax, q);
  return rs.scale;
}

// Quantizes each row of a[M, K] to int8 per row (activations of the W8A8/W4A8 products).
void quantize_activations(const cpu::KernelSet& ks, const float* a, std::int64_t lda, std::int64_t M, std::int64_t K,
                          std::int8_t* qa, float* sa) {
  for_chunks(M, rows_per_chunk(K * 4), [&](std::int64_t m0, std::int64_t m1) {
    for (std::int64_t m = m0; m < m1; ++m) sa[m] = quantize_group(ks, a + m * lda, K, 127, qa + m * K);
  });
}

// Per-thread scratch that only grows: large products would otherwise pay for zero-filling and
// page-faulting fresh buffers on every call.
template <class T, int kSlot>
T* scratch(std::size_t n) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

#if defined(QFORGE_HAS_ONEDNN)
// oneDNN on OpenMP sizes a primitive for the calling thread's omp_get_max_threads() when the
// primitive is created (brgemm matmul keeps that thread count for every execution), and runs
// sequentially inside a parallel region. Set before creating or running a primitive.
void set_onednn_threads(int threads) {
  if (omp_set_num_threads) omp_set_num_threads(threads);
}

// int32 c[M, N] (row stride ldc) = a[M, K] (row stride lda) * b[N, K]^T (row stride ldb), through
// oneDNN's matmul primitive: on CPUs with AMX or VNNI it picks its brgemm kernels, several times
// faster than the BLAS-style dnnl_gemm_s8s8s32. Integer products are exact on every path.
// Dense operands (lda == K, ldb == K) are what brgemm accepts; other strides still work, slower.
// `threads` must be what set_onednn_threads() last set on this thread: 1 inside our own
// parallel regions (each thread then runs its own products), num_threads() outside.
bool onednn_s8_matmul(std::int64_t M, std::int64_t N, std::int64_t K, const std::int8_t* a, std::int64_t lda,
                      const std::int8_t* b, std::int64_t ldb, std::int32_t* c, std::int64_t ldc, int threads) {
  try {
    static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    using dt = dnnl::memory::data_type;
    const dnnl::memory::desc a_md({M, K}, dt::s8, dnnl::memory::dims{lda, 1});
    const dnnl::memory::desc b_md({K, N}, dt::s8, dnnl::memory::dims{1, ldb});
    const dnnl::memory::desc c_md({M, N}, dt::s32, dnnl::memory::dims{ldc, 1});
    // Creating a primitive descriptor walks oneDNN's implementation list (tens of microseconds);
    // W4A8 runs hundreds of same-shape products per call, so primitives are kept per shape and
    // per thread count: a primitive created for one thread stays on one thread.
    static std::mutex mutex;
    struct Entry {
      dnnl::matmul prim;
      dnnl::memory::desc scratchpad;
    };
    static std::map<std::array<std::int64_t, 7>, Entry> cache;
    Entry e;
    {
      std::lock_guard lock(mutex);
      const std::array<std::int64_t, 7> key{M, N, K, lda, ldb, ldc, threads};
      auto it = cache.find(key);
      if (it == cache.end()) {
        // The caller's scratchpad (per thread, below), not oneDNN's: threads running the same
        // primitive at once must not share one.
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, engine);
        it = cache.emplace(key, Entry{dnnl::matmul(pd), pd.scratchpad_desc()}).first;
      }
      e = it->second;
    }
    dnnl::stream stream(engine);
    std::uint8_t* pad = scratch<std::uint8_t, 7>(std::max<std::size_t>(1, e.scratchpad.get_size()));
    e.prim.execute(stream, {{DNNL_ARG_SRC, dnnl::memory(a_md, engine, const_cast<std::int8_t*>(a))},
                            {DNNL_ARG_WEIGHTS, dnnl::memory(b_md, engine, const_cast<std::int8_t*>(b))},
                            {DNNL_ARG_DST, dnnl::memory(c_md, engine, c)},
                            {DNNL_ARG_SCRATCHPAD, dnnl::memory(e.scratchpad, engine, pad)}});
    stream.wait();
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}
#endif

class CpuBackend final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }
  DeviceKind device_kind() const override { return DeviceKind::kCpu; }

  Support supports(const Op& op) const override {
    if (const auto* q = std::get_if<QuantizedMatmulOp>(&op)) return supports_quantized(*q);
#if !defined(QFORGE_HAS_ONEDNN)
    if (std::holds_alternative<GemmF32Op>(op) || std::holds_alternative<SyrkOp>(op) ||
        std::holds_alternative<GemmS8S8S32Op>(op) || std::holds_alternative<GptqBlockUpdateOp>(op))
      return Support::no("float and raw int8 GEMM need oneDNN (built without it)");
#endif
    return Support::yes();
  }

  Status run(const Op& op) override {
    return std::visit([](const auto& o) { return run_op(o); }, op);
  }

 private:
  static Support supports_quantized([[maybe_unused]] const QuantizedMatmulOp& o) {
#if defined(QFORGE_HAS_ONEDNN)
    // oneDNN's s8s8s32 GEMM covers int8 x int8 with one scale per row of each operand; tiles
    // along K and zero points stay with the reference backend.
    for (const QArray* q : {o.a, o.b}) {
      if (q->qtype() != QType::kInt8) return Support::no("quantized_matmul: only int8 x int8");
      if (q->zero_point()) return Support::no("quantized_matmul: zero points");
      if (q->shape().size() != 2 || q->scale().shape()[1] != 1) return Support::no("quantized_matmul: tiles along K");
    }
    return Support::yes();
#else
    return Support::no("quantized_matmul needs oneDNN (built without it)");
#endif
  }

#if defined(QFORGE_HAS_ONEDNN)
  // Every oneDNN call runs on num_threads() threads, like our own kernels.
  static Status status_of(dnnl_status_t s) { return s == dnnl_success ? Status::kSuccess : Status::kInternal; }
  static void sync_onednn_threads() { set_onednn_threads(num_threads()); }
  static Status run_op(const GemmF32Op& o) {
    sync_onednn_threads();
    return status_of(dnnl_sgemm(o.a_km ? 'T' : 'N', o.b_kn ? 'N' : 'T', o.M, o.N, o.K, o.alpha, o.a, o.lda, o.b, o.ldb,
                                o.accumulate ? 1.0f : 0.0f, o.dst, o.ldd));
  }
  static Status run_op(const SyrkOp& o) {
    sync_onednn_threads();
    return status_of(dnnl_sgemm('T', 'N', o.K, o.K, o.T, o.alpha, o.x, o.ldx, o.x, o.ldx, 1.0f, o.h, o.K));
  }
  static Status run_op(const GemmS8S8S32Op& o) {
    sync_onednn_threads();
    return onednn_s8_matmul(o.M, o.N, o.K, o.a, o.K, o.b, o.K, o.dst, o.N, num_threads()) ? Status::kSuccess : Status::kInternal;
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
        const double v =
            static_cast<double>(acc[static_cast<std::size_t>(m * N + n)]) * sa[per_row_a ? m : 0] * sb[per_row_b ? n : 0];
        o.dst[m * N + n] = static_cast<float>(v);
      }
    return Status::kSuccess;
  }
  static Status run_op(const GptqBlockUpdateOp& o) {
    sync_onednn_threads();
    return status_of(dnnl_sgemm('N', 'N', o.rows, o.cols, o.B, -1.0f, o.err, o.lde, o.hinv, o.ldh, 1.0f, o.w, o.ldw));
  }
#else
  template <class O>
  static Status run_op(const O&) requires(std::is_same_v<O, GemmF32Op> || std::is_same_v<O, SyrkOp> ||
                                          std::is_same_v<O, GemmS8S8S32Op> || std::is_same_v<O, QuantizedMatmulOp> ||
                                          std::is_same_v<O, GptqBlockUpdateOp>) {
    return Status::kUnsupported;
  }
#endif

  // ---- row quantization ------------------------------------------------------------------------
  static Status run_op(const QuantizeRowsOp& o) {
    const cpu::KernelSet& ks = kernels();
    const int qmax = row_format_qmax(o.format);
    const std::int64_t groups = o.cols / o.group, row_bytes = row_format_bytes(o.format, o.cols);
    for_chunks(o.rows, rows_per_chunk(o.cols * 4), [&](std::int64_t r0, std::int64_t r1) {
      std::vector<std::int8_t> q(static_cast<std::size_t>(o.cols));
      for (std::int64_t r = r0; r < r1; ++r) {
        auto* out = static_cast<std::uint8_t*>(o.codes) + r * row_bytes;
        std::int8_t* dst = o.format == RowFormat::kInt8 ? reinterpret_cast<std::int8_t*>(out) : q.data();
        for (std::int64_t g = 0; g < groups; ++g)
          o.scales[r * groups + g] = quantize_group(ks, o.x + r * o.ldx + g * o.group, o.group, qmax, dst + g * o.group);
        if (o.format == RowFormat::kInt4)
          for (std::int64_t i = 0; i < o.cols / 2; ++i)
            out[i] = static_cast<std::uint8_t>((q[2 * i] & 0x0F) | ((q[2 * i + 1] & 0x0F) << 4));
      }
    });
    return Status::kSuccess;
  }
  static Status run_op(const DequantizeRowsOp& o) {
    const cpu::KernelSet& ks = kernels();
    const std::int64_t groups = o.cols / o.group, row_bytes = row_format_bytes(o.format, o.cols);
    for_chunks(o.rows, rows_per_chunk(o.cols * 4), [&](std::int64_t r0, std::int64_t r1) {
      std::vector<std::int8_t> q(static_cast<std::size_t>(o.cols));
      for (std::int64_t r = r0; r < r1; ++r) {
        const auto* row = static_cast<const std::uint8_t*>(o.codes) + r * row_bytes;
        const std::int8_t* codes = reinterpret_cast<const std::int8_t*>(row);
        if (o.format == RowFormat::kInt4) {
          ks.unpack_s4(row, o.cols, q.data());
          codes = q.data();
        }
        float* y = o.y + r * o.ldy;
        for (std::int64_t c = 0; c < o.cols; ++c) y[c] = o.scales[r * groups + c / o.group] * static_cast<float>(codes[c]);
      }
    });
    return Status::kSuccess;
  }

  // ---- quantized GEMMs ---------------------------------------------------------------------------
  // Integer products through oneDNN are exact, so these paths give the reference's bits.
  static Status run_op(const GemmW8A8Op& o) {
    const cpu::KernelSet& ks = kernels();
#if defined(QFORGE_HAS_ONEDNN)
    // One block of rows per thread, in one parallel region: each thread quantizes its rows, runs
    // their product through a one-thread oneDNN primitive and scales the int32 sums while they
    // are still in cache. Splitting the product inside oneDNN instead, between a parallel
    // quantization and a parallel scaling pass, reached 1.7x on two cores, this 1.9x. Each
    // element's integer sum and two float products are the same for any split, so the result
    // does not depend on the thread count.
    const int threads = num_threads();
    const std::int64_t rows = std::max<std::int64_t>(16, (o.M + threads - 1) / threads);
    const int onednn_threads = o.M > rows ? 1 : threads;
    std::atomic<bool> failed{false};
    for_chunks(o.M, rows, [&](std::int64_t m0, std::int64_t m1) {
      set_onednn_threads(onednn_threads);
      const std::int64_t mm = m1 - m0;
      std::int8_t* qa = scratch<std::int8_t, 6>(static_cast<std::size_t>(mm * o.K));
      std::int32_t* acc = scratch<std::int32_t, 6>(static_cast<std::size_t>(mm * o.N));
      float* sa = scratch<float, 7>(static_cast<std::size_t>(mm));
      for (std::int64_t m = 0; m < mm; ++m) sa[m] = quantize_group(ks, o.a + (m0 + m) * o.lda, o.K, 127, qa + m * o.K);
      if (!onednn_s8_matmul(mm, o.N, o.K, qa, o.K, o.w, o.K, acc, o.N, onednn_threads)) {
        failed = true;
        return;
      }
      for (std::int64_t m = 0; m < mm; ++m)
        for (std::int64_t n = 0; n < o.N; ++n)
          o.dst[(m0 + m) * o.ldd + n] = (static_cast<float>(acc[m * o.N + n]) * sa[m]) * o.w_scales[n];
    });
    return failed ? Status::kInternal : Status::kSuccess;
#else
    std::vector<std::int8_t> qa(static_cast<std::size_t>(o.M * o.K));
    std::vector<float> sa(static_cast<std::size_t>(o.M));
    quantize_activations(ks, o.a, o.lda, o.M, o.K, qa.data(), sa.data());
    std::vector<std::int32_t> acc(static_cast<std::size_t>(o.M * o.N));
    for_chunks(o.N, rows_per_chunk(o.K * o.M), [&](std::int64_t n0, std::int64_t n1) {
      for (std::int64_t n = n0; n < n1; ++n)
        for (std::int64_t m = 0; m < o.M; ++m) acc[m * o.N + n] = ks.dot_s8(qa.data() + m * o.K, o.w + n * o.K, o.K);
    });
    for (std::int64_t m = 0; m < o.M; ++m)
      for (std::int64_t n = 0; n < o.N; ++n)
        o.dst[m * o.ldd + n] = (static_cast<float>(acc[static_cast<std::size_t>(m * o.N + n)]) * sa[m]) * o.w_scales[n];
    return Status::kSuccess;
#endif
  }

  static Status run_op(const GemmW4A8Op& o) {
    const cpu::KernelSet& ks = kernels();
#if defined(QFORGE_HAS_ONEDNN)
    if (o.M >= 16) return w4a8_by_groups(ks, o);
#endif
    std::vector<std::int8_t> qa(static_cast<std::size_t>(o.M * o.K));
    std::vector<float> sa(static_cast<std::size_t>(o.M));
    quantize_activations(ks, o.a, o.lda, o.M, o.K, qa.data(), sa.data());
    const std::int64_t groups = o.K / o.group;
    for_chunks(o.N, rows_per_chunk(o.K / 2), [&](std::int64_t n0, std::int64_t n1) {
      std::vector<std::int8_t> wq(static_cast<std::size_t>(o.K));
      for (std::int64_t n = n0; n < n1; ++n) {
        ks.unpack_s4(o.w + n * (o.K / 2), o.K, wq.data());
        for (std::int64_t m = 0; m < o.M; ++m) {
          float acc = 0.0f;
          for (std::int64_t g = 0; g < groups; ++g)
            acc = std::fma(static_cast<float>(ks.dot_s8(qa.data() + m * o.K + g * o.group, wq.data() + g * o.group, o.group)),
                           o.w_scales[n * groups + g], acc);
          o.dst[m * o.ldd + n] = acc * sa[static_cast<std::size_t>(m)];
        }
      }
    });
    return Status::kSuccess;
  }

#if defined(QFORGE_HAS_ONEDNN)
  // Large M: one oneDNN int8 product per (column panel, K group), exact int32, folded in group
  // order with the reference's fused multiply-adds. Each thread owns whole column panels and
  // runs their products on one thread: per-call fork/join inside oneDNN (hundreds of small
  // calls) and a serial fold would otherwise leave the second core idle most of the time. The
  // panel boundaries and every element's order of operations do not depend on the thread count.
  static Status w4a8_by_groups(const cpu::KernelSet& ks, const GemmW4A8Op& o) {
    const std::int64_t groups = o.K / o.group, gs = o.group;
    // Activations quantized per row (one scale per row, as the reference), their codes stored
    // group-major [G][M][group]: the dense layout oneDNN's brgemm (AMX/VNNI) kernels accept.
    std::int8_t* qa_g = scratch<std::int8_t, 0>(static_cast<std::size_t>(o.M * o.K));
    std::vector<float> sa(static_cast<std::size_t>(o.M));
    for_chunks(o.M, rows_per_chunk(o.K * 4), [&](std::int64_t m0, std::int64_t m1) {
      for (std::int64_t m = m0; m < m1; ++m) {
        const RowScale rs = row_scale(ks, o.a + m * o.lda, o.K, 127);
        sa[static_cast<std::size_t>(m)] = rs.scale;
        for (std::int64_t g = 0; g < groups; ++g)
          ks.quantize_s8(o.a + m * o.lda + g * gs, gs, rs.inv, 127, qa_g + (g * o.M + m) * gs);
      }
    });
    // 512 columns: a panel's int8 weights of one group, int32 partials and float accumulators
    // (64 KB + 2 x 256 KB at M = 128) stay in L2 across its groups.
    constexpr std::int64_t kPanel = 512;
    const std::int64_t panels = (o.N + kPanel - 1) / kPanel;
    const int onednn_threads = panels >= 2 ? 1 : num_threads();
    std::atomic<bool> failed{false};
    for_chunks(o.N, kPanel, [&](std::int64_t n0, std::int64_t n1) {
      set_onednn_threads(onednn_threads);
      const std::int64_t nn = n1 - n0;
      std::int8_t* wq = scratch<std::int8_t, 1>(static_cast<std::size_t>(nn * gs));
      std::int32_t* part = scratch<std::int32_t, 2>(static_cast<std::size_t>(o.M * nn));
      float* acc = scratch<float, 3>(static_cast<std::size_t>(o.M * nn));
      float* scale_t = scratch<float, 6>(static_cast<std::size_t>(groups * nn));  // [groups, nn]
      std::fill(acc, acc + o.M * nn, 0.0f);
      for (std::int64_t j = 0; j < nn; ++j)
        for (std::int64_t g = 0; g < groups; ++g) scale_t[g * nn + j] = o.w_scales[(n0 + j) * groups + g];
      for (std::int64_t g = 0; g < groups && !failed.load(std::memory_order_relaxed); ++g) {
        for (std::int64_t j = 0; j < nn; ++j) ks.unpack_s4(o.w + (n0 + j) * (o.K / 2) + g * gs / 2, gs, wq + j * gs);
        if (!onednn_s8_matmul(o.M, nn, gs, qa_g + g * o.M * gs, gs, wq, gs, part, nn, onednn_threads)) {
          failed = true;
          return;
        }
        for (std::int64_t m = 0; m < o.M; ++m) ks.fma_i32(acc + m * nn, part + m * nn, scale_t + g * nn, nn);
      }
      for (std::int64_t m = 0; m < o.M; ++m)
        for (std::int64_t j = 0; j < nn; ++j) o.dst[m * o.ldd + n0 + j] = acc[m * nn + j] * sa[static_cast<std::size_t>(m)];
    });
    return failed ? Status::kInternal : Status::kSuccess;
  }
#endif

  // Fused dequantize-GEMV per weight row; the float weights never reach memory.
  static Status run_op(const GemmW4A16Op& o) {
    const cpu::KernelSet& ks = kernels();
    const std::int64_t groups = o.K / o.group;
    float* a = scratch<float, 4>(static_cast<std::size_t>(o.M * o.K));
    for (std::int64_t m = 0; m < o.M; ++m) ks.w4_prepare(o.a + m * o.lda, o.K, o.group, a + m * o.K);
    for_chunks(o.N, rows_per_chunk(o.K / 2 * o.M), [&](std::int64_t n0, std::int64_t n1) {
      for (std::int64_t n = n0; n < n1; ++n)
        for (std::int64_t m = 0; m < o.M; ++m)
          o.dst[m * o.ldd + n] = ks.dot_w4_f32(o.w + n * (o.K / 2), o.w_scales + n * groups, o.group, a + m * o.K, o.K);
    });
    return Status::kSuccess;
  }

  // ---- GGUF blocks -------------------------------------------------------------------------------
  static Status run_op(const EncodeBlocksOp& o) {
    const cpu::KernelSet& ks = kernels();
    const std::int64_t row_bytes = formats::ggml_row_bytes(o.type, o.cols);
    auto encode = [&](const float* x, void* dst, std::int64_t n) {
      switch (o.type) {
        case formats::GgmlType::kQ8_0: ks.encode_q8_0(x, dst, n); break;
        case formats::GgmlType::kQ4_0: ks.encode_q4_0(x, dst, n); break;
        case formats::GgmlType::kQ4_1: ks.encode_q4_1(x, dst, n); break;
        default: formats::encode_row(o.type, x, dst, n);
      }
    };
    // Long rows are split at block boundaries so that a single row also uses every thread.
    const std::int64_t blocks_per_row = o.cols / 32, block_bytes = row_bytes / std::max<std::int64_t>(1, blocks_per_row);
    const std::int64_t chunk = 8192;  // blocks
    for_chunks(o.rows * blocks_per_row, chunk, [&](std::int64_t b0, std::int64_t b1) {
      while (b0 < b1) {
        const std::int64_t r = b0 / blocks_per_row, in_row = b0 % blocks_per_row;
        const std::int64_t count = std::min(b1 - b0, blocks_per_row - in_row);
        encode(o.x + r * o.ldx + in_row * 32, static_cast<std::uint8_t*>(o.dst) + r * row_bytes + in_row * block_bytes,
               count * 32);
        b0 += count;
      }
    });
    return Status::kSuccess;
  }
  using VecDot = float (*)(std::int64_t, const void*, const void*);
  static VecDot vec_dot_for(const cpu::KernelSet& ks, formats::GgmlType t) {
    if (t == formats::GgmlType::kQ4_0) return ks.vec_dot_q4_0_q8_0;
    if (t == formats::GgmlType::kQ4_1) return ks.vec_dot_q4_1_q8_1;
    return ks.vec_dot_q8_0_q8_0;
  }
  static Status run_op(const GemvBlocksOp& o) {
    const VecDot dot = vec_dot_for(kernels(), o.weight_type);
    const std::int64_t row_bytes = formats::ggml_row_bytes(o.weight_type, o.K);
    for_chunks(o.N, rows_per_chunk(row_bytes), [&](std::int64_t n0, std::int64_t n1) {
      for (std::int64_t n = n0; n < n1; ++n) o.y[n] = dot(o.K, static_cast<const std::uint8_t*>(o.w) + n * row_bytes, o.x);
    });
    return Status::kSuccess;
  }
  static Status run_op(const GemmBlocksOp& o) {
    const cpu::KernelSet& ks = kernels();
    const VecDot dot = vec_dot_for(ks, o.weight_type);
    const formats::GgmlType at = ReferenceBackend::activation_type(o.weight_type);
    const std::int64_t xbytes = formats::ggml_row_bytes(at, o.K), row_bytes = formats::ggml_row_bytes(o.weight_type, o.K);
    std::vector<std::uint8_t> xq(static_cast<std::size_t>(xbytes * o.M));
    for (std::int64_t m = 0; m < o.M; ++m) {
      if (at == formats::GgmlType::kQ8_0)
        ks.encode_q8_0(o.a + m * o.lda, xq.data() + m * xbytes, o.K);
      else
        formats::encode_row(at, o.a + m * o.lda, xq.data() + m * xbytes, o.K);
    }
    for_chunks(o.N, rows_per_chunk(row_bytes * o.M), [&](std::int64_t n0, std::int64_t n1) {
      for (std::int64_t n = n0; n < n1; ++n)
        for (std::int64_t m = 0; m < o.M; ++m)
          o.dst[m * o.ldd + n] = dot(o.K, static_cast<const std::uint8_t*>(o.w) + n * row_bytes, xq.data() + m * xbytes);
    });
    return Status::kSuccess;
  }
  static Status run_op(const GemvNf4Op& o) {
    const cpu::KernelSet& ks = kernels();
    float* x = scratch<float, 5>(static_cast<std::size_t>(o.K));
    ks.nf4_prepare(o.x, o.K, o.block, x);
    for_chunks(o.N, rows_per_chunk(o.K / 2), [&](std::int64_t n0, std::int64_t n1) {
      for (std::int64_t n = n0; n < n1; ++n)
        o.y[n] = ks.dot_nf4(o.codes + n * o.K / 2, o.absmax + n * o.K / o.block, o.block, x, o.K, kNf4Codebook.data());
    });
    return Status::kSuccess;
  }
};

}  // namespace

#if defined(QFORGE_HAS_OPENMP)
// core/parallel.hpp's loops run on the same OpenMP team as our kernels and oneDNN.
// With no more items than threads, item i always runs on team thread i, so a caller that gives
// each thread a fixed share of its data (one item per thread) finds that share in the same
// core's cache on the next call; otherwise items are handed out one at a time.
static void openmp_runner(std::int64_t n, int threads, void* ctx, void (*call)(void*, std::int64_t)) {
  if (n <= threads) {
#pragma omp parallel num_threads(static_cast<int>(n))
    call(ctx, omp_get_thread_num());
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (std::int64_t i = 0; i < n; ++i) call(ctx, i);
}
#endif

std::unique_ptr<Backend> make_cpu_backend() {
#if defined(QFORGE_HAS_OPENMP)
  qforge::detail::parallel_runner().store(&openmp_runner);
#endif
  return std::make_unique<CpuBackend>();
}

}  // namespace qforge::backend
