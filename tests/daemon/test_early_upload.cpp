// daemon/early_upload: finished backbone files sent as LFS objects ahead of their commit,
// against the built-in mirror (a real Hub-compatible server that hashes what it receives).
#include "daemon/early_upload.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "hub/hub.h"
#include "mirror/mirror.h"
#include "storage/store.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
namespace hub = loftqd::hub;
namespace st = loftqd::storage;
using loftqd::daemon::EarlyUpload;
using loftqd::testing::random_bytes;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

namespace {

constexpr const char* kToken = "early-upload-test-token";
constexpr const char* kShard1 = "model-00001-of-00002.safetensors";
constexpr const char* kShard2 = "model-00002-of-00002.safetensors";

class EarlyUploadTest : public ::testing::Test {
 protected:
  EarlyUploadTest() {
    loftqd::mirror::MirrorOptions mo;
    mo.store = tmp_ / "store";
    mo.port = 0;
    mo.write_token = kToken;
    fs::create_directories(mo.store);
    mirror_ = std::make_unique<loftqd::mirror::Mirror>(mo);
    mirror_->start();
  }
  ~EarlyUploadTest() override { mirror_->stop(); }

  hub::ClientOptions opts() const {
    hub::ClientOptions o;
    o.endpoint = mirror_->url();
    o.token = kToken;
    o.max_retries = 0;
    return o;
  }
  // The repo as a first publish left it: one commit with a config.
  std::string seed(const std::string& repo) {
    fs::create_directories(tmp_ / "seed");
    spit(tmp_ / "seed" / "config.json", "{}\n");
    hub::PublishRequest pr;
    pr.dir = tmp_ / "seed";
    pr.repo = repo;
    auto c = hub::Client(opts()).upload_folder(pr);
    EXPECT_TRUE(c.ok()) << c.error().message;
    return c ? c.value().commit_oid : "";
  }
  EarlyUpload::LogFn logger() {
    return [this](spdlog::level::level_enum level, const std::string& line) {
      std::lock_guard g(mu_);
      log_ += line + "\n";
      if (level >= spdlog::level::warn) problems_ += line + "\n";
    };
  }
  std::string log() {
    std::lock_guard g(mu_);
    return log_;
  }
  std::string problems() {
    std::lock_guard g(mu_);
    return problems_;
  }

  TempDir tmp_;
  std::unique_ptr<loftqd::mirror::Mirror> mirror_;
  std::mutex mu_;
  std::string log_, problems_;
};

}  // namespace

// Each file goes up as it was when handed over (the path may be replaced right after, as the
// quantize step's rename of its staging directory does), with no commit; finish() gives every
// file's hash for the publish.
TEST_F(EarlyUploadTest, EachFileGoesUpAsItWasWhenHandedOverAndNothingIsCommitted) {
  const std::string head = seed("me/m");
  const std::string a = random_bytes(150001, 1), b = random_bytes(70001, 2);
  spit(tmp_ / "a", a);
  spit(tmp_ / "b", b);
  hub::KnownHash ka, kb;
  {
    EarlyUpload eu({{"mirror/me/m", opts()}}, "me/m", "job=1", logger());
    eu.add(kShard1, tmp_ / "a");
    spit(tmp_ / "a.new", random_bytes(150001, 3));  // another file at the path now
    fs::rename(tmp_ / "a.new", tmp_ / "a");
    eu.add(kShard2, tmp_ / "b");
    const EarlyUpload::Done d = eu.finish();
    EXPECT_EQ(d.files, 2u);
    EXPECT_EQ(d.bytes_sent, a.size() + b.size());
    ASSERT_EQ(d.hashes.size(), 2u);
    ka = d.hashes.at(kShard1);
    kb = d.hashes.at(kShard2);
  }
  EXPECT_EQ(ka.sha256, st::sha256_hex(a));
  EXPECT_EQ(ka.size, a.size());
  EXPECT_EQ(kb.sha256, st::sha256_hex(b));
  const st::Store store(tmp_ / "store");
  EXPECT_TRUE(store.has_blob("me/m", ka.sha256));
  EXPECT_TRUE(store.has_blob("me/m", kb.sha256));
  EXPECT_EQ(slurp(store.blob_path("me/m", ka.sha256)), a);
  EXPECT_FALSE(store.has_blob("me/m", st::sha256_hex(slurp(tmp_ / "a"))));
  auto info = hub::Client(opts()).repo_info("me/m");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info.value().sha, head);  // no commit
  EXPECT_THAT(log(), HasSubstr("job=1 step=publish early target=mirror/me/m file=" +
                               std::string(kShard1) + " bytes_uploaded=150001 seconds="));
  EXPECT_EQ(problems(), "");
  // The hash of the replaced path is not the new file's: a publish of that file hashes it.
  EXPECT_NE(ka.inode, hub::known_hash(tmp_ / "a", "").value().inode);
}

// A target without the repo yet (a first publish) gets nothing, not even the repo; a target
// whose upload fails gets no more files. Neither is the job's failure, and the hashes are
// given all the same.
TEST_F(EarlyUploadTest, ANewRepoIsNotMadeAndAFailedTargetGetsNoMoreFiles) {
  seed("me/m");
  spit(tmp_ / "a", random_bytes(1000, 4));
  spit(tmp_ / "b", random_bytes(1000, 5));
  int calls = 0;
  EarlyUpload::Done d;
  {
    EarlyUpload eu({{"mirror/me/m", opts()}}, "me/m", "job=2", logger(),
                   [&](const std::string& point) {
                     EXPECT_EQ(point, "early_upload");
                     if (calls++ == 0) throw std::runtime_error("injected");
                   });
    eu.add(kShard1, tmp_ / "a");
    eu.add(kShard2, tmp_ / "b");
    d = eu.finish();
  }
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(d.bytes_sent, 0u);
  EXPECT_EQ(d.hashes.size(), 2u);
  EXPECT_THAT(problems(), HasSubstr("job=2 step=publish early target=mirror/me/m file=" +
                                    std::string(kShard1) + " error=\"injected\""));

  {
    EarlyUpload eu({{"mirror/me/new", opts()}}, "me/new", "job=3", logger());
    eu.add(kShard1, tmp_ / "a");
    d = eu.finish();
  }
  EXPECT_EQ(d.hashes.size(), 1u);
  EXPECT_FALSE(st::Store(tmp_ / "store").has_repo("me/new"));
  EXPECT_THAT(log(), HasSubstr("job=3 step=publish early=off target=mirror/me/new reason=\"no "
                               "such repo or branch yet\""));
  EXPECT_THAT(problems(), Not(HasSubstr("job=3")));
}

// Dropping it (a stop request or a failure in the quantize step) cancels the upload in flight
// within about a second; the object is not stored.
TEST_F(EarlyUploadTest, DroppingItCancelsTheUploadInFlight) {
  seed("me/m");
  const std::string big = random_bytes(4 << 20, 6);
  spit(tmp_ / "a", big);
  hub::ClientOptions slow = opts();
  slow.max_send_bytes_per_s = 200'000;  // 20 s for the file
  auto eu = std::make_unique<EarlyUpload>(std::vector<EarlyUpload::Target>{{"mirror/me/m", slow}},
                                          "me/m", "job=4", logger());
  eu->add(kShard1, tmp_ / "a");
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  const auto t0 = std::chrono::steady_clock::now();
  eu.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
  EXPECT_FALSE(st::Store(tmp_ / "store").has_blob("me/m", st::sha256_hex(big)));
  EXPECT_EQ(problems(), "");  // a cancel is not a failure
}

// With jobs > 1, that many files go up at once (a real Hub's throughput is per connection): both
// uploads reach the server side by side, and both objects are stored.
TEST_F(EarlyUploadTest, SeveralFilesGoUpAtOnce) {
  seed("me/m");
  const std::string a = random_bytes(30000, 7), b = random_bytes(30000, 8);
  spit(tmp_ / "a", a);
  spit(tmp_ / "b", b);
  std::mutex m;
  std::condition_variable cv;
  int inside = 0;
  bool side_by_side = false;
  EarlyUpload::Done d;
  {
    EarlyUpload eu(
        {{"mirror/me/m", opts()}}, "me/m", "job=5", logger(),
        [&](const std::string&) {
          std::unique_lock l(m);
          ++inside;
          cv.notify_all();
          if (cv.wait_for(l, std::chrono::seconds(10), [&] { return inside >= 2; }))
            side_by_side = true;
        },
        2);
    eu.add(kShard1, tmp_ / "a");
    eu.add(kShard2, tmp_ / "b");
    d = eu.finish();
  }
  EXPECT_TRUE(side_by_side);
  EXPECT_EQ(d.bytes_sent, a.size() + b.size());
  const st::Store store(tmp_ / "store");
  EXPECT_TRUE(store.has_blob("me/m", st::sha256_hex(a)));
  EXPECT_TRUE(store.has_blob("me/m", st::sha256_hex(b)));
  EXPECT_EQ(problems(), "");
}
