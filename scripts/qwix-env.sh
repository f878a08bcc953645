#!/usr/bin/env bash
# Adds Qwix (PyPI qwix, with CPU JAX) to the private Python environment (build/pyenv, made by
# scripts/python-env.sh), so tests/interop/check_qwix.py can compare qforge's quantize and
# dequantize against Qwix itself. About 750 MB; quick when already present.
# Exits non-zero, saying why, when it cannot be installed; that check is then reported as skipped.
# Usage: scripts/qwix-env.sh [VENV_DIR]   (default: build/pyenv; QFORGE_PYENV overrides)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-${QFORGE_PYENV:-build/pyenv}}"
scripts/python-env.sh "$venv" >/dev/null
py="$venv/bin/python"
check='import jax, qwix._src.core.qarray'
if "$py" -c "$check" 2>/dev/null; then
  echo "qwix-env: $venv has qwix and jax"
  exit 0
fi
echo "qwix-env: installing qwix and jax (CPU) into $venv"
if ! "$py" -m pip install --quiet --disable-pip-version-check --timeout 30 --retries 1 qwix jax; then
  echo "qwix-env: could not install qwix and jax from PyPI; the Qwix comparison will be skipped" >&2
  exit 1
fi
"$py" -c "$check"
echo "qwix-env: $venv has qwix and jax"
