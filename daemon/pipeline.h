// One pass of the daemon loop (DESIGN §1): check each watched repo, enqueue a job per new
// (upstream commit, config hash), and run the runnable jobs: download -> quantize -> publish.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "daemon/metrics.h"
#include "storage/state.h"

namespace loftqd::daemon {

// Where results go: the built-in mirror (endpoint + write token) and/or the Hub under an org.
struct PublishEndpoint {
  std::string endpoint;
  std::optional<std::string> token;
};

struct PipelineOptions {
  std::optional<PublishEndpoint> mirror;
  std::optional<PublishEndpoint> hub;         // used when config.publish.hub_org is set
  std::optional<std::string> upstream_token;  // for downloads (HF_TOKEN, $HF_HOME/token, config)
  int threads = 0;                            // CPU threads for LoftQ (0 = all)
  // Set by SIGTERM/SIGINT: no new job starts, and a running quantization stops at the next
  // tensor boundary (its finished tensors are checkpointed; the job resumes after a restart).
  std::atomic<bool>* stop = nullptr;
  Metrics* metrics = nullptr;  // counters for /metrics; may be null
  // A short human-readable state for sd_notify STATUS= ("quantizing org/name 12/154").
  std::function<void(const std::string&)> status;
  // Called whenever work makes progress (a tensor, download bytes): the watchdog's heartbeat.
  std::function<void()> heartbeat;
  // Called with one line per event (repo, commit, job id, step, duration); never a token.
  std::function<void(const std::string&)> log;
};

struct SyncReport {
  int repos_checked = 0;
  int jobs_enqueued = 0;
  int jobs_done = 0;
  int jobs_failed = 0;       // this pass (transient failures that will be retried count too)
  int jobs_interrupted = 0;  // stopped by a signal; resumed by the next run
  std::vector<std::string> errors;
  bool ok() const { return jobs_failed == 0 && errors.empty(); }
};

class Pipeline {
 public:
  Pipeline(config::Config cfg, storage::StateDb& db, PipelineOptions opt);

  // Resolves each watched repo's revision to a commit and enqueues what is new.
  void check_repos(SyncReport& report);
  // The same for one watched repo; false (with the error in the report) when the check failed.
  bool check_repo(const config::RepoConfig& r, SyncReport& report);
  const config::Config& config() const { return cfg_; }
  // Runs every runnable job, one at a time.
  void run_jobs(SyncReport& report);
  SyncReport sync_once();

 private:
  void run_job(const storage::Job& job, SyncReport& report);
  // LoftQ of the downloaded snapshot into `out` (checkpointing each tensor beside it); false
  // when a stop request interrupted it. Throws JobFailure-worthy errors as exceptions.
  bool quantize(const storage::Job& job, const config::RepoConfig& rc,
                const std::filesystem::path& model_dir, const std::filesystem::path& out,
                const std::string& tag, SyncReport& report);
  const config::RepoConfig* repo_config(const std::string& repo) const;
  void log(const std::string& line) const;
  void set_status(const std::string& s) const;
  void beat() const;

  config::Config cfg_;
  storage::StateDb& db_;
  PipelineOptions opt_;
};

// Options shared by `sync` and `run`: upstream token (HF_TOKEN, $HF_HOME/token, hub.token_file),
// the Hub publish target when publish.hub_org is set, CPU threads and the event log. The mirror
// target is the caller's (it owns the mirror).
PipelineOptions pipeline_options(const config::Config& cfg, int threads);

// Seconds since the epoch (the state database's clock).
int64_t now_s();

}  // namespace loftqd::daemon
