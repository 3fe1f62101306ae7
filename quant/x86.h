// Internal to loftqd_quant: the x86-64 kernels chosen at run time by the CPU. LOFTQD_X86_KERNELS
// is defined where they exist (x86-64, GCC or clang); -DLOFTQD_NO_X86_KERNELS leaves them out,
// for a side-by-side timing of the portable paths.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(LOFTQD_NO_X86_KERNELS)
#include <immintrin.h>
#define LOFTQD_X86_KERNELS 1
#endif

#include <cstddef>

namespace loftqd::quant::x86 {

// GCC 12 warns -Wmaybe-uninitialized (and -Wuninitialized, in _mm512_reduce_add_pd) inside its
// own AVX-512 intrinsics, from their _mm512_undefined_*() pass-through operands: a false
// positive (bug 105593). The kernels are defined between these.
#if defined(__GNUC__) && !defined(__clang__)
#define LOFTQD_AVX512_BEGIN                                                                  \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define LOFTQD_AVX512_END _Pragma("GCC diagnostic pop")
#else
#define LOFTQD_AVX512_BEGIN
#define LOFTQD_AVX512_END
#endif

#ifdef LOFTQD_X86_KERNELS
inline bool have_avx512f() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

LOFTQD_AVX512_BEGIN

// sum over i < n of (double(a[i]) - double(b[i]))^2: 8 values at a time converted to double,
// four accumulators. (The portable loop compiles to SSE2 for the baseline x86-64 target.)
__attribute__((target("avx512f"))) inline __m512d diff8_pd(const float* a, const float* b) {
  return _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(a)), _mm512_cvtps_pd(_mm256_loadu_ps(b)));
}

__attribute__((target("avx512f"))) inline double sq_dist_avx512(const float* a, const float* b,
                                                                size_t n) {
  __m512d s0 = _mm512_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512d d0 = diff8_pd(a + i, b + i), d1 = diff8_pd(a + i + 8, b + i + 8),
                  d2 = diff8_pd(a + i + 16, b + i + 16), d3 = diff8_pd(a + i + 24, b + i + 24);
    s0 = _mm512_fmadd_pd(d0, d0, s0);
    s1 = _mm512_fmadd_pd(d1, d1, s1);
    s2 = _mm512_fmadd_pd(d2, d2, s2);
    s3 = _mm512_fmadd_pd(d3, d3, s3);
  }
  for (; i + 8 <= n; i += 8) {
    const __m512d d = diff8_pd(a + i, b + i);
    s0 = _mm512_fmadd_pd(d, d, s0);
  }
  double tail = 0.0;
  for (; i < n; ++i) {
    const double d = double(a[i]) - double(b[i]);
    tail += d * d;
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(s0, s1), _mm512_add_pd(s2, s3))) + tail;
}

// out[i] = a[i] - b[i] (the same IEEE float subtraction as the portable loop).
__attribute__((target("avx512f"))) inline void sub_avx512(const float* a, const float* b,
                                                          float* out, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
  for (; i < n; ++i) out[i] = a[i] - b[i];
}

LOFTQD_AVX512_END
#endif

}  // namespace loftqd::quant::x86
