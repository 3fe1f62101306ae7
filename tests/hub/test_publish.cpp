// hub/publish.cpp against the real mirror (`loftqd serve`, a child process on
// 127.0.0.1) behind a recording proxy: an unchanged dir makes no commit (CommitInfo::skipped),
// a changed file, a deletion, a new branch or a new repo do, and the byte counters.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "hub/hub.h"
#include "storage/store.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using loftqd::testing::random_bytes;
using loftqd::testing::ServeProcess;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
namespace hub = loftqd::hub;
namespace st = loftqd::storage;

namespace {

constexpr const char* kPublishToken = "hf_publish_test_token_77";

// Forwards every request to the mirror and records "METHOD path". The Host header is passed on
// unchanged, so the URLs the mirror hands out (LFS uploads) point back at the proxy.
class RecordingProxy {
 public:
  explicit RecordingProxy(int upstream_port) : upstream_(upstream_port) {
    auto forward = [this](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard<std::mutex> g(mu_);
        seen_.push_back(req.method + " " + req.path);
      }
      httplib::Client cli("127.0.0.1", upstream_);
      cli.set_tcp_nodelay(true);
      httplib::Headers h;
      for (const auto& [k, v] : req.headers) {
        std::string lk = k;
        for (auto& ch : lk) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        if (lk == "content-length" || lk == "connection" || lk == "range" ||
            lk.rfind("remote_", 0) == 0 || lk.rfind("local_", 0) == 0)
          continue;
        h.emplace(k, v);
      }
      std::string type = req.get_header_value("Content-Type");
      auto send = [&]() -> httplib::Result {
        if (req.method == "POST") return cli.Post(req.target, h, req.body, type);
        if (req.method == "PUT") return cli.Put(req.target, h, req.body, type);
        return cli.Get(req.target, h);
      };
      httplib::Result r = send();
      if (!r) {
        res.status = 502;
        return;
      }
      res.status = r->status;
      for (const auto& [k, v] : r->headers) {
        std::string lk = k;
        for (auto& ch : lk) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        if (lk == "content-length" || lk == "transfer-encoding" || lk == "connection" ||
            lk == "keep-alive" || lk == "content-type" || lk == "content-encoding")
          continue;
        res.set_header(k, v);
      }
      res.set_content(r->body, r->get_header_value("Content-Type"));
    };
    svr_.Get(".*", forward);
    svr_.Post(".*", forward);
    svr_.Put(".*", forward);
    // One request per connection: stop() then need not wait out an idle keep-alive.
    svr_.set_keep_alive_max_count(1);
    svr_.set_tcp_nodelay(true);
    port_ = svr_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { svr_.listen_after_bind(); });
    while (!svr_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~RecordingProxy() {
    svr_.stop();
    thread_.join();
  }
  RecordingProxy(const RecordingProxy&) = delete;
  RecordingProxy& operator=(const RecordingProxy&) = delete;
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  // Requests so far whose "METHOD path" contains `part`.
  size_t count(const std::string& part) const {
    std::lock_guard<std::mutex> g(mu_);
    size_t n = 0;
    for (const auto& s : seen_)
      if (s.find(part) != std::string::npos) ++n;
    return n;
  }
  size_t total() const {
    std::lock_guard<std::mutex> g(mu_);
    return seen_.size();
  }

 private:
  int upstream_;
  int port_ = 0;
  httplib::Server svr_;
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<std::string> seen_;
};

struct PublishFixture : ::testing::Test {
  TempDir tmp;
  std::unique_ptr<ServeProcess> serve;
  std::unique_ptr<RecordingProxy> proxy;
  fs::path dir;

  void SetUp() override {
    spit(tmp / "token", std::string(kPublishToken) + "\n");
    serve = std::make_unique<ServeProcess>(tmp / "store", tmp / "token", tmp.path());
    ASSERT_GT(serve->port(), 0) << serve->log();
    proxy = std::make_unique<RecordingProxy>(serve->port());
    dir = tmp / "layout";
    fs::create_directories(dir / "sub");
    spit(dir / "config.json", "{\"a\": 1}\n");
    spit(dir / "model.safetensors", random_bytes(70000, 11));  // LFS
    spit(dir / "sub/tokenizer.json", "[1, 2, 3]\n");
    spit(dir / "empty.txt", "");
  }
  void TearDown() override {
    proxy.reset();
    serve.reset();
  }
  hub::ClientOptions opts() const {
    hub::ClientOptions o;
    o.endpoint = proxy->url();
    o.token = kPublishToken;
    o.backoff_base_s = 0.01;
    o.max_retries = 2;
    o.disk_reserve = 0;
    return o;
  }
  hub::PublishRequest req(const std::string& repo = "org/pub",
                          const std::string& branch = "main") const {
    hub::PublishRequest pr;
    pr.dir = dir;
    pr.repo = repo;
    pr.branch = branch;
    return pr;
  }
  uint64_t regular_bytes() const {
    return slurp(dir / "config.json").size() + slurp(dir / "sub/tokenizer.json").size();
  }
  std::string head(const std::string& repo, const std::string& branch = "main") const {
    auto info = hub::Client(opts()).repo_info(repo, branch);
    return info.ok() ? info.value().sha : "error: " + info.error().message;
  }
};

}  // namespace

using HubPublish = PublishFixture;

TEST_F(HubPublish, UnchangedFolderMakesNoCommit) {
  hub::Client c(opts());
  auto first = c.upload_folder(req());
  ASSERT_TRUE(first.ok()) << first.error().message << serve->log();
  EXPECT_FALSE(first.value().skipped);
  EXPECT_TRUE(st::is_sha1_hex(first.value().commit_oid));
  EXPECT_EQ(first.value().files, 4u);
  EXPECT_EQ(first.value().lfs_uploaded, 1u);
  EXPECT_EQ(first.value().bytes_uploaded, 70000 + regular_bytes());
  EXPECT_EQ(proxy->count("POST /api/models/org/pub/commit/"), 1u);
  EXPECT_GE(proxy->count("PUT "), 1u);  // the LFS upload went through the proxy

  // Published again as it is: no commit, no upload, the same head.
  size_t before = proxy->total();
  auto again = c.upload_folder(req());
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_TRUE(again.value().skipped);
  EXPECT_EQ(again.value().commit_oid, first.value().commit_oid);
  EXPECT_EQ(again.value().commit_url, proxy->url() + "/org/pub/commit/" + first.value().commit_oid);
  EXPECT_EQ(again.value().files, 4u);
  EXPECT_EQ(again.value().bytes_uploaded, 0u);
  EXPECT_EQ(again.value().lfs_uploaded, 0u);
  EXPECT_EQ(again.value().deleted, 0u);
  EXPECT_EQ(proxy->count("/commit/"), 1u) << "the server saw a second commit request";
  EXPECT_EQ(proxy->count("/preupload/"), 1u);
  EXPECT_EQ(proxy->count("/info/lfs/"), 1u);
  EXPECT_GT(proxy->total(), before);  // it did look (repo, revision, tree)
  EXPECT_EQ(head("org/pub"), first.value().commit_oid);
  auto keep = req();
  keep.delete_missing = false;
  auto kept = c.upload_folder(keep);
  ASSERT_TRUE(kept.ok()) << kept.error().message;
  EXPECT_TRUE(kept.value().skipped);

  // One regular file changed (same size, other bytes): a new commit; only the regular files are
  // sent, the LFS object is already there.
  spit(dir / "config.json", "{\"a\": 2}\n");
  auto changed = c.upload_folder(req());
  ASSERT_TRUE(changed.ok()) << changed.error().message;
  EXPECT_FALSE(changed.value().skipped);
  EXPECT_NE(changed.value().commit_oid, first.value().commit_oid);
  EXPECT_EQ(changed.value().lfs_uploaded, 0u);
  EXPECT_EQ(changed.value().bytes_uploaded, regular_bytes());
  EXPECT_EQ(proxy->count("/commit/"), 2u);
  EXPECT_EQ(head("org/pub"), changed.value().commit_oid);

  // An LFS file with the same size and other bytes: a new commit that uploads it.
  spit(dir / "model.safetensors", random_bytes(70000, 12));
  auto lfs = c.upload_folder(req());
  ASSERT_TRUE(lfs.ok()) << lfs.error().message;
  EXPECT_FALSE(lfs.value().skipped);
  EXPECT_EQ(lfs.value().lfs_uploaded, 1u);
  EXPECT_EQ(lfs.value().bytes_uploaded, 70000 + regular_bytes());
  auto same = c.upload_folder(req());
  ASSERT_TRUE(same.ok()) << same.error().message;
  EXPECT_TRUE(same.value().skipped);
  EXPECT_EQ(same.value().commit_oid, lfs.value().commit_oid);
  EXPECT_EQ(proxy->count("/commit/"), 3u);

  // A file gone: a commit that deletes it (unless the remote files are kept).
  fs::remove(dir / "empty.txt");
  auto keep2 = req();
  keep2.delete_missing = false;
  auto kept2 = c.upload_folder(keep2);
  ASSERT_TRUE(kept2.ok()) << kept2.error().message;
  EXPECT_TRUE(kept2.value().skipped);
  auto del = c.upload_folder(req());
  ASSERT_TRUE(del.ok()) << del.error().message;
  EXPECT_FALSE(del.value().skipped);
  EXPECT_EQ(del.value().deleted, 1u);
  EXPECT_EQ(proxy->count("/commit/"), 4u);
  // A new file: a commit.
  spit(dir / "sub/new.txt", "new\n");
  auto added = c.upload_folder(req());
  ASSERT_TRUE(added.ok()) << added.error().message;
  EXPECT_FALSE(added.value().skipped);
  EXPECT_EQ(proxy->count("/commit/"), 5u);
  EXPECT_EQ(serve->log().find(kPublishToken), std::string::npos);
}

TEST_F(HubPublish, NewBranchOrRepoIsNeverUnchanged) {
  hub::Client c(opts());
  auto main = c.upload_folder(req());
  ASSERT_TRUE(main.ok()) << main.error().message;
  EXPECT_FALSE(main.value().skipped);

  // "dev" starts at main's head, which already holds every file: still a commit of its own.
  auto dev = c.upload_folder(req("org/pub", "dev"));
  ASSERT_TRUE(dev.ok()) << dev.error().message;
  EXPECT_FALSE(dev.value().skipped);
  EXPECT_NE(dev.value().commit_oid, main.value().commit_oid);
  EXPECT_EQ(head("org/pub", "dev"), dev.value().commit_oid);
  EXPECT_EQ(head("org/pub", "main"), main.value().commit_oid);
  EXPECT_EQ(proxy->count("/commit/"), 2u);
  auto dev2 = c.upload_folder(req("org/pub", "dev"));
  ASSERT_TRUE(dev2.ok()) << dev2.error().message;
  EXPECT_TRUE(dev2.value().skipped);
  EXPECT_EQ(dev2.value().commit_oid, dev.value().commit_oid);
  EXPECT_EQ(proxy->count("/commit/"), 2u);

  // Another repo: new, so a commit, and the LFS object is sent again (objects are per repo).
  auto other = c.upload_folder(req("org/other"));
  ASSERT_TRUE(other.ok()) << other.error().message;
  EXPECT_FALSE(other.value().skipped);
  EXPECT_EQ(other.value().bytes_uploaded, 70000 + regular_bytes());
  EXPECT_EQ(proxy->count("/commit/"), 3u);

  // An empty dir into a new repo matches the new repo's empty tree, and is still a commit.
  fs::create_directories(tmp / "empty");
  auto e = req("org/empty");
  e.dir = tmp / "empty";
  auto first = c.upload_folder(e);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_FALSE(first.value().skipped);
  EXPECT_EQ(first.value().bytes_uploaded, 0u);
  EXPECT_EQ(proxy->count("/commit/"), 4u);
  auto second = c.upload_folder(e);
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_TRUE(second.value().skipped);
  EXPECT_EQ(second.value().commit_oid, first.value().commit_oid);
  EXPECT_EQ(proxy->count("/commit/"), 4u);
}

TEST_F(HubPublish, DownloadCountsBytesOnlyOnce) {
  hub::Client c(opts());
  ASSERT_TRUE(c.upload_folder(req()).ok());
  hub::SnapshotRequest sr;
  sr.repo = "org/pub";
  sr.store = tmp / "cache";
  auto got = c.snapshot_download(sr);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got.value().bytes, 70000 + regular_bytes());
  auto again = c.snapshot_download(sr);
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again.value().bytes, 0u);
  EXPECT_EQ(slurp(again.value().dir / "model.safetensors"), slurp(dir / "model.safetensors"));
}

// ---- Implausible replies (a scripted Hub) ----

namespace {

using nlohmann::json;

// A Hub that answers upload_folder's steps with what a test scripts: a new repo at a known head,
// preupload sending *.bin to LFS, and the LFS batch, the upload PUT and the commit replies set by
// the case. It counts the uploads and the commits it was sent, and the most PUTs it had in flight
// at once (each held put_delay_ms; a PUT whose path contains fail_put gets 403).
class ScriptedHub {
 public:
  static constexpr const char* kHead = "0123456789abcdef0123456789abcdef01234567";
  std::function<json(const json& objects, const std::string& base)> batch;
  json preupload_reply, commit_reply;
  std::atomic<int> puts{0}, commits{0}, in_flight{0}, peak_in_flight{0};
  int put_delay_ms = 0;
  std::string fail_put;
  std::mutex mu;
  std::vector<json> completions;  // multipart completion bodies

  ScriptedHub() {
    svr_.Post("/api/repos/create", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("{\"url\":\"x\"}", "application/json");
    });
    svr_.Get(R"(/api/models/org/x/revision/.*)",
             [](const httplib::Request&, httplib::Response& res) {
               res.set_content(json{{"id", "org/x"}, {"sha", kHead}}.dump(), "application/json");
             });
    svr_.Post(R"(/api/models/org/x/preupload/.*)", [this](const httplib::Request& req,
                                                          httplib::Response& res) {
      json out = json::array();
      const json asked = json::parse(req.body);
      for (const auto& f : asked["files"]) {
        std::string p = f["path"];
        out.push_back({{"path", p}, {"uploadMode", p.ends_with(".bin") ? "lfs" : "regular"}});
      }
      res.set_content((preupload_reply.is_null() ? json{{"files", out}} : preupload_reply).dump(),
                      "application/json");
    });
    svr_.Post("/org/x.git/info/lfs/objects/batch",
              [this](const httplib::Request& req, httplib::Response& res) {
                res.set_content(batch(json::parse(req.body)["objects"], url()).dump(),
                                "application/vnd.git-lfs+json");
              });
    svr_.Post("/up/.*", [this](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard<std::mutex> g(mu);
        completions.push_back(json::parse(req.body));
      }
      res.set_content("{}", "application/json");
    });
    svr_.Put(".*", [this](const httplib::Request& req, httplib::Response& res) {
      ++puts;
      const int now = ++in_flight;
      for (int seen = peak_in_flight.load(); now > seen;)
        if (peak_in_flight.compare_exchange_weak(seen, now)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(put_delay_ms));
      --in_flight;
      if (!fail_put.empty() && req.path.find(fail_put) != std::string::npos) {
        res.status = 403;
        return;
      }
      res.set_header("ETag", "\"" + req.path + "\"");  // tells the parts apart
      res.status = 200;
    });
    svr_.Post(R"(/api/models/org/x/commit/.*)",
              [this](const httplib::Request&, httplib::Response& res) {
                ++commits;
                res.set_content(commit_reply.dump(), "application/json");
              });
    // One request per connection: stop() then need not wait out an idle keep-alive.
    svr_.set_keep_alive_max_count(1);
    port_ = svr_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { svr_.listen_after_bind(); });
    while (!svr_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~ScriptedHub() {
    svr_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  httplib::Server svr_;
  std::thread thread_;
  int port_ = 0;
};

// A batch answer uploading each object with `header` at {base}/up/{oid} ("{oid}" in `patch`
// values is replaced; `patch` is merged into each object).
std::function<json(const json&, const std::string&)> batch_with(json header, json patch = {}) {
  return [header, patch](const json& objects, const std::string& base) {
    json out = json::array();
    for (const auto& o : objects) {
      json h = header;
      for (auto& [k, v] : h.items())
        if (v.is_string() && v.get<std::string>() == "{part}") v = base + "/up/" + k;
      json e = {
          {"oid", o["oid"]},
          {"size", o["size"]},
          {"actions",
           {{"upload", {{"href", base + "/up/" + o["oid"].get<std::string>()}, {"header", h}}}}}};
      if (!patch.is_null()) e.merge_patch(patch);
      out.push_back(e);
    }
    return json{{"transfer", "basic"}, {"objects", out}};
  };
}

// upload_folder of `dir` to the scripted Hub's org/x: no retries, nothing deleted.
hub::Result<hub::CommitInfo> publish_scripted(const ScriptedHub& hub, const fs::path& dir,
                                              int parallel_uploads = 4) {
  hub::ClientOptions o;
  o.endpoint = hub.url();
  o.token = kPublishToken;
  o.max_retries = 0;
  o.disk_reserve = 0;
  o.parallel_uploads = parallel_uploads;
  hub::PublishRequest pr;
  pr.dir = dir;
  pr.repo = "org/x";
  pr.delete_missing = false;
  return hub::Client(o).upload_folder(pr);
}

}  // namespace

// Implausible or malformed replies (an empty commit id, chunk_size 0 or "abc", sizes that do not
// match, parts that do not add up, replies of the wrong shape) are InvalidResponse errors naming
// the repo, the endpoint and the step, never success and never an escaping exception.
TEST(HubPublishReplies, ImplausibleRepliesAreErrors) {
  TempDir tmp;
  spit(tmp / "w.bin", random_bytes(25, 5));  // LFS: 25 bytes
  spit(tmp / "a.txt", "hello\n");
  const json good_commit = {{"commitOid", std::string(40, 'a')}, {"commitUrl", "u"}};
  struct Case {
    std::string name, message;
    std::function<json(const json&, const std::string&)> batch;
    json commit = nullptr, preupload = nullptr;
  };
  const std::vector<Case> cases = {
      {"commit reply {}", "commitOid", batch_with(json::object()), json::object()},
      {"commit id empty", "commitOid", batch_with(json::object()), json{{"commitOid", ""}}},
      {"commit id not hex", "commitOid", batch_with(json::object()), json{{"commitOid", "zz"}}},
      {"commit id a number", "commitOid", batch_with(json::object()), json{{"commitOid", 5}}},
      {"chunk_size abc", "chunk_size", batch_with({{"chunk_size", "abc"}, {"1", "{part}"}})},
      {"chunk_size 0", "chunk_size", batch_with({{"chunk_size", "0"}, {"1", "{part}"}})},
      {"chunk_size -5", "chunk_size", batch_with({{"chunk_size", -5}, {"1", "{part}"}})},
      {"parts do not add up", "needs parts 1..3",
       batch_with({{"chunk_size", "10"}, {"1", "{part}"}, {"2", "{part}"}})},
      {"parts numbered wrong", "needs parts 1..3",
       batch_with({{"chunk_size", 10}, {"1", "{part}"}, {"2", "{part}"}, {"4", "{part}"}})},
      {"chunk without parts", "without part URLs", batch_with({{"chunk_size", "10"}})},
      {"size -5", "size -5", batch_with(json::object(), {{"size", -5}})},
      {"size absurd", "size 18446744073709551615",
       batch_with(json::object(), {{"size", std::numeric_limits<uint64_t>::max()}})},
      {"href a number", "href",
       batch_with(json::object(), {{"actions", {{"upload", {{"href", 5}}}}}})},
      {"objects not an array", "objects",
       [](const json&, const std::string&) {
         return json{{"objects", "x"}};
       }},
      {"object left out", "no answer for 'w.bin'",
       [](const json&, const std::string&) {
         return json{{"objects", json::array()}};
       }},
      {"preupload files not an array", "files", batch_with(json::object()), nullptr,
       json{{"files", 3}}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    ScriptedHub hub;
    hub.batch = c.batch;
    hub.commit_reply = c.commit.is_null() ? good_commit : c.commit;
    hub.preupload_reply = c.preupload;
    auto r = publish_scripted(hub, tmp.path());
    ASSERT_FALSE(r.ok()) << "accepted: " << r.value().commit_oid;
    EXPECT_EQ(r.error().kind, hub::ErrorKind::InvalidResponse) << r.error().message;
    EXPECT_NE(r.error().message.find("repo 'org/x'"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find(hub.url()), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find(c.message), std::string::npos) << r.error().message;
    EXPECT_EQ(r.error().message.find(kPublishToken), std::string::npos);
    // Nothing is committed unless the commit reply itself is the bad one.
    EXPECT_EQ(hub.commits.load(), c.commit.is_null() ? 0 : 1);
  }
  // The same script with plausible replies succeeds: the cases fail for their defect only.
  ScriptedHub hub;
  hub.batch = batch_with({{"chunk_size", "10"}, {"1", "{part}"}, {"2", "{part}"}, {"3", "{part}"}});
  hub.commit_reply = good_commit;
  auto r = publish_scripted(hub, tmp.path());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().commit_oid, std::string(40, 'a'));
  EXPECT_EQ(hub.puts.load(), 3);  // parts 1..3 of 25 bytes in chunks of 10
  EXPECT_EQ(hub.commits.load(), 1);
}

// LFS objects, and the parts of a multipart one, go up ClientOptions::parallel_uploads at a time:
// with each PUT held 250 ms, the server sees that many in flight at once and never more, and the
// completion lists every part's ETag in part order. A refused upload stops the publish before its
// commit, naming the file.
TEST(HubPublishReplies, LfsObjectsUploadParallelUploadsAtATime) {
  TempDir tmp;
  for (int i = 0; i < 6; ++i)
    spit(tmp / ("w" + std::to_string(i) + ".bin"), random_bytes(100 + i, 30 + i));
  const json good_commit = {{"commitOid", std::string(40, 'b')}, {"commitUrl", "u"}};
  auto publish = [&](ScriptedHub& hub, int parallel) {
    hub.batch = batch_with(json::object());
    hub.commit_reply = good_commit;
    hub.put_delay_ms = 250;
    return publish_scripted(hub, tmp.path(), parallel);
  };
  for (int parallel : {1, 3}) {
    ScriptedHub hub;
    auto r = publish(hub, parallel);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r.value().lfs_uploaded, 6u);
    EXPECT_EQ(hub.puts.load(), 6);
    EXPECT_EQ(hub.commits.load(), 1);
    if (parallel == 1)
      EXPECT_EQ(hub.peak_in_flight.load(), 1);
    else
      EXPECT_GE(hub.peak_in_flight.load(), 2);
    EXPECT_LE(hub.peak_in_flight.load(), parallel);
  }
  {
    TempDir one;
    spit(one / "big.bin", random_bytes(25, 9));
    ScriptedHub hub;
    hub.batch =
        batch_with({{"chunk_size", "10"}, {"1", "{part}"}, {"2", "{part}"}, {"3", "{part}"}});
    hub.commit_reply = good_commit;
    hub.put_delay_ms = 250;
    auto r = publish_scripted(hub, one.path(), 3);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(hub.puts.load(), 3);
    EXPECT_GE(hub.peak_in_flight.load(), 2);
    ASSERT_EQ(hub.completions.size(), 1u);
    const json& parts = hub.completions[0]["parts"];
    ASSERT_EQ(parts.size(), 3u);
    for (int k = 0; k < 3; ++k) {
      EXPECT_EQ(parts[size_t(k)]["partNumber"], k + 1);
      EXPECT_EQ(parts[size_t(k)]["etag"], "/up/" + std::to_string(k + 1));
    }
  }
  ScriptedHub hub;
  hub.fail_put = st::sha256_hex(slurp(tmp / "w0.bin"));
  auto r = publish(hub, 3);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("w0.bin"), std::string::npos) << r.error().message;
  EXPECT_EQ(hub.commits.load(), 0);
}
