#include "storage/state.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support/test_util.h"

using namespace loftqd::storage;
using loftqd::testing::TempDir;

TEST(StateDb, EnqueueIsIdempotentPerCommitAndConfig) {
  TempDir tmp;
  auto db = StateDb::open(tmp / "state.db");
  bool created = false;
  const Job a = db->enqueue("org/m", "main", "c1", "h1", "me/m-loftq", 100, &created);
  EXPECT_TRUE(created);
  EXPECT_EQ(a.state, JobState::Queued);
  const Job again = db->enqueue("org/m", "main", "c1", "h1", "me/m-loftq", 200, &created);
  EXPECT_FALSE(created);
  EXPECT_EQ(again.id, a.id);
  EXPECT_EQ(again.created_at, 100);
  for (int check = 0; check < 5; ++check)  // repeated checks of an unchanged repo
    db->enqueue("org/m", "main", "c1", "h1", "me/m-loftq", 250, &created);
  const Job next = db->enqueue("org/m", "main", "c1", "h2", "me/m-loftq", 300, &created);
  EXPECT_TRUE(created);          // config changed
  EXPECT_EQ(next.id, a.id + 1);  // checks consume no job ids
  db->enqueue("org/m", "main", "c2", "h1", "me/m-loftq", 300, &created);  // new upstream commit
  EXPECT_TRUE(created);
  EXPECT_EQ(db->count_by_state()[JobState::Queued], 3);
}

TEST(StateDb, JobLifecycleAndRetryPolicy) {
  TempDir tmp;
  auto db = StateDb::open(tmp / "state.db");
  const Job j = db->enqueue("org/m", "main", "c1", "h", "me/x", 10);
  db->set_state(j.id, JobState::Downloading, 11);
  db->record_failure(j.id, "HTTP 503", false, 3, 100, 12);
  auto after = db->job(j.id);
  EXPECT_EQ(after->state, JobState::Queued);
  EXPECT_EQ(after->attempts, 1);
  EXPECT_EQ(after->last_error, "HTTP 503");
  EXPECT_FALSE(db->next_runnable(50));  // backing off until 100
  EXPECT_EQ(db->next_runnable(100)->id, j.id);
  db->record_failure(j.id, "HTTP 503", false, 3, 200, 101);
  db->record_failure(j.id, "HTTP 503", false, 3, 300, 201);  // third attempt: gives up
  EXPECT_EQ(db->job(j.id)->state, JobState::Failed);
  EXPECT_FALSE(db->next_runnable(1000));

  const Job k = db->enqueue("org/gated", "main", "c1", "h", "me/y", 10);
  db->record_failure(k.id, "GatedRepo: no access", true, 5, 20, 11);
  EXPECT_EQ(db->job(k.id)->state, JobState::Failed);
  EXPECT_TRUE(db->job(k.id)->permanent_failure);

  const Job l = db->enqueue("org/ok", "main", "c1", "h", "me/z", 10);
  db->set_state(l.id, JobState::Publishing, 12);
  db->set_published(l.id, "abcdef", 13);
  EXPECT_EQ(db->job(l.id)->state, JobState::Done);
  EXPECT_EQ(db->job(l.id)->published_commit, "abcdef");
  EXPECT_EQ(db->job(l.id)->attempts, 1);  // the run that published it
  // A job done after a failed run shows both attempts.
  db->record_failure(k.id + 10, "", false, 5, 0, 0);  // no such job: nothing changes
  const Job m = db->enqueue("org/retry", "main", "c1", "h", "me/w", 10);
  db->record_failure(m.id, "HTTP 503", false, 5, 20, 11);
  db->set_published(m.id, "fedcba", 21);
  EXPECT_EQ(db->job(m.id)->attempts, 2);
  EXPECT_EQ(db->count_by_state()[JobState::Done], 2);
  EXPECT_EQ(db->count_by_state()[JobState::Failed], 2);
  EXPECT_EQ(db->jobs().front().id, m.id);  // newest first
}

TEST(StateDb, ReposAndTensorProgressSurviveReopen) {
  TempDir tmp;
  int64_t id;
  {
    auto db = StateDb::open(tmp / "state.db");
    db->repo_seen("org/m", "main", "c1", 5);
    db->repo_processed("org/m", "c1", 9);
    id = db->enqueue("org/m", "main", "c2", "h", "me/x", 10).id;
    db->set_state(id, JobState::Quantizing, 11);
    db->tensor_done(id, "model.layers.0.self_attn.q_proj.weight");
    db->tensor_done(id, "model.layers.0.self_attn.q_proj.weight");
    db->tensor_done(id, "model.layers.0.self_attn.k_proj.weight");
  }
  auto db = StateDb::open(tmp / "state.db");
  auto r = db->repo("org/m");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->last_seen_commit, "c1");
  EXPECT_EQ(r->last_processed_commit, "c1");
  EXPECT_EQ(r->last_success_at, 9);
  EXPECT_EQ(db->repos().size(), 1u);
  EXPECT_EQ(db->tensors_done(id).size(), 2u);
  // An interrupted job (quantizing when the process died) is runnable again.
  EXPECT_EQ(db->next_runnable(12)->id, id);
  EXPECT_EQ(db->next_runnable(12)->state, JobState::Quantizing);
}

TEST(StateDb, CommittedWritesSurviveKill9) {
  TempDir tmp;
  const auto path = tmp / "state.db";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto db = StateDb::open(path);
    const Job j = db->enqueue("org/m", "main", "c1", "h", "me/x", 1);
    db->tensor_done(j.id, "t0");
    ::kill(::getpid(), SIGKILL);  // no destructor, no checkpoint: only the WAL holds the rows
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status));
  auto db = StateDb::open(path);
  ASSERT_EQ(db->jobs().size(), 1u);
  EXPECT_EQ(db->tensors_done(db->jobs()[0].id).count("t0"), 1u);
}

TEST(StateDb, ErrorsNameTheFile) {
  TempDir tmp;
  try {
    StateDb::open(tmp / "no" / "such" / "dir" / "state.db");
    FAIL();
  } catch (const StateError& e) {
    EXPECT_NE(std::string(e.what()).find("state.db"), std::string::npos) << e.what();
  }
  EXPECT_EQ(parse_job_state("publishing"), JobState::Publishing);
  EXPECT_EQ(parse_job_state("nope"), std::nullopt);
}

TEST(StateDb, RequeueBringsBackOnlyFailedJobs) {
  TempDir tmp;
  auto db = StateDb::open(tmp / "s.db");
  const auto a = db->enqueue("o/r", "main", "c1", "h1", "o/r-loftq", 10);
  const auto b = db->enqueue("o/r", "main", "c2", "h1", "o/r-loftq", 11);
  const auto other = db->enqueue("o/x", "main", "c1", "h1", "o/x-loftq", 12);
  db->record_failure(a.id, "RepoNotFound", true, 5, 0, 20);
  db->record_failure(other.id, "boom", true, 5, 0, 21);
  ASSERT_EQ(db->job(a.id)->state, JobState::Failed);
  EXPECT_FALSE(db->requeue(b.id, 30));  // queued, not failed
  EXPECT_FALSE(db->requeue(999, 30));   // no such job
  ASSERT_EQ(db->failed_jobs("o/r").size(), 1u);
  EXPECT_EQ(db->failed_jobs("o/r")[0].id, a.id);
  EXPECT_TRUE(db->requeue(a.id, 40));
  const auto j = *db->job(a.id);
  EXPECT_EQ(j.state, JobState::Queued);
  EXPECT_EQ(j.attempts, 0);
  EXPECT_FALSE(j.permanent_failure);
  EXPECT_EQ(j.last_error, "");
  EXPECT_EQ(j.config_hash, "h1");
  EXPECT_EQ(db->next_runnable(41)->id, a.id);  // the oldest runnable, due at once
  EXPECT_TRUE(db->failed_jobs("o/r").empty());
  // Under the current configuration's hash; one that another job has already is refused.
  db->record_failure(a.id, "again", true, 5, 0, 50);
  EXPECT_TRUE(db->requeue(a.id, 60, std::string("h2")));
  EXPECT_EQ(db->job(a.id)->config_hash, "h2");
  db->record_failure(b.id, "x", true, 5, 0, 61);
  const auto c = db->enqueue("o/r", "main", "c2", "h2", "o/r-loftq", 62);
  EXPECT_NE(c.id, b.id);
  EXPECT_THROW(db->requeue(b.id, 63, std::string("h2")), StateError);
  EXPECT_EQ(db->job(b.id)->state, JobState::Failed);
}

// A database written by the previous release (schema version 1, the repos table without the
// check columns) is migrated in place: everything in it is kept and the new columns work.
TEST(StateDb, AVersionOneDatabaseIsMigratedInPlace) {
  TempDir tmp;
  const auto p = tmp / "v1.db";
  {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(p.c_str(), &raw), SQLITE_OK);
    const char* v1 = R"sql(
CREATE TABLE repos (repo TEXT PRIMARY KEY, revision TEXT NOT NULL,
  last_seen_commit TEXT NOT NULL DEFAULT '', last_seen_at INTEGER NOT NULL DEFAULT 0,
  last_processed_commit TEXT NOT NULL DEFAULT '', last_processed_at INTEGER NOT NULL DEFAULT 0,
  last_success_at INTEGER NOT NULL DEFAULT 0);
CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, repo TEXT NOT NULL,
  revision TEXT NOT NULL, upstream_commit TEXT NOT NULL, config_hash TEXT NOT NULL,
  target TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  permanent_failure INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
  published_commit TEXT NOT NULL DEFAULT '', created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL, next_attempt_at INTEGER NOT NULL DEFAULT 0,
  UNIQUE (repo, upstream_commit, config_hash));
CREATE INDEX jobs_by_state ON jobs (state, next_attempt_at);
CREATE TABLE tensor_progress (job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  tensor TEXT NOT NULL, PRIMARY KEY (job_id, tensor));
INSERT INTO repos VALUES ('o/r', 'main', 'c1', 5, 'c1', 6, 7);
INSERT INTO jobs (repo, revision, upstream_commit, config_hash, target, state, created_at,
  updated_at) VALUES ('o/r', 'main', 'c1', 'h', 'o/r-loftq', 'done', 1, 2);
PRAGMA user_version = 1;
)sql";
    ASSERT_EQ(sqlite3_exec(raw, v1, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(raw);
    sqlite3_close(raw);
  }
  for (int open = 0; open < 2; ++open) {  // the second open finds version 2 and changes nothing
    auto db = StateDb::open(p);
    const auto r = db->repo("o/r");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->last_seen_commit, "c1");
    EXPECT_EQ(r->last_success_at, 7);
    ASSERT_EQ(db->jobs().size(), 1u);
    EXPECT_EQ(db->jobs()[0].target, "o/r-loftq");
    if (open == 0) {
      EXPECT_EQ(r->last_check_at, 0);
      db->repo_check_failed("o/r", "main", "RevisionNotFound: main", 9);
      db->repo_check_failed("o/gone", "v1", "RepoNotFound: o/gone", 10);
    } else {
      EXPECT_EQ(r->last_check_at, 9);
      EXPECT_EQ(r->last_check_error, "RevisionNotFound: main");
      EXPECT_EQ(r->last_seen_commit, "c1");  // a failed check keeps what was seen before
      EXPECT_EQ(db->repo("o/gone")->last_check_error, "RepoNotFound: o/gone");
      db->repo_seen("o/r", "main", "c2", 11);  // a working check clears the error
      EXPECT_EQ(db->repo("o/r")->last_check_error, "");
      EXPECT_EQ(db->repo("o/r")->last_check_at, 11);
    }
  }
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(p.c_str(), &raw), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(raw, "PRAGMA user_version", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 2);
  sqlite3_finalize(st);
  sqlite3_close(raw);
}

TEST(StateDb, JobProgressAndItsEta) {
  TempDir tmp;
  auto db = StateDb::open(tmp / "state.db");
  const Job j = db->enqueue("org/m", "main", "c1", "h", "me/x", 10);
  EXPECT_FALSE(db->progress(j.id));
  // Resumed with 4 of 24 done at t=100; 4 more by t=140: 10 s a tensor, 16 left.
  loftqd::storage::JobProgress p{8, 24, 4, 100, 140};
  db->set_progress(j.id, p);
  const auto got = db->progress(j.id);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->done, 8);
  EXPECT_EQ(got->total, 24);
  EXPECT_EQ(got->eta_s(140), 160);
  EXPECT_EQ(got->eta_s(150), 150);  // read 10 s after the last update
  EXPECT_EQ(got->eta_s(10000), 0);
  EXPECT_FALSE((loftqd::storage::JobProgress{4, 24, 4, 100, 100}).eta_s(100));  // no rate yet
  p.done = 9;
  db->set_progress(j.id, p);
  EXPECT_EQ(db->progress(j.id)->done, 9);
}
