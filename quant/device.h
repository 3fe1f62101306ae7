// Picking a compute backend (--device auto|cpu|cuda|cuda:N) and running LoftQ with a fallback
// to the CPU when a device runs out of memory. Free of CUDA types (STYLE §2).
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "quant/backend.h"
#include "quant/cuda_backend.h"
#include "quant/loftq.h"

namespace loftqd::quant {

// Thrown by the CUDA backend when the device (or its memory budget) cannot hold an allocation;
// callers may rerun the work on another backend (loftq_with_fallback). Other CUDA, cuBLAS and
// cuSOLVER failures are std::runtime_error naming the call.
class DeviceOutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct DeviceChoice {
  enum class Kind { Auto, Cpu, Cuda } kind = Kind::Auto;
  int index = 0;             // cuda:N
  bool index_given = false;  // "cuda:0" rather than "cuda" (kept for messages)
  std::string name() const;  // "auto", "cpu", "cuda", "cuda:N": what parse_device() read
  bool operator==(const DeviceChoice&) const = default;
};
// Parses "auto", "cpu", "cuda" or "cuda:N"; std::invalid_argument otherwise.
DeviceChoice parse_device(const std::string& device);

// The backend for --device: `auto` is CUDA device 0 when the build has CUDA and a device is
// present, else the CPU; `cpu` the CPU with `threads` threads (0 = all cores); `cuda[:N]` that
// device or std::invalid_argument ("--device cuda: loftqd was built without CUDA", "... no
// CUDA device (...)"). `chosen`, when set, receives a line for the log ("cuda:0 (NVIDIA ...)",
// "cpu (4 threads; auto: no CUDA device: ...)").
std::unique_ptr<Backend> make_backend(const DeviceChoice& device, int threads,
                                      std::string* chosen = nullptr, const CudaOptions& cuda = {});
// The same for the text form ("auto", "cpu", "cuda:1"), parsed with parse_device().
std::unique_ptr<Backend> make_backend(const std::string& device, int threads,
                                      std::string* chosen = nullptr, const CudaOptions& cuda = {});

// make_backend() plus, when that is not the CPU, a CPU backend for the layers that run out of
// device memory (QuantizeOptions::fallback). What `loftqd quantize` and the daemon use.
struct Backends {
  std::unique_ptr<Backend> primary;
  std::unique_ptr<Backend> cpu_fallback;  // null when primary is the CPU
  Backend* fallback() const { return cpu_fallback.get(); }
};
Backends make_backends(const DeviceChoice& device, int threads, std::string* chosen = nullptr);
Backends make_backends(const std::string& device, int threads, std::string* chosen = nullptr);

// loftq() on `primary`; if that throws DeviceOutOfMemory and `fallback` is set, a warning
// naming `what` (e.g. the tensor) goes to `warn` (default: stderr) and the layer is redone on
// `fallback`. Without a fallback the exception propagates.
LoftqResult loftq_with_fallback(Backend& primary, Backend* fallback, const float* w,
                                int out_features, int in_features, const LoftqOptions& opt,
                                const std::string& what = "",
                                const std::function<void(const std::string&)>& warn = {});

}  // namespace loftqd::quant
