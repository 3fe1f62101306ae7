#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "quant/cuda/check.cuh"
#include "quant/cuda/kernels.cuh"

namespace loftqd::quant::cuda {

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_max(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = __dadd_rn(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// One warp per quantization block: the warp reduces the block's scale, then each lane codes and
// dequantizes its elements. The rules are quant/quantizer.cpp's, operation for operation:
//   NF (absmax) scale = max |x|; uniform scale = float(mean) + 2.5f * float(std), with the sums
//   in double and std with Bessel's correction;
//   NF4: y = x * (1 / scale), code = count of thresholds t with y > t;
//   NF2/NF3/uniform: y = x / scale, nearest table entry, ties to the lower index;
//   out = table[code] * scale; scale 0 gives 0.
// The code table is staged in shared memory (the binary search indexes it per lane).
constexpr int kQuantThreads = 256;

__global__ void __launch_bounds__(kQuantThreads)
    quant_dequant_kernel(const QuantParams p, const float* __restrict__ in, float* __restrict__ out,
                         size_t blocks) {
  __shared__ float table[256];
  __shared__ float thresholds[15];
  for (int i = threadIdx.x; i < p.table_size; i += blockDim.x) table[i] = p.table[i];
  if (threadIdx.x < 15) thresholds[threadIdx.x] = p.thresholds[threadIdx.x];
  __syncthreads();

  const size_t qb = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (qb >= blocks) return;  // uniform across the warp
  const int lane = threadIdx.x % kWarp;
  const int bs = p.block_size;
  const float* x = in + qb * bs;
  float* o = out + qb * bs;

  float scale;
  if (p.kind != QuantParams::Uniform) {
    float m = 0.0f;
    for (int i = lane; i < bs; i += kWarp) m = fmaxf(m, fabsf(x[i]));
    scale = warp_max(m);
  } else {
    double s = 0.0;
    for (int i = lane; i < bs; i += kWarp) s = __dadd_rn(s, double(x[i]));
    const double mean = __ddiv_rn(warp_sum(s), double(bs));
    double ss = 0.0;
    for (int i = lane; i < bs; i += kWarp) {
      const double d = __dadd_rn(double(x[i]), -mean);
      ss = __dadd_rn(ss, __dmul_rn(d, d));
    }
    ss = warp_sum(ss);
    const float stdv = bs > 1 ? float(__dsqrt_rn(__ddiv_rn(ss, double(bs - 1)))) : 0.0f;
    scale = __fadd_rn(float(mean), __fmul_rn(2.5f, stdv));
  }

  if (scale == 0.0f) {
    for (int i = lane; i < bs; i += kWarp) o[i] = 0.0f;
    return;
  }
  if (p.kind == QuantParams::NF4) {
    const float inv = __fdiv_rn(1.0f, scale);
    for (int i = lane; i < bs; i += kWarp) {
      const float y = __fmul_rn(x[i], inv);
      int c = 0;
#pragma unroll
      for (int t = 0; t < 15; ++t) c += y > thresholds[t] ? 1 : 0;
      o[i] = __fmul_rn(table[c], scale);
    }
    return;
  }
  const int n = p.table_size;
  for (int i = lane; i < bs; i += kWarp) {
    const float y = __fdiv_rn(x[i], scale);
    int lo = 0, hi = n;  // upper_bound: first entry > y
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (table[mid] <= y)
        lo = mid + 1;
      else
        hi = mid;
    }
    int c;
    if (lo == 0)
      c = 0;
    else if (lo == n)
      c = n - 1;
    else
      c = fabsf(__fsub_rn(y, table[lo - 1])) <= fabsf(__fsub_rn(y, table[lo])) ? lo - 1 : lo;
    o[i] = __fmul_rn(table[c], scale);
  }
}

constexpr int kEltThreads = 256;

int elementwise_grid(size_t work) {
  const size_t g = (work + kEltThreads - 1) / kEltThreads;
  return static_cast<int>(std::clamp<size_t>(g, 1, 65536));
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

__global__ void sub_kernel(const float* __restrict__ a, const float* __restrict__ b,
                           float* __restrict__ out, size_t n, bool vec) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  size_t done = 0;
  if (vec) {
    const size_t n4 = n / 4;
    const auto* a4 = reinterpret_cast<const float4*>(a);
    const auto* b4 = reinterpret_cast<const float4*>(b);
    auto* o4 = reinterpret_cast<float4*>(out);
    for (size_t j = i; j < n4; j += stride) {
      const float4 x = a4[j], y = b4[j];
      o4[j] = make_float4(x.x - y.x, x.y - y.y, x.z - y.z, x.w - y.w);
    }
    done = n4 * 4;
  }
  for (size_t j = done + i; j < n; j += stride) out[j] = a[j] - b[j];
}

__device__ __forceinline__ double sq(double v) {
  return v * v;
}

// Per-thread double accumulation over a grid-stride loop, warp and block reduction, one partial
// per block (fixed grid size => fixed summation order).
constexpr int kSumThreads = 256;

__global__ void __launch_bounds__(kSumThreads)
    sq_sum_kernel(const float* __restrict__ a, const float* __restrict__ b, size_t n, bool vec,
                  double* __restrict__ partials) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  double s = 0.0;
  size_t done = 0;
  if (vec) {
    const size_t n4 = n / 4;
    const auto* a4 = reinterpret_cast<const float4*>(a);
    const auto* b4 = reinterpret_cast<const float4*>(b);
    for (size_t j = i; j < n4; j += stride) {
      const float4 x = a4[j];
      if (b) {
        const float4 y = b4[j];
        s += sq(double(x.x) - double(y.x)) + sq(double(x.y) - double(y.y)) +
             sq(double(x.z) - double(y.z)) + sq(double(x.w) - double(y.w));
      } else {
        s += sq(double(x.x)) + sq(double(x.y)) + sq(double(x.z)) + sq(double(x.w));
      }
    }
    done = n4 * 4;
  }
  for (size_t j = done + i; j < n; j += stride) s += sq(double(a[j]) - (b ? double(b[j]) : 0.0));

  __shared__ double warp_partial[kSumThreads / kWarp];
  s = warp_sum(s);
  if (threadIdx.x % kWarp == 0) warp_partial[threadIdx.x / kWarp] = s;
  __syncthreads();
  if (threadIdx.x < kWarp) {
    double t = threadIdx.x < kSumThreads / kWarp ? warp_partial[threadIdx.x] : 0.0;
    t = warp_sum(t);
    if (threadIdx.x == 0) partials[blockIdx.x] = t;
  }
}

__global__ void __launch_bounds__(kSumThreads)
    sum_partials_kernel(const double* __restrict__ partials, int count,
                        double* __restrict__ result) {
  double s = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += partials[i];
  __shared__ double warp_partial[kSumThreads / kWarp];
  s = warp_sum(s);
  if (threadIdx.x % kWarp == 0) warp_partial[threadIdx.x / kWarp] = s;
  __syncthreads();
  if (threadIdx.x < kWarp) {
    double t = threadIdx.x < kSumThreads / kWarp ? warp_partial[threadIdx.x] : 0.0;
    t = warp_sum(t);
    if (threadIdx.x == 0) *result = t;
  }
}

__global__ void left_factor_kernel(const float* __restrict__ u, int m, int p,
                                   const float* __restrict__ f, int r, int valid,
                                   float* __restrict__ l) {
  const size_t total = size_t(m) * r;
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const size_t i = idx / r;
    const int j = static_cast<int>(idx % r);
    l[idx] = j < valid ? __fmul_rn(u[i * p + j], f[j]) : 0.0f;
  }
}

__global__ void right_factor_kernel(const float* __restrict__ vt, int n,
                                    const float* __restrict__ f, int r, int valid,
                                    float* __restrict__ r_out) {
  const size_t total = size_t(r) * n;
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int j = static_cast<int>(idx / n);
    r_out[idx] = j < valid ? __fmul_rn(f[j], vt[idx]) : 0.0f;
  }
}

__global__ void upper_triangle_kernel(const float* __restrict__ a, int lda, int k,
                                      float* __restrict__ r) {
  const size_t total = size_t(k) * k;
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int row = static_cast<int>(idx % k), col = static_cast<int>(idx / k);
    r[idx] = row <= col ? a[size_t(col) * lda + row] : 0.0f;
  }
}

}  // namespace

QuantParams make_quant_params(const QuantSpec& s) {
  QuantParams p;
  const auto table = code_table(s.method, s.bits);
  if (table.size() > 256) throw std::logic_error("code table larger than 256 entries");
  p.kind = s.method == QuantMethod::Uniform ? QuantParams::Uniform
           : s.bits == 4                    ? QuantParams::NF4
                                            : QuantParams::NFNearest;
  p.block_size = s.block_size;
  p.table_size = static_cast<int>(table.size());
  std::fill(std::begin(p.table), std::end(p.table), 0.0f);
  std::copy(table.begin(), table.end(), p.table);
  std::copy(std::begin(kNF4Thresholds), std::end(kNF4Thresholds), p.thresholds);
  return p;
}

void quant_dequant(const QuantParams& p, const float* in, float* out, size_t blocks,
                   cudaStream_t st) {
  constexpr size_t per_cta = kQuantThreads / kWarp;
  const size_t grid = (blocks + per_cta - 1) / per_cta;
  if (grid == 0) return;
  if (grid > 0x7fffffffu) throw std::invalid_argument("cuda quant_dequant: too many blocks");
  quant_dequant_kernel<<<static_cast<unsigned>(grid), kQuantThreads, 0, st>>>(p, in, out, blocks);
  CUDA_CHECK_LAUNCH();
}

void sub(const float* a, const float* b, float* out, size_t n, cudaStream_t st) {
  if (n == 0) return;
  const bool vec = aligned16(a) && aligned16(b) && aligned16(out);
  sub_kernel<<<elementwise_grid(vec ? n / 4 + 1 : n), kEltThreads, 0, st>>>(a, b, out, n, vec);
  CUDA_CHECK_LAUNCH();
}

void sq_sum(const float* a, const float* b, size_t n, double* partials, int max_partials,
            double* result, cudaStream_t st) {
  const bool vec = aligned16(a) && (!b || aligned16(b));
  const size_t work = vec ? n / 4 + 1 : n;
  // About 16 float4 per thread before the reduction, capped at max_partials blocks.
  const size_t want = (work + size_t(kSumThreads) * 16 - 1) / (size_t(kSumThreads) * 16);
  const int grid = static_cast<int>(std::clamp<size_t>(want, 1, static_cast<size_t>(max_partials)));
  sq_sum_kernel<<<grid, kSumThreads, 0, st>>>(a, b, n, vec, partials);
  CUDA_CHECK_LAUNCH();
  sum_partials_kernel<<<1, kSumThreads, 0, st>>>(partials, grid, result);
  CUDA_CHECK_LAUNCH();
}

void make_factors(const float* u, int m, int p, const float* f, const float* vt, int n, int r,
                  int valid, float* l, float* r_out, cudaStream_t st) {
  left_factor_kernel<<<elementwise_grid(size_t(m) * r), kEltThreads, 0, st>>>(u, m, p, f, r, valid,
                                                                              l);
  CUDA_CHECK_LAUNCH();
  right_factor_kernel<<<elementwise_grid(size_t(r) * n), kEltThreads, 0, st>>>(vt, n, f, r, valid,
                                                                               r_out);
  CUDA_CHECK_LAUNCH();
}

void upper_triangle(const float* a, int lda, int k, float* r, cudaStream_t st) {
  upper_triangle_kernel<<<elementwise_grid(size_t(k) * k), kEltThreads, 0, st>>>(a, lda, k, r);
  CUDA_CHECK_LAUNCH();
}

}  // namespace loftqd::quant::cuda
