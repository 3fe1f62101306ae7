#!/usr/bin/env bash
# Packs CUDA-enabled loftqd binaries for a GPU machine that has the CUDA runtime but none of the
# Debian -dev packages (the lent H100/H200 image): builds build/gpu (Release, LOFTQD_CUDA=ON),
# then writes .device/bundle.tar.xz with loftqd, test_quant, bench_gpu and every shared library
# they need except glibc's and CUDA's own (the target supplies those; it needs glibc >= 2.36).
# bench/device_check.sh unpacks and runs it. Usage: bench/pack_device.sh [CUDA_ARCHS] (default 90)
set -euo pipefail
cd "$(dirname "$0")/.."
archs="${1:-90}"
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DLOFTQD_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$archs" -DLOFTQD_BUILD_TESTS=ON -DLOFTQD_BUILD_BENCH=ON >/dev/null
cmake --build build/gpu -j"${LOFTQD_JOBS:-2}" --target loftqd test_quant bench_gpu
rm -rf .device/bundle && mkdir -p .device/bundle/lib
bins=(build/gpu/daemon/loftqd build/gpu/tests/test_quant build/gpu/bench/bench_gpu)
cp "${bins[@]}" .device/bundle/
for b in "${bins[@]}"; do ldd "$b" | awk '$3 ~ /^\// {print $3}'; done | sort -u |
  grep -v -E '/(libc|libm|libdl|libpthread|librt|libresolv)\.so|ld-linux|/cuda' |
  while read -r lib; do cp -L "$lib" .device/bundle/lib/; done
tar -cJf .device/bundle.tar.xz -C .device bundle
ls -la .device/bundle.tar.xz
