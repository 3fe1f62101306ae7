// What the machine can do, measured in the benchmark's own run (issue 14): the sgemm peak of
// the BLAS kernels in use (best of several 2048^3 sgemm calls through the CPU backend) and the
// memory bandwidth (STREAM-like copy and triad over 384 MB), both with the benchmark's thread
// count, plus the kernels' name. The floors of docs/performance.md divide by these.
#pragma once

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "quant/backend.h"
#include "quant/blas.h"
#include "quant/loftq.h"

namespace loftqd::bench {

struct Machine {
  int threads = 0;
  double sgemm_gflops = 0;  // best 2048^3 sgemm
  int sgemm_reps = 0;
  double copy_gbps = 0, triad_gbps = 0;  // best pass, STREAM's byte counts
  double array_mb = 0;                   // the three arrays together
  std::string kernels;                   // quant::kernels_summary
  std::string core;
  double gbps() const { return std::max(copy_gbps, triad_gbps); }
  // The floor of `w` on this machine, and its two parts.
  double gemm_s(const quant::LoftqWork& w) const { return w.flops() / (sgemm_gflops * 1e9); }
  double mem_s(const quant::LoftqWork& w) const { return w.bytes / (gbps() * 1e9); }
  double floor_s(const quant::LoftqWork& w) const { return gemm_s(w) + mem_s(w); }
};

inline int resolve_threads(int threads) {
  if (threads > 0) return threads;
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : int(hc);
}

// Best GFLOP/s of n^3 sgemm: at least 5 calls and 1.5 s, at most 30 calls.
inline double sgemm_peak(quant::Backend& be, int n, int* reps) {
  const size_t nn = size_t(n) * n;
  std::vector<float> host(nn);
  for (size_t i = 0; i < nn; ++i) host[i] = float((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
  auto a = be.alloc(nn), b = be.alloc(nn), c = be.alloc(nn);
  be.upload(*a, host.data(), nn);
  be.upload(*b, host.data(), nn);
  be.upload(*c, host.data(), nn);
  be.gemm(false, false, n, n, n, 1e-3f, *a, *b, 1.0f, *c);  // warm-up: threads, pages
  double best = 1e30, total = 0;
  int r = 0;
  for (; r < 30 && (r < 5 || total < 1.5); ++r) {
    const auto t0 = Clock::now();
    be.gemm(false, false, n, n, n, 1e-3f, *a, *b, 1.0f, *c);
    const double s = since(t0);
    best = std::min(best, s), total += s;
  }
  *reps = r;
  return 2.0 * double(n) * n * n / best / 1e9;
}

// Runs f(begin, end) over [0, n) split across `threads` threads; the seconds it took.
template <class F>
double parallel_pass(size_t n, int threads, F f) {
  const auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back(
        [=] { f(n * size_t(t) / size_t(threads), n * size_t(t + 1) / size_t(threads)); });
  for (auto& t : ts) t.join();
  return since(t0);
}

// Best copy (b = a: 8 bytes per element) and triad (a = b + s c: 12 bytes) over three arrays
// of 32M floats, first touched by the threads that use them.
inline void stream_bandwidth(int threads, Machine& m) {
  const size_t n = size_t(32) << 20;
  std::unique_ptr<float[]> a(new float[n]), b(new float[n]), c(new float[n]);
  float *pa = a.get(), *pb = b.get(), *pc = c.get();
  parallel_pass(n, threads, [=](size_t i0, size_t i1) {
    for (size_t i = i0; i < i1; ++i) pa[i] = 1.0f, pb[i] = 2.0f, pc[i] = 0.5f;
  });
  double copy = 1e30, triad = 1e30;
  for (int r = 0; r < 6; ++r) {
    copy = std::min(copy, parallel_pass(n, threads, [=](size_t i0, size_t i1) {
                      std::copy(pa + i0, pa + i1, pb + i0);
                    }));
    triad = std::min(triad, parallel_pass(n, threads, [=](size_t i0, size_t i1) {
                       for (size_t i = i0; i < i1; ++i) pa[i] = pb[i] + 0.5f * pc[i];
                     }));
  }
  volatile float sink = pa[n / 3] + pb[n / 2];  // the passes' results are used
  (void)sink;
  m.copy_gbps = 8.0 * double(n) / copy / 1e9;
  m.triad_gbps = 12.0 * double(n) / triad / 1e9;
  m.array_mb = 3.0 * 4.0 * double(n) / 1e6;
}

// Measures the machine with `threads` (0 = all cores) BLAS and memory threads.
inline Machine measure_machine(int threads) {
  Machine m;
  m.threads = resolve_threads(threads);
  auto be = quant::make_cpu_backend(m.threads);  // sets the BLAS thread count
  m.sgemm_gflops = sgemm_peak(*be, 2048, &m.sgemm_reps);
  stream_bandwidth(m.threads, m);
  const quant::BlasInfo blas = quant::blas_info();
  m.kernels = quant::kernels_summary(blas, quant::cpu_features());
  m.core = blas.core;
  return m;
}

inline void print_machine(const Machine& m) {
  std::printf("blas: %s\n", m.kernels.c_str());
  if (const std::string better =
          quant::better_openblas_core(m.core, quant::cpu_features(), nullptr);
      !better.empty())
    std::printf(
        "warning: core %s is slower than this CPU allows (%s would be right); the "
        "floors below are of these kernels\n",
        m.core.c_str(), better.c_str());
  std::printf(
      "machine: sgemm peak %.1f GFLOP/s (2048^3, best of %d, %d threads), memory %.1f GB/s "
      "(copy %.1f, triad %.1f GB/s over %.0f MB, %d threads)\n",
      m.sgemm_gflops, m.sgemm_reps, m.threads, m.gbps(), m.copy_gbps, m.triad_gbps, m.array_mb,
      m.threads);
  std::fflush(stdout);
}

}  // namespace loftqd::bench
