// daemon/shard_feed: the shards of a snapshot fetched in the background, against the
// fault-injecting test Hub (tests/fault).
#include "daemon/shard_feed.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "hub/hub_fixture.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
namespace hub = loftqd::hub;
using loftqd::daemon::ShardFeed;
using loftqd::testing::random_bytes;
using loftqd::testing::slurp;

namespace {

// The hub suites' fault server (config.json, model.safetensors, sub/tokenizer.json) with three
// shards more.
class ShardFeedTest : public loftqd::testing::hubtest::HubFixture {
 protected:
  void SetUp() override {
    HubFixture::SetUp();
    for (unsigned i = 0; i < 3; ++i) srv.add_file(shards_[i], random_bytes(150000, i), true);
  }
  uint64_t others() const { return total_size(); }  // the three files of the fixture

  const std::vector<std::string> shards_ = {"m-1.safetensors", "m-2.safetensors",
                                            "m-3.safetensors"};
};

}  // namespace

// Each shard is linked in the snapshot when wait() returns for it; finish() brings the rest of
// the selection and adds up what every call fetched. One at a time or two at once, the same.
TEST_F(ShardFeedTest, EachShardIsInPlaceWhenItsWaitReturns) {
  for (int jobs : {1, 2}) {
    SCOPED_TRACE(jobs);
    fs::remove_all(tmp / "store");
    ShardFeed feed(opts(), store_req(), shards_, jobs);
    EXPECT_FALSE(feed.wait("not-a-shard.safetensors").has_value());  // not the feed's: at once
    for (const auto& s : shards_) {
      const auto e = feed.wait(s);
      ASSERT_FALSE(e.has_value()) << e->message;
      EXPECT_EQ(slurp(snapshot() / s), srv.content(s)) << s;
    }
    const auto r = feed.finish();
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r.value().files, 6u);
    EXPECT_EQ(r.value().downloaded, 6u);  // each file once, the shards by their own calls
    EXPECT_EQ(r.value().bytes, 3 * 150000u + others());
    EXPECT_EQ(r.value().dir, snapshot());
    EXPECT_TRUE(fs::exists(snapshot() / "config.json"));
    EXPECT_GT(feed.seconds(), 0);
  }
}

// A shard that fails ends the feed: the shards before it are in place, the failed one and those
// after it are not, and their waits and finish() return the shard's error.
TEST_F(ShardFeedTest, AFailedShardEndsTheFeedWithItsError) {
  srv.fail("m-2.safetensors", 404, 100, {{"X-Error-Code", "EntryNotFound"}});
  ShardFeed feed(opts(), store_req(), shards_, 1);
  EXPECT_FALSE(feed.wait(shards_[0]).has_value());
  for (const auto& s : {shards_[1], shards_[2]}) {
    const auto e = feed.wait(s);
    ASSERT_TRUE(e.has_value()) << s;
    EXPECT_NE(e->message.find("m-2.safetensors"), std::string::npos) << e->message;
  }
  const auto r = feed.finish();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("m-2.safetensors"), std::string::npos);
  EXPECT_TRUE(fs::exists(snapshot() / shards_[0]));
  EXPECT_FALSE(fs::exists(snapshot() / shards_[1]));
  EXPECT_FALSE(fs::exists(snapshot() / shards_[2]));
  EXPECT_FALSE(fs::exists(snapshot() / "config.json"));  // the last call never ran
}

// Dropping a feed at once (a failed or stopped quantize step) stops it and joins its threads;
// nothing half-written is left as a file of the snapshot.
TEST_F(ShardFeedTest, DroppingAFeedAtOnceLeavesNoHalfWrittenShard) {
  { ShardFeed feed(opts(), store_req(), shards_, 1); }
  std::error_code ec;
  for (const auto& s : shards_)
    if (fs::exists(snapshot() / s, ec)) {
      EXPECT_EQ(slurp(snapshot() / s), srv.content(s)) << s;
    }
  EXPECT_FALSE(fs::exists(snapshot() / "config.json"));
}

// The transfer in flight is cancelled, not waited for: dropping a feed whose first shard is
// stalled (3 s, under a 30 s stall timeout) returns within about a second.
TEST_F(ShardFeedTest, DroppingAFeedCancelsTheTransferInFlight) {
  srv.stall("m-1.safetensors", 50000, 3, 1);
  auto o = opts();
  o.stall_timeout_s = 30;
  std::chrono::steady_clock::time_point t0;
  {
    ShardFeed feed(o, store_req(), shards_, 1);
    for (int i = 0; i < 500 && srv.count("GET", "m-1.safetensors") == 0; ++i)  // the GET is in
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_GT(srv.count("GET", "m-1.safetensors"), 0u);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    t0 = std::chrono::steady_clock::now();
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
  EXPECT_FALSE(fs::exists(snapshot() / shards_[0]));
}

// A wait gives up when asked to stop, while the shard is still coming.
TEST_F(ShardFeedTest, AWaitEndsWhenAskedToStop) {
  srv.stall("m-1.safetensors", 50000, 3, 1);
  auto o = opts();
  o.stall_timeout_s = 30;
  ShardFeed feed(o, store_req(), shards_, 1);
  const auto t0 = std::chrono::steady_clock::now();
  const auto e = feed.wait(shards_[0], [&] {
    return std::chrono::steady_clock::now() - t0 > std::chrono::milliseconds(300);
  });
  ASSERT_TRUE(e.has_value());
  EXPECT_NE(e->message.find("stopped while waiting for the download of 'm-1.safetensors'"),
            std::string::npos)
      << e->message;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
}
