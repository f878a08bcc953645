// The registry's selection rules: priority order, declining with a reason, QFORGE_BACKEND and
// QFORGE_MAX_CPU_ISA (unknown names are errors that name the value), threads and argument checks.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "qforge/backend/cpu_features.hpp"
#include "qforge/backend/registry.hpp"
#include "qforge/backend/threads.hpp"

namespace qb = qforge::backend;

namespace {

// Sets an environment variable for one scope and restores the previous value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_)
      ::setenv(name_, old_.c_str(), 1);
    else
      ::unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

std::string error_of(const qb::Op& op) {
  try {
    qb::run(op);
  } catch (const qforge::Error& e) {
    return e.what();
  }
  return {};
}

qb::GemmF32Op tiny_gemm(const float* a, const float* b, float* d) { return {1, 1, 2, a, 2, b, 2, d, 1}; }

}  // namespace

TEST(Registry, ReferenceIsLastAndCpuPrecedesIt) {
  const auto& backends = qb::Registry::instance().backends();
  ASSERT_FALSE(backends.empty());
  EXPECT_EQ(backends.back()->name(), "reference");
  ASSERT_NE(qb::Registry::instance().find("cpu"), nullptr);
  EXPECT_NE(qb::Registry::instance().names().find("cpu, reference"), std::string::npos);
}

TEST(Registry, ForcedBackendIsUsed) {
  const float a[2] = {1, 2}, b[2] = {3, 4};
  float d[1] = {0};
  ScopedEnv env("QFORGE_BACKEND", "reference");
  EXPECT_EQ(qb::Registry::instance().select(tiny_gemm(a, b, d)).name(), "reference");
  qb::run(tiny_gemm(a, b, d));
  EXPECT_EQ(d[0], 11.0f);
}

TEST(Registry, UnknownForcedBackendIsAnErrorNamingIt) {
  const float a[2] = {1, 2}, b[2] = {3, 4};
  float d[1] = {0};
  ScopedEnv env("QFORGE_BACKEND", "tpu");
  const std::string msg = error_of(tiny_gemm(a, b, d));
  EXPECT_NE(msg.find("QFORGE_BACKEND=tpu"), std::string::npos) << msg;
  EXPECT_NE(msg.find("reference"), std::string::npos) << "should list the backends this build has: " << msg;
}

namespace {
// A backend that declines everything, with a reason, to check that selection skips it.
class DecliningBackend final : public qb::Backend {
 public:
  std::string_view name() const override { return "declining"; }
  qb::DeviceKind device_kind() const override { return qb::DeviceKind::kCpu; }
  qb::Support supports(const qb::Op&) const override { return qb::Support::no("declines everything by design"); }
  qforge::Status run(const qb::Op&) override { return qforge::Status::kInternal; }
};
}  // namespace

TEST(Registry, DecliningBackendIsSkippedAndForcingItReportsWhy) {
  auto& reg = qb::Registry::instance();
  if (!reg.find("declining")) reg.add_front(std::make_unique<DecliningBackend>());
  const float a[2] = {1, 2}, b[2] = {3, 4};
  float d[1] = {0};
  EXPECT_NE(reg.select(tiny_gemm(a, b, d)).name(), "declining");
  ScopedEnv env("QFORGE_BACKEND", "declining");
  const std::string msg = error_of(tiny_gemm(a, b, d));
  EXPECT_NE(msg.find("declines everything by design"), std::string::npos) << msg;
}

TEST(CpuFeatures, BestIsaMatchesFeatureBits) {
  const auto& f = qb::cpu_features();
  const qb::CpuIsa best = f.best_isa();
  if (best == qb::CpuIsa::kAvx512) {
    EXPECT_TRUE(f.avx512f && f.avx512bw && f.avx512vnni && f.avx2);
  }
  if (best >= qb::CpuIsa::kAvx2) {
    EXPECT_TRUE(f.avx2 && f.fma && f.f16c);
  }
  if (!f.avx2) {
    EXPECT_EQ(best, qb::CpuIsa::kScalar);
  }
}

TEST(CpuFeatures, CapFromEnvironmentAndApi) {
  {
    ScopedEnv env("QFORGE_MAX_CPU_ISA", "scalar");
    EXPECT_EQ(qb::active_isa(), qb::CpuIsa::kScalar);
  }
  {
    ScopedEnv env("QFORGE_MAX_CPU_ISA", "avx2");
    EXPECT_LE(static_cast<int>(qb::active_isa()), static_cast<int>(qb::CpuIsa::kAvx2));
    qb::set_max_cpu_isa(qb::CpuIsa::kScalar);  // the API overrides the environment
    EXPECT_EQ(qb::active_isa(), qb::CpuIsa::kScalar);
    qb::reset_max_cpu_isa();
  }
  EXPECT_EQ(qb::active_isa(), qb::cpu_features().best_isa());
}

TEST(CpuFeatures, UnknownIsaNameIsAnErrorNamingIt) {
  const float a[2] = {1, 2}, b[2] = {3, 4};
  float d[1] = {0};
  ScopedEnv env("QFORGE_MAX_CPU_ISA", "sse9");
  const std::string msg = error_of(tiny_gemm(a, b, d));
  EXPECT_NE(msg.find("QFORGE_MAX_CPU_ISA=sse9"), std::string::npos) << msg;
}

TEST(Threads, ApiSettingAndValidation) {
  EXPECT_GE(qb::num_threads(), 1);
  qb::set_num_threads(3);
  EXPECT_EQ(qb::num_threads(), 3);
  qb::set_num_threads(0);
  EXPECT_EQ(qb::num_threads(), qforge::default_threads());
  EXPECT_THROW(qb::set_num_threads(-2), qforge::Error);
  ScopedEnv env("QFORGE_THREADS", "5");
  EXPECT_EQ(qb::num_threads(), 5);
}

TEST(OpArguments, GroupThatDoesNotDivideIsAShapeError) {
  float x[6] = {};
  std::int8_t codes[6];
  float scales[2];
  try {
    qb::run(qb::QuantizeRowsOp{qb::RowFormat::kInt8, 1, 6, 4, x, 6, codes, scales});
    FAIL() << "expected an error";
  } catch (const qforge::Error& e) {
    EXPECT_EQ(e.status(), qforge::Status::kShapeMismatch);
    EXPECT_NE(std::string(e.what()).find("quantize_rows"), std::string::npos) << e.what();
  }
  EXPECT_THROW(qb::run(qb::GemvBlocksOp{qforge::formats::GgmlType::kQ4_K, 1, 256, nullptr, nullptr, nullptr}),
               qforge::Error);
}
