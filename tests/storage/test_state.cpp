#include "storage/state.h"

#include <gtest/gtest.h>
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
  db->enqueue("org/m", "main", "c1", "h2", "me/m-loftq", 300, &created);  // config changed
  EXPECT_TRUE(created);
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
  EXPECT_EQ(db->count_by_state()[JobState::Done], 1);
  EXPECT_EQ(db->count_by_state()[JobState::Failed], 2);
  EXPECT_EQ(db->jobs().front().id, l.id);  // newest first
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
