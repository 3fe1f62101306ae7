// The CUDA kernels behind the backend (private to quant/cuda/). All float32 arithmetic that
// decides a quantization code uses explicitly rounded intrinsics, so nvcc's FMA contraction cannot
// make the GPU differ from the CPU reference (quant/quantizer.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "quant/quantizer.h"

namespace loftqd::quant::cuda {

// A QuantSpec flattened for a kernel argument: the code table travels by value.
struct QuantParams {
  enum Kind : int { NF4 = 0, NFNearest = 1, Uniform = 2 };
  int kind = NF4;
  int block_size = kDefaultBlockSize;
  int table_size = 0;
  float table[256];
  float thresholds[15];
};
QuantParams make_quant_params(const QuantSpec& s);

// out = dequantize(quantize(in)) over `blocks` blocks of p.block_size values.
void quant_dequant(const QuantParams& p, const float* in, float* out, size_t blocks,
                   cudaStream_t st);
// out = a - b.
void sub(const float* a, const float* b, float* out, size_t n, cudaStream_t st);
// *result = sum (a - b)^2 (b may be null: sum a^2), in double, with a fixed reduction order
// (deterministic). `partials` holds Resources::kMaxPartials doubles.
void sq_sum(const float* a, const float* b, size_t n, double* partials, int max_partials,
            double* result, cudaStream_t st);
// l (m x r) = u[:, :valid] * diag(f), zero past valid; r_out (r x n) = diag(f) * vt[:valid, :],
// zero past valid. u is m x p, vt is p x n, all row-major; f has r entries on the device.
void make_factors(const float* u, int m, int p, const float* f, const float* vt, int n, int r,
                  int valid, float* l, float* r_out, cudaStream_t st);
// r (k x k, column-major) = the upper triangle of the column-major a (lda), zero below.
void upper_triangle(const float* a, int lda, int k, float* r, cudaStream_t st);

}  // namespace loftqd::quant::cuda
