// The daemon's Prometheus metrics (DESIGN §7), served as text at GET /metrics on the mirror's
// listener. Counters live in memory (they restart at zero with the process, as Prometheus
// counters may); job states and per-repo success times are read from the state database at
// scrape time, so they survive restarts.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "storage/state.h"

namespace loftqd::daemon {

class Metrics {
 public:
  // Upper bounds of the seconds-per-tensor histogram buckets (+Inf is implicit).
  static constexpr std::array<double, 12> kTensorBuckets = {0.05, 0.1, 0.25, 0.5, 1,   2.5,
                                                            5,    10,  30,   60,  120, 300};

  void add_downloaded(uint64_t bytes);
  void add_uploaded(uint64_t bytes);
  void tensor_quantized(double seconds);
  void job_finished(bool ok);
  void pass_finished();  // one scheduler pass (checks + runnable jobs) ended

  // The exposition text (version 0.0.4). `db` supplies jobs by state and per-repo last
  // success; it may be null (then those families are empty).
  std::string render(const storage::StateDb* db) const;

 private:
  mutable std::mutex mu_;
  uint64_t downloaded_ = 0, uploaded_ = 0, tensors_ = 0;
  uint64_t jobs_ok_ = 0, jobs_failed_ = 0, passes_ = 0;
  std::array<uint64_t, kTensorBuckets.size()> buckets_{};
  double tensor_seconds_sum_ = 0;
};

// Prometheus label-value escaping (backslash, double quote, newline).
std::string prom_escape(const std::string& s);

}  // namespace loftqd::daemon
