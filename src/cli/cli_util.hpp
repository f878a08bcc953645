// Shared pieces of the checkpoint commands: the plain element types both formats hold,
// human-readable sizes, a progress display (a bar
// with an ETA on a terminal, plain lines otherwise), and interrupt handling that lets a command
// stop between tensors and unwind, so temporary output files are removed.
#pragma once

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "qforge/core/error.hpp"
#include "qforge/formats/gguf_blocks.hpp"
#include "qforge/formats/safetensors.hpp"

namespace qforge::cli {

// Unquantized element types that GGUF and safetensors both store, under the same names.
struct PlainType {
  formats::GgmlType ggml;
  formats::Dtype dtype;
};
inline std::optional<PlainType> plain_type(std::string_view name) {
  using G = formats::GgmlType;
  using D = formats::Dtype;
  static constexpr std::pair<std::string_view, PlainType> kTable[] = {
      {"F32", {G::kF32, D::kF32}}, {"F16", {G::kF16, D::kF16}}, {"BF16", {G::kBF16, D::kBF16}},
      {"F64", {G::kF64, D::kF64}}, {"I8", {G::kI8, D::kI8}},    {"I16", {G::kI16, D::kI16}},
      {"I32", {G::kI32, D::kI32}}, {"I64", {G::kI64, D::kI64}}};
  for (const auto& [n, t] : kTable)
    if (n == name) return t;
  return std::nullopt;
}
// Float element types: the tensors that are weights and may be quantized.
inline bool is_float_type(std::string_view name) { return name == "F32" || name == "F16" || name == "BF16" || name == "F64"; }

inline std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} {}", b, units[u]) : fmt::format("{:.2f} {}", b, units[u]);
}

inline std::atomic<bool>& interrupted() {
  static std::atomic<bool> flag{false};
  return flag;
}
inline void install_interrupt_handler() {
  auto handler = [](int) { interrupted().store(true); };
  std::signal(SIGINT, handler);
  std::signal(SIGTERM, handler);
}
inline void throw_if_interrupted() {
  if (interrupted().load()) throw_error(Status::kIoError, "interrupted; no output was written");
}

// Seconds since construction on the steady clock: the phase times the commands report.
class Stopwatch {
 public:
  double seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point start_ = Clock::now();
};

class Progress {
 public:
  Progress(std::string what, std::int64_t total)
      : what_(std::move(what)), total_(total), tty_(::isatty(STDERR_FILENO) == 1) {}

  void advance(const std::string& item) {
    std::lock_guard lock(mutex_);
    ++done_;
    const double elapsed = seconds();
    if (!tty_) {
      fmt::print(stderr, "[{}/{}] {} {}\n", done_, total_, what_, item);
      return;
    }
    const double eta = done_ > 0 ? elapsed / static_cast<double>(done_) * static_cast<double>(total_ - done_) : 0;
    constexpr int kWidth = 30;
    const int filled = total_ > 0 ? static_cast<int>(kWidth * done_ / total_) : kWidth;
    fmt::print(stderr, "\r{} [{}{}] {}/{}  {:.1f}s elapsed, ETA {:.1f}s  ", what_, std::string(filled, '#'),
               std::string(kWidth - filled, '.'), done_, total_, elapsed, eta);
    if (done_ == total_) fmt::print(stderr, "\n");
  }
  double seconds() const { return stopwatch_.seconds(); }

 private:
  std::string what_;
  std::int64_t total_;
  std::int64_t done_ = 0;
  bool tty_;
  Stopwatch stopwatch_;
  std::mutex mutex_;
};

}  // namespace qforge::cli
