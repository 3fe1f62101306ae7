#include "storage/state.h"

#include <sqlite3.h>

#include <algorithm>

namespace loftqd::storage {

namespace {

// One check for every sqlite3 call (STYLE §4): the statement, file:line and SQLite's message.
#define SQLITE_CHECK(db, expr)                                             \
  do {                                                                     \
    const int rc_ = (expr);                                                \
    if (rc_ != SQLITE_OK && rc_ != SQLITE_DONE && rc_ != SQLITE_ROW)       \
      throw StateError(std::string(#expr) + " failed at " __FILE__ ":" +   \
                       std::to_string(__LINE__) + ": " +                   \
                       ((db) ? sqlite3_errmsg(db) : sqlite3_errstr(rc_))); \
  } while (0)

// 1: the first schema. 2: repos.last_check_at and repos.last_check_error (a failed check is
// recorded too); a version-1 database is migrated in place when it is opened.
constexpr int kSchemaVersion = 2;

// From version 1 (kSchema's CREATE TABLE IF NOT EXISTS leaves an existing table as it is).
const char* kMigrateFrom1 = R"sql(
ALTER TABLE repos ADD COLUMN last_check_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE repos ADD COLUMN last_check_error TEXT NOT NULL DEFAULT '';
)sql";

const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS repos (
  repo TEXT PRIMARY KEY,
  revision TEXT NOT NULL,
  last_seen_commit TEXT NOT NULL DEFAULT '',
  last_seen_at INTEGER NOT NULL DEFAULT 0,
  last_processed_commit TEXT NOT NULL DEFAULT '',
  last_processed_at INTEGER NOT NULL DEFAULT 0,
  last_success_at INTEGER NOT NULL DEFAULT 0,
  last_check_at INTEGER NOT NULL DEFAULT 0,
  last_check_error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  repo TEXT NOT NULL,
  revision TEXT NOT NULL,
  upstream_commit TEXT NOT NULL,
  config_hash TEXT NOT NULL,
  target TEXT NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  permanent_failure INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT '',
  published_commit TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  next_attempt_at INTEGER NOT NULL DEFAULT 0,
  UNIQUE (repo, upstream_commit, config_hash)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS job_progress (
  job_id INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
  done INTEGER NOT NULL,
  total INTEGER NOT NULL,
  run_first_done INTEGER NOT NULL,
  run_started_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tensor_progress (
  job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  tensor TEXT NOT NULL,
  PRIMARY KEY (job_id, tensor)
);
)sql";

// A prepared statement with positional binding, finalized on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    SQLITE_CHECK(db_, sqlite3_prepare_v2(db_, sql, -1, &st_, nullptr));
  }
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(int i, const std::string& s) {
    SQLITE_CHECK(
        db_, sqlite3_bind_text(st_, i, s.c_str(), static_cast<int>(s.size()), SQLITE_TRANSIENT));
    return *this;
  }
  Stmt& bind(int i, int64_t v) {
    SQLITE_CHECK(db_, sqlite3_bind_int64(st_, i, v));
    return *this;
  }
  bool step() {
    const int rc = sqlite3_step(st_);
    SQLITE_CHECK(db_, rc);
    return rc == SQLITE_ROW;
  }
  std::string text(int c) const {
    const auto* p = sqlite3_column_text(st_, c);
    return p ? reinterpret_cast<const char*>(p) : "";
  }
  int64_t integer(int c) const { return sqlite3_column_int64(st_, c); }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
};

constexpr const char* kJobColumns =
    "id, repo, revision, upstream_commit, config_hash, target, state, attempts, permanent_failure, "
    "last_error, published_commit, created_at, updated_at, next_attempt_at";

Job read_job(const Stmt& s) {
  Job j;
  j.id = s.integer(0);
  j.repo = s.text(1);
  j.revision = s.text(2);
  j.upstream_commit = s.text(3);
  j.config_hash = s.text(4);
  j.target = s.text(5);
  j.state = parse_job_state(s.text(6)).value_or(JobState::Queued);
  j.attempts = static_cast<int>(s.integer(7));
  j.permanent_failure = s.integer(8) != 0;
  j.last_error = s.text(9);
  j.published_commit = s.text(10);
  j.created_at = s.integer(11);
  j.updated_at = s.integer(12);
  j.next_attempt_at = s.integer(13);
  return j;
}

RepoState read_repo(const Stmt& s) {
  RepoState r;
  r.repo = s.text(0);
  r.revision = s.text(1);
  r.last_seen_commit = s.text(2);
  r.last_seen_at = s.integer(3);
  r.last_processed_commit = s.text(4);
  r.last_processed_at = s.integer(5);
  r.last_success_at = s.integer(6);
  r.last_check_at = s.integer(7);
  r.last_check_error = s.text(8);
  return r;
}

constexpr const char* kRepoColumns =
    "repo, revision, last_seen_commit, last_seen_at, last_processed_commit, last_processed_at, "
    "last_success_at, last_check_at, last_check_error";

}  // namespace

const char* job_state_name(JobState s) {
  switch (s) {
    case JobState::Queued:
      return "queued";
    case JobState::Downloading:
      return "downloading";
    case JobState::Quantizing:
      return "quantizing";
    case JobState::Publishing:
      return "publishing";
    case JobState::Done:
      return "done";
    case JobState::Failed:
      return "failed";
  }
  return "queued";
}

std::optional<JobState> parse_job_state(const std::string& s) {
  for (JobState j : {JobState::Queued, JobState::Downloading, JobState::Quantizing,
                     JobState::Publishing, JobState::Done, JobState::Failed})
    if (s == job_state_name(j)) return j;
  return std::nullopt;
}

std::unique_ptr<StateDb> StateDb::open(const std::filesystem::path& p) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(
      p.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    const std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    throw StateError(p.string() + ": cannot open the state database: " + msg);
  }
  std::unique_ptr<StateDb> s(new StateDb(db));
  SQLITE_CHECK(db, sqlite3_busy_timeout(db, 10000));
  s->exec("PRAGMA journal_mode=WAL");
  s->exec("PRAGMA synchronous=FULL");
  s->exec("PRAGMA foreign_keys=ON");
  Stmt v(db, "PRAGMA user_version");
  v.step();
  const int64_t version = v.integer(0);
  if (version > kSchemaVersion)
    throw StateError(p.string() + ": schema version " + std::to_string(version) +
                     " is newer than this loftqd (" + std::to_string(kSchemaVersion) + ")");
  s->exec("BEGIN IMMEDIATE");
  try {
    if (version == 1) s->exec(kMigrateFrom1);
    s->exec(kSchema);
    s->exec(("PRAGMA user_version=" + std::to_string(kSchemaVersion)).c_str());
    s->exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
  return s;
}

StateDb::~StateDb() {
  sqlite3_close_v2(db_);
}

void StateDb::exec(const char* sql) const {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    throw StateError(std::string("sqlite: ") + msg);
  }
}

void StateDb::repo_seen(const std::string& repo, const std::string& revision,
                        const std::string& commit, int64_t now) {
  Stmt s(
      db_,
      "INSERT INTO repos (repo, revision, last_seen_commit, last_seen_at, last_check_at) "
      "VALUES (?1, ?2, ?3, ?4, ?4) "
      "ON CONFLICT (repo) DO UPDATE SET revision = ?2, last_seen_commit = ?3, last_seen_at = ?4, "
      "last_check_at = ?4, last_check_error = ''");
  s.bind(1, repo).bind(2, revision).bind(3, commit).bind(4, now).step();
}

void StateDb::repo_check_failed(const std::string& repo, const std::string& revision,
                                const std::string& error, int64_t now) {
  Stmt s(db_,
         "INSERT INTO repos (repo, revision, last_check_at, last_check_error) "
         "VALUES (?1, ?2, ?3, ?4) "
         "ON CONFLICT (repo) DO UPDATE SET last_check_at = ?3, last_check_error = ?4");
  s.bind(1, repo).bind(2, revision).bind(3, now).bind(4, error).step();
}

void StateDb::repo_processed(const std::string& repo, const std::string& commit, int64_t now) {
  Stmt s(db_,
         "UPDATE repos SET last_processed_commit = ?2, last_processed_at = ?3, last_success_at = "
         "?3 WHERE repo = ?1");
  s.bind(1, repo).bind(2, commit).bind(3, now).step();
}

std::optional<RepoState> StateDb::repo(const std::string& repo) const {
  Stmt s(db_, (std::string("SELECT ") + kRepoColumns + " FROM repos WHERE repo = ?1").c_str());
  s.bind(1, repo);
  if (!s.step()) return std::nullopt;
  return read_repo(s);
}

std::vector<RepoState> StateDb::repos() const {
  Stmt s(db_, (std::string("SELECT ") + kRepoColumns + " FROM repos ORDER BY repo").c_str());
  std::vector<RepoState> out;
  while (s.step()) out.push_back(read_repo(s));
  return out;
}

Job StateDb::enqueue(const std::string& repo, const std::string& revision,
                     const std::string& commit, const std::string& config_hash,
                     const std::string& target, int64_t now, bool* created) {
  Stmt ins(db_,
           // Not attempted when the job exists: an insert that hits the UNIQUE constraint still
           // consumes an AUTOINCREMENT id, and job ids would jump at every check.
           "INSERT INTO jobs (repo, revision, upstream_commit, config_hash, target, state, "
           "created_at, updated_at) "
           "SELECT ?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?6 WHERE NOT EXISTS (SELECT 1 FROM jobs "
           "WHERE repo = ?1 AND upstream_commit = ?3 AND config_hash = ?4) ON CONFLICT DO NOTHING");
  ins.bind(1, repo)
      .bind(2, revision)
      .bind(3, commit)
      .bind(4, config_hash)
      .bind(5, target)
      .bind(6, now)
      .step();
  if (created) *created = sqlite3_changes(db_) > 0;
  Stmt s(db_, (std::string("SELECT ") + kJobColumns +
               " FROM jobs WHERE repo = ?1 AND upstream_commit = ?2 AND config_hash = ?3")
                  .c_str());
  s.bind(1, repo).bind(2, commit).bind(3, config_hash);
  if (!s.step()) throw StateError("enqueue: the job for " + repo + "@" + commit + " vanished");
  return read_job(s);
}

std::optional<Job> StateDb::job(int64_t id) const {
  Stmt s(db_, (std::string("SELECT ") + kJobColumns + " FROM jobs WHERE id = ?1").c_str());
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return read_job(s);
}

std::optional<Job> StateDb::next_runnable(int64_t now) const {
  Stmt s(db_, (std::string("SELECT ") + kJobColumns +
               " FROM jobs WHERE state NOT IN ('done', 'failed') AND next_attempt_at <= ?1 ORDER "
               "BY id LIMIT 1")
                  .c_str());
  s.bind(1, now);
  if (!s.step()) return std::nullopt;
  return read_job(s);
}

void StateDb::set_state(int64_t id, JobState st, int64_t now) {
  Stmt s(db_, "UPDATE jobs SET state = ?2, updated_at = ?3 WHERE id = ?1");
  s.bind(1, id).bind(2, std::string(job_state_name(st))).bind(3, now).step();
}

void StateDb::set_published(int64_t id, const std::string& published_commit, int64_t now) {
  Stmt s(db_,
         "UPDATE jobs SET state = 'done', published_commit = ?2, last_error = '', updated_at = ?3, "
         "attempts = attempts + 1 WHERE id = ?1");
  s.bind(1, id).bind(2, published_commit).bind(3, now).step();
}

void StateDb::record_failure(int64_t id, const std::string& error, bool permanent, int max_attempts,
                             int64_t retry_at, int64_t now) {
  Stmt s(
      db_,
      "UPDATE jobs SET attempts = attempts + 1, last_error = ?2, permanent_failure = ?3, "
      "updated_at = ?6, "
      "state = CASE WHEN ?3 = 1 OR attempts + 1 >= ?4 THEN 'failed' ELSE 'queued' END, "
      "next_attempt_at = CASE WHEN ?3 = 1 OR attempts + 1 >= ?4 THEN next_attempt_at ELSE ?5 END "
      "WHERE id = ?1");
  s.bind(1, id)
      .bind(2, error)
      .bind(3, int64_t(permanent ? 1 : 0))
      .bind(4, int64_t(max_attempts))
      .bind(5, retry_at);
  s.bind(6, now).step();
}

bool StateDb::requeue(int64_t id, int64_t now, const std::optional<std::string>& config_hash) {
  Stmt s(db_,
         "UPDATE jobs SET state = 'queued', attempts = 0, permanent_failure = 0, last_error = '', "
         "next_attempt_at = 0, updated_at = ?2, config_hash = COALESCE(?3, config_hash) "
         "WHERE id = ?1 AND state = 'failed'");
  s.bind(1, id).bind(2, now);
  if (config_hash) s.bind(3, *config_hash);  // unbound parameters are NULL
  s.step();
  return sqlite3_changes(db_) > 0;
}

std::vector<Job> StateDb::failed_jobs(const std::string& repo) const {
  Stmt s(db_, (std::string("SELECT ") + kJobColumns +
               " FROM jobs WHERE repo = ?1 AND state = 'failed' ORDER BY id")
                  .c_str());
  s.bind(1, repo);
  std::vector<Job> out;
  while (s.step()) out.push_back(read_job(s));
  return out;
}

std::vector<Job> StateDb::jobs(int limit) const {
  Stmt s(db_,
         (std::string("SELECT ") + kJobColumns + " FROM jobs ORDER BY id DESC LIMIT ?1").c_str());
  s.bind(1, int64_t(limit));
  std::vector<Job> out;
  while (s.step()) out.push_back(read_job(s));
  return out;
}

std::vector<Job> StateDb::unfinished_jobs() const {
  Stmt s(db_, (std::string("SELECT ") + kJobColumns +
               " FROM jobs WHERE state NOT IN ('done', 'failed') ORDER BY id")
                  .c_str());
  std::vector<Job> out;
  while (s.step()) out.push_back(read_job(s));
  return out;
}

std::set<std::string> StateDb::job_upstreams() const {
  Stmt s(db_, "SELECT DISTINCT repo FROM jobs");
  std::set<std::string> out;
  while (s.step()) out.insert(s.text(0));
  return out;
}

std::set<std::string> StateDb::job_targets() const {
  Stmt s(db_, "SELECT DISTINCT target FROM jobs");
  std::set<std::string> out;
  while (s.step()) out.insert(s.text(0));
  return out;
}

std::map<JobState, int64_t> StateDb::count_by_state() const {
  std::map<JobState, int64_t> out;
  for (JobState j : {JobState::Queued, JobState::Downloading, JobState::Quantizing,
                     JobState::Publishing, JobState::Done, JobState::Failed})
    out[j] = 0;
  Stmt s(db_, "SELECT state, COUNT(*) FROM jobs GROUP BY state");
  while (s.step())
    if (auto st = parse_job_state(s.text(0))) out[*st] = s.integer(1);
  return out;
}

void StateDb::tensor_done(int64_t job_id, const std::string& tensor) {
  Stmt s(db_, "INSERT OR IGNORE INTO tensor_progress (job_id, tensor) VALUES (?1, ?2)");
  s.bind(1, job_id).bind(2, tensor).step();
}

std::optional<int64_t> JobProgress::eta_s(int64_t now) const {
  const int64_t run_done = done - run_first_done;
  if (run_done <= 0 || total <= done) return std::nullopt;
  const double rate = static_cast<double>(updated_at - run_started_at) / run_done;  // s/tensor
  const auto left = static_cast<int64_t>(rate * static_cast<double>(total - done) + 0.5);
  return std::max<int64_t>(0, left - (now - updated_at));
}

void StateDb::set_progress(int64_t job_id, const JobProgress& p) {
  Stmt s(db_,
         "INSERT INTO job_progress (job_id, done, total, run_first_done, run_started_at, "
         "updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (job_id) DO UPDATE SET "
         "done = ?2, total = ?3, run_first_done = ?4, run_started_at = ?5, updated_at = ?6");
  s.bind(1, job_id).bind(2, p.done).bind(3, p.total).bind(4, p.run_first_done);
  s.bind(5, p.run_started_at).bind(6, p.updated_at).step();
}

std::optional<JobProgress> StateDb::progress(int64_t job_id) const {
  Stmt s(db_,
         "SELECT done, total, run_first_done, run_started_at, updated_at FROM job_progress "
         "WHERE job_id = ?1");
  s.bind(1, job_id);
  if (!s.step()) return std::nullopt;
  return JobProgress{s.integer(0), s.integer(1), s.integer(2), s.integer(3), s.integer(4)};
}

std::set<std::string> StateDb::tensors_done(int64_t job_id) const {
  Stmt s(db_, "SELECT tensor FROM tensor_progress WHERE job_id = ?1");
  s.bind(1, job_id);
  std::set<std::string> out;
  while (s.step()) out.insert(s.text(0));
  return out;
}

}  // namespace loftqd::storage
