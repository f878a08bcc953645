#!/usr/bin/env bash
# Installs qforge's build and test dependencies from Debian packages. Idempotent and fast when
# everything is present: it only calls apt-get when a package is missing.
# libdnnl-dev only recommends the OpenCL ICD and headers, yet its CMake config fails without them,
# so they are listed here because we install with --no-install-recommends.
set -euo pipefail
packages=(
  cmake ninja-build g++ ccache pkg-config
  libeigen3-dev libxtensor-dev xtl-dev libxsimd-dev libfmt-dev libdnnl-dev
  ocl-icd-opencl-dev opencl-c-headers
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-venv
  clang
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
