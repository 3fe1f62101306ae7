// daemon/pipeline: Pipeline driven in-process against a local upstream (the built-in mirror
// holding up/tiny), publishing into the daemon's own store mirror.
#include "daemon/pipeline.h"
#include "daemon/retention.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "hub/hub.h"
#include "integration/upstream.h"
#include "mirror/mirror.h"
#include "model/safetensors.h"
#include "storage/store.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using loftqd::daemon::Pipeline;
using loftqd::daemon::PipelineOptions;
using loftqd::daemon::SyncReport;
using loftqd::storage::JobState;
using loftqd::testing::count_of;
using loftqd::testing::slurp;
using loftqd::testing::TempDir;
using loftqd::testing::Upstream;
using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

namespace {

constexpr const char* kWriteToken = "pipeline-test-write-token";

class PipelineTest : public ::testing::Test {
 protected:
  explicit PipelineTest(loftqd::model::SynthOptions so = Upstream::small(), uint64_t rate = 0)
      : up_(tmp_.path(), rate, so) {
    loftqd::mirror::MirrorOptions mo;
    mo.store = tmp_ / "store";
    mo.port = 0;
    mo.write_token = kWriteToken;
    fs::create_directories(mo.store);
    mirror_ = std::make_unique<loftqd::mirror::Mirror>(mo);
    mirror_->start();
    db_ = loftqd::storage::StateDb::open(config().state_db);
  }
  ~PipelineTest() override { mirror_->stop(); }

  loftqd::config::Config config(int rank = 4) const {
    return config_with({{"rank", rank}, {"iters", 1}, {"avg_bits", 3}});
  }
  // up/tiny -> me/tiny-loftq with these LoftQ settings.
  loftqd::config::Config config_with(const json& loftq) const {
    return loftqd::config::parse_config(
        json{{"hub", {{"endpoint", up_.url()}}},
             {"store", (tmp_ / "store").string()},
             {"device", "cpu"},
             {"repos", {{{"repo", "up/tiny"}, {"publish_as", "me/tiny-loftq"}, {"loftq", loftq}}}},
             {"publish", {{"mirror", true}}}});
  }

  // The options `sync` builds, without the process environment; the log goes to log_.
  PipelineOptions options(const loftqd::config::Config& cfg) {
    PipelineOptions po = loftqd::daemon::pipeline_options(cfg, 1, loftqd::daemon::no_env);
    po.upstream.max_retries = 0;
    po.mirror = loftqd::daemon::PublishEndpoint{mirror_->url(), std::string(kWriteToken)};
    po.log = [this](spdlog::level::level_enum level, const std::string& line) {
      log_ += line + "\n";
      if (level >= spdlog::level::warn) problems_ += line + "\n";
    };
    return po;
  }

  std::vector<loftqd::storage::Job> jobs() const { return db_->jobs(); }
  loftqd::storage::Job newest_job() const {
    auto all = jobs();
    return *std::max_element(all.begin(), all.end(),
                             [](const auto& a, const auto& b) { return a.id < b.id; });
  }
  fs::path work_dir(int64_t job) const {
    return tmp_ / "store" / ".loftqd-work" / ("job-" + std::to_string(job));
  }

  TempDir tmp_;
  Upstream up_;
  std::unique_ptr<loftqd::mirror::Mirror> mirror_;
  std::unique_ptr<loftqd::storage::StateDb> db_;
  std::string log_;
  std::string problems_;  // the lines logged at warn or above
};

// An upstream Mixtral: its routers are left out (kept in full precision), which the job says.
class PipelineMixtralTest : public PipelineTest {
 protected:
  PipelineMixtralTest() : PipelineTest(mixtral()) {}
  static loftqd::model::SynthOptions mixtral() {
    auto so = Upstream::small();
    so.arch = "mixtral";
    so.experts = 2;
    return so;
  }
};

// An upstream sharded in three, served at 600 kB/s a file: each shard takes about half a second.
class PipelineShardedTest : public PipelineTest {
 protected:
  PipelineShardedTest() : PipelineTest(sharded(), 600'000) {}
  static loftqd::model::SynthOptions sharded() {
    auto so = Upstream::small();
    so.shards = 3;
    return so;
  }
  // The first publish of the target (the default config).
  void publish_first() {
    const auto cfg = config();
    Pipeline first(cfg, *db_, options(cfg));
    ASSERT_TRUE(first.sync_once().ok()) << log_;
  }
  // The same entry with uniform quantization: a new job for the same target, with new
  // backbone bytes in every shard (a refresh).
  loftqd::config::Config uniform_config() const {
    return config_with({{"rank", 4}, {"iters", 1}, {"avg_bits", 3}, {"quant", "uniform"}});
  }
  // The upstream snapshot's shard files, in order.
  std::vector<std::string> shards() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(up_snapshot()))
      if (e.path().filename().string().starts_with("model-")) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }
  fs::path up_snapshot() const {
    return up_.store() / "models--up--tiny" / "snapshots" / up_.commit();
  }
  fs::path our_snapshot() const {
    return tmp_ / "store" / "models--up--tiny" / "snapshots" / up_.commit();
  }
  // Runs the job with `po`, whose callbacks set `stop`: it must be interrupted in `state`,
  // logging `line`, with no failed attempt counted; then a run without those callbacks
  // publishes it.
  void expect_interrupted_then_published(PipelineOptions po, std::atomic<bool>& stop,
                                         JobState state, const std::string& line) {
    const auto cfg = config();
    po.stop = &stop;
    Pipeline p(cfg, *db_, po);
    const SyncReport r = p.sync_once();
    EXPECT_EQ(r.jobs_interrupted, 1) << log_;
    EXPECT_EQ(r.jobs_failed, 0);
    const auto job = jobs().at(0);
    EXPECT_EQ(job.state, state);
    EXPECT_EQ(job.attempts, 0);
    EXPECT_THAT(log_, HasSubstr(line));
    EXPECT_FALSE(fs::exists(work_dir(job.id) / "out"));
    stop = false;
    po.status = nullptr;
    po.heartbeat = nullptr;
    Pipeline again(cfg, *db_, po);
    const SyncReport r2 = again.sync_once();
    ASSERT_TRUE(r2.ok()) << ::testing::PrintToString(r2.errors) << log_;
    EXPECT_EQ(r2.jobs_done, 1);
    EXPECT_EQ(db_->job(job.id)->state, JobState::Done);
  }
};

}  // namespace

// The shards come in the background: everything else and the shards' headers first, then the
// first tensors are quantized while the later shards are still downloading; the job publishes
// every target.
TEST_F(PipelineShardedTest, LaterShardsDownloadWhileTheFirstIsQuantized) {
  const auto cfg = config();
  auto po = options(cfg);
  po.upstream.parallel = 1;  // one shard at a time (the default fetches small shards 4 at once)
  const std::vector<std::string> names = shards();
  ASSERT_EQ(names.size(), 3u);
  int tensors = 0;
  bool last_shard_there_at_first_tensor = true;
  po.failpoint = [&](const std::string& name) {
    if (name != "tensor" || tensors++ > 0) return;
    last_shard_there_at_first_tensor = fs::exists(our_snapshot() / names[2]);
  };
  Pipeline p(cfg, *db_, po);
  const SyncReport r = p.sync_once();
  ASSERT_TRUE(r.ok()) << ::testing::PrintToString(r.errors) << log_;
  EXPECT_EQ(r.jobs_done, 1);
  EXPECT_FALSE(last_shard_there_at_first_tensor) << log_;
  EXPECT_THAT(log_, HasSubstr("step=download shards_in_background=3 bytes="));
  EXPECT_THAT(log_, HasSubstr("step=quantize shard=" + names[1] + " waited_s="));
  EXPECT_THAT(log_, HasSubstr(" shards_in_background=3 seconds="));  // the done line
  // LoftQ began before the download was done.
  EXPECT_LT(log_.find(" step=quantize\n"), log_.find("step=download done")) << log_;
  EXPECT_EQ(problems_, "");
  const auto job = jobs().at(0);
  const fs::path published =
      tmp_ / "store" / "models--me--tiny-loftq" / "snapshots" / job.published_commit;
  for (const auto& n : names) EXPECT_EQ(slurp(our_snapshot() / n), slurp(up_snapshot() / n)) << n;
  const json rec = json::parse(slurp(published / "loftq.json"));
  EXPECT_EQ(rec.at("layers").size(), 14u);  // 2 layers x 7 projections, from all three shards
  for (const auto& n : names) EXPECT_TRUE(fs::exists(published / n)) << n;
}

// A stop request while LoftQ waits for a shard interrupts the job as between two tensors (the
// download in flight is cancelled); the next run resumes and publishes.
TEST_F(PipelineShardedTest, AStopWhileWaitingForAShardInterruptsTheJob) {
  auto po = options(config());
  po.upstream.parallel = 1;
  std::atomic<bool> stop{false};
  const std::vector<std::string> names = shards();
  po.status = [&](const std::string& s) {
    if (s.find("waiting for " + names[1]) != std::string::npos) stop = true;
  };
  expect_interrupted_then_published(po, stop, JobState::Quantizing, "step=interrupted");
}

// A stop request during the download cancels the transfers in flight: the job is interrupted
// (not failed: no attempt counted) and the next run resumes the partials and publishes.
TEST_F(PipelineShardedTest, AStopDuringTheDownloadInterruptsTheJob) {
  auto po = options(config());
  po.overlap_download = false;  // the whole snapshot first
  po.upstream.parallel = 1;
  std::atomic<bool> stop{false}, downloading{false};
  po.status = [&](const std::string& s) {
    if (s.starts_with("downloading ")) downloading = true;
  };
  po.heartbeat = [&] {  // download progress
    if (downloading) stop = true;
  };
  expect_interrupted_then_published(po, stop, JobState::Downloading,
                                    "step=interrupted during=download");
}

// The quantize step's disk check counts the shards still to come: the layout and checkpoints
// need twice the whole snapshot, and the shards need their own room first. Their download
// starts only once the check has passed.
TEST_F(PipelineShardedTest, TheDiskCheckCountsTheShardsStillToCome) {
  // Everything but the shards is in the store already, so the download itself writes no file
  // before the shards (and is not held to the reserve), and the quantize step must refuse.
  loftqd::hub::ClientOptions o;
  o.endpoint = up_.url();
  o.disk_reserve = 0;
  loftqd::hub::SnapshotRequest sr;
  sr.repo = "up/tiny";
  sr.revision = up_.commit();
  sr.store = tmp_ / "store";
  sr.ignore = {"*.safetensors"};
  ASSERT_TRUE(loftqd::hub::Client(o).snapshot_download(sr).ok());
  uint64_t rest = 0, shards_bytes = 0;
  for (const auto& e : fs::directory_iterator(our_snapshot())) rest += fs::file_size(e.path());
  for (const auto& n : shards()) shards_bytes += fs::file_size(up_snapshot() / n);
  const uint64_t reserve = uint64_t{1} << 60;
  auto j = json{{"hub", {{"endpoint", up_.url()}}},
                {"store", (tmp_ / "store").string()},
                {"device", "cpu"},
                {"repos", {{{"repo", "up/tiny"}, {"publish_as", "me/tiny-loftq"}}}},
                {"limits", {{"disk_reserve", reserve}}}};
  const auto cfg = loftqd::config::parse_config(j);
  Pipeline p(cfg, *db_, options(cfg));
  const SyncReport r = p.sync_once();
  ASSERT_EQ(r.jobs_failed, 1) << log_;
  EXPECT_THAT(log_, HasSubstr("shards_in_background=3 bytes=" + std::to_string(shards_bytes)));
  const auto job = jobs().at(0);
  EXPECT_THAT(
      job.last_error,
      HasSubstr("need " + std::to_string(2 * (rest + shards_bytes) + shards_bytes) + " bytes"));
  EXPECT_FALSE(fs::exists(our_snapshot() / shards()[0]));
}

// A shard that fails its download while LoftQ runs fails the job with that shard's error;
// nothing is published and the retry starts over from what was kept.
TEST_F(PipelineShardedTest, AShardThatFailsInTheBackgroundFailsTheJob) {
  const std::vector<std::string> names = shards();
  ASSERT_EQ(names.size(), 3u);
  // The upstream's last shard blob changes after its header: it no longer hashes to its oid.
  const fs::path blob = fs::canonical(up_snapshot() / names[2]);
  fs::permissions(blob, fs::perms::owner_write, fs::perm_options::add);
  std::string bytes = slurp(blob);
  bytes[bytes.size() - 3] ^= 0x5a;
  loftqd::testing::spit(blob, bytes);
  const auto cfg = config();
  Pipeline p(cfg, *db_, options(cfg));
  const SyncReport r = p.sync_once();
  ASSERT_EQ(r.jobs_failed, 1) << log_;
  const auto job = jobs().at(0);
  EXPECT_EQ(job.state, JobState::Queued);  // a hash mismatch is worth a retry
  EXPECT_THAT(job.last_error, HasSubstr(names[2]));
  EXPECT_THAT(job.last_error, HasSubstr("sha256"));
  EXPECT_FALSE(fs::exists(work_dir(job.id) / "out"));
  EXPECT_FALSE(fs::exists(tmp_ / "store" / "models--me--tiny-loftq"));
  EXPECT_FALSE(fs::exists(our_snapshot() / names[2]));
  EXPECT_TRUE(fs::exists(our_snapshot() / names[1]));
}

// The number after `key=` on the first line of `log` holding `marker`; -1 when there is none.
long long field_of(const std::string& log, const std::string& marker, const std::string& key) {
  const size_t at = log.find(marker);
  if (at == std::string::npos) return -1;
  const size_t k = log.find(" " + key + "=", at), eol = log.find('\n', at);
  if (k == std::string::npos || k > eol) return -1;
  return std::atoll(log.c_str() + k + key.size() + 2);
}

// A refresh of a target published before: each backbone shard goes up while LoftQ runs on the
// next ones, and the adapter when LoftQ is done (publish.early_upload); the commit sends none of
// their bytes, and the published layout reads back whole (every file checked against its LFS
// oid by the download).
TEST_F(PipelineShardedTest, ARefreshUploadsEachShardWhileLoftqRunsOnTheNext) {
  ASSERT_NO_FATAL_FAILURE(publish_first());
  // A first publish has no repo to send to: nothing is made before the commit.
  EXPECT_THAT(log_, HasSubstr("step=publish early=off target=mirror/me/tiny-loftq reason=\"no "
                              "such repo or branch yet\""));
  // Its shards and adapter were hashed while LoftQ ran all the same: the publish reads them once.
  EXPECT_EQ(field_of(log_, "step=publish target=mirror/me/tiny-loftq", "hashes_reused"), 4);
  const auto cfg4 = uniform_config();
  log_.clear();
  loftqd::daemon::Metrics m;
  auto po = options(cfg4);
  po.metrics = &m;
  // LoftQ's last tensor waits (up to 20 s) for the first shard's upload to be done: on a slow
  // machine too, it went up while LoftQ still had work.
  const std::vector<std::string> names = shards();
  std::atomic<bool> first_up{false};
  bool first_up_before_last_tensor = false;
  po.log = [&, inner = po.log](spdlog::level::level_enum level, const std::string& line) {
    if (line.find("step=publish early target=mirror/me/tiny-loftq file=" + names[0]) !=
        std::string::npos)
      first_up = true;
    inner(level, line);
  };
  int tensors = 0;
  po.failpoint = [&](const std::string& point) {
    if (point != "tensor" || ++tensors != 13) return;  // the 13th of 14: one is still to come
    for (int i = 0; i < 2000 && !first_up; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    first_up_before_last_tensor = first_up;
  };
  Pipeline p(cfg4, *db_, po);
  const SyncReport r = p.sync_once();
  ASSERT_TRUE(r.ok()) << ::testing::PrintToString(r.errors) << log_;
  ASSERT_EQ(r.jobs_done, 1);
  EXPECT_EQ(tensors, 14);
  EXPECT_TRUE(first_up_before_last_tensor) << log_;
  EXPECT_EQ(problems_, "");
  long long early = 0;
  for (const auto& n : names) {
    const std::string line = "step=publish early target=mirror/me/tiny-loftq file=" + n;
    const long long sent = field_of(log_, line, "bytes_uploaded");
    EXPECT_GT(sent, 0) << n << "\n" << log_;
    early += sent;
  }
  // The first shard was up before LoftQ was done with the last.
  EXPECT_LT(log_.find("early target=mirror/me/tiny-loftq file=" + names[0]),
            log_.find("step=quantize done"))
      << log_;
  const long long adapter =
      field_of(log_, "early target=mirror/me/tiny-loftq file=loftq_init/adapter_model.safetensors",
               "bytes_uploaded");
  EXPECT_GT(adapter, 0);
  EXPECT_EQ(field_of(log_, "step=publish early done", "files"), 4);  // the shards, the adapter
  EXPECT_EQ(field_of(log_, "step=publish early done", "bytes_uploaded"), early + adapter);
  EXPECT_EQ(field_of(log_, "step=publish target=mirror/me/tiny-loftq", "hashes_reused"), 4);
  const long long commit_bytes =
      field_of(log_, "step=publish target=mirror/me/tiny-loftq", "bytes_uploaded");
  EXPECT_GT(commit_bytes, 0);  // the card, loftq.json, the configs
  EXPECT_LT(commit_bytes, adapter);
  // The metrics count what went up early and with the commit.
  EXPECT_THAT(m.render(db_.get()),
              HasSubstr("loftqd_uploaded_bytes_total " +
                        std::to_string(early + adapter + commit_bytes) + "\n"));

  loftqd::hub::ClientOptions o;
  o.endpoint = mirror_->url();
  loftqd::hub::SnapshotRequest sr;
  sr.repo = "me/tiny-loftq";
  sr.revision = newest_job().published_commit;
  sr.local_dir = tmp_ / "back";
  auto got = loftqd::hub::Client(o).snapshot_download(sr);
  ASSERT_TRUE(got.ok()) << got.error().message;
  uint64_t shard_bytes = 0;
  for (const auto& n : names) shard_bytes += fs::file_size(tmp_ / "back" / n);
  EXPECT_EQ(static_cast<uint64_t>(early), shard_bytes);
  EXPECT_EQ(static_cast<uint64_t>(adapter),
            fs::file_size(tmp_ / "back" / "loftq_init" / "adapter_model.safetensors"));
  EXPECT_NO_THROW(loftqd::model::Checkpoint::open(tmp_ / "back"));
  const json rec = json::parse(slurp(tmp_ / "back" / "loftq.json"));
  ASSERT_EQ(rec.at("layers").size(), 14u);
  for (const auto& l : rec.at("layers"))
    EXPECT_EQ(l.at("quant").get<std::string>().rfind("uniform", 0), 0u) << l.dump();
}

// An early upload that fails is not the job's failure: a warning, no more early files to that
// target, and the publish sends what is missing.
TEST_F(PipelineShardedTest, AFailedEarlyUploadLeavesTheShardsToThePublish) {
  ASSERT_NO_FATAL_FAILURE(publish_first());
  const auto cfg4 = uniform_config();
  log_.clear();
  auto po = options(cfg4);
  std::atomic<int> early_calls{0};
  po.failpoint = [&](const std::string& point) {
    if (point == "early_upload" && early_calls++ == 0) throw std::runtime_error("injected");
  };
  Pipeline p(cfg4, *db_, po);
  const SyncReport r = p.sync_once();
  ASSERT_TRUE(r.ok()) << ::testing::PrintToString(r.errors) << log_;
  EXPECT_EQ(early_calls.load(), 1);
  EXPECT_THAT(problems_, HasSubstr("step=publish early target=mirror/me/tiny-loftq file=" +
                                   shards()[0] + " error=\"injected\""));
  EXPECT_EQ(field_of(log_, "step=publish early done", "bytes_uploaded"), 0);
  // Hashed all the same; the shards went up with the commit.
  EXPECT_EQ(field_of(log_, "step=publish target=mirror/me/tiny-loftq", "hashes_reused"), 4);
  uint64_t shard_bytes = 0;
  const fs::path published =
      tmp_ / "store" / "models--me--tiny-loftq" / "snapshots" / newest_job().published_commit;
  for (const auto& n : shards()) shard_bytes += fs::file_size(published / n);
  EXPECT_GT(field_of(log_, "step=publish target=mirror/me/tiny-loftq", "bytes_uploaded"),
            static_cast<long long>(shard_bytes));
}

// The weights a job leaves out are logged at warn with the job, and counted in its done line.
TEST_F(PipelineMixtralTest, LeftOutWeightsAreWarnedAboutWithTheJob) {
  const auto cfg = config();
  Pipeline p(cfg, *db_, options(cfg));
  const SyncReport r = p.sync_once();
  ASSERT_TRUE(r.ok()) << ::testing::PrintToString(r.errors) << log_;
  EXPECT_EQ(r.jobs_done, 1);
  EXPECT_THAT(problems_, HasSubstr("step=quantize warning="));
  EXPECT_THAT(problems_, HasSubstr("'gate'"));
  EXPECT_THAT(problems_, HasSubstr("llm_int8_skip_modules"));
  EXPECT_THAT(log_, HasSubstr(" left_out=2 "));  // one router per layer, 2 layers
}

TEST_F(PipelineTest, CheckRepoEnqueuesOncePerCommitAndConfigHash) {
  const auto cfg = config();
  Pipeline p(cfg, *db_, options(cfg));
  SyncReport r;
  ASSERT_TRUE(p.check_repo(cfg.repos[0], r)) << ::testing::PrintToString(r.errors);
  ASSERT_TRUE(p.check_repo(cfg.repos[0], r));
  EXPECT_EQ(r.repos_checked, 2);
  EXPECT_EQ(r.jobs_enqueued, 1);
  ASSERT_EQ(jobs().size(), 1u);
  EXPECT_EQ(jobs()[0].upstream_commit, up_.commit());
  EXPECT_EQ(jobs()[0].state, JobState::Queued);
  EXPECT_EQ(jobs()[0].target, "me/tiny-loftq");
  EXPECT_EQ(db_->repo("up/tiny")->last_seen_commit, up_.commit());

  // Another LoftQ setting: a new config hash, a new job for the same commit.
  const auto cfg8 = config(8);
  Pipeline p8(cfg8, *db_, options(cfg8));
  SyncReport r8;
  ASSERT_TRUE(p8.check_repo(cfg8.repos[0], r8));
  ASSERT_TRUE(p8.check_repo(cfg8.repos[0], r8));
  EXPECT_EQ(r8.jobs_enqueued, 1);
  ASSERT_EQ(jobs().size(), 2u);
  EXPECT_NE(jobs()[0].config_hash, jobs()[1].config_hash);
  EXPECT_EQ(jobs()[0].upstream_commit, jobs()[1].upstream_commit);

  // A new upstream commit: one more.
  const std::string c2 = up_.publish("second revision");
  SyncReport r2;
  ASSERT_TRUE(p8.check_repo(cfg8.repos[0], r2));
  EXPECT_EQ(r2.jobs_enqueued, 1);
  EXPECT_EQ(jobs().front().upstream_commit, c2);
  EXPECT_EQ(count_of(log_, "step=enqueue"), 3u);
}

TEST_F(PipelineTest, CheckOfAMissingRepoReportsItsError) {
  auto cfg = config();
  cfg.repos[0].repo = "up/missing";
  Pipeline p(cfg, *db_, options(cfg));
  SyncReport r;
  EXPECT_FALSE(p.check_repo(cfg.repos[0], r));
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_THAT(r.errors[0], HasSubstr("up/missing: "));
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(jobs().empty());
  EXPECT_EQ(r.checks_failed, 1);
  // Logged at warn, and recorded: the repo shows in status and metrics although never seen.
  EXPECT_THAT(problems_, HasSubstr("repo=up/missing revision=main step=check error="));
  const auto st = db_->repo("up/missing");
  ASSERT_TRUE(st);
  EXPECT_GT(st->last_check_at, 0);
  EXPECT_FALSE(st->last_check_error.empty());
  EXPECT_EQ(st->last_seen_commit, "");
  loftqd::daemon::Metrics m;
  auto po = options(cfg);
  po.metrics = &m;
  Pipeline pm(cfg, *db_, po);
  SyncReport r2;
  pm.check_repo(cfg.repos[0], r2);
  pm.check_repo(cfg.repos[0], r2);
  EXPECT_THAT(m.render(db_.get()), HasSubstr("loftqd_check_errors_total{repo=\"up/missing\"} 2\n"));
}

TEST_F(PipelineTest, AJobRunsThroughItsStepsToDoneAndFreesItsWorkDir) {
  const auto cfg = config();
  auto po = options(cfg);
  std::vector<std::string> points;
  po.failpoint = [&](const std::string& name) {
    if (points.empty() || points.back() != name) points.push_back(name);
  };
  Pipeline p(cfg, *db_, po);
  const SyncReport r = p.sync_once();
  ASSERT_TRUE(r.ok()) << ::testing::PrintToString(r.errors) << log_;
  EXPECT_EQ(r.jobs_done, 1);
  EXPECT_THAT(points, ElementsAre("tensor", "publish", "published"));
  const auto job = jobs().at(0);
  EXPECT_EQ(job.state, JobState::Done);
  EXPECT_FALSE(job.published_commit.empty());
  EXPECT_EQ(db_->repo("up/tiny")->last_processed_commit, up_.commit());
  EXPECT_FALSE(fs::exists(work_dir(job.id)));
  for (const char* step :
       {"step=download", "step=quantize", "step=publish target=mirror/", "step=done"})
    EXPECT_THAT(log_, HasSubstr(step));
  // The result is in the store, served by the mirror.
  EXPECT_TRUE(fs::exists(tmp_ / "store" / "models--me--tiny-loftq" / "snapshots" /
                         job.published_commit / "loftq.json"));
  EXPECT_EQ(problems_, "");  // nothing at warn or above for a clean run
  EXPECT_THAT(log_, HasSubstr(" left_out=0 "));
  // A second pass finds nothing new.
  const SyncReport again = p.sync_once();
  EXPECT_EQ(again.jobs_enqueued + again.jobs_done + again.jobs_failed, 0);
}

// Two entries for one upstream repo (different bits, own publish_as): each is its own target
// with its own job, and both publish (each job finds its own entry by its config hash).
TEST_F(PipelineTest, TwoVariantsOfOneUpstreamRepoBothPublish) {
  const auto cfg =
      loftqd::config::parse_config(json{{"hub", {{"endpoint", up_.url()}}},
                                        {"store", (tmp_ / "store").string()},
                                        {"device", "cpu"},
                                        {"repos",
                                         {{{"repo", "up/tiny"},
                                           {"publish_as", "me/tiny-4bit"},
                                           {"loftq", {{"rank", 4}, {"iters", 1}, {"bits", 4}}}},
                                          {{"repo", "up/tiny"},
                                           {"publish_as", "me/tiny-2bit"},
                                           {"loftq", {{"rank", 4}, {"iters", 1}, {"bits", 2}}}}}},
                                        {"publish", {{"mirror", true}}}});
  Pipeline p(cfg, *db_, options(cfg));
  const SyncReport r = p.sync_once();
  ASSERT_TRUE(r.ok()) << ::testing::PrintToString(r.errors) << log_;
  EXPECT_EQ(r.jobs_enqueued, 2);
  EXPECT_EQ(r.jobs_done, 2);
  std::set<std::string> targets;
  for (const auto& j : jobs()) {
    EXPECT_EQ(j.state, JobState::Done) << j.target << ": " << j.last_error;
    targets.insert(j.target);
    const fs::path dir = tmp_ / "store" / ("models--me--" + j.target.substr(3));
    EXPECT_TRUE(fs::exists(dir / "snapshots" / j.published_commit / "loftq.json")) << dir;
  }
  EXPECT_EQ(targets, (std::set<std::string>{"me/tiny-4bit", "me/tiny-2bit"}));
}

// publish.private "inherit": the derivative of a private (or gated) upstream is private on the
// mirror (anonymous reads refused); false publishes it public all the same.
TEST_F(PipelineTest, ThePrivateUpstreamsDerivativeIsPrivateUnlessConfiguredOtherwise) {
  loftqd::storage::Store upstream_store(up_.store());
  auto meta = upstream_store.read_meta("up/tiny").value_or(loftqd::storage::RepoMeta{});
  meta.is_private = true;
  ASSERT_TRUE(upstream_store.write_meta("up/tiny", meta));
  const loftqd::storage::Store ours(tmp_ / "store");
  for (const auto& [setting, want_private] :
       std::vector<std::pair<json, bool>>{{"inherit", true}, {false, false}}) {
    auto j =
        json{{"hub", {{"endpoint", up_.url()}}},
             {"store", (tmp_ / "store").string()},
             {"device", "cpu"},
             {"repos",
              {{{"repo", "up/tiny"},
                {"publish_as", want_private ? "me/secret-loftq" : "me/open-loftq"},
                {"loftq", {{"rank", 4}, {"iters", 1}, {"avg_bits", 3}, {"quant", "uniform"}}}}}},
             {"publish", {{"mirror", true}, {"private", setting}}}};
    const auto cfg = loftqd::config::parse_config(j);
    auto po = options(cfg);
    po.upstream.token = std::string(Upstream::kToken);  // may read the private upstream
    Pipeline p(cfg, *db_, po);
    const SyncReport r = p.sync_once();
    ASSERT_TRUE(r.ok()) << ::testing::PrintToString(r.errors) << log_;
    const std::string target = cfg.repos[0].publish_as;
    const auto published = ours.read_meta(target);
    ASSERT_TRUE(published) << target;
    EXPECT_EQ(published->is_private, want_private) << target;
    EXPECT_THAT(log_, HasSubstr("target=mirror/" + target + std::string(" private=") +
                                (want_private ? "yes" : "no")));
  }
  // An anonymous reader of the daemon's mirror gets the public derivative only.
  loftqd::hub::ClientOptions anon;
  anon.endpoint = mirror_->url();
  EXPECT_FALSE(loftqd::hub::Client(anon).repo_info("me/secret-loftq", "main"));
  EXPECT_TRUE(loftqd::hub::Client(anon).repo_info("me/open-loftq", "main"));
}

TEST_F(PipelineTest, AFailedDownloadIsRecordedWithItsErrorAndRetriedLater) {
  const auto cfg = config();
  Pipeline check(cfg, *db_, options(cfg));
  SyncReport enq;
  ASSERT_TRUE(check.check_repo(cfg.repos[0], enq));
  // The upstream is gone when the job runs: a transient failure.
  auto po = options(cfg);
  po.upstream.endpoint = "http://127.0.0.1:1";
  Pipeline p(cfg, *db_, po);
  SyncReport r;
  const int64_t before = loftqd::daemon::now_s();
  p.run_jobs(r);  // returns: the failed job is not due again yet
  EXPECT_EQ(r.jobs_failed, 1);
  EXPECT_EQ(r.jobs_done, 0);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_THAT(r.errors[0], HasSubstr("up/tiny: "));
  const auto job = jobs().at(0);
  EXPECT_EQ(job.state, JobState::Queued);
  EXPECT_EQ(job.attempts, 1);
  EXPECT_FALSE(job.permanent_failure);
  EXPECT_FALSE(job.last_error.empty());
  EXPECT_GE(job.next_attempt_at, before + 30);  // the first retry waits 30 s
  EXPECT_LE(job.next_attempt_at, loftqd::daemon::now_s() + 30);
  EXPECT_THAT(log_, HasSubstr("step=failed permanent=no error="));
  EXPECT_FALSE(db_->next_runnable(loftqd::daemon::now_s()).has_value());
  EXPECT_TRUE(db_->next_runnable(job.next_attempt_at).has_value());
}

TEST_F(PipelineTest, APermanentFailureEndsTheJobAndFreesItsWorkDir) {
  const auto cfg = config();
  Pipeline check(cfg, *db_, options(cfg));
  SyncReport enq;
  ASSERT_TRUE(check.check_repo(cfg.repos[0], enq));
  const auto queued = jobs().at(0);
  fs::create_directories(work_dir(queued.id) / "tensors");
  loftqd::testing::spit(work_dir(queued.id) / "tensors" / "partial", "x");
  // The settings changed after the job was queued: it can never run as queued.
  const auto cfg8 = config(8);
  Pipeline p(cfg8, *db_, options(cfg8));
  SyncReport r;
  p.run_jobs(r);
  EXPECT_EQ(r.jobs_failed, 1);
  const auto job = *db_->job(queued.id);
  EXPECT_EQ(job.state, JobState::Failed);
  EXPECT_TRUE(job.permanent_failure);
  EXPECT_THAT(job.last_error, HasSubstr("changed since the job was queued"));
  EXPECT_FALSE(fs::exists(work_dir(queued.id)));
  EXPECT_THAT(log_, HasSubstr("step=failed permanent=yes"));
  EXPECT_THAT(problems_, HasSubstr("step=failed permanent=yes"));  // logged at error
}

TEST_F(PipelineTest, AStopRequestInterruptsQuantizationAndTheNextRunResumes) {
  const auto cfg = config();
  std::atomic<bool> stop{false};
  auto po = options(cfg);
  po.stop = &stop;
  int tensors = 0;
  po.failpoint = [&](const std::string& name) {
    if (name == "tensor" && ++tensors == 3) stop = true;  // SIGTERM after the third tensor
  };
  Pipeline p(cfg, *db_, po);
  const SyncReport r = p.sync_once();
  EXPECT_EQ(r.jobs_interrupted, 1);
  EXPECT_EQ(r.jobs_done, 0);
  EXPECT_EQ(r.jobs_failed, 0);
  const auto job = jobs().at(0);
  EXPECT_EQ(job.state, JobState::Quantizing);
  const size_t done = db_->tensors_done(job.id).size();
  EXPECT_GE(done, 3u);
  EXPECT_LT(done, 14u);  // 2 layers x 7 llama projections
  EXPECT_THAT(log_, HasSubstr("step=interrupted"));
  // No new job starts while stopping.
  SyncReport none;
  p.run_jobs(none);
  EXPECT_EQ(none.jobs_done + none.jobs_failed + none.jobs_interrupted, 0);

  stop = false;
  po.failpoint = nullptr;
  Pipeline again(cfg, *db_, po);
  const SyncReport r2 = again.sync_once();
  ASSERT_TRUE(r2.ok()) << ::testing::PrintToString(r2.errors);
  EXPECT_EQ(r2.jobs_done, 1);
  EXPECT_THAT(log_, HasSubstr("resume_from=" + std::to_string(done)));
  EXPECT_EQ(db_->job(job.id)->state, JobState::Done);
}

TEST_F(PipelineTest, OfflineChecksNothingAndMakesNoRequest) {
  const auto cfg = config();
  auto po = options(cfg);
  po.upstream.offline = true;
  const size_t before = up_.requests().size();
  Pipeline p(cfg, *db_, po);
  const SyncReport r = p.sync_once();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.repos_checked, 0);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0], "up/tiny: not checked: HF_HUB_OFFLINE is set");
  EXPECT_THAT(log_, HasSubstr(loftqd::daemon::kOfflineNotice));
  EXPECT_EQ(up_.requests().size(), before);
  EXPECT_TRUE(jobs().empty());
}

// ---- retention (daemon/retention.cpp) ----

namespace {

std::vector<std::string> snapshot_names(const fs::path& repo_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(repo_dir / "snapshots", ec))
    out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

json with_retention(json j, json retention) {
  j["retention"] = std::move(retention);
  return j;
}

}  // namespace

// Two upstream commits processed: the store keeps the configured snapshots of the download and
// of the published target, and frees the old download's own blob.
TEST_F(PipelineTest, RetentionKeepsTheConfiguredSnapshotsAndFreesTheRest) {
  const std::string c1 = up_.publish("first note");
  auto base =
      json{{"hub", {{"endpoint", up_.url()}}},
           {"store", (tmp_ / "store").string()},
           {"device", "cpu"},
           {"repos",
            {{{"repo", "up/tiny"},
              {"publish_as", "me/tiny-loftq"},
              {"loftq", {{"rank", 4}, {"iters", 1}, {"avg_bits", 3}, {"quant", "uniform"}}}}}},
           {"publish", {{"mirror", true}}}};
  const auto cfg = loftqd::config::parse_config(
      with_retention(base, {{"keep_upstream_snapshots", 1}, {"keep_published_snapshots", 1}}));
  Pipeline p(cfg, *db_, options(cfg));
  ASSERT_TRUE(p.sync_once().ok()) << log_;
  const std::string c2 = up_.publish("second note");
  ASSERT_TRUE(p.sync_once().ok()) << log_;
  const fs::path upstream = tmp_ / "store" / "models--up--tiny";
  const fs::path target = tmp_ / "store" / "models--me--tiny-loftq";
  ASSERT_EQ(snapshot_names(upstream),
            (std::vector<std::string>{std::min(c1, c2), std::max(c1, c2)}));
  ASSERT_EQ(snapshot_names(target).size(), 3u);  // the repo's empty first commit and two results
  const loftqd::storage::Store store(tmp_ / "store");
  const std::string first_note = loftqd::storage::git_blob_sha1("first note");
  ASSERT_TRUE(store.has_blob("up/tiny", first_note));

  loftqd::daemon::Metrics m;
  std::string lines;
  const auto r = loftqd::daemon::apply_retention(
      cfg, *db_, &m, [&](spdlog::level::level_enum, const std::string& l) { lines += l + "\n"; });
  EXPECT_TRUE(r.errors.empty()) << lines;
  EXPECT_EQ(snapshot_names(upstream), std::vector<std::string>{c2});
  const std::string head = *store.read_ref("me/tiny-loftq", "main");
  EXPECT_EQ(snapshot_names(target), std::vector<std::string>{head});
  EXPECT_FALSE(store.has_blob("up/tiny", first_note));  // only the old commit had it
  EXPECT_TRUE(store.has_blob("up/tiny", loftqd::storage::git_blob_sha1("second note")));
  EXPECT_GE(r.bytes_freed, std::string("first note").size());
  EXPECT_THAT(lines, HasSubstr("step=retention snapshots_removed=3"));
  EXPECT_THAT(lines, HasSubstr("bytes_freed=" + std::to_string(r.bytes_freed)));
  EXPECT_THAT(m.render(db_.get()),
              HasSubstr("loftqd_retention_freed_bytes_total " + std::to_string(r.bytes_freed)));
  // The served head still downloads whole through the mirror.
  loftqd::hub::ClientOptions o;
  o.endpoint = mirror_->url();
  loftqd::hub::SnapshotRequest sr;
  sr.repo = "me/tiny-loftq";
  sr.local_dir = tmp_ / "check";
  ASSERT_TRUE(loftqd::hub::Client(o).snapshot_download(sr));
  EXPECT_TRUE(fs::exists(tmp_ / "check" / "loftq.json"));
}

// What the plan protects: a queued job's commit and blobs; a repo the mirror hosts; repos that
// are not loftqd's; orphaned targets only when asked.
TEST_F(PipelineTest, RetentionPlanProtectsJobsHostedReposAndAsksBeforePruning) {
  auto cfg = config();
  Pipeline p(cfg, *db_, options(cfg));
  ASSERT_TRUE(p.sync_once().ok()) << log_;
  const std::string c2 = up_.publish("new");
  SyncReport enq;
  ASSERT_TRUE(p.check_repo(cfg.repos[0], enq));  // queued, not run
  const loftqd::storage::Store store(tmp_ / "store");
  auto policies = loftqd::daemon::retention_policies(cfg, *db_, store);
  std::map<std::string, loftqd::storage::RepoPolicy> by_repo;
  for (auto& pol : policies) by_repo[pol.repo] = pol;
  ASSERT_EQ(by_repo.size(), 2u);
  EXPECT_EQ(by_repo["up/tiny"].pinned, std::set<std::string>{c2});
  EXPECT_FALSE(by_repo["up/tiny"].sweep_blobs);
  EXPECT_EQ(by_repo["up/tiny"].keep_snapshots, 1u);
  EXPECT_EQ(by_repo["me/tiny-loftq"].keep_snapshots, 2u);
  EXPECT_EQ(by_repo["me/tiny-loftq"].min_blob_age, loftqd::daemon::kUploadGrace);
  // The queued job may upload the target's objects before its commit: none is swept meanwhile.
  EXPECT_FALSE(by_repo["me/tiny-loftq"].sweep_blobs);

  // The entry now publishes elsewhere: the old target is an orphan, kept unless asked.
  ASSERT_TRUE(p.sync_once().ok()) << log_;  // the queued job ends first
  auto moved = json{{"hub", {{"endpoint", up_.url()}}},
                    {"store", (tmp_ / "store").string()},
                    {"repos", {{{"repo", "up/tiny"}, {"publish_as", "me/elsewhere"}}}}};
  const auto keep = loftqd::config::parse_config(moved);
  EXPECT_TRUE(loftqd::daemon::apply_retention(keep, *db_, nullptr, [](auto, const auto&) {
              }).repos_removed.empty());
  EXPECT_TRUE(store.has_repo("me/tiny-loftq"));
  const auto prune =
      loftqd::config::parse_config(with_retention(moved, {{"prune_orphaned_targets", true}}));
  const auto r = loftqd::daemon::apply_retention(prune, *db_, nullptr, [](auto, const auto&) {});
  EXPECT_EQ(r.repos_removed, std::vector<std::string>{"me/tiny-loftq"});
  EXPECT_FALSE(store.has_repo("me/tiny-loftq"));
  EXPECT_TRUE(store.has_repo("up/tiny"));  // still watched

  // A repo someone uploaded to the mirror is not loftqd's, even when watched; nor is any other.
  loftqd::storage::Store writable(tmp_ / "store");
  ASSERT_TRUE(writable.write_meta("up/tiny", loftqd::storage::RepoMeta{}).ok());
  for (const auto& pol : loftqd::daemon::retention_policies(prune, *db_, store))
    EXPECT_NE(pol.repo, "up/tiny");
}

// The disk reserve is checked before quantizing too (not only before downloads): with the
// snapshot in the store already, a reserve the disk cannot give fails the job before any
// tensor, naming the bytes.
TEST_F(PipelineTest, TheDiskReserveIsCheckedBeforeQuantizing) {
  Upstream big(tmp_ / "big", 0, Upstream::small());
  loftqd::hub::ClientOptions o;
  o.endpoint = big.url();
  o.disk_reserve = 0;
  loftqd::hub::SnapshotRequest sr;
  sr.repo = "up/tiny";
  sr.revision = big.commit();
  sr.store = tmp_ / "store";
  const auto snap = loftqd::hub::Client(o).snapshot_download(sr);
  ASSERT_TRUE(snap) << snap.error().message;
  uint64_t size = 0;
  for (const auto& e : fs::recursive_directory_iterator(snap.value().dir))
    if (e.is_regular_file()) size += e.file_size();
  // The snapshot is complete in the store, so the download fetches nothing and is not held to
  // the reserve; the quantize step must still refuse. A reserve beyond any disk keeps the test
  // independent of what other tests write to or free from the same disk meanwhile.
  const uint64_t reserve = uint64_t{1} << 60;
  auto j = json{{"hub", {{"endpoint", big.url()}}},
                {"store", (tmp_ / "store").string()},
                {"device", "cpu"},
                {"repos", {{{"repo", "up/tiny"}, {"publish_as", "me/big-loftq"}}}},
                {"limits", {{"disk_reserve", reserve}}}};
  const auto cfg = loftqd::config::parse_config(j);
  Pipeline p(cfg, *db_, options(cfg));
  const SyncReport r = p.sync_once();
  ASSERT_EQ(r.jobs_failed, 1) << log_;
  EXPECT_THAT(log_, HasSubstr("step=download done files=6 files_fetched=0"));
  const auto job = jobs().at(0);
  EXPECT_THAT(job.last_error, HasSubstr("quantize: not enough disk space in"));
  EXPECT_THAT(job.last_error, HasSubstr("need " + std::to_string(2 * size) + " bytes"));
  EXPECT_THAT(job.last_error, HasSubstr("plus a reserve of " + std::to_string(reserve) + " bytes"));
  EXPECT_THAT(job.last_error, HasSubstr("(limits.disk_reserve)"));
  EXPECT_TRUE(db_->tensors_done(job.id).empty());
}

// The published card keeps the upstream's licence (from the Hub: the default patterns leave the
// upstream README out of the download) and says that a gated upstream's conditions apply.
TEST_F(PipelineTest, TheCardKeepsTheUpstreamsLicenceAndGatingNote) {
  loftqd::testing::spit(tmp_ / "src" / "README.md", "---\nlicense: llama2\n---\n# tiny\n");
  up_.publish();
  loftqd::storage::Store upstream_store(up_.store());
  auto meta = upstream_store.read_meta("up/tiny").value_or(loftqd::storage::RepoMeta{});
  meta.gated = true;
  ASSERT_TRUE(upstream_store.write_meta("up/tiny", meta));
  auto j = json{{"hub", {{"endpoint", up_.url()}}},
                {"store", (tmp_ / "store").string()},
                {"device", "cpu"},
                {"repos",
                 {{{"repo", "up/tiny"},
                   {"publish_as", "me/gated-loftq"},
                   {"allow_patterns", {"*.safetensors", "*.json"}},
                   {"loftq", {{"rank", 4}, {"iters", 1}, {"avg_bits", 3}, {"quant", "uniform"}}}}}},
                {"publish", {{"mirror", true}}}};
  const auto cfg = loftqd::config::parse_config(j);
  auto po = options(cfg);
  po.upstream.token = std::string(Upstream::kToken);
  Pipeline p(cfg, *db_, po);
  const SyncReport r = p.sync_once();
  ASSERT_TRUE(r.ok()) << ::testing::PrintToString(r.errors) << log_;
  const loftqd::storage::Store ours(tmp_ / "store");
  const std::string head = *ours.read_ref("me/gated-loftq", "main");
  const std::string card =
      loftqd::testing::slurp(ours.snapshot_dir("me/gated-loftq", head) / "README.md");
  EXPECT_THAT(card, HasSubstr("\nlicense: llama2\n"));
  EXPECT_THAT(card, HasSubstr("**Access:** `up/tiny` is gated on the Hugging Face Hub"));
  EXPECT_TRUE(ours.read_meta("me/gated-loftq")->is_private);  // and inherit made it private
}
