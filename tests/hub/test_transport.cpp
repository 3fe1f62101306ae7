// hub/transport.cpp through the Client: retries (Retry-After, RateLimit, 5xx), network errors,
// and redirects with the token kept to the endpoint's origin.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "hub/hub.h"
#include "hub_fixture.h"
#include "storage/store.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using loftqd::testing::FaultServer;
using loftqd::testing::random_bytes;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using loftqd::testing::hubtest::kToken;
namespace hub = loftqd::hub;
namespace st = loftqd::storage;

using HubClient = loftqd::testing::hubtest::HubFixture;

TEST_F(HubClient, RetriesA429HonoringRetryAfter) {
  srv.fail("/resolve/", 429, 1, {{"Retry-After", "1"}});
  hub::Client c(opts());
  auto t0 = std::chrono::steady_clock::now();
  auto r = c.snapshot_download(store_req());
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_GE(s, 0.95);  // waited as told, not the 10 ms backoff
  expect_clean_store(true);
}

TEST_F(HubClient, RateLimitHeaderSetsTheDelay) {
  srv.fail("/revision/", 429, 1, {{"RateLimit", "\"api\";r=0;t=1"}});
  hub::Client c(opts());
  auto t0 = std::chrono::steady_clock::now();
  auto r = c.repo_info("org/model");
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_GE(s, 0.95);
}

TEST_F(HubClient, Retries5xxThenGivesUpWithAClearError) {
  srv.fail("/tree/", 500, 2);
  srv.fail("config.json", 503, 1);
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;

  FaultServer other;
  other.add_file("a.txt", "a", false);
  other.fail("/resolve/", 502, 100);
  auto o = opts();
  o.endpoint = other.url();
  hub::Client c2(o);
  hub::SnapshotRequest req;
  req.repo = "org/model";
  req.store = tmp / "store2";
  auto bad = c2.snapshot_download(req);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().kind, hub::ErrorKind::Server);
  EXPECT_NE(bad.error().message.find("repo 'org/model'"), std::string::npos) << bad.error().message;
  EXPECT_NE(bad.error().message.find("file 'a.txt'"), std::string::npos);
  EXPECT_NE(bad.error().message.find("HTTP 502"), std::string::npos);
  EXPECT_EQ(other.count("GET", "/resolve/"), 4u);  // 1 + max_retries
  EXPECT_FALSE(fs::exists(tmp / "store2/models--org--model/snapshots"));
}

TEST_F(HubClient, ConnectionRefusedIsANetworkError) {
  auto o = opts();
  o.endpoint = "http://127.0.0.1:1";  // nothing listens on port 1
  o.max_retries = 1;
  auto r = hub::Client(o).repo_info("org/model");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, hub::ErrorKind::Network);
}

TEST_F(HubClient, RedirectToAnotherHostDropsTheToken) {
  FaultServer cdn;
  cdn.add_file("config.json", srv.content("config.json"), false);
  cdn.add_file("model.safetensors", srv.content("model.safetensors"), true);
  cdn.add_file("sub/tokenizer.json", srv.content("sub/tokenizer.json"), false);
  // 127.0.0.1 vs localhost: another origin (the port differs as well).
  std::string cdn_base = cdn.url();
  srv.redirect_resolve_to(cdn_base);
  hub::Client c(opts());
  auto meta = c.file_metadata("org/model", "main", "model.safetensors");
  ASSERT_TRUE(meta.ok()) << meta.error().message;
  EXPECT_EQ(meta.value().etag, st::sha256_hex(srv.content("model.safetensors")));
  EXPECT_EQ(meta.value().size, srv.content("model.safetensors").size());
  EXPECT_EQ(meta.value().commit, srv.commit());
  EXPECT_EQ(meta.value().location, cdn_base + "/cdn/model.safetensors");
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
  ASSERT_GE(cdn.count("GET", "/cdn/"), 3u);
  for (const auto& q : cdn.requests()) EXPECT_EQ(q.authorization, "") << q.path;
  for (const auto& q : srv.requests()) EXPECT_EQ(q.authorization, std::string("Bearer ") + kToken);
}

TEST_F(HubClient, RelativeRedirectKeepsTheToken) {
  srv.relative_redirects(true);
  hub::Client c(opts());
  auto meta = c.file_metadata("org/model", "main", "config.json");
  ASSERT_TRUE(meta.ok()) << meta.error().message;
  EXPECT_EQ(meta.value().etag, st::git_blob_sha1(srv.content("config.json")));
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_GE(srv.count("GET", "/alias/"), 3u);
  for (const auto& q : srv.requests()) EXPECT_EQ(q.authorization, std::string("Bearer ") + kToken);
}
