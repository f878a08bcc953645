// The accuracy table of docs/accuracy.md: both digits models trained in float, then quantized
// every way qforge offers, each measured on the same 359 held-out images.
//
//   example_03_digits_accuracy [--data build/data/digits.csv] [--short]
//   example_03_digits_accuracy --rules FILE [--mode ptq|qat|qt|lora] [--data ...] [--short]
//
// --short runs the tests' shorter schedule. Prints a Markdown table. With --rules, only the
// float models and the rules of FILE (YAML or JSON, docs/rules.md) are measured: PTQ by default,
// QAT fine-tuning or QT from scratch for QtRule files, LoRA on the shifted digits for LoraRule
// files (examples/03_digits_accuracy/rules/ holds one of each).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "qforge/data/digits_experiments.hpp"
#include "qforge/rules/rule_file.hpp"

namespace {

using namespace qforge;
using data::DigitsModel;

int usage() {
  std::fprintf(stderr, "usage: example_03_digits_accuracy [--data CSV] [--short] [--rules FILE [--mode ptq|qat|qt|lora]]\n");
  return 2;
}

// The experiment the rules of `path` describe, measured like the table's rows.
data::Experiment rule_file_experiment(const std::string& path, const std::string& mode, const data::DigitsSplit& split,
                                      const data::Schedule& s) {
  if (mode == "ptq") {
    auto r = rules::load_rules<rules::QuantizationRule>(path);
    return {"PTQ", path, [r, &split](DigitsModel m, nn::Module& t) { return data::ptq_accuracy(m, t, r, split); }};
  }
  if (mode == "qat") {
    auto r = rules::load_rules<rules::QtRule>(path);
    return {"QAT", path, [r, &split, s](DigitsModel m, nn::Module& t) { return data::qat_accuracy(m, t, r, split, s); }};
  }
  if (mode == "qt") {
    auto r = rules::load_rules<rules::QtRule>(path);
    return {"QT", path, [r, &split, s](DigitsModel m, nn::Module&) { return data::qt_from_scratch_accuracy(m, r, split, s); }};
  }
  if (mode == "lora") {
    auto r = rules::load_rules<rules::LoraRule>(path);
    return {"LoRA", path + " (shifted digits)", [r, &split, s](DigitsModel m, nn::Module& t) {
              return data::lora_shift_accuracy(m, t, r, {}, split, s);
            }};
  }
  throw_error(Status::kInvalidArgument, "--mode '{}' is not one of ptq, qat, qt, lora", mode);
}

}  // namespace

int main(int argc, char** argv) {
  std::string data_path = data::default_digits_path(QFORGE_SOURCE_DIR);
  std::string rules_path, mode = "ptq";
  data::Schedule schedule;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--data") && i + 1 < argc) data_path = argv[++i];
    else if (!std::strcmp(argv[i], "--rules") && i + 1 < argc) rules_path = argv[++i];
    else if (!std::strcmp(argv[i], "--mode") && i + 1 < argc) mode = argv[++i];
    else if (!std::strcmp(argv[i], "--short")) schedule = data::short_schedule();
    else return usage();
  }
  try {
    const auto split = data::split_digits(data::load_digits(data_path), 0.2, data::kSplitSeed);
    std::vector<data::Experiment> rows;
    if (rules_path.empty()) {
      rows = data::accuracy_rows(split, schedule);
    } else {
      rows.push_back(data::accuracy_rows(split, schedule).front());  // fp32
      rows.push_back(rule_file_experiment(rules_path, mode, split, schedule));
    }
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
