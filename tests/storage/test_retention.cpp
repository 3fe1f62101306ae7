// storage/retention.cpp: snapshots kept by count, refs and pins; unreferenced blobs freed;
// whole repos removed; an interrupted run leaves a consistent store that the next run finishes.
#include "storage/retention.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "support/test_util.h"

namespace fs = std::filesystem;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::UnorderedElementsAre;
namespace st = loftqd::storage;

namespace {

// Every snapshot link resolves to a blob, every ref names a snapshot, and no problem is hidden
// behind a name that looks like a snapshot.
void expect_consistent(const st::Store& store) {
  for (const auto& repo : store.list_repos()) {
    const fs::path snaps = store.repo_dir(repo) / "snapshots";
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(snaps, ec); !ec && it != fs::end(it);
         it.increment(ec)) {
      if (it.depth() == 0 && it->path().filename().string().starts_with(".gc-")) {
        it.disable_recursion_pending();  // invisible leftovers: the next run removes them
        continue;
      }
      if (it->is_symlink()) {
        EXPECT_TRUE(fs::exists(it->path())) << it->path() << " links to a missing blob";
      }
    }
    for (const auto& ref : store.list_refs(repo)) {
      const auto c = store.read_ref(repo, ref);
      ASSERT_TRUE(c) << repo << " ref " << ref;
      EXPECT_TRUE(fs::is_directory(store.snapshot_dir(repo, *c))) << repo << " ref " << ref;
    }
  }
}

std::vector<std::string> snapshots(const st::Store& store, const std::string& repo) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(store.repo_dir(repo) / "snapshots"))
    out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

size_t blob_count(const st::Store& store, const std::string& repo) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(store.repo_dir(repo) / "blobs")) {
    (void)e;
    ++n;
  }
  return n;
}

// A published repo "me/out" with `n` commits on main, one a second apart (oldest first): each
// has its own weights blob (1000 + i bytes) and the config blob they all share.
struct Published {
  std::vector<std::string> commits;
  std::vector<std::string> weights;  // etag per commit
  std::string shared;
};

Published publish_commits(st::Store& store, int n) {
  Published p;
  const std::string cfg = "{\"shared\": true}\n";
  p.shared = st::git_blob_sha1(cfg);
  EXPECT_TRUE(store.put_blob("me/out", cfg, st::Digest::git(p.shared, cfg.size())).ok());
  std::optional<std::string> parent;
  const auto t0 = fs::file_time_type::clock::now() - std::chrono::hours(1);
  for (int i = 0; i < n; ++i) {
    const std::string w(1000 + i, static_cast<char>('a' + i));
    p.weights.push_back(st::sha256_hex(w));
    EXPECT_TRUE(store.put_blob("me/out", w, st::Digest::lfs(p.weights.back(), w.size())).ok());
    auto c = store.commit_snapshot(
        "me/out", "main", {{"config.json", p.shared}, {"model.safetensors", p.weights.back()}},
        parent);
    EXPECT_TRUE(c.ok());
    p.commits.push_back(c.value());
    parent = c.value();
    fs::last_write_time(store.snapshot_dir("me/out", c.value()), t0 + std::chrono::seconds(i));
  }
  return p;
}

}  // namespace

TEST(Retention, KeepsExactlyTheNewestSnapshotsAndFreesTheRest) {
  TempDir tmp;
  st::Store store(tmp.path());
  const Published p = publish_commits(store, 4);
  st::RepoPolicy policy;
  policy.repo = "me/out";
  policy.keep_snapshots = 2;
  const auto r = st::collect_garbage(store, {policy});
  EXPECT_TRUE(r.errors.empty()) << r.errors.front();
  std::vector<std::string> kept = {p.commits[2], p.commits[3]};
  std::sort(kept.begin(), kept.end());
  EXPECT_EQ(snapshots(store, "me/out"), kept);
  EXPECT_THAT(r.snapshots_removed,
              UnorderedElementsAre("me/out@" + p.commits[0], "me/out@" + p.commits[1]));
  // The two removed commits' own weights are freed; the shared config and the kept weights stay.
  EXPECT_EQ(r.blobs_removed, 2u);
  EXPECT_EQ(r.bytes_freed, 1000u + 1001u);
  EXPECT_FALSE(store.has_blob("me/out", p.weights[0]));
  EXPECT_FALSE(store.has_blob("me/out", p.weights[1]));
  EXPECT_TRUE(store.has_blob("me/out", p.weights[2]));
  EXPECT_TRUE(store.has_blob("me/out", p.shared));
  expect_consistent(store);
  // A second run has nothing left to do.
  EXPECT_TRUE(st::collect_garbage(store, {policy}).empty());
}

TEST(Retention, ReposWithoutAPolicyAreNotTouched) {
  TempDir tmp;
  st::Store store(tmp.path());
  publish_commits(store, 3);
  const std::string orphan(64, 'o');
  ASSERT_TRUE(store.put_blob("me/out", orphan, st::Digest::lfs(st::sha256_hex(orphan), 64)).ok());
  st::RepoPolicy other;
  other.repo = "someone/else";
  EXPECT_TRUE(st::collect_garbage(store, {other}).empty());
  EXPECT_EQ(snapshots(store, "me/out").size(), 3u);
  EXPECT_EQ(blob_count(store, "me/out"), 5u);
}

TEST(Retention, ABlobThatAServedSnapshotNeedsSurvives) {
  TempDir tmp;
  st::Store store(tmp.path());
  const Published p = publish_commits(store, 3);
  // A tag on the oldest commit: a ref serves it, so it stays with its blobs, whatever the count.
  ASSERT_TRUE(store.write_ref("me/out", "v1", p.commits[0]).ok());
  st::RepoPolicy policy;
  policy.repo = "me/out";
  policy.keep_snapshots = 1;
  const auto r = st::collect_garbage(store, {policy});
  EXPECT_THAT(r.snapshots_removed, ElementsAre("me/out@" + p.commits[1]));
  EXPECT_TRUE(store.has_blob("me/out", p.weights[0]));
  EXPECT_FALSE(store.has_blob("me/out", p.weights[1]));
  EXPECT_TRUE(store.has_blob("me/out", p.weights[2]));  // main's head
  auto listed = store.list_snapshot("me/out", p.commits[0]);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed.value().size(), 2u);
  expect_consistent(store);
}

TEST(Retention, PinnedCommitsStayAndAJobsBlobsAreNotSwept) {
  TempDir tmp;
  st::Store store(tmp.path());
  // An upstream cache as the daemon's downloads leave it: snapshots linked file by file, no refs.
  std::vector<std::string> commits, etags;
  const auto t0 = fs::file_time_type::clock::now() - std::chrono::hours(1);
  for (int i = 0; i < 3; ++i) {
    const std::string w(500 + i, static_cast<char>('k' + i));
    etags.push_back(st::sha256_hex(w));
    commits.push_back(st::sha1_hex("commit " + std::to_string(i)));
    ASSERT_TRUE(store.put_blob("up/m", w, st::Digest::lfs(etags.back(), w.size())).ok());
    ASSERT_TRUE(store.link_file("up/m", commits.back(), "model.safetensors", etags.back()).ok());
    fs::last_write_time(store.snapshot_dir("up/m", commits.back()), t0 + std::chrono::seconds(i));
  }
  // A job's download in progress: a blob not linked yet and a partial.
  const std::string fresh(300, 'z');
  const std::string fresh_etag = st::sha256_hex(fresh);
  ASSERT_TRUE(store.put_blob("up/m", fresh, st::Digest::lfs(fresh_etag, fresh.size())).ok());
  spit(store.incomplete_path("up/m", st::sha256_hex("partial")), std::string(200, 'p'));

  st::RepoPolicy policy;
  policy.repo = "up/m";
  policy.keep_snapshots = 1;
  policy.pinned = {commits[0]};  // a queued job's commit
  policy.sweep_blobs = false;    // and that job may link what it has downloaded
  auto r = st::collect_garbage(store, {policy});
  std::vector<std::string> kept = {commits[0], commits[2]};
  std::sort(kept.begin(), kept.end());
  EXPECT_EQ(snapshots(store, "up/m"), kept);
  EXPECT_EQ(r.blobs_removed, 0u);
  EXPECT_EQ(blob_count(store, "up/m"), 5u);  // 3 downloaded, the job's blob and its partial

  // The job is done: its pin and the sweep's hold go.
  policy.pinned.clear();
  policy.sweep_blobs = true;
  r = st::collect_garbage(store, {policy});
  EXPECT_EQ(snapshots(store, "up/m"), std::vector<std::string>{commits[2]});
  EXPECT_EQ(r.blobs_removed, 4u);
  EXPECT_EQ(r.bytes_freed, 500u + 501u + 300u + 200u);
  EXPECT_EQ(blob_count(store, "up/m"), 1u);
  EXPECT_TRUE(store.has_blob("up/m", etags[2]));

  // keep 0: the last download goes too (nothing pins it).
  policy.keep_snapshots = 0;
  r = st::collect_garbage(store, {policy});
  EXPECT_TRUE(snapshots(store, "up/m").empty());
  EXPECT_EQ(r.bytes_freed, 502u);
  expect_consistent(store);
}

TEST(Retention, FreshUnlinkedBlobsWaitForTheirCommit) {
  TempDir tmp;
  st::Store store(tmp.path());
  publish_commits(store, 1);
  // An upload through the mirror: the blob is in place, its commit not yet made.
  const std::string up(700, 'u');
  ASSERT_TRUE(store.put_blob("me/out", up, st::Digest::lfs(st::sha256_hex(up), up.size())).ok());
  st::RepoPolicy policy;
  policy.repo = "me/out";
  policy.min_blob_age = std::chrono::minutes(10);
  EXPECT_EQ(st::collect_garbage(store, {policy}).blobs_removed, 0u);
  EXPECT_TRUE(store.has_blob("me/out", st::sha256_hex(up)));
  // Once it is older than the grace, it is garbage.
  fs::last_write_time(store.blob_path("me/out", st::sha256_hex(up)),
                      fs::file_time_type::clock::now() - std::chrono::minutes(11));
  const auto r = st::collect_garbage(store, {policy});
  EXPECT_EQ(r.blobs_removed, 1u);
  EXPECT_EQ(r.bytes_freed, 700u);
}

TEST(Retention, RemovesAWholeRepoOnlyWhenAsked) {
  TempDir tmp;
  st::Store store(tmp.path());
  publish_commits(store, 2);
  st::RepoPolicy keep;
  keep.repo = "me/out";
  keep.keep_snapshots = 5;
  EXPECT_TRUE(st::collect_garbage(store, {keep}).empty());
  EXPECT_TRUE(store.has_repo("me/out"));
  st::RepoPolicy drop;
  drop.repo = "me/out";
  drop.remove_repo = true;
  const auto r = st::collect_garbage(store, {drop});
  EXPECT_THAT(r.repos_removed, ElementsAre("me/out"));
  EXPECT_FALSE(store.has_repo("me/out"));
  EXPECT_GE(r.bytes_freed, 1000u + 1001u + 17u);  // both weights, the config, the metadata
  EXPECT_TRUE(store.list_repos().empty());
  for (const auto& e : fs::directory_iterator(tmp.path()))
    ADD_FAILURE() << "left behind: " << e.path();
}

// A run stopped after each possible step (as a crash there would) leaves a consistent store,
// and the next run ends where an uninterrupted one does.
TEST(Retention, AnInterruptedRunLeavesAConsistentStore) {
  for (const char* stop_at : {"snapshot", "blob"}) {
    for (int nth = 1; nth <= 2; ++nth) {
      SCOPED_TRACE(std::string(stop_at) + " #" + std::to_string(nth));
      TempDir tmp;
      st::Store store(tmp.path());
      const Published p = publish_commits(store, 4);
      st::RepoPolicy policy;
      policy.repo = "me/out";
      policy.keep_snapshots = 1;
      int seen = 0;
      st::GcHooks crash;
      crash.after_step = [&](const std::string& step) {
        if (step == stop_at && ++seen == nth) throw std::runtime_error("crash");
      };
      EXPECT_THROW(st::collect_garbage(store, {policy}, crash), std::runtime_error);
      expect_consistent(store);
      EXPECT_TRUE(store.has_blob("me/out", p.weights[3]));
      // A half-deleted snapshot as a kill inside remove_all would leave it: invisible, then gone.
      fs::create_directories(store.repo_dir("me/out") / "snapshots" / ".gc-x-1" / "sub");
      spit(store.repo_dir("me/out") / "snapshots" / ".gc-x-1" / "sub" / "f", "12345");
      const auto r = st::collect_garbage(store, {policy});
      EXPECT_TRUE(r.errors.empty());
      EXPECT_EQ(snapshots(store, "me/out"), std::vector<std::string>{p.commits[3]});
      EXPECT_EQ(blob_count(store, "me/out"), 2u);  // the head's weights and the shared config
      expect_consistent(store);
    }
  }
}
