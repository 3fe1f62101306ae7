// mirror/ (in-process): the Hub read API from a store (plain httplib::Client), the write API, and
// the hub client against the mirror (publish -> fetch byte-identical, multipart, branches,
// atomic commits).
#include "mirror/mirror.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "hub/hub.h"
#include "storage/store.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using loftqd::testing::random_bytes;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using nlohmann::json;
namespace hub = loftqd::hub;
namespace st = loftqd::storage;
using loftqd::mirror::Mirror;
using loftqd::mirror::MirrorOptions;

namespace {

constexpr const char* kWriteToken = "hf_mirror_write_token_42";

struct MirrorFixture : ::testing::Test {
  TempDir tmp;
  std::unique_ptr<Mirror> mirror;
  st::Store store{tmp / "store"};
  std::string commit;

  void start(MirrorOptions o = {}) {
    o.store = tmp / "store";
    o.host = "127.0.0.1";
    o.port = 0;
    o.keep_alive_timeout_s = 0;
    if (!o.write_token) o.write_token = kWriteToken;
    mirror = std::make_unique<Mirror>(o);
    mirror->start();
  }
  // org/m: config.json (regular), model.safetensors (LFS), sub/dir/t.json (regular).
  void seed(const std::string& repo = "org/m", bool is_private = false) {
    std::map<std::string, std::string> files;
    for (auto [path, content] : std::vector<std::pair<std::string, std::string>>{
             {"config.json", "{\"model_type\": \"llama\"}\n"},
             {"model.safetensors", random_bytes(70000, 3)},
             {"sub/dir/t.json", "[1, 2, 3]\n"}}) {
      bool lfs = path.ends_with(".safetensors");
      auto d = lfs ? st::Digest::lfs(st::sha256_hex(content), content.size())
                   : st::Digest::git(st::git_blob_sha1(content), content.size());
      ASSERT_TRUE(store.put_blob(repo, content, d).ok());
      files[path] = d.hex;
    }
    st::RepoMeta meta{is_private, false, st::iso8601_now(), st::iso8601_now()};
    ASSERT_TRUE(store.write_meta(repo, meta).ok());
    auto c = store.commit_snapshot(repo, "main", files, std::nullopt);
    ASSERT_TRUE(c.ok());
    commit = c.value();
  }
  httplib::Client http() const {
    httplib::Client c("127.0.0.1", mirror->port());
    return c;
  }
  hub::ClientOptions client_opts(bool with_token = true) const {
    hub::ClientOptions o;
    o.endpoint = mirror->url();
    if (with_token) o.token = kWriteToken;
    o.backoff_base_s = 0.01;
    o.max_retries = 2;
    o.disk_reserve = 0;
    return o;
  }
  void TearDown() override {
    if (mirror) mirror->stop();
  }
};

httplib::Headers bearer(const std::string& t = kWriteToken) {
  return {{"Authorization", "Bearer " + t}};
}

}  // namespace

using MirrorRead = MirrorFixture;
using MirrorWrite = MirrorFixture;

TEST_F(MirrorRead, RepoInfoWithAndWithoutBlobs) {
  seed();
  start();
  auto cli = http();
  for (std::string path :
       std::vector<std::string>{"/api/models/org/m", "/api/models/org/m/revision/main",
                                "/api/models/org/m/revision/" + commit}) {
    auto r = cli.Get(path);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << path << r->body;
    auto j = json::parse(r->body);
    EXPECT_EQ(j["id"], "org/m");
    EXPECT_EQ(j["sha"], commit);
    EXPECT_EQ(j["private"], false);
    EXPECT_EQ(j["gated"], false);
    ASSERT_EQ(j["siblings"].size(), 3u);
    EXPECT_EQ(j["siblings"][1], json({{"rfilename", "model.safetensors"}}));
  }
  auto r = cli.Get("/api/models/org/m?blobs=true");
  ASSERT_EQ(r->status, 200);
  auto s = json::parse(r->body)["siblings"][1];
  std::string data = slurp(store.snapshot_dir("org/m", commit) / "model.safetensors");
  EXPECT_EQ(s["size"], data.size());
  EXPECT_EQ(s["lfs"]["sha256"], st::sha256_hex(data));
  EXPECT_EQ(s["blobId"], st::git_blob_sha1(st::lfs_pointer(st::sha256_hex(data), data.size())));
}

TEST_F(MirrorRead, ErrorCodesLikeTheHub) {
  seed();
  seed("org/private", true);
  start();
  auto cli = http();
  auto missing = cli.Get("/api/models/org/nope");
  EXPECT_EQ(missing->status, 401);  // anonymous: 401, as the Hub
  EXPECT_EQ(missing->get_header_value("X-Error-Code"), "RepoNotFound");
  auto missing_auth = cli.Get("/api/models/org/nope", bearer());
  EXPECT_EQ(missing_auth->status, 404);
  EXPECT_EQ(missing_auth->get_header_value("X-Error-Code"), "RepoNotFound");
  auto rev = cli.Get("/api/models/org/m/revision/nope");
  EXPECT_EQ(rev->status, 404);
  EXPECT_EQ(rev->get_header_value("X-Error-Code"), "RevisionNotFound");
  auto entry = cli.Get("/org/m/resolve/main/nope.bin");
  EXPECT_EQ(entry->status, 404);
  EXPECT_EQ(entry->get_header_value("X-Error-Code"), "EntryNotFound");
  auto priv = cli.Get("/api/models/org/private");
  EXPECT_EQ(priv->status, 401);
  EXPECT_EQ(priv->get_header_value("X-Error-Code"), "RepoNotFound");
  EXPECT_EQ(cli.Get("/org/private/resolve/main/config.json")->status, 401);
  auto priv_ok = cli.Get("/api/models/org/private", bearer());
  EXPECT_EQ(priv_ok->status, 200);
  EXPECT_EQ(json::parse(priv_ok->body)["private"], true);
  EXPECT_EQ(cli.Get("/org/private/resolve/main/config.json", bearer())->status, 200);
}

TEST_F(MirrorRead, TreeIsPaginatedAndListsFolders) {
  seed();
  MirrorOptions o;
  o.tree_page_size = 2;
  start(o);
  auto cli = http();
  std::string url = "/api/models/org/m/tree/main?recursive=true";
  std::vector<json> all;
  for (int pages = 0; pages < 10 && !url.empty(); ++pages) {
    auto r = cli.Get(url);
    ASSERT_EQ(r->status, 200) << r->body;
    for (auto& e : json::parse(r->body)) all.push_back(e);
    std::string link = r->get_header_value("Link");
    url.clear();
    if (!link.empty()) {
      auto a = link.find('<'), b = link.find('>');
      url = link.substr(a + 1, b - a - 1);
      url = url.substr(url.find("/api/"));
      EXPECT_NE(link.find("rel=\"next\""), std::string::npos);
    }
  }
  std::set<std::string> paths;
  for (auto& e : all) paths.insert(e["path"].get<std::string>());
  EXPECT_EQ(paths, (std::set<std::string>{"config.json", "model.safetensors", "sub", "sub/dir",
                                          "sub/dir/t.json"}));
  for (auto& e : all) {
    if (e["path"] == "model.safetensors") {
      EXPECT_EQ(e["type"], "file");
      EXPECT_TRUE(e.contains("lfs"));
      EXPECT_EQ(e["lfs"]["size"], e["size"]);
    }
    if (e["path"] == "sub") {
      EXPECT_EQ(e["type"], "directory");
    }
  }
  auto top = json::parse(cli.Get("/api/models/org/m/tree/main?limit=100")->body);
  EXPECT_EQ(top.size(), 3u);  // config.json, model.safetensors, sub
  auto sub = json::parse(cli.Get("/api/models/org/m/tree/main/sub/dir")->body);
  ASSERT_EQ(sub.size(), 1u);
  EXPECT_EQ(sub[0]["path"], "sub/dir/t.json");
  EXPECT_EQ(cli.Get("/api/models/org/m/tree/main/nope")->status, 404);
}

TEST_F(MirrorRead, ResolveWithHeadEtagAndRanges) {
  seed();
  start();
  auto cli = http();
  std::string data = slurp(store.snapshot_dir("org/m", commit) / "model.safetensors");
  std::string sha = st::sha256_hex(data);
  auto r = cli.Get("/org/m/resolve/main/model.safetensors");
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->body, data);
  EXPECT_EQ(r->get_header_value("ETag"), "\"" + sha + "\"");
  EXPECT_EQ(r->get_header_value("X-Repo-Commit"), commit);
  EXPECT_EQ(r->get_header_value("X-Linked-Etag"), "\"" + sha + "\"");
  EXPECT_EQ(r->get_header_value("X-Linked-Size"), std::to_string(data.size()));
  auto h = cli.Head("/org/m/resolve/main/model.safetensors");
  ASSERT_EQ(h->status, 200);
  EXPECT_EQ(h->body, "");
  EXPECT_EQ(h->get_header_value("Content-Length"), std::to_string(data.size()));
  EXPECT_EQ(h->get_header_value("ETag"), "\"" + sha + "\"");
  auto part =
      cli.Get("/org/m/resolve/" + commit + "/model.safetensors", {{"Range", "bytes=1000-"}});
  ASSERT_EQ(part->status, 206);
  EXPECT_EQ(part->body, data.substr(1000));
  EXPECT_EQ(part->get_header_value("Content-Range"),
            "bytes 1000-" + std::to_string(data.size() - 1) + "/" + std::to_string(data.size()));
  auto cfg = cli.Get("/org/m/resolve/main/config.json");
  EXPECT_EQ(cfg->get_header_value("ETag"), "\"" + st::git_blob_sha1(cfg->body) + "\"");
  EXPECT_EQ(cfg->get_header_value("X-Linked-Etag"), "");
  EXPECT_EQ(cli.Get("/org/m/resolve/main/sub/dir/t.json")->body, "[1, 2, 3]\n");
  EXPECT_EQ(cli.Get("/org/m/resolve/main/../../etc/passwd")->status / 100, 4);
}

TEST_F(MirrorWrite, EveryWriteWithoutTheTokenIs401) {
  seed();
  start();
  auto cli = http();
  std::vector<std::pair<std::string, std::string>> posts = {
      {"/api/repos/create", "{\"name\":\"x\",\"organization\":\"org\"}"},
      {"/api/models/org/m/preupload/main", "{\"files\":[]}"},
      {"/api/models/org/m/commit/main", "{\"key\":\"header\",\"value\":{\"summary\":\"x\"}}\n"},
      {"/api/models/org/m/branch/dev", "{}"},
      {"/org/m.git/info/lfs/objects/batch", "{\"operation\":\"upload\",\"objects\":[]}"},
      {"/api/loftqd/lfs/" + std::string(64, 'a') + "/verify?repo=org%2Fm&size=1", "{}"}};
  for (const auto& [path, body] : posts) {
    EXPECT_EQ(cli.Post(path, body, "application/json")->status, 401) << path;
    EXPECT_EQ(cli.Post(path, bearer("wrong"), body, "application/json")->status, 401) << path;
  }
  EXPECT_EQ(cli.Put("/api/loftqd/lfs/" + std::string(64, 'a') + "?repo=org%2Fm&size=1", "x",
                    "application/octet-stream")
                ->status,
            401);
  EXPECT_EQ(store.read_ref("org/m", "main"), commit);
  EXPECT_FALSE(store.read_ref("org/m", "dev"));
  EXPECT_FALSE(store.has_repo("org/x"));
}

TEST_F(MirrorWrite, ReadOnlyWithoutAWriteToken) {
  seed();
  MirrorOptions o;
  o.write_token = std::nullopt;
  o.store = tmp / "store";
  o.port = 0;
  o.keep_alive_timeout_s = 0;
  mirror = std::make_unique<Mirror>(o);
  mirror->start();
  auto cli = http();
  EXPECT_EQ(
      cli.Post("/api/repos/create", bearer(), "{\"name\":\"org/x\"}", "application/json")->status,
      401);
  EXPECT_EQ(cli.Get("/api/models/org/m")->status, 200);
}

TEST_F(MirrorWrite, CommitsAreValidatedAndGuarded) {
  seed();
  start();
  auto cli = http();
  auto commit_body = [](const std::string& parent, const json& op) {
    return json{{"key", "header"}, {"value", {{"summary", "s"}, {"parentCommit", parent}}}}.dump() +
           "\n" + op.dump() + "\n";
  };
  auto post = [&](const std::string& body) {
    return cli.Post("/api/models/org/m/commit/main", bearer(), body, "application/x-ndjson");
  };
  auto bad_path = post(commit_body(
      commit, {{"key", "file"},
               {"value", {{"path", "../x"}, {"content", "eA=="}, {"encoding", "base64"}}}}));
  EXPECT_EQ(bad_path->status, 400);
  auto no_blob = post(commit_body(
      commit,
      {{"key", "lfsFile"},
       {"value",
        {{"path", "w.bin"}, {"algo", "sha256"}, {"oid", std::string(64, 'b')}, {"size", 3}}}}));
  EXPECT_EQ(no_blob->status, 422);
  auto stale = post(
      commit_body(std::string(40, 'c'),
                  {{"key", "file"},
                   {"value", {{"path", "a.txt"}, {"content", "eA=="}, {"encoding", "base64"}}}}));
  EXPECT_EQ(stale->status, 412);
  EXPECT_EQ(store.read_ref("org/m", "main"), commit);
  auto good = post(commit_body(
      commit, {{"key", "file"},
               {"value", {{"path", "a.txt"}, {"content", "eA=="}, {"encoding", "base64"}}}}));
  ASSERT_EQ(good->status, 200) << good->body;
  auto j = json::parse(good->body);
  EXPECT_TRUE(st::is_sha1_hex(j["commitOid"].get<std::string>()));
  EXPECT_EQ(store.read_ref("org/m", "main"), j["commitOid"]);
  EXPECT_EQ(cli.Get("/org/m/resolve/main/a.txt")->body, "x");
  // A basic LFS upload whose bytes do not hash to the oid is rejected and leaves nothing.
  std::string oid = st::sha256_hex("right");
  auto batch = cli.Post("/org/m.git/info/lfs/objects/batch", bearer(),
                        json{{"operation", "upload"},
                             {"transfers", {"basic"}},
                             {"objects", {{{"oid", oid}, {"size", 5}}}}}
                            .dump(),
                        "application/vnd.git-lfs+json");
  ASSERT_EQ(batch->status, 200);
  std::string href = json::parse(batch->body)["objects"][0]["actions"]["upload"]["href"];
  EXPECT_EQ(href.find(kWriteToken), std::string::npos);  // presigned, never the token
  auto put = cli.Put(href.substr(href.find("/api/")), "wrong", "application/octet-stream");
  EXPECT_EQ(put->status, 400);
  EXPECT_FALSE(store.has_blob("org/m", oid));
  for (auto& e : fs::directory_iterator(store.repo_dir("org/m") / "blobs"))
    EXPECT_EQ(e.path().filename().string().find(".upload"), std::string::npos);
}

TEST_F(MirrorWrite, PublishThenFetchIsByteIdentical) {
  start();
  fs::path dir = tmp / "layout";
  fs::create_directories(dir / "loftq_init");
  spit(dir / "config.json", "{\"a\": 1}\n");
  spit(dir / "model.safetensors", random_bytes(123457, 5));
  spit(dir / "loftq_init/adapter_model.safetensors", random_bytes(4000, 6));
  spit(dir / "loftq_init/adapter_config.json", "{\"r\": 8}\n");
  spit(dir / "README.md", "# model\n");
  spit(dir / "empty.txt", "");
  spit(dir / "loftq_init/copy.safetensors", slurp(dir / "model.safetensors"));
  hub::Client c(client_opts());
  hub::PublishRequest pr;
  pr.dir = dir;
  pr.repo = "org/loftq";
  auto pub = c.upload_folder(pr);
  ASSERT_TRUE(pub.ok()) << pub.error().message;
  EXPECT_TRUE(st::is_sha1_hex(pub.value().commit_oid));
  EXPECT_EQ(pub.value().files, 7u);
  EXPECT_EQ(pub.value().lfs_uploaded, 2u);  // the copy shares its object

  hub::Client reader(client_opts(false));
  hub::SnapshotRequest sr;
  sr.repo = "org/loftq";
  sr.local_dir = tmp / "back";
  auto got = reader.snapshot_download(sr);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got.value().commit, pub.value().commit_oid);
  for (auto p :
       {"config.json", "model.safetensors", "loftq_init/adapter_model.safetensors",
        "loftq_init/adapter_config.json", "README.md", "empty.txt", "loftq_init/copy.safetensors"})
    EXPECT_EQ(slurp(tmp / "back" / p), slurp(dir / p)) << p;

  // Publishing again with a file gone: one new commit, the file deleted, the old snapshot kept.
  fs::remove(dir / "README.md");
  spit(dir / "config.json", "{\"a\": 2}\n");
  auto pub2 = c.upload_folder(pr);
  ASSERT_TRUE(pub2.ok()) << pub2.error().message;
  EXPECT_EQ(pub2.value().deleted, 1u);
  EXPECT_EQ(pub2.value().lfs_uploaded, 0u);  // the LFS objects are already there
  auto info = reader.repo_info("org/loftq");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info.value().sha, pub2.value().commit_oid);
  EXPECT_EQ(info.value().siblings.size(), 6u);
  auto old = reader.repo_info("org/loftq", pub.value().commit_oid);
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(old.value().siblings.size(), 7u);
  // Publishing an unchanged dir makes no commit (as the Hub's own client): the head stays.
  auto pub3 = c.upload_folder(pr);
  ASSERT_TRUE(pub3.ok());
  EXPECT_TRUE(pub3.value().skipped);
  EXPECT_EQ(pub3.value().commit_oid, pub2.value().commit_oid);

  // Fetch into a store and read it back through the HF cache layout.
  sr.local_dir.reset();
  sr.store = tmp / "cache";
  auto cached = reader.snapshot_download(sr);
  ASSERT_TRUE(cached.ok()) << cached.error().message;
  EXPECT_EQ(slurp(cached.value().dir / "model.safetensors"), slurp(dir / "model.safetensors"));
}

TEST_F(MirrorWrite, MultipartUploadsAndBranches) {
  MirrorOptions o;
  o.multipart_threshold = 100000;
  o.multipart_chunk = 40000;
  auto parts = std::make_shared<std::atomic<int>>(0);
  o.on_request = [parts](const std::string& method, const std::string& path, int status) {
    if (method == "PUT" && path.find("/part/") != std::string::npos && status == 200) ++*parts;
  };
  start(o);
  fs::path dir = tmp / "layout";
  fs::create_directories(dir);
  spit(dir / "big.safetensors", random_bytes(250001, 9));
  spit(dir / "config.json", "{}\n");
  hub::Client c(client_opts());
  hub::PublishRequest pr;
  pr.dir = dir;
  pr.repo = "org/big";
  pr.branch = "dev";
  auto pub = c.upload_folder(pr);
  ASSERT_TRUE(pub.ok()) << pub.error().message;
  EXPECT_EQ(parts->load(), 7);  // 250001 bytes in parts of 40000
  auto main_info = c.repo_info("org/big", "main");
  ASSERT_TRUE(main_info.ok());
  EXPECT_TRUE(main_info.value().siblings.empty());  // the branch was created from main
  hub::SnapshotRequest sr;
  sr.repo = "org/big";
  sr.revision = "dev";
  sr.local_dir = tmp / "back";
  auto got = c.snapshot_download(sr);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(slurp(tmp / "back/big.safetensors"), slurp(dir / "big.safetensors"));
  for (auto& e : fs::directory_iterator(store.repo_dir("org/big") / "blobs"))
    EXPECT_EQ(e.path().filename().string().find(".multipart"), std::string::npos);
}

TEST_F(MirrorWrite, ReadersSeeTheOldOrTheNewRevisionNeverAMix) {
  start();
  fs::path a = tmp / "a", b = tmp / "b";
  fs::create_directories(a);
  fs::create_directories(b);
  for (int i = 0; i < 6; ++i) spit(a / ("a" + std::to_string(i) + ".txt"), "a");
  for (int i = 0; i < 9; ++i) spit(b / ("b" + std::to_string(i) + ".txt"), "b");
  hub::Client c(client_opts());
  hub::PublishRequest pr;
  pr.repo = "org/flip";
  pr.dir = a;
  ASSERT_TRUE(c.upload_folder(pr).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> reads{0}, bad{0};
  std::thread reader([&] {
    httplib::Client cli("127.0.0.1", mirror->port());
    while (!stop) {
      auto r = cli.Get("/api/models/org/flip");
      if (!r || r->status != 200) continue;
      auto n = json::parse(r->body)["siblings"].size();
      if (n != 6 && n != 9) ++bad;
      ++reads;
    }
  });
  for (int i = 0; i < 6; ++i) {
    pr.dir = i % 2 ? a : b;
    auto r = c.upload_folder(pr);
    ASSERT_TRUE(r.ok()) << r.error().message;
  }
  stop = true;
  reader.join();
  EXPECT_GT(reads.load(), 0);
  EXPECT_EQ(bad.load(), 0);
}
