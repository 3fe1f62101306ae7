// The daemon's durable state (DESIGN §6): watched repos, jobs and per-tensor progress in SQLite
// (WAL mode), so a restart after kill -9 resumes every job from its last durable step.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

struct sqlite3;

namespace loftqd::storage {

// An SQLite call that failed: names the statement and SQLite's message.
class StateError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class JobState { Queued, Downloading, Quantizing, Publishing, Done, Failed };
const char* job_state_name(JobState s);
std::optional<JobState> parse_job_state(const std::string& s);

struct Job {
  int64_t id = 0;
  std::string repo, revision, upstream_commit, config_hash, target;
  JobState state = JobState::Queued;
  int attempts = 0;
  bool permanent_failure = false;
  std::string last_error;
  std::string published_commit;
  int64_t created_at = 0, updated_at = 0, next_attempt_at = 0;
};

// The running (or last) quantization of a job, for `status`: tensors done of the total, and
// where this run started (tensors resumed from checkpoints are not part of its rate).
struct JobProgress {
  int64_t done = 0, total = 0;
  int64_t run_first_done = 0;  // tensors already done when this run started
  int64_t run_started_at = 0, updated_at = 0;
  // Seconds left at `now` from this run's rate; nullopt before its first tensor.
  std::optional<int64_t> eta_s(int64_t now) const;
};

struct RepoState {
  std::string repo, revision;
  std::string last_seen_commit, last_processed_commit;
  int64_t last_seen_at = 0, last_processed_at = 0, last_success_at = 0;
  int64_t last_check_at = 0;     // the last check, whether it worked or not
  std::string last_check_error;  // empty when the last check worked
};

class StateDb {
 public:
  // Opens (creating) the database at p: WAL journal, synchronous=FULL, foreign keys, a busy
  // timeout; migrates the schema to the current version.
  static std::unique_ptr<StateDb> open(const std::filesystem::path& p);
  ~StateDb();
  StateDb(const StateDb&) = delete;
  StateDb& operator=(const StateDb&) = delete;

  void repo_seen(const std::string& repo, const std::string& revision, const std::string& commit,
                 int64_t now);
  // A check that failed (repo or revision not found, network): recorded with its error, so the
  // repo shows in status and metrics even when it was never seen.
  void repo_check_failed(const std::string& repo, const std::string& revision,
                         const std::string& error, int64_t now);
  void repo_processed(const std::string& repo, const std::string& commit, int64_t now);
  std::optional<RepoState> repo(const std::string& repo) const;
  std::vector<RepoState> repos() const;

  // The job for (repo, upstream commit, config hash): created queued if new. `created` says
  // which; an existing job is returned as it is (a done job never runs twice).
  Job enqueue(const std::string& repo, const std::string& revision, const std::string& commit,
              const std::string& config_hash, const std::string& target, int64_t now,
              bool* created = nullptr);
  std::optional<Job> job(int64_t id) const;
  // The oldest job that is not done or failed and whose next attempt is due (jobs interrupted
  // in downloading/quantizing/publishing come back here after a restart).
  std::optional<Job> next_runnable(int64_t now) const;
  void set_state(int64_t id, JobState s, int64_t now);
  // -> Done; the run that got there counts as an attempt (a job done at once shows 1).
  void set_published(int64_t id, const std::string& published_commit, int64_t now);
  // Counts an attempt. Permanent failures, and transient ones at max_attempts, end in Failed;
  // other transient ones go back to Queued with next_attempt_at = retry_at.
  void record_failure(int64_t id, const std::string& error, bool permanent, int max_attempts,
                      int64_t retry_at, int64_t now);
  // `loftqd retry`: a failed job back to queued and due now, its attempts, error and permanent
  // flag cleared; with `config_hash`, queued under that hash (the entry's settings as configured
  // now, e.g. after an upgrade). False when the job does not exist or has not failed.
  // StateError when another job already has that (repo, commit, config hash).
  bool requeue(int64_t id, int64_t now, const std::optional<std::string>& config_hash = {});
  std::vector<Job> failed_jobs(const std::string& repo) const;  // oldest first
  std::vector<Job> jobs(int limit = 100) const;                 // newest first
  // Jobs queued, downloading, quantizing or publishing (what retention must not take away).
  std::vector<Job> unfinished_jobs() const;
  // Every upstream repo and every target that a job of this database names (whatever its
  // state): the repos in the store that are loftqd's own.
  std::set<std::string> job_upstreams() const;
  std::set<std::string> job_targets() const;
  std::map<JobState, int64_t> count_by_state() const;

  // Per-tensor progress of a job, for reporting (logs, status). Never consulted to skip work:
  // what a restarted job may skip is decided by its checkpoint files alone (convert/resume.cpp,
  // QuantizeOptions::checkpoint_dir), which carry a fingerprint and a checksum.
  void tensor_done(int64_t job_id, const std::string& tensor);
  void set_progress(int64_t job_id, const JobProgress& p);
  std::optional<JobProgress> progress(int64_t job_id) const;
  std::set<std::string> tensors_done(int64_t job_id) const;

 private:
  explicit StateDb(sqlite3* db) : db_(db) {}
  void exec(const char* sql) const;
  sqlite3* db_;
};

}  // namespace loftqd::storage
