#!/usr/bin/env bash
# The GPU check (docs/performance.md), one prepared script for a machine with an NVIDIA GPU:
#   1. builds Release with -DLOFTQD_CUDA=ON into build/gpu (loftqd, test_quant, bench_gpu only);
#   2. runs the CUDA tests (test_quant --gtest_filter='Cuda*:Device*');
#   3. per-matrix LoftQ (r=64, T=5, nf4) on 4096x4096 and 11008x4096: CUDA randomized against
#      CPU randomized in the same process (speed-up), CUDA exact on 4096x4096, a per-call profile;
#   4. a 7B-shaped synthetic model (llama, 32 layers, 4096/11008, bf16) quantized end to end on
#      CUDA (`loftqd quantize --device cuda` when the CLI has --device, else bench_gpu --model,
#      the same library call); the CPU figure for the model is extrapolated from step 3's
#      per-matrix CPU timings (4 x 4096x4096 + 3 x 11008x4096 per layer, LoftQ compute only).
# Targets on one H100: 4096x4096 <= 0.15 s; 7B-shaped model <= 3 minutes end to end; the whole
# script < 8 minutes. The log goes to $OUT/gpu_check.log when $OUT is set (and to stdout).
#
# Usage: bench/gpu_check.sh [--skip-model] [--workdir DIR] [--prebuilt DIR]
#   --prebuilt DIR: skip step 1 and use DIR/{loftqd,test_quant,bench_gpu} (built elsewhere with
#   LOFTQD_CUDA=ON; bench/pack_device.sh makes such a bundle for a machine without the -dev
#   packages).
# Environment: LOFTQD_JOBS (build jobs, default nproc), CMAKE_CUDA_ARCHITECTURES (default 80;90).
# Exit status: 0 when everything ran and passed, 1 when a step failed or a target was missed.
set -uo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
build="$repo/build/gpu"
work="${LOFTQD_GPU_WORK:-$build/work}"
skip_model=0
prebuilt=""
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-model) skip_model=1; shift ;;
    --workdir) work="$2"; shift 2 ;;
    --prebuilt) prebuilt="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  exec > >(tee "$OUT/gpu_check.log") 2>&1
fi

t_start=$(date +%s.%N)
status=0
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { echo; echo "=== [$(elapsed "$t_start") s] $*"; }
fail() { echo "FAILED: $*"; status=1; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "(no nvidia-smi)"
echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
/usr/local/cuda/bin/nvcc --version 2>/dev/null | tail -2 || true
cmake --version | head -1

if [ -n "$prebuilt" ]; then
  step "prebuilt binaries from $prebuilt"
  loftqd="$prebuilt/loftqd"
  bench="$prebuilt/bench_gpu"
  test_quant="$prebuilt/test_quant"
  "$loftqd" --version || { fail "prebuilt loftqd does not run"; exit 1; }
else
  step "build (Release, LOFTQD_CUDA=ON) into $build"
  jobs="${LOFTQD_JOBS:-$(nproc)}"
  gen=(-G "Unix Makefiles")
  command -v ninja >/dev/null && gen=(-G Ninja)
  arch_flag=()
  [ -n "${CMAKE_CUDA_ARCHITECTURES:-}" ] && arch_flag=(-DCMAKE_CUDA_ARCHITECTURES="$CMAKE_CUDA_ARCHITECTURES")
  t0=$(date +%s.%N)
  mkdir -p "$build"
  if ! cmake -S "$repo" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DLOFTQD_CUDA=ON \
       -DLOFTQD_BUILD_TESTS=ON -DLOFTQD_BUILD_BENCH=ON "${arch_flag[@]}" >"$build/configure.log" 2>&1; then
    cat "$build/configure.log"; fail "configure"; exit 1
  fi
  grep "CUDA backend" "$build/configure.log" || true
  if ! timeout 300 cmake --build "$build" -j"$jobs" --target loftqd test_quant bench_gpu 2>&1 | tail -30; then
    fail "build"; exit 1
  fi
  echo "build: $(elapsed "$t0") s"
  loftqd="$build/daemon/loftqd"
  bench="$build/bench/bench_gpu"
  test_quant="$build/tests/test_quant"
fi

# The synthetic model is written in the background while the tests run (the tests time nothing).
model="$work/llama7b"
synth_pid=""
if [ "$skip_model" = 0 ]; then
  mkdir -p "$work"
  if [ -f "$model/model.safetensors.index.json" ] || [ -f "$model/model.safetensors" ]; then
    echo "(reusing $model)"
  else
    rm -rf "$model"
    ( s0=$(date +%s.%N)
      "$loftqd" synth --arch llama --layers 32 --hidden 4096 --intermediate 11008 --heads 32 \
        --vocab 32000 --dtype bf16 "$model" >"$work/synth.log" 2>&1
      rc=$?; echo "synth rc=$rc in $(elapsed "$s0") s" >>"$work/synth.log"; exit $rc ) &
    synth_pid=$!
  fi
fi

step "CUDA tests"
t0=$(date +%s.%N)
mkdir -p "$work"
timeout 240 "$test_quant" --gtest_filter='Cuda*:Device*' >"$work/tests.log" 2>&1
rc=$?
grep -E '^\[ *(RUN|OK|FAILED|SKIPPED|PASSED|==========) *\]|Failure|Expected|Which is|actual|Skipped|[0-9]+: ' \
  "$work/tests.log" | grep -v '^\[ RUN' | tail -60
if [ "$rc" != 0 ]; then
  echo "--- failures in full:"; grep -B2 -A6 "Failure" "$work/tests.log" | head -120
  fail "CUDA tests (exit $rc)"
fi
grep -q '^\[  SKIPPED \] Cuda' "$work/tests.log" && fail "CUDA tests skipped on a GPU machine"
echo "tests: $(elapsed "$t0") s"

if [ -n "$synth_pid" ]; then
  step "waiting for the synthetic 7B model"
  if ! wait "$synth_pid"; then cat "$work/synth.log"; fail "synth"; skip_model=1; fi
  tail -3 "$work/synth.log"; du -sh "$model" 2>/dev/null || true
fi

step "per-matrix LoftQ: CUDA vs CPU (r=64, T=5, nf4)"
bench_log="$work/bench.log"
if ! timeout 240 "$bench" --shapes 4096x4096,11008x4096 --rank 64 --iters 5 --bits 4 --reps 3 --profile \
     --check 2>&1 | tee "$bench_log"; then
  fail "per-matrix benchmark (or a target/tolerance check)"
fi

if [ "$skip_model" = 0 ]; then
  step "7B-shaped model end to end on CUDA (rank 64, T=5, nf4)"
  out="$work/llama7b-loftq"
  rm -rf "$out"
  t0=$(date +%s.%N)
  if "$loftqd" quantize --help 2>/dev/null | grep -q -- '--device'; then
    echo "\$ loftqd quantize --device cuda $model $out"
    timeout 420 "$loftqd" quantize --device cuda --rank 64 --iters 5 --bits 4 "$model" "$out" 2>&1 | tail -15
    rc=${PIPESTATUS[0]}
  else
    echo "(loftqd quantize has no --device option in this build: timing quantize_model through bench_gpu --model)"
    timeout 420 "$bench" --model "$model" --out "$out" --rank 64 --iters 5 --bits 4 2>&1 | tail -15
    rc=${PIPESTATUS[0]}
  fi
  t_model=$(elapsed "$t0")
  [ "$rc" = 0 ] || fail "model quantize (exit $rc)"
  echo "7B-shaped model on CUDA: $t_model s end to end (target <= 180 s)"
  awk -v t="$t_model" 'BEGIN { exit !(t > 180) }' && fail "7B target missed"
  cpu_a=$(sed -n 's/^result: shape=4096x4096 cpu_seconds=//p' "$bench_log")
  cpu_b=$(sed -n 's/^result: shape=11008x4096 cpu_seconds=//p' "$bench_log")
  if [ -n "$cpu_a" ] && [ -n "$cpu_b" ]; then
    awk -v a="$cpu_a" -v b="$cpu_b" -v g="$t_model" 'BEGIN {
      c = 32 * (4 * a + 3 * b);
      printf "CPU backend estimate for the model: %.0f s of LoftQ compute (extrapolated: 32 x (4 x %.2f + 3 x %.2f) s, no I/O)\n", c, a, b;
      printf "speed-up, CUDA end to end vs CPU LoftQ compute alone: %.1fx (a lower bound)\n", c / g }'
  fi
  rm -rf "$out"
fi
[ -z "${LOFTQD_GPU_KEEP:-}" ] && [ "$skip_model" = 0 ] && rm -rf "$model"

step "done in $(elapsed "$t_start") s (target < 480 s); status $status"
exit $status
