#!/usr/bin/env bash
# The main job, end to end on a fresh machine: installs dependencies, builds the qforge tool,
# quantizes the bundled handwritten-digits MLP (models/digits_mlp.safetensors, trained in C++ by
# examples/01_digits_mlp) to GGUF Q8_0/Q4_0 and to int4/NF4 safetensors, prints what was
# quantized with the error of every tensor, and measures each file's test accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The accuracy check needs the digits test set (from Debian's python3-sklearn package); without
# it (no package mirror reachable) the demo still quantizes and measures every tensor's error.
have_digits=1
scripts/fetch-digits.sh >/dev/null || { have_digits=0; echo "demo: no digits test set; skipping the accuracy check" >&2; }

build=build/release
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
targets=(qforge_cli)
((have_digits)) && targets+=(example_01_digits_mlp)
cmake --build "$build" --target "${targets[@]}" -j "$(nproc)"
qforge="$build/bin/qforge"
evaluate="$build/examples/example_01_digits_mlp eval"
out=build/demo
mkdir -p "$out"
model=models/digits_mlp.safetensors

section() { printf '\n== %s ==\n' "$*"; }

section "the model"
"$qforge" inspect "$model"

section "GGUF Q8_0 (llama.cpp's 8-bit blocks)"
"$qforge" quantize "$model" -o "$out/digits_mlp.q8_0.gguf" --type q8_0 --report "$out/q8_0.report.json"
section "GGUF Q4_0, dry run first: which rule hits which tensor"
"$qforge" quantize "$model" -o "$out/digits_mlp.q4_0.gguf" --type q4_0 --dry-run
"$qforge" quantize "$model" -o "$out/digits_mlp.q4_0.gguf" --type q4_0
section "int4, groups of 32 (qforge's quantized safetensors layout)"
"$qforge" quantize "$model" -o "$out/digits_mlp.int4.safetensors" --type int4 --group-size 32
section "NF4, blocks of 64"
"$qforge" quantize "$model" -o "$out/digits_mlp.nf4.safetensors" --type nf4

section "what each type costs, per tensor (error analysis, nothing written)"
"$qforge" analyze "$model" --types int8,int4,nf4,q8_0,q4_0 --granularity channel,group --group 32 2>/dev/null
section "Q4_0 file against the original (per-tensor error table)"
"$qforge" compare "$model" "$out/digits_mlp.q4_0.gguf"

if ((have_digits)); then
  section "test accuracy on 359 held-out digits"
  $evaluate "$model"
  for f in "$out"/digits_mlp.q8_0.gguf "$out"/digits_mlp.q4_0.gguf "$out"/digits_mlp.int4.safetensors "$out"/digits_mlp.nf4.safetensors; do
    $evaluate "$f"
  done
fi
echo
echo "files in $out/ (the JSON report of the Q8_0 run: $out/q8_0.report.json)"
