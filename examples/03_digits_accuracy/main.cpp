// The accuracy table of docs/accuracy.md: both digits models trained in float, then quantized
// every way qforge offers, each measured on the same 359 held-out images.
//
//   example_03_digits_accuracy [--data build/data/digits.csv] [--short]
//
// --short runs the tests' shorter schedule. Prints a Markdown table.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "qforge/data/digits_experiments.hpp"

namespace {

using namespace qforge;
using data::DigitsModel;

int usage() {
  std::fprintf(stderr, "usage: example_03_digits_accuracy [--data CSV] [--short]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string data_path = data::default_digits_path(QFORGE_SOURCE_DIR);
  data::Schedule schedule;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--data") && i + 1 < argc) data_path = argv[++i];
    else if (!std::strcmp(argv[i], "--short")) schedule = data::short_schedule();
    else return usage();
  }
  try {
    const auto split = data::split_digits(data::load_digits(data_path), 0.2, data::kSplitSeed);
    const std::vector<data::Experiment> rows = data::accuracy_rows(split, schedule);
    std::printf("| method | setting | %s | %s |\n|---|---|---:|---:|\n", data::model_name(DigitsModel::kMlp),
                data::model_name(DigitsModel::kCnn));
    std::fflush(stdout);
    // Each model is trained in float once; every row starts from a copy of it.
    const auto start = std::chrono::steady_clock::now();
    data::TrainedDigits trained = data::train_digits_models(split, schedule);
    for (const auto& row : rows) {
      double acc[2];
      for (DigitsModel m : {DigitsModel::kMlp, DigitsModel::kCnn})
        acc[static_cast<int>(m)] = row.run(m, trained.model(m));
      std::printf("| %s | %s | %.2f | %.2f |\n", row.method.c_str(), row.setting.c_str(), 100 * acc[0], 100 * acc[1]);
      std::fflush(stdout);
    }
    std::printf("\n%zu rows in %.1f s\n", rows.size(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "example_03_digits_accuracy: error: %s\n", e.what());
    return 1;
  }
}
