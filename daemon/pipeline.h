// One pass of the daemon loop (DESIGN §1): check each watched repo, enqueue a job per new
// (upstream commit, config hash), and run the runnable jobs: download -> quantize -> publish.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
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
  std::atomic<bool>* stop = nullptr;          // set by SIGTERM: no new job is started
  // Called with one line per event (repo, commit, job id, step, duration); never a token.
  std::function<void(const std::string&)> log;
};

struct SyncReport {
  int repos_checked = 0;
  int jobs_enqueued = 0;
  int jobs_done = 0;
  int jobs_failed = 0;  // this pass (transient failures that will be retried count too)
  std::vector<std::string> errors;
  bool ok() const { return jobs_failed == 0 && errors.empty(); }
};

class Pipeline {
 public:
  Pipeline(config::Config cfg, storage::StateDb& db, PipelineOptions opt);

  // Resolves each watched repo's revision to a commit and enqueues what is new.
  void check_repos(SyncReport& report);
  // Runs every runnable job, one at a time.
  void run_jobs(SyncReport& report);
  SyncReport sync_once();

 private:
  void run_job(const storage::Job& job, SyncReport& report);
  const config::RepoConfig* repo_config(const std::string& repo) const;
  void log(const std::string& line) const;

  config::Config cfg_;
  storage::StateDb& db_;
  PipelineOptions opt_;
};

// Seconds since the epoch (the state database's clock).
int64_t now_s();

}  // namespace loftqd::daemon
