// Reference integer matmul: qwix-semantics.md §5 item 9. The integer dot products are exact
// (int64), so the only error is the final double products with float scales: far below 1e-6.
#include <gtest/gtest.h>

#include <cmath>

#include "core/test_util.hpp"

namespace qforge {
namespace {

using testing::expect_error;
using testing::normal_tensor;

TensorF float_matmul_nt(const TensorF& a, const TensorF& b) {
  const std::int64_t M = a.shape()[0], N = b.shape()[0], K = a.shape()[1];
  TensorF d({M, N});
  for (std::int64_t m = 0; m < M; ++m)
    for (std::int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (std::int64_t k = 0; k < K; ++k) acc += double(a.at(m, k)) * b.at(n, k);
      d.at(m, n) = static_cast<float>(acc);
    }
  return d;
}

void expect_relative_close(const TensorF& got, const TensorF& want, double rel) {
  double max_ref = 0;
  for (std::int64_t i = 0; i < want.size(); ++i) max_ref = std::max(max_ref, double(std::fabs(want[i])));
  for (std::int64_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], rel * max_ref) << "element " << i;
}

struct MatmulCase {
  const char* name;
  HowToQuantize a, b;
  double rel;
};

TEST(IntegerMatmul, EqualsFloatMatmulOfDequantizedOperands) {
  constexpr std::uint64_t kSeed = 31;
  SCOPED_TRACE(::testing::Message() << "seed " << kSeed);
  const TensorF xa = normal_tensor({16, 64}, kSeed), xb = normal_tensor({24, 64}, kSeed + 1, 0.5f);
  const MatmulCase cases[] = {
      {"per-tensor int8", {QType::kInt8, {}, {}, "absmax"}, {QType::kInt8, {}, {}, "absmax"}, 1e-6},
      {"per-row int8 x per-channel int4", {QType::kInt8, {0}, {}, "absmax"}, {QType::kInt4, {0}, {}, "absmax"}, 1e-6},
      {"8-wide K tiles", {QType::kInt8, {0}, {{1, std::int64_t{8}}}, "absmax"},
       {QType::kInt8, {0}, {{1, std::int64_t{8}}}, "absmax"}, 1e-6},
      {"asymmetric activations", {QType::kUInt8, {0}, {}, "minmax"}, {QType::kInt8, {0}, {}, "absmax"}, 1e-6},
      {"asymmetric weights", {QType::kInt8, {0}, {}, "absmax"}, {QType::kInt4, {0}, {{1, std::int64_t{16}}}, "minmax"}, 1e-6},
      {"int16", {QType::kInt16, {0}, {}, "absmax"}, {QType::kInt8, {0}, {}, "absmax"}, 1e-6},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const QArray qa = quantize(xa, c.a), qb = quantize(xb, c.b);
    expect_relative_close(integer_matmul(qa, qb), float_matmul_nt(dequantize(qa), dequantize(qb)), c.rel);
  }
}

TEST(IntegerMatmul, RejectsWhatItCannotComputeExactly) {
  const TensorF x = normal_tensor({4, 8}, 1);
  const QArray asym = quantize(x, {QType::kUInt8, {0}, {}, "minmax"});
  expect_error([&] { integer_matmul(asym, asym); }, {"only one operand"});
  const QArray nf4 = quantize(x, {QType::kNf4, {0}, {}, "absmax"});
  expect_error([&] { integer_matmul(nf4, nf4); }, {"nf4"});
  const QArray other = quantize(normal_tensor({4, 6}, 2), {QType::kInt8, {}, {}, "absmax"});
  expect_error([&] { integer_matmul(asym, other); }, {"[4, 8]", "[4, 6]"});
}

}  // namespace
}  // namespace qforge
