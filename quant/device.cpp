#include "quant/device.h"

#include <charconv>
#include <iostream>
#include <thread>

namespace loftqd::quant {

#ifndef LOFTQD_HAVE_CUDA
// A build without CUDA: no devices, and asking for one is a usage error.
bool cuda_built() {
  return false;
}
int cuda_device_count(std::string* why) {
  if (why) *why = "loftqd was built without CUDA";
  return 0;
}
std::string cuda_device_description(int) {
  return "";
}
std::unique_ptr<Backend> make_cuda_backend(int, const CudaOptions&) {
  throw std::invalid_argument("--device cuda: loftqd was built without CUDA");
}
#endif

std::string DeviceChoice::name() const {
  switch (kind) {
    case Kind::Auto:
      return "auto";
    case Kind::Cpu:
      return "cpu";
    case Kind::Cuda:
      return index_given ? "cuda:" + std::to_string(index) : "cuda";
  }
  return "auto";
}

DeviceChoice parse_device(const std::string& device) {
  DeviceChoice c;
  if (device == "auto") return c;
  if (device == "cpu") {
    c.kind = DeviceChoice::Kind::Cpu;
    return c;
  }
  if (device == "cuda") {
    c.kind = DeviceChoice::Kind::Cuda;
    return c;
  }
  if (device.starts_with("cuda:") && device.size() > 5 && device.size() <= 9) {
    const char* first = device.data() + 5;
    const char* last = device.data() + device.size();
    int n = -1;
    const auto [ptr, ec] = std::from_chars(first, last, n);
    if (ec == std::errc() && ptr == last && n >= 0 && *first != '+' && *first != '-') {
      c.kind = DeviceChoice::Kind::Cuda;
      c.index = n;
      c.index_given = true;
      return c;
    }
  }
  throw std::invalid_argument("unknown device '" + device +
                              "' (expected auto, cpu, cuda or cuda:N)");
}

namespace {

int cpu_threads(int threads) {
  if (threads > 0) return threads;
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

std::string cpu_description(int threads) {
  const int t = cpu_threads(threads);
  return "cpu (" + std::to_string(t) + (t == 1 ? " thread" : " threads") + ")";
}

}  // namespace

std::unique_ptr<Backend> make_backend(const std::string& device, int threads, std::string* chosen,
                                      const CudaOptions& cuda) {
  return make_backend(parse_device(device), threads, chosen, cuda);
}

std::unique_ptr<Backend> make_backend(const DeviceChoice& c, int threads, std::string* chosen,
                                      const CudaOptions& cuda) {
  const std::string device = c.name();
  if (c.kind == DeviceChoice::Kind::Cpu) {
    if (chosen) *chosen = cpu_description(threads);
    return make_cpu_backend(threads);
  }
  std::string why;
  const int count = cuda_device_count(&why);
  if (c.kind == DeviceChoice::Kind::Auto) {
    if (count > 0) {
      try {
        auto be = make_cuda_backend(0, cuda);
        if (chosen) *chosen = "cuda:0 (" + cuda_device_description(0) + "; auto)";
        return be;
      } catch (const std::exception& e) {  // a device that cannot be used: auto means the CPU
        why = std::string("cuda:0 is unusable: ") + e.what();
      }
    }
    if (chosen) *chosen = cpu_description(threads) + " (auto: " + why + ")";
    return make_cpu_backend(threads);
  }
  if (!cuda_built())
    throw std::invalid_argument("--device " + device + ": loftqd was built without CUDA");
  if (count == 0)
    throw std::invalid_argument("--device " + device + ": no CUDA device (" + why + ")");
  if (c.index >= count)
    throw std::invalid_argument("--device " + device + ": no such CUDA device (" +
                                std::to_string(count) + (count == 1 ? " device" : " devices") +
                                " present)");
  if (chosen)
    *chosen = "cuda:" + std::to_string(c.index) + " (" + cuda_device_description(c.index) + ")";
  return make_cuda_backend(c.index, cuda);
}

Backends make_backends(const std::string& device, int threads, std::string* chosen) {
  return make_backends(parse_device(device), threads, chosen);
}

Backends make_backends(const DeviceChoice& device, int threads, std::string* chosen) {
  Backends b;
  b.primary = make_backend(device, threads, chosen);
  if (b.primary->name() != "cpu") b.cpu_fallback = make_cpu_backend(threads);
  return b;
}

LoftqResult loftq_with_fallback(Backend& primary, Backend* fallback, const float* w,
                                int out_features, int in_features, const LoftqOptions& opt,
                                const std::string& what,
                                const std::function<void(const std::string&)>& warn) {
  try {
    return loftq(primary, w, out_features, in_features, opt);
  } catch (const DeviceOutOfMemory& e) {
    if (!fallback || fallback == &primary) throw;
    const std::string msg = "out of memory on " + primary.name() + " for " +
                            (what.empty() ? std::string("a layer") : "'" + what + "'") + " (" +
                            std::to_string(out_features) + "x" + std::to_string(in_features) +
                            "): " + e.what() + "; running it on " + fallback->name();
    if (warn)
      warn(msg);
    else
      std::cerr << "loftqd: warning: " << msg << "\n";
    return loftq(*fallback, w, out_features, in_features, opt);
  }
}

}  // namespace loftqd::quant
