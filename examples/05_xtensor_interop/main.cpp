// xtensor arrays through qforge without copies: a layer weight held in an xt::xarray is quantized
// by the rule that matches its layer, an activation batch (also an xt::xarray) is quantized per
// row as the same rule says, and the integer matmul runs through the backend straight into an
// xt::xarray. Prints the error of the quantized product against the float one, and the scales
// and packed codes as xtensor views.
//
//   build/release/examples/example_05_xtensor_interop
//
// The weight [N, K] = [64, 256] is stored column-major (as a Fortran or Eigen producer would
// leave it) and read in place with its strides; the QArray is the same as for a row-major copy.
#include <cstdio>
#include <iostream>
#include <optional>

#include <xtensor/xarray.hpp>
#include <xtensor/xio.hpp>
#include <xtensor/xnorm.hpp>
#include <xtensor/xrandom.hpp>
#include <xtensor/xview.hpp>

#include "qforge/interop/xtensor.hpp"
#include "qforge/providers/sites.hpp"
#include "qforge/qforge.hpp"
#include "qforge/rules/rule.hpp"

namespace {

using namespace qforge;

constexpr std::uint64_t kSeed = 2026;
constexpr std::size_t kBatch = 16, kIn = 256, kOut = 64;

// The float product a · wᵀ, [M, K] x [N, K] -> [M, N], in xtensor's own terms.
xt::xarray<float> float_product(const xt::xarray<float>& a, const xt::xarray<float, xt::layout_type::column_major>& w) {
  using xt::all, xt::newaxis;
  return xt::sum(xt::view(a, all(), newaxis(), all()) * xt::view(w, newaxis(), all(), all()), {2});
}

double relative_error(const xt::xarray<float>& approx, const xt::xarray<float>& exact) {
  return xt::norm_l2(approx - exact)() / xt::norm_l2(exact)();
}

}  // namespace

int main() {
  // W4A8 for the MLP projections, tiles of 32 along the input axis (docs/rules.md).
  rules::QuantizationRule w4a8;
  w4a8.module_path = "decoder/.*/mlp/.*";
  w4a8.weight_qtype = QType::kInt4;
  w4a8.act_qtype = QType::kInt8;
  w4a8.tile_size = std::int64_t{32};
  rules::RuleMatcher<rules::QuantizationRule> matcher({w4a8});
  const std::optional<int> rule = matcher.match("decoder/0/mlp/up_proj", "dot_general");
  if (!rule) return 1;
  const rules::SiteConfig config = matcher.config(*rule);

  std::printf("seed %llu\n", static_cast<unsigned long long>(kSeed));
  xt::random::seed(kSeed);
  const xt::xarray<float, xt::layout_type::column_major> w = xt::random::randn<float>({kOut, kIn}, 0.0f, 0.02f);
  const xt::xarray<float> a = xt::random::randn<float>({kBatch, kIn});

  const QArray qw = interop::quantize(w, providers::weight_how(config, interop::view_of(w).shape()));
  const QArray qa = interop::quantize(a, providers::act_how(config, interop::view_of(a).shape(), 1));
  auto product = xt::xarray<float>::from_shape({kBatch, kOut});  // row-major: the op's dst layout
  backend::run(backend::QuantizedMatmulOp{&qa, &qw, product.data()});

  const xt::xarray<float> exact = float_product(a, w);
  const xt::xarray<float> of_dequantized =
      float_product(interop::dequantize_xarray(qa), interop::dequantize_xarray<xt::layout_type::column_major>(qw));
  std::printf("weight %s read in place (column-major, strides %s): %s\n", shape_str(qw.shape()).c_str(),
              shape_str(interop::view_of(w).strides()).c_str(), interop::view_of(w).data() == w.data() ? "yes" : "no");
  std::printf("W4A8 integer matmul [%zu, %zu]: relative error vs the float product %.4f\n", kBatch, kOut,
              relative_error(product, exact));
  std::printf("  vs the float product of the dequantized operands %.2e (the integer path is exact up to float "
              "rounding)\n",
              relative_error(product, of_dequantized));
  std::printf("weight scales %s, first row: ", shape_str(qw.scale().shape()).c_str());
  std::cout << xt::view(interop::scale_view(qw), 0, xt::all()) << "\n";
  const auto bytes = interop::storage_view(qw);  // the packed codes in place, two per byte
  std::printf("int4 codes stored as [%zu, %zu] bytes; first row, first 8 codes (an unpacked copy): ", bytes.shape()[0],
              bytes.shape()[1]);
  std::cout << xt::view(interop::unpacked_codes(qw), 0, xt::range(0, 8)) << "\n";
  return 0;
}
