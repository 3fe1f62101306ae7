#!/usr/bin/env bash
# The whole GPU-machine check in one run (the lent machine is billed by the second): unpacks the
# bundle made by bench/pack_device.sh, then
#   1. PEFT reference check (bench/peft_check.py): a small synthetic llama quantized by loftqd
#      (T=1 and T=5, exact SVD, 4/2-bit plan) compared with PEFT's NFQuantizer, SVD and
#      loftq_init; PeftModel loads the layout, also from loftqd's mirror through HF_ENDPOINT;
#   2. PEFT architecture sweep (bench/peft_arch_check.py, at most 200 s): every registry
#      architecture (`loftqd synth --help` lists them) plus a base-class llama save and a bart with
#      fewer decoder than encoder layers, each small, quantized by loftqd on the CPU (rank 8, T=2)
#      and loaded with the real transformers + PEFT (+ bitsandbytes NF4): keys, effective weights,
#      one forward pass; the table for docs/compatibility.md goes to $OUT/compatibility_table.md;
#   3. bench/gpu_check.sh --prebuilt, with the time left of the 540 s: CUDA parity tests,
#      per-matrix CUDA vs CPU timings, and the 7B-shaped model end to end (skipped with
#      --skip-model).
# Logs go to $OUT (device_check.log, gpu_check.log, peft_check.json, peft_arch_check.jsonl,
# compatibility_table.md). Exit 1 if a step failed.
# Usage: bench/device_check.sh [--skip-model] [--skip-arch-sweep] [--bundle .device/bundle.tar.xz]
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bundle="$repo/.device/bundle.tar.xz"
gpu_args=()
skip_sweep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-model) gpu_args+=(--skip-model); shift ;;
    --skip-arch-sweep) skip_sweep=1; shift ;;
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

echo "=== [$(( $(date +%s) - t0 )) s] PEFT architecture sweep"
# At most 200 s, and never the last 60 s of the budget (gpu_check needs them to say anything).
sweep_limit=$(( 540 - 60 - ($(date +%s) - t0) ))
[ "$sweep_limit" -gt 200 ] && sweep_limit=200
if [ "$skip_sweep" = 1 ]; then
  echo "(skipped: --skip-arch-sweep)"
elif [ "$sweep_limit" -lt 30 ]; then
  echo "FAILED: no time left for the architecture sweep (${sweep_limit} s)"; status=1
else
  a="$work/arch"
  mkdir -p "$a"
  rm -f "$out/peft_arch_check.jsonl"
  archs=$("$L" synth --help 2>/dev/null | sed -n 's/.*--arch TEXT:{\([^}]*\)}.*/\1/p' | tr ',' ' ')
  [ -n "$archs" ] || archs="bart bert deberta-v2 falcon gemma gemma2 gpt2 gpt_neox llama mbart mistral mixtral mt5 opt phi phi3 qwen2 qwen2_moe qwen3 roberta starcoder2 t5"
  small=(--hidden 128 --intermediate 256 --heads 4 --vocab 512 --seed 1)
  cases=()
  labels=()
  # add_case LABEL ARCH LAYERS [synth options]: a failed synth/quantize is logged here and
  # reported by the script as missing files, so the table still has its row.
  add_case() {
    local label="$1" arch="$2" layers="$3"; shift 3
    if ! "$L" synth --arch "$arch" --layers "$layers" "${small[@]}" "$@" "$a/$label-in" >"$a/$label.synth.log" 2>&1; then
      echo "FAILED: synth --arch $arch ($label): $(tail -1 "$a/$label.synth.log")"
    elif ! "$L" quantize --device cpu --rank 8 --iters 2 "$a/$label-in" "$a/$label-out" >"$a/$label.quantize.log" 2>&1; then
      echo "FAILED: quantize $label: $(tail -1 "$a/$label.quantize.log")"
    fi
    cases+=(--case "$label" "$arch" "$a/$label-in" "$a/$label-out")
    labels+=("$label")
  }
  for arch in $archs; do
    case "$arch" in
      mixtral|qwen2_moe) add_case "$arch" "$arch" 2 --experts 4 ;;
      *) add_case "$arch" "$arch" 2 ;;
    esac
  done
  add_case llama-base-class llama 2 --base-class
  add_case bart-3+1-layers bart 3 --decoder-layers 1
  echo "(${#labels[@]} cases written in $(( $(date +%s) - t0 )) s; the sweep gets ${sweep_limit} s)"
  PYTHONUNBUFFERED=1 timeout "$sweep_limit" python3 "$repo/bench/peft_arch_check.py" "${cases[@]}" \
    --json-out "$out/peft_arch_check.jsonl" || status=1
  machine=$(nvidia-smi -L 2>/dev/null | sed 's/ (UUID[^)]*)//' | paste -sd ';' -)
  python3 "$repo/bench/peft_arch_check.py" --table "$out/peft_arch_check.jsonl" --expect "${labels[@]}" \
    --machine "${machine:-no nvidia-smi}" >"$out/compatibility_table.md" || status=1
  cat "$out/compatibility_table.md"
fi

echo "=== [$(( $(date +%s) - t0 )) s] GPU check"
left=$(( 540 - ($(date +%s) - t0) ))
echo "(gpu_check gets ${left} s)"
if [ "$left" -lt 30 ]; then
  echo "FAILED: no time left for gpu_check (${left} s)"; status=1
else
  OUT="$out" timeout "$left" bash "$repo/bench/gpu_check.sh" --prebuilt "$b" --workdir "$work/gpu" "${gpu_args[@]}" || status=1
fi
echo "=== device_check done in $(( $(date +%s) - t0 )) s; status $status"
exit $status
