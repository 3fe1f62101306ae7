// hub/client.cpp against the fault-injecting test Hub (tests/fault): listing, downloads into the
// store and a local dir, resume, retries, typed errors, redirects and the token, unsafe names.
#include "hub/hub.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "fault/fault_server.h"
#include "storage/store.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using loftqd::testing::FaultServer;
using loftqd::testing::random_bytes;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
namespace hub = loftqd::hub;
namespace st = loftqd::storage;

namespace {

constexpr const char* kToken = "hf_testsecret_0123456789";

struct Fixture : ::testing::Test {
  FaultServer srv;
  TempDir tmp;
  void SetUp() override {
    srv.add_file("config.json", "{\"model_type\": \"llama\"}\n", false);
    srv.add_file("model.safetensors", random_bytes(300000, 1), true);
    srv.add_file("sub/tokenizer.json", "{\"tokens\": [1, 2, 3]}\n", false);
  }
  hub::ClientOptions opts() const {
    hub::ClientOptions o;
    o.endpoint = srv.url();
    o.token = kToken;
    o.backoff_base_s = 0.01;
    o.backoff_cap_s = 0.05;
    o.max_retries = 3;
    o.connect_timeout_s = 2;
    o.stall_timeout_s = 2;
    o.disk_reserve = 0;
    return o;
  }
  hub::SnapshotRequest store_req() const {
    hub::SnapshotRequest r;
    r.repo = srv.repo();
    r.store = tmp / "store";
    return r;
  }
  // Bytes of the given files (default: the three of SetUp).
  uint64_t total_size(std::vector<std::string> paths = {"config.json", "model.safetensors",
                                                        "sub/tokenizer.json"}) const {
    uint64_t n = 0;
    for (const auto& p : paths) n += srv.content(p).size();
    return n;
  }
  fs::path snapshot() const {
    return tmp / "store" / "models--org--model" / "snapshots" / srv.commit();
  }
  // No partials, temp files or half-made snapshots anywhere in the store.
  void expect_clean_store(bool expect_snapshot) const {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(tmp / "store", ec); !ec && it != fs::end(it);
         it.increment(ec)) {
      auto name = it->path().filename().string();
      EXPECT_EQ(name.find(".incomplete"), std::string::npos) << it->path();
      EXPECT_EQ(name.find(".tmp"), std::string::npos) << it->path();
    }
    EXPECT_EQ(fs::exists(snapshot()), expect_snapshot);
  }
};

}  // namespace

using HubClient = Fixture;

TEST_F(HubClient, RepoInfoAndPaginatedTree) {
  hub::Client c(opts());
  auto info = c.repo_info("org/model", "main");
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info.value().sha, srv.commit());
  EXPECT_EQ(info.value().siblings.size(), 3u);
  auto tree = c.list_tree("org/model", srv.commit());
  ASSERT_TRUE(tree.ok()) << tree.error().message;
  ASSERT_EQ(tree.value().size(), 3u);  // page size 2: two pages through Link rel="next"
  EXPECT_EQ(srv.count("GET", "/tree/"), 2u);
  EXPECT_EQ(tree.value()[1].path, "model.safetensors");
  EXPECT_EQ(tree.value()[1].etag(), st::sha256_hex(srv.content("model.safetensors")));
  EXPECT_EQ(tree.value()[0].etag(), st::git_blob_sha1(srv.content("config.json")));
}

TEST_F(HubClient, FetchWritesTheCacheLayout) {
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().commit, srv.commit());
  EXPECT_EQ(r.value().files, 3u);
  EXPECT_EQ(r.value().downloaded, 3u);
  EXPECT_EQ(r.value().bytes, total_size());
  auto repo = tmp / "store" / "models--org--model";
  EXPECT_EQ(slurp(repo / "refs" / "main"), srv.commit());
  auto sha = st::sha256_hex(srv.content("model.safetensors"));
  EXPECT_EQ(fs::read_symlink(snapshot() / "model.safetensors").string(), "../../blobs/" + sha);
  EXPECT_EQ(fs::read_symlink(snapshot() / "sub/tokenizer.json").string(),
            "../../../blobs/" + st::git_blob_sha1(srv.content("sub/tokenizer.json")));
  for (auto p : {"config.json", "model.safetensors", "sub/tokenizer.json"})
    EXPECT_EQ(slurp(snapshot() / p), srv.content(p)) << p;
  expect_clean_store(true);
  // Every request to the endpoint carried the token.
  for (const auto& q : srv.requests()) EXPECT_EQ(q.authorization, std::string("Bearer ") + kToken);

  // A second fetch finds everything in place and downloads nothing.
  auto again = c.snapshot_download(store_req());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again.value().downloaded, 0u);
  EXPECT_EQ(again.value().bytes, 0u);
}

TEST_F(HubClient, SharedAndEmptyBlobsAreFetchedOnce) {
  srv.add_file("copy/tokenizer.json", srv.content("sub/tokenizer.json"), false);
  srv.add_file("copy.safetensors", srv.content("model.safetensors"), true);
  srv.add_file("empty.txt", "", false);
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().files, 6u);
  EXPECT_EQ(r.value().downloaded, 4u);  // config, model, tokenizer, empty
  EXPECT_EQ(r.value().bytes, total_size({"config.json", "model.safetensors",
                                         "sub/tokenizer.json"}));  // shared blobs once
  EXPECT_EQ(slurp(snapshot() / "copy.safetensors"), srv.content("model.safetensors"));
  EXPECT_EQ(slurp(snapshot() / "copy/tokenizer.json"), srv.content("sub/tokenizer.json"));
  EXPECT_EQ(slurp(snapshot() / "empty.txt"), "");
  expect_clean_store(true);
}

TEST_F(HubClient, IncludeExcludePatterns) {
  hub::Client c(opts());
  auto req = store_req();
  req.allow = {"*.json"};
  req.ignore = {"sub/*"};
  auto r = c.snapshot_download(req);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().files, 1u);
  EXPECT_TRUE(fs::exists(snapshot() / "config.json"));
  EXPECT_FALSE(fs::exists(snapshot() / "model.safetensors"));
  EXPECT_FALSE(fs::exists(snapshot() / "sub"));
}

TEST_F(HubClient, LocalDirWritesPlainFiles) {
  hub::Client c(opts());
  hub::SnapshotRequest req;
  req.repo = "org/model";
  req.local_dir = tmp / "out";
  auto r = c.snapshot_download(req);
  ASSERT_TRUE(r.ok()) << r.error().message;
  for (auto p : {"config.json", "model.safetensors", "sub/tokenizer.json"}) {
    EXPECT_FALSE(fs::is_symlink(tmp / "out" / p));
    EXPECT_EQ(slurp(tmp / "out" / p), srv.content(p));
  }
  EXPECT_EQ(r.value().bytes, total_size());
  auto meta = slurp(tmp / "out/.cache/huggingface/download/model.safetensors.metadata");
  EXPECT_EQ(meta.substr(0, 41), srv.commit() + "\n");
  auto again = c.snapshot_download(req);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again.value().downloaded, 0u);
  EXPECT_EQ(again.value().bytes, 0u);
}

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

TEST_F(HubClient, DroppedConnectionResumesWithRange) {
  srv.drop_after("model.safetensors", 100000, 1);
  srv.drop_after("model.safetensors", 50000, 1);  // the resumed request is cut too
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
  std::vector<std::string> ranges;
  for (const auto& q : srv.requests())
    if (q.path.find("model.safetensors") != std::string::npos) ranges.push_back(q.range);
  ASSERT_EQ(ranges.size(), 3u);
  EXPECT_EQ(ranges[0], "");
  EXPECT_EQ(ranges[1], "bytes=100000-");
  EXPECT_EQ(ranges[2], "bytes=150000-");
  EXPECT_EQ(r.value().bytes, total_size());  // the resumed ranges, each byte once
  expect_clean_store(true);
}

TEST_F(HubClient, TruncatedBodyResumes) {
  srv.truncate("model.safetensors", 1234, 1);
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
  EXPECT_EQ(srv.count("GET", "model.safetensors"), 2u);
}

TEST_F(HubClient, PartialFromAnEarlierRunIsResumed) {
  std::string data = srv.content("model.safetensors");
  auto sha = st::sha256_hex(data);
  auto partial = tmp / "store/models--org--model/blobs" / (sha + ".incomplete");
  fs::create_directories(partial.parent_path());
  spit(partial, data.substr(0, 200000));
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), data);
  for (const auto& q : srv.requests())
    if (q.path.find("model.safetensors") != std::string::npos) {
      EXPECT_EQ(q.range, "bytes=200000-");
    }
  EXPECT_EQ(r.value().bytes, total_size() - 200000);  // the earlier run's bytes are not counted
}

TEST_F(HubClient, AGarbagePartialIsDroppedAndDownloadedAgain) {
  std::string data = srv.content("model.safetensors");
  auto partial = tmp / "store/models--org--model/blobs" / (st::sha256_hex(data) + ".incomplete");
  fs::create_directories(partial.parent_path());
  spit(partial, std::string(100000, 'x'));  // not a prefix of the file
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), data);
  expect_clean_store(true);
}

TEST_F(HubClient, StalledTransferIsCutAndResumed) {
  srv.stall("model.safetensors", 4096, 2, 1);
  auto o = opts();
  o.stall_timeout_s = 1;
  hub::Client c(o);
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
}

TEST_F(HubClient, WrongSha256IsRetriedOnceThenFails) {
  srv.corrupt("model.safetensors", 1);
  {
    hub::Client c(opts());
    auto r = c.snapshot_download(store_req());
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
    // Received twice, so counted twice.
    EXPECT_EQ(r.value().bytes, total_size() + srv.content("model.safetensors").size());
  }
  FaultServer other;
  other.add_file("w.safetensors", random_bytes(5000, 2), true);
  other.corrupt("w.safetensors", 2);
  auto o = opts();
  o.endpoint = other.url();
  hub::Client c(o);
  hub::SnapshotRequest req;
  req.repo = "org/model";
  req.store = tmp / "store2";
  auto bad = c.snapshot_download(req);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().kind, hub::ErrorKind::HashMismatch);
  EXPECT_NE(bad.error().message.find("sha256 mismatch"), std::string::npos) << bad.error().message;
  EXPECT_NE(bad.error().message.find("file 'w.safetensors'"), std::string::npos);
  auto blobs = tmp / "store2/models--org--model/blobs";
  EXPECT_TRUE(fs::is_empty(blobs));  // neither the partial nor a bad blob
  EXPECT_FALSE(fs::exists(tmp / "store2/models--org--model/snapshots"));
  EXPECT_FALSE(fs::exists(tmp / "store2/models--org--model/refs"));
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

TEST_F(HubClient, PathTraversalInTheTreeIsRefused) {
  for (const char* evil : {"../evil.txt", "/etc/passwd", ".git/config", "a\\b"}) {
    FaultServer bad;
    bad.add_file("config.json", "{}", false);
    bad.add_tree_entry(evil);
    auto o = opts();
    o.endpoint = bad.url();
    hub::Client c(o);
    hub::SnapshotRequest req;
    req.repo = "org/model";
    req.store = tmp / "evil-store";
    auto r = c.snapshot_download(req);
    ASSERT_FALSE(r.ok()) << evil;
    EXPECT_EQ(r.error().kind, hub::ErrorKind::UnsafePath);
    EXPECT_NE(r.error().message.find("unsafe file name"), std::string::npos);
    EXPECT_FALSE(fs::exists(tmp / "evil-store")) << "nothing may touch the disk";
    EXPECT_EQ(bad.count("GET", "/resolve/"), 0u);
  }
}

TEST_F(HubClient, TypedErrorsNameRepoRevisionAndFile) {
  hub::Client c(opts());
  auto nf = c.repo_info("org/missing");
  ASSERT_FALSE(nf.ok());
  EXPECT_EQ(nf.error().kind, hub::ErrorKind::RepoNotFound);
  EXPECT_NE(nf.error().message.find("'org/missing'"), std::string::npos);

  auto rev = c.repo_info("org/model", "nope");
  ASSERT_FALSE(rev.ok());
  EXPECT_EQ(rev.error().kind, hub::ErrorKind::RevisionNotFound);
  EXPECT_NE(rev.error().message.find("revision 'nope'"), std::string::npos);

  auto entry = c.file_metadata("org/model", "main", "missing.bin");
  ASSERT_FALSE(entry.ok());
  EXPECT_EQ(entry.error().kind, hub::ErrorKind::EntryNotFound);
  EXPECT_NE(entry.error().message.find("file 'missing.bin'"), std::string::npos);

  srv.fail("/revision/", 401, 1, {{"X-Error-Code", "GatedRepo"}});
  auto gated = c.repo_info("org/model");
  ASSERT_FALSE(gated.ok());
  EXPECT_EQ(gated.error().kind, hub::ErrorKind::GatedRepo);

  srv.fail("/revision/", 401, 1);
  auto unauth = c.repo_info("org/model");
  ASSERT_FALSE(unauth.ok());
  EXPECT_EQ(unauth.error().kind, hub::ErrorKind::Unauthorized);
  EXPECT_NE(unauth.error().message.find("token was rejected"), std::string::npos);

  srv.fail("/revision/", 403, 1);
  auto forbidden = c.repo_info("org/model");
  ASSERT_FALSE(forbidden.ok());
  EXPECT_EQ(forbidden.error().kind, hub::ErrorKind::Forbidden);

  srv.fail("/resolve/", 416, 1);
  auto range = c.file_metadata("org/model", "main", "config.json");
  ASSERT_FALSE(range.ok());
  EXPECT_EQ(range.error().kind, hub::ErrorKind::RangeNotSatisfiable);
  // The token never shows up in an error message.
  for (const auto* e : {&nf.error(), &rev.error(), &entry.error(), &gated.error(), &unauth.error(),
                        &forbidden.error()})
    EXPECT_EQ(e->message.find(kToken), std::string::npos) << e->message;

  auto o = opts();
  o.token.reset();
  srv.fail("/revision/", 401, 1);
  auto anon = hub::Client(o).repo_info("org/model");
  ASSERT_FALSE(anon.ok());
  EXPECT_NE(anon.error().message.find("no token set"), std::string::npos);
}

TEST_F(HubClient, ConnectionRefusedIsANetworkError) {
  auto o = opts();
  o.endpoint = "http://127.0.0.1:1";  // nothing listens on port 1
  o.max_retries = 1;
  auto r = hub::Client(o).repo_info("org/model");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, hub::ErrorKind::Network);
}

TEST_F(HubClient, ParallelRangesForLargeFiles) {
  auto o = opts();
  o.range_threshold = 100000;
  o.parallel = 3;
  srv.drop_after("model.safetensors", 20000, 1);  // one range is cut and resumed
  hub::Client c(o);
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
  size_t ranged = 0;
  for (const auto& q : srv.requests())
    if (q.path.find("model.safetensors") != std::string::npos && !q.range.empty()) ++ranged;
  EXPECT_EQ(ranged, 4u);  // three ranges plus the resumed one
  EXPECT_EQ(r.value().bytes, total_size());
  expect_clean_store(true);
}

TEST_F(HubClient, OfflineUsesTheStoreOnly) {
  {
    hub::Client c(opts());
    ASSERT_TRUE(c.snapshot_download(store_req()).ok());
  }
  size_t before = srv.requests().size();
  auto o = opts();
  o.offline = true;
  hub::Client c(o);
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().commit, srv.commit());
  EXPECT_EQ(srv.requests().size(), before);
  auto req = store_req();
  req.revision = "other";
  auto miss = c.snapshot_download(req);
  ASSERT_FALSE(miss.ok());
  EXPECT_EQ(miss.error().kind, hub::ErrorKind::Offline);
}

TEST_F(HubClient, DiskReserveIsChecked) {
  auto o = opts();
  o.disk_reserve = uint64_t{1} << 62;
  auto r = hub::Client(o).snapshot_download(store_req());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, hub::ErrorKind::NoSpace);
  EXPECT_NE(r.error().message.find("not enough disk space"), std::string::npos);
}

TEST(HubToken, LookupOrder) {
  TempDir tmp;
  auto saved_token =
      std::getenv("HF_TOKEN") ? std::optional<std::string>(std::getenv("HF_TOKEN")) : std::nullopt;
  auto saved_home =
      std::getenv("HF_HOME") ? std::optional<std::string>(std::getenv("HF_HOME")) : std::nullopt;
  ::setenv("HF_HOME", tmp.path().c_str(), 1);
  ::unsetenv("HF_TOKEN");
  EXPECT_EQ(hub::find_token(std::string("from-config")), "from-config");
  EXPECT_EQ(hub::find_token(), std::nullopt);
  spit(tmp / "token", "hf_file_token\n");
  EXPECT_EQ(hub::find_token(std::string("from-config")), "hf_file_token");
  ::setenv("HF_TOKEN", "hf_env_token", 1);
  EXPECT_EQ(hub::find_token(std::string("from-config")), "hf_env_token");
  ::setenv("HF_ENDPOINT", "http://127.0.0.1:9/", 1);
  ::setenv("HF_HUB_OFFLINE", "1", 1);
  auto o = hub::options_from_env();
  EXPECT_EQ(o.endpoint, "http://127.0.0.1:9");
  EXPECT_TRUE(o.offline);
  EXPECT_EQ(o.token, "hf_env_token");
  ::unsetenv("HF_ENDPOINT");
  ::unsetenv("HF_HUB_OFFLINE");
  if (saved_token)
    ::setenv("HF_TOKEN", saved_token->c_str(), 1);
  else
    ::unsetenv("HF_TOKEN");
  if (saved_home)
    ::setenv("HF_HOME", saved_home->c_str(), 1);
  else
    ::unsetenv("HF_HOME");
}
