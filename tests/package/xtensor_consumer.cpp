// Uses the installed interop header through qforge::xtensor: quantizes a column-major xt::xarray
// in place and checks it gives the same codes and scales as a row-major Tensor of the same values.
#include <cstdio>

#include <xtensor/xarray.hpp>

#include "qforge/interop/xtensor.hpp"

int main() {
  using namespace qforge;
  xt::xarray<float, xt::layout_type::column_major> w = xt::xarray<float>::from_shape({8, 32});
  TensorF copy({8, 32});
  for (std::size_t r = 0; r < 8; ++r)
    for (std::size_t c = 0; c < 32; ++c) w(r, c) = copy.at(r, c) = static_cast<float>(r * 32 + c % 7) - 50.0f;
  const HowToQuantize how{QType::kInt4, {0}, {{1, std::int64_t{16}}}, "absmax"};
  const QArray q = interop::quantize(w, how);
  const QArray expected = quantize(copy, how);
  const bool in_place = interop::view_of(w).data() == w.data();
  const bool same = interop::unpacked_codes(q) == interop::unpacked_codes(expected) &&
                    interop::scale_view(q) == interop::scale_view(expected);
  std::printf("qforge::xtensor consumer: read in place %s, same QArray as the Tensor path %s\n", in_place ? "yes" : "NO",
              same ? "yes" : "NO");
  return in_place && same ? 0 : 1;
}
