// Error checks for CUDA, cuBLAS and cuSOLVER calls, generated from one macro (STYLE §4). A
// failing call throws: DeviceOutOfMemory for an allocation failure (the caller may fall back to
// the CPU), std::runtime_error otherwise, naming the statement, file:line and the library's
// error string. Private to quant/cuda/.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <string>

namespace loftqd::quant::cuda {

[[noreturn]] void throw_call_error(const char* lib, const char* stmt, const char* file, int line,
                                   const std::string& error, bool out_of_memory);

std::string error_string(cudaError_t e);
std::string error_string(cublasStatus_t s);
std::string error_string(cusolverStatus_t s);
bool is_out_of_memory(cudaError_t e);
bool is_out_of_memory(cublasStatus_t s);
bool is_out_of_memory(cusolverStatus_t s);

}  // namespace loftqd::quant::cuda

#define LOFTQD_CHECK_GEN(stmt, success, lib)                                                   \
  do {                                                                                         \
    const auto loftqd_status_ = (stmt);                                                        \
    if (loftqd_status_ != (success))                                                           \
      ::loftqd::quant::cuda::throw_call_error(                                                 \
          lib, #stmt, __FILE__, __LINE__, ::loftqd::quant::cuda::error_string(loftqd_status_), \
          ::loftqd::quant::cuda::is_out_of_memory(loftqd_status_));                            \
  } while (0)

#define CUDA_CHECK(stmt) LOFTQD_CHECK_GEN(stmt, cudaSuccess, "CUDA")
#define CUBLAS_CHECK(stmt) LOFTQD_CHECK_GEN(stmt, CUBLAS_STATUS_SUCCESS, "cuBLAS")
#define CUSOLVER_CHECK(stmt) LOFTQD_CHECK_GEN(stmt, CUSOLVER_STATUS_SUCCESS, "cuSOLVER")
// After a kernel launch: launch-configuration errors surface here, execution errors at the
// next synchronizing call.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
