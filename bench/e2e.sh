#!/usr/bin/env bash
# End-to-end benchmark (docs/performance.md): synthesizes a TinyLlama-shaped checkpoint (22
# layers, hidden 2048, intermediate 5632, 32 heads, 4 kv heads, vocab 32000, bf16), runs
# `loftqd quantize` on it (defaults: rank 64, T=5, randomized SVD, 4 bits, unless overridden),
# reports wall time and peak RSS against the targets (<= 10 minutes, <= 3 GB), then runs
# `loftqd verify` on the result. It prints the BLAS kernels loftqd runs on and, with
# bench/bench_loftq in the build tree, the machine's sgemm peak and memory bandwidth measured
# right after the quantize and the run's wall and LoftQ time as multiples of its floor
# (docs/performance.md, "Floors").
#
# Usage: bench/e2e.sh [--build DIR] [--workdir DIR] [--keep] [QUANTIZE OPTIONS...]
#   --build DIR    build tree holding daemon/loftqd and bench/bench_peakrss
#                  (default: $LOFTQD_BUILD, else build/release)
#   --workdir DIR  where the synthetic model (reused when present) and the output go
#                  (default: $LOFTQD_BENCH_DIR, else /tmp/loftqd-e2e)
#   --keep         keep the quantized output (default: removed after verify)
#   anything else is passed to `loftqd quantize`, e.g. --avg-bits 3 or --threads 2.
# Exits 0 when quantize and verify succeed and both targets are met, 1 when a target is missed.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${LOFTQD_BUILD:-$repo/build/release}"
work="${LOFTQD_BENCH_DIR:-/tmp/loftqd-e2e}"
keep=0
qargs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --workdir) work="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) qargs+=("$1"); shift ;;
  esac
done
case "$build" in /*) ;; *) build="$PWD/$build" ;; esac

loftqd="$build/daemon/loftqd"
peakrss="$build/bench/bench_peakrss"
bench_loftq="$build/bench/bench_loftq"
if [ ! -x "$loftqd" ]; then
  echo "e2e.sh: $loftqd not found; build first (scripts/build, or --build DIR)" >&2
  exit 2
fi

limit_s=600
limit_kib=$((3000000000 / 1024))  # 3 GB

# Runs "$@" and leaves its wall time (s), peak RSS (KiB) and CPU time (user + sys, s) in $wall_s,
# $rss_kib and $cpu_s. Uses the bench_peakrss helper (wait4 rusage); without it, polls VmHWM in
# /proc/PID/status (and the CPU time is not known).
measure() {
  local stats
  stats="$(mktemp)"
  if [ -x "$peakrss" ]; then
    "$peakrss" --out "$stats" -- "$@"
    wall_s="$(sed -n 's/^wall_s=//p' "$stats")"
    rss_kib="$(sed -n 's/^peak_rss_kib=//p' "$stats")"
    cpu_s="$(awk -F= '/^(user|sys)_s=/ {t += $2} END {printf "%.1f", t}' "$stats")"
  else
    local t0 pid hwm v
    t0="$(date +%s.%N)"
    "$@" &
    pid=$!
    hwm=0
    while kill -0 "$pid" 2>/dev/null; do
      v="$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
      if [ -n "$v" ] && [ "$v" -gt "$hwm" ]; then hwm="$v"; fi
      sleep 0.2
    done
    wait "$pid"
    wall_s="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')"
    rss_kib="$hwm"
    cpu_s="?"
  fi
  rm -f "$stats"
}

echo "== machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)," \
  "$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"

# The kernels loftqd runs on (its start-up check may re-exec it with OPENBLAS_CORETYPE).
blas_line="$("$loftqd" --version | sed -n 's/^blas: //p')"
loftqd_core="$(echo "$blas_line" | sed -n 's/.* core=\([^ ]*\).*/\1/p')"
echo "== blas: $blas_line"
"$loftqd" --version | sed -n 's/^warning: /== warning: /p'
threads=0
for ((i = 0; i < ${#qargs[@]}; i++)); do
  [ "${qargs[$i]}" = "--threads" ] && threads="${qargs[$((i + 1))]:-0}"
done

# 1. The synthetic TinyLlama (reused when a previous run completed it).
mkdir -p "$work"
model="$work/tinyllama-synth"
if [ -f "$model/.complete" ]; then
  echo "== reusing $model"
else
  rm -rf "$model" "$model.tmp"
  echo "== synthesizing TinyLlama-shaped checkpoint into $model"
  t0=$(date +%s)
  "$loftqd" synth --arch llama --layers 22 --hidden 2048 --intermediate 5632 --heads 32 \
    --kv-heads 4 --vocab 32000 --dtype bf16 "$model.tmp"
  touch "$model.tmp/.complete"
  mv "$model.tmp" "$model"
  echo "   synthesized in $(($(date +%s) - t0)) s"
fi
du -sh "$model" | awk '{print "   model size: " $1}'

# 2. quantize.
tag="default"
[ ${#qargs[@]} -gt 0 ] && tag="$(echo "${qargs[*]}" | tr -c 'A-Za-z0-9.\n' '_' | sed 's/__*/_/g; s/^_//; s/_$//')"
out="$work/out-$tag"
rm -rf "$out"
echo "== loftqd quantize $model $out ${qargs[*]}"
load0="$(cut -d' ' -f1-3 /proc/loadavg)"
measure "$loftqd" quantize "$model" "$out" "${qargs[@]}"
q_wall="$wall_s"
q_rss="$rss_kib"
q_cpu="$cpu_s"
load1="$(cut -d' ' -f1-3 /proc/loadavg)"

# 2b. The machine's floor for this run, measured now with the same threads and kernels.
floor_s=""
if [ -x "$bench_loftq" ]; then
  echo "== floor: bench_loftq --floor-of $out/loftq.json --threads $threads"
  floor_out="$(OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-$loftqd_core}" \
    "$bench_loftq" --floor-of "$out/loftq.json" --threads "$threads")"
  echo "$floor_out" | grep -v -E '^(floor_s|core)='
  floor_s="$(echo "$floor_out" | sed -n 's/^floor_s=//p')"
else
  echo "== floor: not measured ($bench_loftq not built: LOFTQD_BUILD_BENCH=ON)"
fi

# 3. verify.
echo "== loftqd verify $out --original $model"
measure "$loftqd" verify "$out" --original "$model"
v_wall="$wall_s"
v_rss="$rss_kib"
v_cpu="$cpu_s"
[ "$keep" = 1 ] || rm -rf "$out"

ok=1
q_wall_int="${q_wall%.*}"
[ "$q_wall_int" -le "$limit_s" ] || ok=0
[ "$q_rss" -le "$limit_kib" ] || ok=0
echo
echo "== e2e summary (quantize ${qargs[*]:-with defaults})"
printf '   quantize: wall %8.1f s (target <= %d s), peak RSS %7.1f MiB (target <= 3 GB = %d MiB), cpu %s s\n' \
  "$q_wall" "$limit_s" "$(awk -v k="$q_rss" 'BEGIN {print k / 1024}')" "$((limit_kib / 1024))" "$q_cpu"
printf '   verify:   wall %8.1f s, peak RSS %7.1f MiB, cpu %s s\n' "$v_wall" \
  "$(awk -v k="$v_rss" 'BEGIN {print k / 1024}')" "$v_cpu"
echo "   load average (1/5/15 min) before quantize: $load0, after: $load1"
echo "   blas: $blas_line"
if [ -n "$floor_s" ]; then
  awk -v w="$q_wall" -v f="$floor_s" \
    'BEGIN { printf "   floor %.1f s: quantize wall = %.2fx floor\n", f, w / f }'
fi
if [ "$ok" = 1 ]; then
  echo "   targets: met"
else
  echo "   targets: MISSED"
  exit 1
fi
