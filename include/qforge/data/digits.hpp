// The handwritten-digits dataset (UCI optdigits test set as scikit-learn ships it: 1797 images of
// 8x8 pixels with values 0..16, and a label 0..9 per row). scripts/fetch-digits.sh extracts it
// from Debian's python3-sklearn package into build/data/digits.csv.
#pragma once

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <numeric>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "qforge/core/tensor.hpp"

namespace qforge::data {

struct LabelledImages {
  TensorF images;           // [N, 64], pixels scaled to [0, 1]
  std::vector<int> labels;  // N labels in 0..9
  std::int64_t size() const { return static_cast<std::int64_t>(labels.size()); }
  // Rows [begin, end) as a batch.
  LabelledImages slice(std::int64_t begin, std::int64_t end) const {
    LabelledImages out{TensorF({end - begin, 64}), {labels.begin() + begin, labels.begin() + end}};
    std::copy(images.data() + begin * 64, images.data() + end * 64, out.images.data());
    return out;
  }
};

struct DigitsSplit {
  LabelledImages train, test;
};

// Where fetch-digits.sh puts the file, relative to the source tree.
inline std::string default_digits_path(const std::string& source_dir) { return source_dir + "/build/data/digits.csv"; }

inline LabelledImages load_digits(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_error(Status::kIoError, "{}: cannot open the digits dataset (run scripts/fetch-digits.sh)", path);
  std::vector<float> pixels;
  LabelledImages d;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    std::stringstream ss(line);
    std::string cell;
    std::vector<int> values;
    while (std::getline(ss, cell, ',')) {
      try {
        std::size_t used = 0;
        values.push_back(std::stoi(cell, &used));
        if (used != cell.size() && cell.find_first_not_of(" \r", used) != std::string::npos) throw std::invalid_argument(cell);
      } catch (const std::exception&) {
        throw_error(Status::kFormatError, "{}:{}: '{}' is not an integer", path, line_no, cell);
      }
    }
    if (values.size() != 65) throw_error(Status::kFormatError, "{}:{}: {} values, expected 64 pixels and a label", path, line_no, values.size());
    for (int i = 0; i < 64; ++i) {
      if (values[i] < 0 || values[i] > 16) throw_error(Status::kFormatError, "{}:{}: pixel {} is {}, not in 0..16", path, line_no, i, values[i]);
      pixels.push_back(static_cast<float>(values[i]) / 16.0f);
    }
    if (values[64] < 0 || values[64] > 9) throw_error(Status::kFormatError, "{}:{}: label {} is not a digit", path, line_no, values[64]);
    d.labels.push_back(values[64]);
  }
  if (d.labels.empty()) throw_error(Status::kFormatError, "{}: no samples", path);
  d.images = TensorF({d.size(), 64}, std::move(pixels));
  return d;
}

// A seeded shuffle, then the first (1 - test_fraction) for training and the rest for testing.
inline DigitsSplit split_digits(const LabelledImages& all, double test_fraction = 0.2, std::uint64_t seed = 0) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(all.size()));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  const auto n_test = static_cast<std::int64_t>(static_cast<double>(all.size()) * test_fraction);
  auto gather = [&](std::int64_t begin, std::int64_t end) {
    LabelledImages out{TensorF({end - begin, 64}), {}};
    for (std::int64_t i = begin; i < end; ++i) {
      const std::int64_t src = order[static_cast<std::size_t>(i)];
      std::copy(all.images.data() + src * 64, all.images.data() + (src + 1) * 64, out.images.data() + (i - begin) * 64);
      out.labels.push_back(all.labels[static_cast<std::size_t>(src)]);
    }
    return out;
  };
  return {gather(0, all.size() - n_test), gather(all.size() - n_test, all.size())};
}

// The same images translated by (dx, dy) pixels, vacated pixels 0: a distribution shift a model
// trained on centred digits has not seen (the QLoRA experiment adapts to it).
inline LabelledImages shift_images(const LabelledImages& d, int dx, int dy) {
  LabelledImages out{TensorF({d.size(), 64}), d.labels};
  for (std::int64_t n = 0; n < d.size(); ++n)
    for (int y = 0; y < 8; ++y)
      for (int x = 0; x < 8; ++x) {
        const int sx = x - dx, sy = y - dy;
        const bool inside = sx >= 0 && sx < 8 && sy >= 0 && sy < 8;
        out.images.data()[n * 64 + y * 8 + x] = inside ? d.images.data()[n * 64 + sy * 8 + sx] : 0.0f;
      }
  return out;
}

}  // namespace qforge::data
