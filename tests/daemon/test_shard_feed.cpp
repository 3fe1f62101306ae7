// daemon/shard_feed: the shards of a snapshot fetched in the background, against the
// fault-injecting test Hub (tests/fault).
#include "daemon/shard_feed.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
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

// Dropping a feed (a failed or stopped quantize step) stops it after the call in flight and
// joins its threads; nothing half-written is left as a file of the snapshot.
TEST_F(ShardFeedTest, DroppingAFeedStopsItAfterTheCallInFlight) {
  { ShardFeed feed(opts(), store_req(), shards_, 1); }
  std::error_code ec;
  for (const auto& s : shards_)
    if (fs::exists(snapshot() / s, ec)) {
      EXPECT_EQ(slurp(snapshot() / s), srv.content(s)) << s;
    }
  EXPECT_FALSE(fs::exists(snapshot() / "config.json"));
}
