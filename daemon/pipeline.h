// One pass of the daemon loop (DESIGN §1): check each watched repo, enqueue a job per new
// (upstream commit, config hash), and run the runnable jobs: download -> quantize -> publish.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "common/env.h"
#include "config/config.h"
#include "convert/convert.h"
#include "daemon/hub_options.h"
#include "daemon/metrics.h"
#include "hub/hub.h"
#include "storage/state.h"

namespace loftqd::daemon {

class EarlyUpload;

struct PipelineOptions {
  std::optional<PublishEndpoint> mirror;
  std::optional<PublishEndpoint> hub;  // used when config.publish.hub_org is set
  // Checks and downloads (upstream_client_options: endpoint, token, HF_HUB_OFFLINE, limits).
  hub::ClientOptions upstream;
  int threads = 0;  // CPU threads for LoftQ (0 = all)
  // Set by SIGTERM/SIGINT: no new job starts, and a running quantization stops at the next
  // tensor boundary (its finished tensors are checkpointed; the job resumes after a restart).
  std::atomic<bool>* stop = nullptr;
  Metrics* metrics = nullptr;  // counters for /metrics; may be null
  // A short human-readable state for sd_notify STATUS= ("quantizing org/name 12/154").
  std::function<void(const std::string&)> status;
  // A sharded snapshot's missing shards download while the first ones are quantized (false:
  // the whole snapshot first, as before; bench_pipeline's baseline).
  bool overlap_download = true;
  // Called whenever work makes progress (a tensor, download bytes, an upload): the watchdog's
  // heartbeat. The shard feed and the early upload call it from their own threads.
  std::function<void()> heartbeat;
  // Called with one line per event (repo, commit, job id, step, duration) and its level: warn
  // for a failed check or a job failure that will be retried, error for a job that failed for
  // good; never a token. Calls come from the early upload's threads too, one at a time.
  std::function<void(spdlog::level::level_enum, const std::string&)> log;
  // Test seam (null in production): called with a point's name at "tensor" (after each
  // tensor's checkpoint is recorded), "publish" (before the upload), "published" (after the
  // commit, before the state db records it) and "early_upload" (before each backbone shard's
  // early upload to a target, on an upload thread, maybe while another point is reached on the
  // job's thread: a throw there fails that upload), so a
  // crash test can stop or kill the job there.
  std::function<void(const std::string&)> failpoint;
};

struct SyncReport {
  int repos_checked = 0;
  int jobs_enqueued = 0;
  int jobs_done = 0;
  int jobs_failed = 0;       // this pass (transient failures that will be retried count too)
  int jobs_interrupted = 0;  // stopped by a signal; resumed by the next run
  int checks_failed = 0;     // repos whose check failed (not found, network, offline)
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
  struct JobContext;  // one job's log tag, clock and work dir

  // One job as named steps: its config, download, quantize, publish, then done or failed.
  void run_job(const storage::Job& job, SyncReport& report);
  // The job's repo config, checked against the config hash it was queued with.
  const config::RepoConfig& job_config(const storage::Job& job) const;
  struct Snapshot;  // the upstream snapshot, complete or with shards still coming

  // The upstream snapshot (partials resumed, verified blobs never fetched twice). A sharded
  // checkpoint's missing shards come on a ShardFeed, in the background, while the first ones
  // are quantized: then everything else is in place and the shards' headers are fetched.
  Snapshot download(const JobContext& ctx, const config::RepoConfig& rc);
  // Waits for the shards still coming: the download's done line and metrics.
  void download_done(const JobContext& ctx, Snapshot& snap);
  // The LoftQ layout in the work dir, made or reused; false when a stop request interrupted it.
  bool quantize_step(const JobContext& ctx, const config::RepoConfig& rc, Snapshot& snap,
                     SyncReport& report);
  // LoftQ of the downloaded snapshot into `out` (checkpointing each tensor beside it); false
  // when a stop request interrupted it. Throws JobFailure-worthy errors as exceptions.
  bool quantize(const JobContext& ctx, const config::RepoConfig& rc, Snapshot& snap,
                SyncReport& report);
  // One commit per configured target, carrying the upstream commit; the last commit id.
  std::string publish(const JobContext& ctx);
  // The upstream as the card names it: repo, revision, commit, and from the Hub its licence
  // and whether it is gated or private.
  convert::SourceInfo source_info(const storage::Job& job) const;
  // publish.private, or with "inherit" whether the upstream is private or gated (asked now).
  bool publish_private(const JobContext& ctx) const;
  // Client options for uploads to `ep`, limits.concurrent_uploads at once (the publish step's
  // and the early upload's).
  hub::ClientOptions upload_options(const PublishEndpoint& ep) const;
  // The early upload of the job's backbone shards to every publish target (null when
  // publish.early_upload is off or there is no target to send to).
  std::unique_ptr<EarlyUpload> start_early_upload(const JobContext& ctx) const;
  std::string publish_to(const JobContext& ctx, const PublishEndpoint& ep, const std::string& where,
                         bool is_private, const std::map<std::string, hub::KnownHash>& hashes);
  void finish(const JobContext& ctx, const std::string& published, SyncReport& report);
  void fail(const JobContext& ctx, const std::string& error, bool permanent, int64_t retry_in_s,
            SyncReport& report);

  // The entry a job was queued for (same repo and config hash); null when there is none, with
  // `repo_watched` saying whether some entry still watches the repo.
  const config::RepoConfig* repo_config(const storage::Job& job, bool* repo_watched) const;
  void log(const std::string& line, spdlog::level::level_enum level = spdlog::level::info) const;
  void set_status(const std::string& s) const;
  bool stopping() const;  // a stop request (PipelineOptions::stop) is in
  void beat() const;
  void failpoint(const std::string& name) const;

  config::Config cfg_;
  storage::StateDb& db_;
  PipelineOptions opt_;
  mutable std::mutex log_mu_;  // opt_.log is called one line at a time
};

// Options shared by `sync`, `run` and `demo`: the upstream client (upstream_client_options, with
// `lookup` as the environment), the Hub publish target when publish.hub_org is set, CPU threads
// and the event log. The mirror target is the caller's (it owns the mirror).
PipelineOptions pipeline_options(const config::Config& cfg, int threads,
                                 const common::EnvLookup& lookup = {});

// Seconds since the epoch (the state database's clock).
int64_t now_s();

}  // namespace loftqd::daemon
