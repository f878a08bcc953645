#!/usr/bin/env bash
# ctest driver for one interop check: skips (exit 77) when the private Python environment made by
# scripts/python-env.sh is absent, otherwise writes the samples and runs the Python check.
# Usage: run_check.sh PYENV_DIR WRITER SAMPLES_DIR CHECK_SCRIPT [EXTRA_MODULES]
#   EXTRA_MODULES: further modules the check imports (e.g. "jax, qwix"), added by another script
#   (scripts/qwix-env.sh); without them the check is skipped, naming that script.
set -uo pipefail
pyenv="$1" writer="$2" samples="$3" script="$4" extra="${5:-}"
if [[ ! -x "$pyenv/bin/python" ]] || ! "$pyenv/bin/python" -c 'import numpy, gguf, safetensors.numpy' 2>/dev/null; then
  echo "SKIP: no Python environment with numpy, gguf and safetensors at $pyenv;" \
       "run scripts/python-env.sh (needs PyPI) to enable the interop tests"
  exit 77
fi
if [[ -n "$extra" ]] && ! "$pyenv/bin/python" -c "import $extra" 2>/dev/null; then
  echo "SKIP: $pyenv lacks $extra; run scripts/qwix-env.sh (needs PyPI) to enable this check"
  exit 77
fi
"$writer" "$samples" ${QFORGE_TEST_SEED:-} || exit 1
exec "$pyenv/bin/python" "$script" "$samples"
