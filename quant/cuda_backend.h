// The CUDA backend's public face (STYLE §2): no CUDA header or type crosses it, so every target
// compiles without the toolkit. The implementation lives in quant/cuda/ and is built only with
// LOFTQD_CUDA; without it these functions still link (quant/device.cpp): no devices, and
// make_cuda_backend throws.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "quant/backend.h"

namespace loftqd::quant {

struct CudaOptions {
  // Let cuBLAS use TF32 tensor cores for the SVD's GEMMs (faster, ~1e-3 relative rounding; the
  // CPU comparison and the default keep full float32).
  bool allow_tf32 = false;
  // Upper bound on the device memory this backend allocates, in bytes (0: whatever is free).
  // Going over it is reported as DeviceOutOfMemory, like a real out-of-memory.
  size_t memory_budget = 0;
  // Orthonormalization inside the SVDs: Householder QR (cuSOLVER geqrf + orgqr; the default)
  // or CholeskyQR2 (twice: Gram matrix, Cholesky, triangular solve; a few GEMM-speed passes
  // over a tall, skinny matrix instead of a column-by-column factorization). CholeskyQR2 falls
  // back to Householder when the matrix is too ill-conditioned for it (diagonal of R spread
  // over more than 1e3, or the Cholesky factorization breaks down).
  bool cholesky_qr = false;
};

// True when this build contains the CUDA backend.
bool cuda_built();
// Number of usable CUDA devices; 0 without a build, a driver or a device (never aborts). When
// there are none and `why` is set, it receives the reason ("no CUDA driver", ...).
int cuda_device_count(std::string* why = nullptr);
inline bool cuda_available() {
  return cuda_device_count() > 0;
}
// "NVIDIA H100 80GB HBM3, 79.2 GiB, sm_90" for a device index; "" when there is none.
std::string cuda_device_description(int device);

// A backend on CUDA device `device`, owning that device's resources (cuBLAS and cuSOLVER
// handles, a stream, a caching allocator). Throws std::invalid_argument without a build or a
// device of that index.
std::unique_ptr<Backend> make_cuda_backend(int device, const CudaOptions& opt = {});

}  // namespace loftqd::quant
