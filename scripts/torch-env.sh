#!/usr/bin/env bash
# Adds PyTorch, for use on the CPU, to the private Python environment (build/pyenv, made by
# scripts/python-env.sh): the benchmark's PyTorch peer (tools/gptq_torch.py, run by
# bench/algorithms_bench.cpp) needs it. scripts/bench.sh calls this; the test suite does not.
#
# PyPI's Linux torch wheel is a CUDA build whose dependencies pull several GB of nvidia-*
# packages. Installed here instead: the torch wheel without dependencies (~540 MB), its small
# pure-Python dependencies, and only those CUDA libraries its import needs that this machine's
# CUDA toolkit (/usr/local/cuda, on the project's machines) does not have: NCCL, cuSPARSELt,
# NVSHMEM and cuFile (~520 MB together), at the versions torch names. About 1.1 GB downloaded
# instead of about 4 GB; nothing of it is used but the CPU path. On a machine without the CUDA
# toolkit the import still fails; TORCH_ENV_FULL=1 then installs torch with all its dependencies.
#
# Exits non-zero, saying why, when torch cannot be made to import; the benchmark then skips its
# PyTorch peer with that reason.
# Usage: scripts/torch-env.sh [VENV_DIR]   (default: build/pyenv; QFORGE_PYENV overrides)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-${QFORGE_PYENV:-build/pyenv}}"
torch_version=2.15.0
check='import torch; torch.linalg.cholesky(torch.eye(2))'

scripts/python-env.sh "$venv" >/dev/null
py="$venv/bin/python"
ready() { "$py" -c "$check" 2>/dev/null; }
pip_install() { "$py" -m pip install --quiet --disable-pip-version-check --timeout 60 --retries 1 "$@"; }

if ready; then
  echo "torch-env: $venv is ready (torch $("$py" -c 'import torch; print(torch.__version__)'))"
  exit 0
fi
if [[ "${TORCH_ENV_FULL:-0}" == 1 ]]; then
  echo "torch-env: installing torch $torch_version with all its dependencies (several GB) into $venv"
  pip_install "torch==$torch_version" || { echo "torch-env: could not install torch from PyPI" >&2; exit 1; }
else
  echo "torch-env: installing torch $torch_version without its CUDA dependencies into $venv"
  pip_install --no-deps "torch==$torch_version" || { echo "torch-env: could not install torch from PyPI" >&2; exit 1; }
  pip_install filelock typing-extensions sympy networkx jinja2 fsspec ||
    { echo "torch-env: could not install torch's Python dependencies" >&2; exit 1; }
  # The CUDA libraries the import links against that the toolkit lacks, pinned as torch pins them.
  mapfile -t cuda_libs < <("$py" - <<'PY'
from importlib.metadata import requires
for r in requires("torch") or []:
    name = r.split(";")[0].strip()
    if name.startswith(("nvidia-nccl", "nvidia-cusparselt", "nvidia-nvshmem")):
        print(name.replace(" ", ""))
print("nvidia-cufile")  # torch names it through cuda-toolkit[cufile]; libcufile.so.0 is stable
PY
  )
  pip_install --no-deps "${cuda_libs[@]}" || { echo "torch-env: could not install ${cuda_libs[*]}" >&2; exit 1; }
fi
if ! err=$("$py" -c "$check" 2>&1); then
  echo "torch-env: torch does not import: ${err##*$'\n'}" >&2
  echo "torch-env: without the CUDA toolkit's libraries, TORCH_ENV_FULL=1 installs torch with all its dependencies" >&2
  exit 1
fi
echo "torch-env: $venv is ready (torch $("$py" -c 'import torch; print(torch.__version__)'), CPU use)"
