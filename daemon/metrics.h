// The daemon's Prometheus metrics (DESIGN §7), served as text at GET /metrics (and HEAD) on the
// mirror's listener. Counters and histograms live in memory (they restart at zero with the
// process, as Prometheus counters may); job states and per-repo check/success times are read
// from the state database at scrape time, so they survive restarts. Per-repo series exist only
// for the repos of the current configuration (set_watched): a repo removed from it disappears.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "storage/state.h"

namespace loftqd::daemon {

// One histogram with fixed upper bounds (+Inf implicit).
struct Histogram {
  std::vector<double> bounds;
  std::vector<uint64_t> buckets;  // cumulative counts per bound
  uint64_t count = 0;
  double sum = 0;
  explicit Histogram(std::vector<double> b) : bounds(std::move(b)), buckets(bounds.size()) {}
  void observe(double v);
};

class Metrics {
 public:
  // Upper bounds of the seconds-per-tensor histogram buckets.
  static constexpr std::array<double, 12> kTensorBuckets = {0.05, 0.1, 0.25, 0.5, 1,   2.5,
                                                            5,    10,  30,   60,  120, 300};
  // Upper bounds for whole jobs and their steps (seconds: 1 s to 1 day).
  static constexpr std::array<double, 10> kJobBuckets = {1,    10,   60,   300,   900,
                                                         1800, 3600, 7200, 21600, 86400};

  Metrics();
  void add_downloaded(uint64_t bytes);
  void add_uploaded(uint64_t bytes);
  void tensor_quantized(double seconds);
  void job_finished(bool ok, double seconds);
  void step_finished(const std::string& step, double seconds);  // download, quantize, publish
  void check_failed(const std::string& repo);
  // The running job's tensors (done, total); cleared with (0, 0).
  void job_progress(uint64_t done, uint64_t total);
  void pass_finished();  // one scheduler pass (checks + runnable jobs) ended
  void config_reloaded(bool ok, int64_t now);
  // The repos of the current configuration; per-repo series of other repos are dropped.
  void set_watched(const std::set<std::string>& repos);
  void set_store(const std::filesystem::path& store);  // for the free-space gauge
  // One retention run (daemon/retention.h): the bytes it freed, whether it ran without errors.
  void retention_ran(uint64_t bytes_freed, bool ok);

  // The exposition text (version 0.0.4). `db` supplies jobs by state and per-repo check and
  // success times; it may be null (then those families are empty).
  std::string render(const storage::StateDb* db) const;

 private:
  mutable std::mutex mu_;
  uint64_t downloaded_ = 0, uploaded_ = 0;
  uint64_t retention_freed_ = 0, retention_errors_ = 0;
  uint64_t jobs_ok_ = 0, jobs_failed_ = 0, passes_ = 0;
  Histogram tensor_seconds_, job_seconds_;
  std::map<std::string, Histogram> step_seconds_;
  std::map<std::string, uint64_t> check_errors_;
  uint64_t progress_done_ = 0, progress_total_ = 0;
  std::optional<bool> reload_ok_;
  int64_t reload_at_ = 0;
  std::optional<std::set<std::string>> watched_;
  std::filesystem::path store_;
};

// Prometheus label-value escaping (backslash, double quote, newline).
std::string prom_escape(const std::string& s);
// A sample value or `le` bound in its shortest exact decimal form ("0.05", "1", "300").
std::string prom_number(double v);

}  // namespace loftqd::daemon
