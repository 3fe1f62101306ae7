#!/usr/bin/env bash
# The real-stack check's file part (bench/peft_arch_check.py --files-only, no torch) on a few
# architectures quantized by this build: the card, adapter_config.json and loftq.json agree
# the way PEFT and bitsandbytes will read them (Conv1D, MoE routers left out, encoder-decoder).
# Usage: arch_files_check.sh LOFTQD PYTHON3
set -euo pipefail
loftqd="$1"
python="$2"
here="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cases=()
for arch in gpt2 mixtral bart; do
  "$loftqd" synth --arch "$arch" --layers 2 --hidden 64 --intermediate 128 --heads 4 --vocab 128 \
    "$work/$arch-in" >/dev/null
  "$loftqd" quantize --device cpu --rank 4 --iters 1 "$work/$arch-in" "$work/$arch-out" \
    >"$work/$arch.log" 2>&1 || { cat "$work/$arch.log"; exit 1; }
  cases+=(--case "$arch" "$arch" "$work/$arch-in" "$work/$arch-out")
done
"$python" "$here/bench/peft_arch_check.py" --files-only "${cases[@]}"
