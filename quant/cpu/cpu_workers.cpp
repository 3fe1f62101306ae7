#include <cblas.h>

#include <algorithm>
#include <mutex>
#include <thread>

#include "quant/backend.h"

namespace loftqd::quant {

namespace {

std::mutex g_mu;
int g_live = 0;           // CpuWorkers alive
int g_saved_threads = 0;  // the BLAS thread count before the first of them

}  // namespace

CpuWorkers::CpuWorkers(int n) {
  {
    std::lock_guard g(g_mu);
    if (g_live++ == 0) g_saved_threads = openblas_get_num_threads();
  }
  for (int i = 0; i < std::max(n, 1); ++i) backends_.push_back(make_cpu_backend(1));
}

CpuWorkers::~CpuWorkers() {
  backends_.clear();
  std::lock_guard g(g_mu);
  if (--g_live == 0) openblas_set_num_threads(g_saved_threads);
}

std::vector<Backend*> CpuWorkers::backends() const {
  std::vector<Backend*> out;
  for (const auto& b : backends_) out.push_back(b.get());
  return out;
}

int cpu_jobs(int requested, size_t bytes_per_job, size_t available_bytes) {
  const unsigned hc = std::thread::hardware_concurrency();
  const int cores = hc == 0 ? 1 : static_cast<int>(hc);
  int n = requested > 0 ? requested : cores;
  if (bytes_per_job > 0) {
    const size_t fit = available_bytes / bytes_per_job;
    n = static_cast<int>(std::min<size_t>(static_cast<size_t>(n), std::max<size_t>(fit, 1)));
  }
  return std::max(n, 1);
}

}  // namespace loftqd::quant
