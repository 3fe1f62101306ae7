#!/usr/bin/env bash
# The whole GPU-machine check in one run (the lent machine is billed by the second): unpacks the
# bundle made by bench/pack_device.sh, then
#   1. PEFT reference check (bench/peft_check.py): a small synthetic llama quantized by loftqd
#      (T=1 and T=5, exact SVD, 4/2-bit plan) compared with PEFT's NFQuantizer, SVD and
#      loftq_init; PeftModel loads the layout, also from loftqd's mirror through HF_ENDPOINT;
#   2. bench/gpu_check.sh --prebuilt: CUDA parity tests, per-matrix CUDA vs CPU timings, and the
#      7B-shaped model end to end (skipped with --skip-model).
# Logs go to $OUT (device_check.log, gpu_check.log, peft_check.json). Exit 1 if a step failed.
# Usage: bench/device_check.sh [--skip-model] [--bundle .device/bundle.tar.xz]
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bundle="$repo/.device/bundle.tar.xz"
gpu_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-model) gpu_args+=(--skip-model); shift ;;
    --bundle) bundle="$2"; shift 2 ;;
    *) echo "device_check.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
out="${OUT:-/tmp/device-check-out}"
mkdir -p "$out"
exec > >(tee "$out/device_check.log") 2>&1
status=0
t0=$(date +%s)

work=/tmp/loftqd-device
rm -rf "$work" && mkdir -p "$work"
tar -xJf "$bundle" -C "$work"
b="$work/bundle"
# CUDA's own libraries come from the machine: the toolkit, or the pip wheels next to PyTorch.
cuda_dirs=$(find /usr/local/cuda*/lib /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib /usr/lib/x86_64-linux-gnu \
  /opt /usr/local/lib/python3* -name 'libcublas.so.13*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
cusolver_dirs=$(find /usr/local/cuda*/lib /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib /opt /usr/local/lib/python3* \
  \( -name 'libcusolver.so.12*' -o -name 'libcudart.so.13*' -o -name 'libcusparse.so.12*' -o -name 'libnvJitLink.so.13*' \) \
  -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="$b/lib:${cuda_dirs}${cusolver_dirs}${LD_LIBRARY_PATH:-}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$b/loftqd" | grep -E "not found|cublas|cusolver|cudart" || true
L="$b/loftqd"

echo "=== [$(( $(date +%s) - t0 )) s] PEFT reference check"
p="$work/peft"
mkdir -p "$p"
if "$L" synth --arch llama --layers 4 --hidden 512 --intermediate 1408 --heads 8 --kv-heads 4 \
     --vocab 1024 --dtype bf16 --seed 7 "$p/model" >/dev/null &&
   "$L" quantize --device cpu --rank 16 --iters 1 --svd exact --bit-plan 0-1:4,2-:2 "$p/model" "$p/t1" >"$p/t1.log" 2>&1 &&
   "$L" quantize --device cpu --rank 16 --iters 5 --svd exact --bit-plan 0-1:4,2-:2 "$p/model" "$p/t5" >"$p/t5.log" 2>&1; then
  tail -3 "$p/t5.log"
  echo "mirror-token-$$" >"$p/token"
  "$L" serve --store "$p/store" --listen 127.0.0.1:0 --write-token-file "$p/token" --port-file "$p/port" >"$p/serve.log" 2>&1 &
  serve_pid=$!
  for _ in $(seq 50); do [ -s "$p/port" ] && break; sleep 0.1; done
  url="http://127.0.0.1:$(cat "$p/port")"
  HF_TOKEN="$(cat "$p/token")" "$L" publish "$p/t5" demo/tiny-llama-loftq --endpoint "$url" 2>&1 | tail -2
  PYTHONUNBUFFERED=1 timeout 200 python3 "$repo/bench/peft_check.py" --model "$p/model" --t1 "$p/t1" \
    --t5 "$p/t5" --repo demo/tiny-llama-loftq --endpoint "$url" --json-out "$out/peft_check.json" || status=1
  kill "$serve_pid" 2>/dev/null
  grep -c " 200" "$p/serve.log" >/dev/null || true
else
  echo "FAILED: synth/quantize for the PEFT check"; cat "$p"/*.log 2>/dev/null | tail -20; status=1
fi

echo "=== [$(( $(date +%s) - t0 )) s] GPU check"
left=$(( 540 - ($(date +%s) - t0) ))
echo "(gpu_check gets ${left} s)"
OUT="$out" timeout "$left" bash "$repo/bench/gpu_check.sh" --prebuilt "$b" --workdir "$work/gpu" "${gpu_args[@]}" || status=1
echo "=== device_check done in $(( $(date +%s) - t0 )) s; status $status"
exit $status
