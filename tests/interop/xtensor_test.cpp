// xtensor arrays in and out (include/qforge/interop/xtensor.hpp): every layout xtensor keeps in
// memory at fixed strides quantizes in place to exactly the QArray of a row-major Tensor holding
// the same values, and dequantizes into the caller's arrays in their own layout.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include "core/test_util.hpp"
#include "interop/interop_test_util.hpp"

namespace qforge {
namespace {

using testing::expect_error;
using testing::expect_same_as_tensor_path;
using testing::seeded_tensor;
using ColumnMajorXarray = xt::xarray<float, xt::layout_type::column_major>;

constexpr std::uint64_t kSeed = 2121;

std::vector<std::size_t> xshape(const Shape& shape) { return {shape.begin(), shape.end()}; }

// Arrays with strided memory have a view; lazy expressions and index-picking views do not (they
// are refused at compile time with a message saying to evaluate them first).
static_assert(interop::XStridedArray<xt::xarray<float>>);
static_assert(interop::XStridedArray<decltype(xt::view(std::declval<xt::xarray<float>&>(), xt::range(0, 2), xt::all()))>);
static_assert(!interop::XStridedArray<decltype(std::declval<xt::xarray<float>&>() + 1.0f)>);
static_assert(!interop::XStridedArray<decltype(xt::view(std::declval<xt::xarray<float>&>(), xt::keep(0, 2)))>);

// [rows, cols] starting at (r0, c0) of a row-major matrix, rows `row_step` apart: the reference
// values of a slice, by index arithmetic on the Tensor alone.
TensorF slice_of(const TensorF& t, std::int64_t r0, std::int64_t rows, std::int64_t row_step, std::int64_t c0,
                 std::int64_t cols) {
  TensorF out({rows, cols});
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) out.at(r, c) = t.at(r0 + r * row_step, c0 + c);
  return out;
}

// The logical values of a 2-D xtensor expression, row by row.
template <class E>
TensorF values_of(const E& e) {
  const auto rows = static_cast<std::int64_t>(e.shape()[0]), cols = static_cast<std::int64_t>(e.shape()[1]);
  TensorF out({rows, cols});
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      out.at(r, c) = e(static_cast<std::size_t>(r), static_cast<std::size_t>(c));
  return out;
}

TEST(XtensorInterop, RowMajorArrayIsViewedInPlace) {
  const TensorF t = seeded_tensor({8, 64}, kSeed);
  const xt::xarray<float> a = xt::adapt(t.vec(), xshape(t.shape()));
  const TensorView<const float> view = interop::view_of(a);
  EXPECT_EQ(view.data(), a.data());
  EXPECT_TRUE(view.is_contiguous());
  expect_same_as_tensor_path(a, t);
}

TEST(XtensorInterop, ColumnMajorArrayIsReadWithItsStridesNotTransposed) {
  const TensorF t = seeded_tensor({8, 64}, kSeed);
  const ColumnMajorXarray a = xt::adapt(t.vec(), xshape(t.shape()));
  const TensorView<const float> view = interop::view_of(a);
  EXPECT_EQ(view.data(), a.data());
  EXPECT_FALSE(view.is_contiguous());
  EXPECT_EQ(view.shape(), (Shape{8, 64}));
  EXPECT_EQ(view.strides(), (Shape{1, 8}));
  expect_same_as_tensor_path(a, t);
}

TEST(XtensorInterop, FixedRankTensorsOfRankThreeInBothLayouts) {
  const TensorF t = seeded_tensor({4, 6, 32}, kSeed + 1);
  const xt::xtensor<float, 3> row_major = xt::adapt(t.vec(), xshape(t.shape()));
  const xt::xtensor<float, 3, xt::layout_type::column_major> column_major = xt::adapt(t.vec(), xshape(t.shape()));
  EXPECT_EQ(interop::view_of(row_major).data(), row_major.data());
  EXPECT_EQ(interop::view_of(column_major).data(), column_major.data());
  expect_same_as_tensor_path(row_major, t);
  expect_same_as_tensor_path(column_major, t);
}

TEST(XtensorInterop, AdaptedBufferIsNotCopied) {
  const TensorF t = seeded_tensor({8, 64}, kSeed + 2);
  std::vector<float> buffer = t.vec();
  const auto a = xt::adapt(buffer, std::vector<std::size_t>{8, 64});
  EXPECT_EQ(interop::view_of(a).data(), buffer.data());
  expect_same_as_tensor_path(a, t);
}

TEST(XtensorInterop, SlicedViewsAreReadInPlace) {
  const TensorF big = seeded_tensor({12, 80}, kSeed + 3);
  const xt::xarray<float> row_major = xt::adapt(big.vec(), xshape(big.shape()));
  const ColumnMajorXarray column_major = xt::adapt(big.vec(), xshape(big.shape()));
  const TensorF block = slice_of(big, 2, 8, 1, 8, 64);

  const auto v = xt::view(row_major, xt::range(2, 10), xt::range(8, 72));
  EXPECT_EQ(interop::view_of(v).data(), &row_major(2, 8));
  EXPECT_FALSE(interop::view_of(v).is_contiguous());
  expect_same_as_tensor_path(v, block);

  const auto cv = xt::view(column_major, xt::range(2, 10), xt::range(8, 72));
  EXPECT_EQ(interop::view_of(cv).data(), &column_major(2, 8));
  expect_same_as_tensor_path(cv, block);

  const auto stepped = xt::view(row_major, xt::range(0, 12, 3), xt::range(16, 80));  // rows 0, 3, 6, 9
  EXPECT_EQ(interop::view_of(stepped).data(), &row_major(0, 16));
  expect_same_as_tensor_path(stepped, slice_of(big, 0, 4, 3, 16, 64));

  const auto one_row = xt::view(row_major, 5, xt::range(16, 80));  // rank 1: the integer drops the axis
  EXPECT_EQ(interop::view_of(one_row).shape(), (Shape{64}));
  expect_same_as_tensor_path(one_row, slice_of(big, 5, 1, 1, 16, 64).reshaped({64}));
}

TEST(XtensorInterop, TransposedViewIsQuantizedInTheShapeItShows) {
  const TensorF t = seeded_tensor({64, 8}, kSeed + 4);
  const xt::xarray<float> a = xt::adapt(t.vec(), xshape(t.shape()));
  const auto transposed = xt::transpose(a);  // [8, 64], the caller's explicit transpose
  TensorF expected({8, 64});
  for (std::int64_t r = 0; r < 8; ++r)
    for (std::int64_t c = 0; c < 64; ++c) expected.at(r, c) = t.at(c, r);
  EXPECT_EQ(interop::view_of(transposed).data(), a.data());
  expect_same_as_tensor_path(transposed, expected);
}

TEST(XtensorInterop, DequantizesIntoTheCallersArraysInTheirLayout) {
  const TensorF t = seeded_tensor({8, 64}, kSeed + 5);
  const QArray q = quantize(t, {QType::kUInt4, {0}, {{1, std::int64_t{16}}}, "minmax"});
  const TensorF expected = dequantize(q);

  xt::xarray<float> row_major = xt::xarray<float>::from_shape({8, 64});
  interop::dequantize_into(q, row_major);
  testing::expect_same_values(values_of(row_major), expected);

  ColumnMajorXarray column_major = ColumnMajorXarray::from_shape({8, 64});
  interop::dequantize_into(q, column_major);
  testing::expect_same_values(values_of(column_major), expected);

  const ColumnMajorXarray made = interop::dequantize_xarray<xt::layout_type::column_major>(q);
  EXPECT_EQ(made.layout(), xt::layout_type::column_major);
  testing::expect_same_values(values_of(made), expected);

  // Into a slice of a larger array, passed as a temporary: only the slice is written.
  constexpr float kUntouched = -7.0f;
  xt::xarray<float> big = xt::xarray<float>::from_shape({10, 70});
  big.fill(kUntouched);
  interop::dequantize_into(q, xt::view(big, xt::range(1, 9), xt::range(3, 67)));
  testing::expect_same_values(values_of(xt::view(big, xt::range(1, 9), xt::range(3, 67))), expected);
  int untouched = 0;
  for (float v : big) untouched += v == kUntouched;
  EXPECT_EQ(untouched, 10 * 70 - 8 * 64);

  xt::xarray<float> wrong = xt::xarray<float>::from_shape({8, 63});
  expect_error([&] { interop::dequantize_into(q, wrong); }, {"[8, 63]", "[8, 64]"});
}

TEST(XtensorInterop, ScalesAndZeroPointsAreViewsShapedPerTiling) {
  const TensorF t = seeded_tensor({8, 64}, kSeed + 6);
  const QArray q = quantize(t, {QType::kUInt4, {0}, {{1, std::int64_t{16}}}, "minmax"});
  const auto scale = interop::scale_view(q);
  ASSERT_EQ(scale.shape(), (std::vector<std::size_t>{8, 4}));  // one per row, per tile of 16
  EXPECT_EQ(scale.data(), q.scale().data());
  const auto zero_point = interop::zero_point_view(q);
  ASSERT_EQ(zero_point.shape(), (std::vector<std::size_t>{8, 4}));
  EXPECT_EQ(zero_point.data(), q.zero_point()->data());
  for (std::size_t r = 0; r < 8; ++r)
    for (std::size_t j = 0; j < 4; ++j) {
      const auto row = static_cast<std::int64_t>(r), tile = static_cast<std::int64_t>(j);
      EXPECT_EQ(scale(r, j), q.scale().at(row, tile));
      EXPECT_EQ(zero_point(r, j), q.zero_point()->at(row, tile));
    }
  const QArray per_tensor = quantize(t, {QType::kInt8, {}, {}, "absmax"});
  EXPECT_EQ(interop::scale_view(per_tensor).shape(), (std::vector<std::size_t>{1, 1}));
  expect_error([&] { interop::zero_point_view(per_tensor); }, {"int8", "no zero point"});
}

TEST(XtensorInterop, EightBitCodesAreViewsOfTheStorage) {
  const TensorF t = seeded_tensor({8, 64}, kSeed + 7);
  const QArray q = quantize(t, {QType::kInt8, {0}, {}, "absmax"});
  const auto codes = interop::codes_view<std::int8_t>(q);
  ASSERT_EQ(codes.shape(), (std::vector<std::size_t>{8, 64}));
  EXPECT_EQ(static_cast<const void*>(codes.data()), static_cast<const void*>(q.storage().data()));
  int negative = 0;
  for (std::int64_t i = 0; i < q.size(); ++i) {
    EXPECT_EQ(codes.flat(static_cast<std::size_t>(i)), q.code(i));
    negative += q.code(i) < 0;
  }
  EXPECT_GT(negative, 0);  // the signed reading matters
  expect_error([&] { interop::codes_view<std::uint8_t>(q); }, {"int8", "std::int8_t"});
  const QArray fp8 = quantize(t, {QType::kFp8E4M3, {}, {}, "absmax"});
  const auto bits = interop::codes_view<std::uint8_t>(fp8);
  for (std::int64_t i = 0; i < fp8.size(); ++i) EXPECT_EQ(bits.flat(static_cast<std::size_t>(i)), fp8.code(i));
}

TEST(XtensorInterop, PackedCodesComeAsBytesOrAsAnUnpackedCopy) {
  const TensorF t = seeded_tensor({8, 64}, kSeed + 8);
  const QArray q = quantize(t, {QType::kInt4, {0}, {{1, std::int64_t{16}}}, "absmax"});
  expect_error([&] { interop::codes_view<std::int8_t>(q); }, {"int4", "unpacked_codes", "storage_view"});

  const auto bytes = interop::storage_view(q);
  ASSERT_EQ(bytes.shape(), (std::vector<std::size_t>{8, 32}));  // two codes per byte
  EXPECT_EQ(bytes.data(), q.storage().data());
  const xt::xarray<std::int32_t> codes = interop::unpacked_codes(q);
  ASSERT_EQ(codes.shape(), (std::vector<std::size_t>{8, 64}));
  for (std::size_t r = 0; r < 8; ++r)
    for (std::size_t c = 0; c < 64; ++c) {
      EXPECT_EQ(codes(r, c), q.code(static_cast<std::int64_t>(r * 64 + c)));
      // Element 2k is the low nibble of byte k, 2k + 1 the high one (two's complement).
      const int nibble = (bytes(r, c / 2) >> (c % 2 * 4)) & 0xF;
      EXPECT_EQ(nibble, codes(r, c) & 0xF);
    }

  const QArray odd = quantize(seeded_tensor({3, 5}, kSeed + 9), {QType::kInt4, {}, {}, "absmax"});
  expect_error([&] { interop::storage_view(odd); }, {"[3, 5]", "not whole bytes"});
  const QArray wide = quantize(t, {QType::kInt16, {0}, {}, "absmax"});
  EXPECT_EQ(interop::storage_view(wide).shape(), (std::vector<std::size_t>{8, 128}));
  expect_error([&] { interop::codes_view<std::int8_t>(wide); }, {"int16", "16 bits"});
  EXPECT_EQ(interop::unpacked_codes(wide)(3, 5), wide.code(3 * 64 + 5));
}

}  // namespace
}  // namespace qforge
