#include "daemon/metrics.h"

#include <charconv>
#include <cmath>

#include "storage/store.h"

namespace loftqd::daemon {

namespace {

void family(std::string& out, const char* name, const char* type, const char* help) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

// `labels`: "" or `key="value",` pairs without braces, put before le.
void histogram(std::string& out, const std::string& name, const Histogram& h,
               const std::string& labels = "") {
  for (size_t i = 0; i < h.bounds.size(); ++i)
    out += name + "_bucket{" + labels + (labels.empty() ? "" : ",") + "le=\"" +
           prom_number(h.bounds[i]) + "\"} " + std::to_string(h.buckets[i]) + "\n";
  out += name + "_bucket{" + labels + (labels.empty() ? "" : ",") + "le=\"+Inf\"} " +
         std::to_string(h.count) + "\n";
  const std::string braces = labels.empty() ? "" : "{" + labels + "}";
  out += name + "_sum" + braces + " " + prom_number(h.sum) + "\n";
  out += name + "_count" + braces + " " + std::to_string(h.count) + "\n";
}

template <size_t N>
std::vector<double> bounds(const std::array<double, N>& a) {
  return {a.begin(), a.end()};
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

std::string prom_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest round-trip form
  return std::string(buf, r.ptr);
}

void Histogram::observe(double v) {
  ++count;
  sum += v;
  for (size_t i = 0; i < bounds.size(); ++i)
    if (v <= bounds[i]) ++buckets[i];
}

Metrics::Metrics() : tensor_seconds_(bounds(kTensorBuckets)), job_seconds_(bounds(kJobBuckets)) {
  for (const char* step : {"download", "quantize", "publish"})
    step_seconds_.emplace(step, Histogram(bounds(kJobBuckets)));
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
  tensor_seconds_.observe(seconds);
}

void Metrics::job_finished(bool ok, double seconds) {
  std::lock_guard g(mu_);
  ++(ok ? jobs_ok_ : jobs_failed_);
  job_seconds_.observe(seconds);
  progress_done_ = progress_total_ = 0;
}

void Metrics::step_finished(const std::string& step, double seconds) {
  std::lock_guard g(mu_);
  auto it = step_seconds_.find(step);
  if (it != step_seconds_.end()) it->second.observe(seconds);
}

void Metrics::check_failed(const std::string& repo) {
  std::lock_guard g(mu_);
  ++check_errors_[repo];
}

void Metrics::job_progress(uint64_t done, uint64_t total) {
  std::lock_guard g(mu_);
  progress_done_ = done;
  progress_total_ = total;
}

void Metrics::pass_finished() {
  std::lock_guard g(mu_);
  ++passes_;
}

void Metrics::config_reloaded(bool ok, int64_t now) {
  std::lock_guard g(mu_);
  reload_ok_ = ok;
  if (ok) reload_at_ = now;
}

void Metrics::set_watched(const std::set<std::string>& repos) {
  std::lock_guard g(mu_);
  watched_ = repos;
  for (auto it = check_errors_.begin(); it != check_errors_.end();)
    it = repos.count(it->first) ? std::next(it) : check_errors_.erase(it);
}

void Metrics::set_store(const std::filesystem::path& store) {
  std::lock_guard g(mu_);
  store_ = store;
}

void Metrics::retention_ran(uint64_t bytes_freed, bool ok) {
  std::lock_guard g(mu_);
  retention_freed_ += bytes_freed;
  if (!ok) ++retention_errors_;
}

std::string Metrics::render(const storage::StateDb* db) const {
  std::string out;
  std::lock_guard g(mu_);
  auto watched = [&](const std::string& repo) { return !watched_ || watched_->count(repo); };
  family(out, "loftqd_build_info", "gauge", "The loftqd version (always 1).");
  out += std::string("loftqd_build_info{version=\"") + prom_escape(LOFTQD_VERSION) + "\"} 1\n";
  family(out, "loftqd_downloaded_bytes_total", "counter",
         "Bytes of checkpoint files received from upstream.");
  out += "loftqd_downloaded_bytes_total " + std::to_string(downloaded_) + "\n";
  family(out, "loftqd_uploaded_bytes_total", "counter",
         "Bytes of file content sent to publish targets.");
  out += "loftqd_uploaded_bytes_total " + std::to_string(uploaded_) + "\n";
  family(out, "loftqd_tensors_quantized_total", "counter",
         "Target tensors run through LoftQ by this process.");
  out += "loftqd_tensors_quantized_total " + std::to_string(tensor_seconds_.count) + "\n";
  family(out, "loftqd_tensor_seconds", "histogram", "Seconds of LoftQ per target tensor.");
  histogram(out, "loftqd_tensor_seconds", tensor_seconds_);
  family(out, "loftqd_job_duration_seconds", "histogram",
         "Seconds per job run, from its start to done or failed.");
  histogram(out, "loftqd_job_duration_seconds", job_seconds_);
  family(out, "loftqd_step_duration_seconds", "histogram",
         "Seconds of each job step's own work (download, quantize, publish).");
  for (const auto& [step, h] : step_seconds_)
    histogram(out, "loftqd_step_duration_seconds", h, "step=\"" + step + "\"");
  family(out, "loftqd_job_runs_total", "counter",
         "Job runs ended by this process, by result (a retried job counts each run).");
  out += "loftqd_job_runs_total{result=\"done\"} " + std::to_string(jobs_ok_) + "\n";
  out += "loftqd_job_runs_total{result=\"failed\"} " + std::to_string(jobs_failed_) + "\n";
  family(out, "loftqd_current_job_tensors_done", "gauge",
         "Tensors finished by the running job (0 when idle).");
  out += "loftqd_current_job_tensors_done " + std::to_string(progress_done_) + "\n";
  family(out, "loftqd_current_job_tensors", "gauge",
         "Tensors the running job quantizes in all (0 when idle).");
  out += "loftqd_current_job_tensors " + std::to_string(progress_total_) + "\n";
  family(out, "loftqd_scheduler_passes_total", "counter", "Scheduler passes completed.");
  out += "loftqd_scheduler_passes_total " + std::to_string(passes_) + "\n";
  family(out, "loftqd_check_errors_total", "counter",
         "Failed checks of a watched repo (not found, revision not found, network), by repo.");
  for (const auto& [repo, n] : check_errors_)
    out +=
        "loftqd_check_errors_total{repo=\"" + prom_escape(repo) + "\"} " + std::to_string(n) + "\n";
  if (reload_ok_) {
    family(out, "loftqd_config_last_reload_successful", "gauge",
           "Whether the last configuration reload (SIGHUP) was applied (1) or rejected (0).");
    out += std::string("loftqd_config_last_reload_successful ") + (*reload_ok_ ? "1" : "0") + "\n";
    family(out, "loftqd_config_last_reload_success_timestamp_seconds", "gauge",
           "When a configuration reload was last applied (Unix time; 0: never).");
    out +=
        "loftqd_config_last_reload_success_timestamp_seconds " + std::to_string(reload_at_) + "\n";
  }
  if (!store_.empty())
    if (auto free = storage::free_bytes(store_)) {
      family(out, "loftqd_store_free_bytes", "gauge",
             "Free bytes on the store's file system (before the disk reserve).");
      out += "loftqd_store_free_bytes " + std::to_string(free.value()) + "\n";
    }
  family(out, "loftqd_retention_freed_bytes_total", "counter",
         "Bytes deleted from the store by retention (old snapshots' blobs, orphaned repos).");
  out += "loftqd_retention_freed_bytes_total " + std::to_string(retention_freed_) + "\n";
  family(out, "loftqd_retention_errors_total", "counter",
         "Retention runs that could not remove everything they should have.");
  out += "loftqd_retention_errors_total " + std::to_string(retention_errors_) + "\n";
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
  family(out, "loftqd_last_check_timestamp_seconds", "gauge",
         "When each watched repo was last checked upstream, whether or not it worked (Unix time).");
  for (const auto& r : repos)
    if (r.last_check_at > 0 && watched(r.repo))
      out += "loftqd_last_check_timestamp_seconds{repo=\"" + prom_escape(r.repo) + "\"} " +
             std::to_string(r.last_check_at) + "\n";
  family(out, "loftqd_last_check_ok", "gauge",
         "Whether each watched repo's last check worked (1) or failed (0).");
  for (const auto& r : repos)
    if (r.last_check_at > 0 && watched(r.repo))
      out += "loftqd_last_check_ok{repo=\"" + prom_escape(r.repo) + "\"} " +
             (r.last_check_error.empty() ? "1" : "0") + "\n";
  family(out, "loftqd_last_success_timestamp_seconds", "gauge",
         "When each watched repo last had a job published (Unix time).");
  for (const auto& r : repos)
    if (r.last_success_at > 0 && watched(r.repo))
      out += "loftqd_last_success_timestamp_seconds{repo=\"" + prom_escape(r.repo) + "\"} " +
             std::to_string(r.last_success_at) + "\n";
  return out;
}

}  // namespace loftqd::daemon
