#!/usr/bin/env bash
# Creates (once) the private Python environment the interop tests use to read qforge's files
# with other tools' readers: build/pyenv with numpy, gguf and safetensors from PyPI.
# Quick and silent-ish when the environment is already complete. Exits non-zero, saying why,
# when it cannot be made (no python3 venv module, or PyPI unreachable); the interop tests then
# report themselves as skipped.
# Usage: scripts/python-env.sh [VENV_DIR]   (default: build/pyenv; QFORGE_PYENV overrides)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-${QFORGE_PYENV:-build/pyenv}}"
packages=(numpy gguf safetensors)
check='import numpy, gguf, safetensors.numpy'

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$check" 2>/dev/null; then
  echo "python-env: $venv is ready (numpy, gguf, safetensors)"
  exit 0
fi
if ! command -v python3 >/dev/null; then
  echo "python-env: python3 is not installed; interop tests will be skipped" >&2
  exit 1
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "python-env: creating $venv"
  if ! python3 -m venv "$venv"; then
    echo "python-env: 'python3 -m venv' failed (Debian: apt-get install python3-venv); interop tests will be skipped" >&2
    rm -rf "$venv"
    exit 1
  fi
fi
echo "python-env: installing ${packages[*]} from PyPI into $venv"
if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --timeout 30 --retries 1 "${packages[@]}"; then
  echo "python-env: could not install ${packages[*]} from PyPI (offline or blocked?); interop tests will be skipped" >&2
  exit 1
fi
"$venv/bin/python" -c "$check"
echo "python-env: $venv is ready (numpy, gguf, safetensors)"
