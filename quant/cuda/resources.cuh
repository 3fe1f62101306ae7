// One resources object per CUDA device (STYLE §3): the stream every call runs on, the cuBLAS and
// cuSOLVER handles bound to it, a caching allocator (LoftQ allocates the same shapes layer after
// layer, so cudaMalloc/cudaFree leave the hot path), pinned staging buffers for host transfers and
// a few device scalars. Private to quant/cuda/. Not thread-safe: one backend, one thread.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstddef>
#include <map>

#include "quant/cuda_backend.h"

namespace loftqd::quant::cuda {

class Resources {
 public:
  Resources(int device, const CudaOptions& opt);
  ~Resources();
  Resources(const Resources&) = delete;
  Resources& operator=(const Resources&) = delete;

  int device() const { return device_; }
  const CudaOptions& options() const { return opt_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  cusolverDnHandle_t solver() const { return solver_; }
  gesvdjInfo_t gesvdj_params() const { return gesvdj_; }
  int* dev_info() const { return dev_info_; }
  double* dev_scalar() const { return dev_scalar_; }
  double* dev_partials() const { return dev_partials_; }
  static constexpr int kMaxPartials = 1024;

  // Makes this device current for the calling thread.
  void activate() const;

  // Device memory of at least `bytes` (returns the size actually held in *held). Served from the
  // cache when a block of about that size is free; on failure or past the memory budget, the
  // cache is released and the allocation retried once before DeviceOutOfMemory.
  void* allocate(size_t bytes, size_t* held);
  // Returns a block from allocate() to the cache. Never throws.
  void release(void* p, size_t held) noexcept;
  // Frees every cached block (synchronizes the device).
  void trim() noexcept;

  // Host <-> device copies through double-buffered pinned staging, ordered on the stream. upload
  // returns once `src` may be reused; download returns with `dst` filled.
  void upload(void* dst, const void* src, size_t bytes);
  void download(void* dst, const void* src, size_t bytes);
  double read_scalar();  // *dev_scalar(), synchronizing
  void synchronize();

 private:
  int device_;
  CudaOptions opt_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
  gesvdjInfo_t gesvdj_ = nullptr;
  int* dev_info_ = nullptr;
  double* dev_scalar_ = nullptr;
  double* dev_partials_ = nullptr;
  static constexpr size_t kStagingBytes = size_t(8) << 20;
  char* staging_[2] = {nullptr, nullptr};
  cudaEvent_t staged_[2] = {nullptr, nullptr};
  double* host_scalar_ = nullptr;
  std::multimap<size_t, void*> free_;  // cached blocks by size
  size_t cached_bytes_ = 0, used_bytes_ = 0;

  void destroy() noexcept;
};

}  // namespace loftqd::quant::cuda
