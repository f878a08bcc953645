// libFuzzer target for qforge's file readers. Built twice by tests/formats/tests.cmake with
// clang's -fsanitize=fuzzer,address,undefined: QFORGE_FUZZ_GGUF parses the input as GGUF, otherwise
// as safetensors (through Checkpoint, which also reads qforge's and bitsandbytes' layouts).
// Every tensor is decoded. The only acceptable failure is a qforge::Error; any other exception,
// crash, leak or undefined behaviour is a finding.
//   build/<dir>/tests/fuzz/qforge_fuzz_gguf -max_total_time=60 NEW_DIR tests/formats/fuzz/corpus/gguf
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "qforge/formats/checkpoint.hpp"

namespace {

// The readers map files, so each input is written to a file in memory-backed /dev/shm.
const std::string& scratch_path() {
#ifdef QFORGE_FUZZ_GGUF
  static const std::string path = "/dev/shm/qforge-fuzz-" + std::to_string(::getpid()) + ".gguf";
#else
  static const std::string path = "/dev/shm/qforge-fuzz-" + std::to_string(::getpid()) + ".safetensors";
#endif
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string& path = scratch_path();
  if (std::FILE* f = std::fopen(path.c_str(), "wb")) {
    if (size) std::fwrite(data, 1, size, f);
    std::fclose(f);
  } else {
    std::abort();  // cannot run without the scratch file
  }
  try {
    const qforge::formats::Checkpoint c(path);
    for (const auto& t : c.tensors()) {
      try {
        (void)c.to_float(t.name);  // a tensor type without a decoder throws; others must decode
      } catch (const qforge::Error&) {
      }
    }
    (void)c.metadata();
  } catch (const qforge::Error&) {
  }
  return 0;
}
