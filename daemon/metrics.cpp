#include "daemon/metrics.h"

#include <cstdio>

namespace loftqd::daemon {

namespace {

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void family(std::string& out, const char* name, const char* type, const char* help) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

}  // namespace

std::string prom_escape(const std::string& s) {
  std::string r;
  for (char c : s) {
    if (c == '\\')
      r += "\\\\";
    else if (c == '"')
      r += "\\\"";
    else if (c == '\n')
      r += "\\n";
    else
      r += c;
  }
  return r;
}

void Metrics::add_downloaded(uint64_t bytes) {
  std::lock_guard g(mu_);
  downloaded_ += bytes;
}

void Metrics::add_uploaded(uint64_t bytes) {
  std::lock_guard g(mu_);
  uploaded_ += bytes;
}

void Metrics::tensor_quantized(double seconds) {
  std::lock_guard g(mu_);
  ++tensors_;
  tensor_seconds_sum_ += seconds;
  for (size_t i = 0; i < kTensorBuckets.size(); ++i)
    if (seconds <= kTensorBuckets[i]) ++buckets_[i];
}

void Metrics::job_finished(bool ok) {
  std::lock_guard g(mu_);
  ++(ok ? jobs_ok_ : jobs_failed_);
}

void Metrics::pass_finished() {
  std::lock_guard g(mu_);
  ++passes_;
}

std::string Metrics::render(const storage::StateDb* db) const {
  std::string out;
  {
    std::lock_guard g(mu_);
    family(out, "loftqd_downloaded_bytes_total", "counter",
           "Bytes of checkpoint files received from upstream.");
    out += "loftqd_downloaded_bytes_total " + std::to_string(downloaded_) + "\n";
    family(out, "loftqd_uploaded_bytes_total", "counter",
           "Bytes of file content sent to publish targets.");
    out += "loftqd_uploaded_bytes_total " + std::to_string(uploaded_) + "\n";
    family(out, "loftqd_tensors_quantized_total", "counter",
           "Target tensors run through LoftQ by this process.");
    out += "loftqd_tensors_quantized_total " + std::to_string(tensors_) + "\n";
    family(out, "loftqd_tensor_seconds", "histogram", "Seconds of LoftQ per target tensor.");
    for (size_t i = 0; i < kTensorBuckets.size(); ++i)
      out += "loftqd_tensor_seconds_bucket{le=\"" + num(kTensorBuckets[i]) + "\"} " +
             std::to_string(buckets_[i]) + "\n";
    out += "loftqd_tensor_seconds_bucket{le=\"+Inf\"} " + std::to_string(tensors_) + "\n";
    out += "loftqd_tensor_seconds_sum " + num(tensor_seconds_sum_) + "\n";
    out += "loftqd_tensor_seconds_count " + std::to_string(tensors_) + "\n";
    family(out, "loftqd_job_runs_total", "counter",
           "Job runs ended by this process, by result (a retried job counts each run).");
    out += "loftqd_job_runs_total{result=\"done\"} " + std::to_string(jobs_ok_) + "\n";
    out += "loftqd_job_runs_total{result=\"failed\"} " + std::to_string(jobs_failed_) + "\n";
    family(out, "loftqd_scheduler_passes_total", "counter", "Scheduler passes completed.");
    out += "loftqd_scheduler_passes_total " + std::to_string(passes_) + "\n";
  }
  family(out, "loftqd_jobs", "gauge", "Jobs in the state database, by state.");
  std::map<storage::JobState, int64_t> counts;
  std::vector<storage::RepoState> repos;
  if (db) {
    counts = db->count_by_state();
    repos = db->repos();
  }
  using S = storage::JobState;
  for (S s : {S::Queued, S::Downloading, S::Quantizing, S::Publishing, S::Done, S::Failed}) {
    auto it = counts.find(s);
    out += std::string("loftqd_jobs{state=\"") + storage::job_state_name(s) + "\"} " +
           std::to_string(it == counts.end() ? 0 : it->second) + "\n";
  }
  family(out, "loftqd_last_success_timestamp_seconds", "gauge",
         "When each watched repo last had a job published (Unix time).");
  for (const auto& r : repos)
    if (r.last_success_at > 0)
      out += "loftqd_last_success_timestamp_seconds{repo=\"" + prom_escape(r.repo) + "\"} " +
             std::to_string(r.last_success_at) + "\n";
  return out;
}

}  // namespace loftqd::daemon
