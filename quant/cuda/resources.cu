#include <cstring>
#include <string>

#include "quant/cuda/check.cuh"
#include "quant/cuda/resources.cuh"
#include "quant/device.h"

namespace loftqd::quant::cuda {

namespace {

// Sizes are rounded so that the same request shape lands in the same cache bucket: 512 B
// granules below 1 MiB, 2 MiB granules above.
size_t round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t g = bytes < (size_t(1) << 20) ? 512 : (size_t(2) << 20);
  return (bytes + g - 1) / g * g;
}

std::string mib(size_t bytes) {
  return std::to_string((bytes + (size_t(1) << 19)) >> 20) + " MiB";
}

}  // namespace

Resources::Resources(int device, const CudaOptions& opt) : device_(device), opt_(opt) {
  try {
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&blas_));
    CUBLAS_CHECK(cublasSetStream(blas_, stream_));
    // Full float32 unless TF32 is allowed (the GEMMs pick the compute type per call as well).
    CUBLAS_CHECK(cublasSetMathMode(
        blas_, opt_.allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    CUSOLVER_CHECK(cusolverDnCreate(&solver_));
    CUSOLVER_CHECK(cusolverDnSetStream(solver_, stream_));
    CUSOLVER_CHECK(cusolverDnCreateGesvdjInfo(&gesvdj_));
    CUSOLVER_CHECK(cusolverDnXgesvdjSetMaxSweeps(gesvdj_, 100));
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dev_info_), sizeof(int) * 4));
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dev_scalar_), sizeof(double) * 2));
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dev_partials_), sizeof(double) * kMaxPartials));
    for (int i = 0; i < 2; ++i) {
      CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&staging_[i]), kStagingBytes,
                               cudaHostAllocDefault));
      CUDA_CHECK(cudaEventCreateWithFlags(&staged_[i], cudaEventDisableTiming));
    }
    CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host_scalar_), sizeof(double) * 2,
                             cudaHostAllocDefault));
  } catch (...) {
    destroy();
    throw;
  }
}

Resources::~Resources() {
  destroy();
}

void Resources::destroy() noexcept {
  // Errors here cannot be reported (destructors do not throw); a broken context just leaks.
  (void)cudaSetDevice(device_);
  if (stream_) (void)cudaStreamSynchronize(stream_);
  trim();
  for (auto& ev : staged_)
    if (ev) (void)cudaEventDestroy(ev), ev = nullptr;
  for (auto& s : staging_)
    if (s) (void)cudaFreeHost(s), s = nullptr;
  if (host_scalar_) (void)cudaFreeHost(host_scalar_), host_scalar_ = nullptr;
  if (dev_info_) (void)cudaFree(dev_info_), dev_info_ = nullptr;
  if (dev_scalar_) (void)cudaFree(dev_scalar_), dev_scalar_ = nullptr;
  if (dev_partials_) (void)cudaFree(dev_partials_), dev_partials_ = nullptr;
  if (gesvdj_) (void)cusolverDnDestroyGesvdjInfo(gesvdj_), gesvdj_ = nullptr;
  if (solver_) (void)cusolverDnDestroy(solver_), solver_ = nullptr;
  if (blas_) (void)cublasDestroy(blas_), blas_ = nullptr;
  if (stream_) (void)cudaStreamDestroy(stream_), stream_ = nullptr;
  (void)cudaGetLastError();
}

void Resources::activate() const {
  CUDA_CHECK(cudaSetDevice(device_));
}

void* Resources::allocate(size_t bytes, size_t* held) {
  const size_t want = round_size(bytes);
  // A cached block of the same bucket, or up to 25 % larger.
  auto it = free_.lower_bound(want);
  if (it != free_.end() && it->first <= want + want / 4) {
    void* p = it->second;
    *held = it->first;
    cached_bytes_ -= it->first;
    used_bytes_ += it->first;
    free_.erase(it);
    return p;
  }
  if (opt_.memory_budget) {
    if (used_bytes_ + cached_bytes_ + want > opt_.memory_budget) trim();
    if (used_bytes_ + want > opt_.memory_budget)
      throw DeviceOutOfMemory("cuda:" + std::to_string(device_) + ": allocating " + mib(want) +
                              " would exceed the memory budget of " + mib(opt_.memory_budget) +
                              " (" + mib(used_bytes_) + " in use)");
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, want);
  if (e == cudaErrorMemoryAllocation && cached_bytes_ > 0) {
    (void)cudaGetLastError();
    trim();
    e = cudaMalloc(&p, want);
  }
  if (e != cudaSuccess)
    throw_call_error("CUDA", ("cudaMalloc(" + mib(want) + ")").c_str(), __FILE__, __LINE__,
                     error_string(e), is_out_of_memory(e));
  *held = want;
  used_bytes_ += want;
  return p;
}

void Resources::release(void* p, size_t held) noexcept {
  if (!p) return;
  used_bytes_ -= held;
  cached_bytes_ += held;
  try {
    free_.emplace(held, p);
  } catch (...) {  // no memory for the map node: give the block back instead
    cached_bytes_ -= held;
    (void)cudaFree(p);
  }
}

void Resources::trim() noexcept {
  if (free_.empty()) return;
  (void)cudaSetDevice(device_);
  for (auto& [size, p] : free_) (void)cudaFree(p);
  free_.clear();
  cached_bytes_ = 0;
}

void Resources::upload(void* dst, const void* src, size_t bytes) {
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  for (size_t off = 0, c = 0; off < bytes; off += kStagingBytes, ++c) {
    const size_t len = std::min(kStagingBytes, bytes - off);
    const int i = static_cast<int>(c % 2);
    CUDA_CHECK(cudaEventSynchronize(staged_[i]));  // the previous copy out of this buffer is done
    std::memcpy(staging_[i], s + off, len);
    CUDA_CHECK(cudaMemcpyAsync(d + off, staging_[i], len, cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaEventRecord(staged_[i], stream_));
  }
}

void Resources::download(void* dst, const void* src, size_t bytes) {
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  const size_t chunks = (bytes + kStagingBytes - 1) / kStagingBytes;
  // Chunk c is copied device -> staging while the host drains chunk c - 1.
  for (size_t c = 0; c <= chunks; ++c) {
    if (c < chunks) {
      const size_t off = c * kStagingBytes, len = std::min(kStagingBytes, bytes - off);
      const int i = static_cast<int>(c % 2);
      CUDA_CHECK(cudaMemcpyAsync(staging_[i], s + off, len, cudaMemcpyDeviceToHost, stream_));
      CUDA_CHECK(cudaEventRecord(staged_[i], stream_));
    }
    if (c > 0) {
      const size_t off = (c - 1) * kStagingBytes, len = std::min(kStagingBytes, bytes - off);
      const int i = static_cast<int>((c - 1) % 2);
      CUDA_CHECK(cudaEventSynchronize(staged_[i]));
      std::memcpy(d + off, staging_[i], len);
    }
  }
}

double Resources::read_scalar() {
  CUDA_CHECK(
      cudaMemcpyAsync(host_scalar_, dev_scalar_, sizeof(double), cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  return *host_scalar_;
}

void Resources::synchronize() {
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

}  // namespace loftqd::quant::cuda
