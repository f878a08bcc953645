// Eigen matrices in and out (include/qforge/interop/eigen.hpp): matrices, maps, refs and blocks of
// either storage order quantize in place to exactly the QArray of a row-major Tensor holding the
// same values, and dequantize into the caller's matrices in their own layout.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "core/test_util.hpp"
#include "interop/interop_test_util.hpp"

namespace qforge {
namespace {

using testing::expect_error;
using testing::expect_same_as_tensor_path;
using testing::seeded_tensor;
using RowMajorMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using DynamicStride = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;

constexpr std::uint64_t kSeed = 2122;

// A matrix of either storage order holding t's values, element by element.
template <class Matrix>
Matrix matrix_of(const TensorF& t) {
  Matrix m(t.dim(0), t.dim(1));
  for (Eigen::Index r = 0; r < m.rows(); ++r)
    for (Eigen::Index c = 0; c < m.cols(); ++c) m(r, c) = t.at(r, c);
  return m;
}

template <class M>
TensorF values_of(const M& m) {
  TensorF out({m.rows(), m.cols()});
  for (Eigen::Index r = 0; r < m.rows(); ++r)
    for (Eigen::Index c = 0; c < m.cols(); ++c) out.at(r, c) = m(r, c);
  return out;
}

TEST(EigenInterop, ColumnMajorMatrixIsReadWithItsStridesNotTransposed) {
  const TensorF t = seeded_tensor({8, 64}, kSeed);
  const Eigen::MatrixXf m = matrix_of<Eigen::MatrixXf>(t);
  const TensorView<const float> view = interop::view_of(m);
  EXPECT_EQ(view.data(), m.data());
  EXPECT_EQ(view.shape(), (Shape{8, 64}));
  EXPECT_EQ(view.strides(), (Shape{1, 8}));
  expect_same_as_tensor_path(m, t);
}

TEST(EigenInterop, RowMajorMatrixIsContiguous) {
  const TensorF t = seeded_tensor({8, 64}, kSeed);
  const RowMajorMatrix m = matrix_of<RowMajorMatrix>(t);
  EXPECT_EQ(interop::view_of(m).data(), m.data());
  EXPECT_TRUE(interop::view_of(m).is_contiguous());
  expect_same_as_tensor_path(m, t);
}

TEST(EigenInterop, MapsAndRefsAreNotCopied) {
  const TensorF t = seeded_tensor({8, 64}, kSeed + 1);
  const Eigen::Map<const RowMajorMatrix> map(t.data(), 8, 64);
  EXPECT_EQ(interop::view_of(map).data(), t.data());
  expect_same_as_tensor_path(map, t);

  // Every other column of the buffer: an inner stride of 2.
  const Eigen::Map<const RowMajorMatrix, 0, DynamicStride> even_columns(t.data(), 8, 32, DynamicStride(64, 2));
  TensorF even({8, 32});
  for (std::int64_t r = 0; r < 8; ++r)
    for (std::int64_t c = 0; c < 32; ++c) even.at(r, c) = t.at(r, 2 * c);
  EXPECT_EQ(interop::view_of(even_columns).strides(), (Shape{64, 2}));
  expect_same_as_tensor_path(even_columns, even);

  const Eigen::MatrixXf m = matrix_of<Eigen::MatrixXf>(t);
  const Eigen::Ref<const Eigen::MatrixXf> ref = m;
  EXPECT_EQ(interop::view_of(ref).data(), m.data());
  expect_same_as_tensor_path(ref, t);
}

TEST(EigenInterop, BlocksOfBothStorageOrdersAreReadInPlace) {
  const TensorF big = seeded_tensor({12, 80}, kSeed + 2);
  TensorF block({8, 64});
  for (std::int64_t r = 0; r < 8; ++r)
    for (std::int64_t c = 0; c < 64; ++c) block.at(r, c) = big.at(2 + r, 8 + c);
  const Eigen::MatrixXf column_major = matrix_of<Eigen::MatrixXf>(big);
  const RowMajorMatrix row_major = matrix_of<RowMajorMatrix>(big);
  EXPECT_EQ(interop::view_of(column_major.block(2, 8, 8, 64)).data(), &column_major(2, 8));
  EXPECT_EQ(interop::view_of(row_major.block(2, 8, 8, 64)).data(), &row_major(2, 8));
  expect_same_as_tensor_path(column_major.block(2, 8, 8, 64), block);
  expect_same_as_tensor_path(row_major.block(2, 8, 8, 64), block);
}

TEST(EigenInterop, DequantizesIntoTheCallersMatricesInTheirLayout) {
  const TensorF t = seeded_tensor({8, 64}, kSeed + 3);
  const QArray q = quantize(t, {QType::kInt4, {0}, {{1, std::int64_t{16}}}, "absmax"});
  const TensorF expected = dequantize(q);

  Eigen::MatrixXf column_major(8, 64);
  interop::dequantize_into(q, column_major);
  testing::expect_same_values(values_of(column_major), expected);
  testing::expect_same_values(values_of(interop::dequantize_matrix<Eigen::RowMajor>(q)), expected);
  testing::expect_same_values(values_of(interop::dequantize_matrix<Eigen::ColMajor>(q)), expected);

  // Into a block of a larger matrix, passed as a temporary: only the block is written.
  constexpr float kUntouched = -7.0f;
  RowMajorMatrix big = RowMajorMatrix::Constant(10, 70, kUntouched);
  interop::dequantize_into(q, big.block(1, 3, 8, 64));
  testing::expect_same_values(values_of(big.block(1, 3, 8, 64)), expected);
  EXPECT_EQ((big.array() == kUntouched).count(), 10 * 70 - 8 * 64);

  Eigen::MatrixXf wrong(64, 8);  // the transpose is a different shape, never filled silently
  expect_error([&] { interop::dequantize_into(q, wrong); }, {"[64, 8]", "[8, 64]"});
  const QArray rank3 = quantize(seeded_tensor({2, 4, 16}, kSeed + 4), {QType::kInt8, {}, {}, "absmax"});
  expect_error([&] { interop::dequantize_matrix(rank3); }, {"rank-2", "[2, 4, 16]"});
}

}  // namespace
}  // namespace qforge
