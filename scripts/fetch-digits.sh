#!/usr/bin/env bash
# Fetches the handwritten-digits dataset (1797 8x8 images, UCI/scikit-learn) from Debian's
# python3-sklearn package, without installing the package or needing Python: the .deb is
# downloaded with apt-get, and only datasets/data/digits.csv.gz is extracted and unpacked.
# Idempotent: does nothing when the file is already there.
#   usage: scripts/fetch-digits.sh [DEST_DIR]      (default: build/data)
# Prints the path of digits.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-build/data}
out="$dest/digits.csv"
if [[ -s "$out" ]]; then echo "$out"; exit 0; fi
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! (cd "$work" && apt-get download -qq python3-sklearn >/dev/null 2>&1); then
  # A fresh machine may have no package lists yet.
  $SUDO apt-get update -qq >/dev/null
  (cd "$work" && apt-get download -qq python3-sklearn >/dev/null 2>&1) || {
    echo "fetch-digits: cannot download python3-sklearn with apt-get" >&2; exit 1; }
fi
dpkg-deb --fsys-tarfile "$work"/python3-sklearn_*.deb |
  tar -x -C "$work" --wildcards '*/sklearn/datasets/data/digits.csv.gz'
gz=$(find "$work" -name digits.csv.gz | head -n1)
[[ -n "$gz" ]] || { echo "fetch-digits: digits.csv.gz not found in python3-sklearn" >&2; exit 1; }
gzip -dc "$gz" > "$out.tmp" && mv "$out.tmp" "$out"
echo "$out"
