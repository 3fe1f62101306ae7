#include <cstring>

#include "quant/cuda/check.cuh"
#include "quant/device.h"

namespace loftqd::quant::cuda {

void throw_call_error(const char* lib, const char* stmt, const char* file, int line,
                      const std::string& error, bool out_of_memory) {
  // Report the path from the source tree's quant/ on, not the build machine's absolute path.
  const char* rel = std::strstr(file, "quant/cuda/");
  const std::string msg = std::string(lib) + " call " + stmt + " failed at " + (rel ? rel : file) +
                          ":" + std::to_string(line) + ": " + error;
  if (out_of_memory) throw DeviceOutOfMemory(msg);
  throw std::runtime_error(msg);
}

std::string error_string(cudaError_t e) {
  (void)cudaGetLastError();  // clear a non-sticky error so later calls do not report it again
  return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
}

std::string error_string(cublasStatus_t s) {
  return std::string(cublasGetStatusName(s)) + " (" + cublasGetStatusString(s) + ")";
}

std::string error_string(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS:
      return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED:
      return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED:
      return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE:
      return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH:
      return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_MAPPING_ERROR:
      return "CUSOLVER_STATUS_MAPPING_ERROR";
    case CUSOLVER_STATUS_EXECUTION_FAILED:
      return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR:
      return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED:
      return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED:
      return "CUSOLVER_STATUS_NOT_SUPPORTED";
    case CUSOLVER_STATUS_ZERO_PIVOT:
      return "CUSOLVER_STATUS_ZERO_PIVOT";
    case CUSOLVER_STATUS_INVALID_LICENSE:
      return "CUSOLVER_STATUS_INVALID_LICENSE";
    case CUSOLVER_STATUS_INVALID_WORKSPACE:
      return "CUSOLVER_STATUS_INVALID_WORKSPACE";
    default:
      return "cusolverStatus_t " + std::to_string(static_cast<int>(s));
  }
}

bool is_out_of_memory(cudaError_t e) {
  return e == cudaErrorMemoryAllocation;
}
bool is_out_of_memory(cublasStatus_t s) {
  return s == CUBLAS_STATUS_ALLOC_FAILED;
}
bool is_out_of_memory(cusolverStatus_t s) {
  return s == CUSOLVER_STATUS_ALLOC_FAILED;
}

}  // namespace loftqd::quant::cuda
