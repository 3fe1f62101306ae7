// mirror/write_api.cpp (and the auth in server.cpp): every write needs the token, a read-only
// mirror, commit validation (paths, LFS pointers, parentCommit), publish -> fetch byte-identical
// with the hub client, readers during commits seeing one revision or the other, and folder
// deletes in every client's form.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "hub/hub.h"
#include "mirror/mirror.h"
#include "mirror_fixture.h"
#include "storage/store.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using loftqd::testing::random_bytes;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using nlohmann::json;
namespace hub = loftqd::hub;
namespace st = loftqd::storage;
using loftqd::mirror::Mirror;
using loftqd::mirror::MirrorOptions;
using mirror_test::bearer;
using mirror_test::kWriteToken;
using mirror_test::MirrorWrite;

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

// Each malformed payload is a 400 in the Hub's error shape ({"error"} + X-Error-Message), and
// nothing is committed: the branch stays where it was and the file it would have added is absent.
TEST_F(MirrorWrite, MalformedCommitPayloadsCommitNothing) {
  seed();
  start();
  auto cli = http();
  const json add = {{"key", "file"},
                    {"value", {{"path", "new.txt"}, {"content", "eA=="}, {"encoding", "base64"}}}};
  auto with_header = [&](const json& header_value) {
    return json{{"key", "header"}, {"value", header_value}}.dump() + "\n" + add.dump() + "\n";
  };
  auto with_op = [&](const json& op) {
    return json{{"key", "header"}, {"value", {{"summary", "s"}}}}.dump() + "\n" + add.dump() +
           "\n" + op.dump() + "\n";
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"value not an object", with_header("just a string")},
      {"value an array", with_header(json::array({1, 2}))},
      {"summary 123", with_header({{"summary", 123}})},
      {"summary str array", with_header({{"summary", json::array({"str"})}})},
      {"summary 5.5", with_header({{"summary", 5.5}})},
      {"summary null", with_header({{"summary", nullptr}})},
      {"summary object", with_header({{"summary", {{"a", 1}}}})},
      {"description 5", with_header({{"summary", "s"}, {"description", 5}})},
      {"parentCommit 7", with_header({{"summary", "s"}, {"parentCommit", 7}})},
      {"no header", add.dump() + "\n"},
      {"two headers", with_header({{"summary", "s"}}) + with_header({{"summary", "t"}})},
      {"line not JSON", with_op("{not json")},
      {"line an array", "[1]\n" + with_header({{"summary", "s"}})},
      {"key not a string", with_op({{"key", 5}, {"value", json::object()}})},
      {"unknown key", with_op({{"key", "renameFile"}, {"value", {{"path", "a"}}}})},
      {"op value a string", with_op({{"key", "file"}, {"value", "x"}})},
      {"op without path", with_op({{"key", "deletedFile"}, {"value", json::object()}})},
      {"path a number", with_op({{"key", "deletedFile"}, {"value", {{"path", 3}}}})},
      {"content a number", with_op({{"key", "file"}, {"value", {{"path", "b"}, {"content", 1}}}})},
      {"lfs size negative",
       with_op({{"key", "lfsFile"},
                {"value", {{"path", "w.bin"}, {"oid", std::string(64, 'a')}, {"size", -5}}}})},
      {"lfs size a string",
       with_op({{"key", "lfsFile"},
                {"value", {{"path", "w.bin"}, {"oid", std::string(64, 'a')}, {"size", "5"}}}})},
      {"lfs oid a number", with_op({{"key", "lfsFile"}, {"value", {{"path", "w"}, {"oid", 1}}}})},
  };
  for (const auto& [name, body] : cases) {
    SCOPED_TRACE(name);
    auto r = cli.Post("/api/models/org/m/commit/main", bearer(), body, "application/x-ndjson");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << r->body;
    auto j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error") && j["error"].is_string()) << r->body;
    EXPECT_EQ(r->get_header_value("X-Error-Message"), j["error"].get<std::string>());
    EXPECT_EQ(j["error"].get<std::string>().find("json.exception"), std::string::npos);
    EXPECT_EQ(store.read_ref("org/m", "main"), commit);
    EXPECT_EQ(cli.Get("/org/m/resolve/main/new.txt")->status, 404);
  }
  // The same body with a well-formed header commits (the cases above fail for their defect only).
  auto ok = cli.Post("/api/models/org/m/commit/main", bearer(), with_header({{"summary", "s"}}),
                     "application/x-ndjson");
  ASSERT_EQ(ok->status, 200) << ok->body;
  EXPECT_EQ(json::parse(ok->body)["commitMessage"], "s");
  EXPECT_EQ(cli.Get("/org/m/resolve/main/new.txt")->body, "x");
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

// Folder deletes in every form the clients send: huggingface_hub's CommitOperationDelete("sub/")
// (deletedFolder with the slash), deletedFolder without it, and @huggingface/hub's deleteFiles
// ("sub/" as a deletedFile). Each removes everything under sub/ and nothing else.
TEST_F(MirrorWrite, FolderDeletesWithAndWithoutTheTrailingSlash) {
  std::vector<std::pair<std::string, std::string>> forms = {{"deletedFolder", "sub/"},
                                                            {"deletedFolder", "sub"},
                                                            {"deletedFile", "sub/"},
                                                            {"deletedFolder", "sub/dir/"}};
  seed();
  start();
  auto cli = http();
  for (const auto& [key, path] : forms) {
    auto head = store.read_ref("org/m", "main");
    ASSERT_TRUE(head);
    // Put sub/ back (as seeded) so every form starts from the same tree.
    std::string body =
        json{{"key", "header"}, {"value", {{"summary", "restore"}}}}.dump() + "\n" +
        json{{"key", "file"},
             {"value",
              {{"path", "sub/dir/t.json"}, {"content", "[1, 2, 3]\n"}, {"encoding", "utf-8"}}}}
            .dump() +
        "\n" +
        json{{"key", "file"}, {"value", {{"path", "sub/x.txt"}, {"content", "eA=="}}}}.dump() +
        "\n";
    ASSERT_EQ(
        cli.Post("/api/models/org/m/commit/main", bearer(), body, "application/x-ndjson")->status,
        200);
    body = json{{"key", "header"}, {"value", {{"summary", "delete " + path}}}}.dump() + "\n" +
           json{{"key", key}, {"value", {{"path", path}}}}.dump() + "\n";
    auto r = cli.Post("/api/models/org/m/commit/main", bearer(), body, "application/x-ndjson");
    ASSERT_EQ(r->status, 200) << key << " " << path << ": " << r->body;
    auto files = store.list_snapshot("org/m", json::parse(r->body)["commitOid"].get<std::string>());
    ASSERT_TRUE(files.ok());
    std::set<std::string> paths;
    for (const auto& f : files.value()) paths.insert(f.path);
    std::set<std::string> want = {"config.json", "model.safetensors"};
    if (path == "sub/dir/") want.insert("sub/x.txt");
    EXPECT_EQ(paths, want) << key << " " << path;
  }
  // Deleting what is not there is an error, not a silent no-op; so is an empty path component.
  auto head = *store.read_ref("org/m", "main");
  for (const auto& [key, path] : std::vector<std::pair<std::string, std::string>>{
           {"deletedFolder", "nope/"}, {"deletedFile", "nope.txt"}, {"deletedFolder", "sub//"}}) {
    std::string body = json{{"key", "header"}, {"value", {{"summary", "x"}}}}.dump() + "\n" +
                       json{{"key", key}, {"value", {{"path", path}}}}.dump() + "\n";
    auto r = cli.Post("/api/models/org/m/commit/main", bearer(), body, "application/x-ndjson");
    EXPECT_EQ(r->status, path == "sub//" ? 400 : 404) << path << r->body;
    EXPECT_NE(r->body.find(path), std::string::npos) << r->body;
  }
  EXPECT_EQ(store.read_ref("org/m", "main"), head);
}

// preupload_lfs (the daemon's early upload of finished shards): the LFS objects are stored and
// nothing else changes (no commit, no file in the tree); the upload_folder that follows takes
// their hashes and sends none of their bytes, and what it publishes reads back byte for byte.
TEST_F(MirrorWrite, PreuploadedObjectsAreStoredWithoutACommitAndTheCommitSendsNoneOfThem) {
  start();
  seed("org/loftq");
  fs::path dir = tmp / "layout";
  fs::create_directories(dir / "loftq_init");
  const std::string shard1 = random_bytes(150001, 11), shard2 = random_bytes(90001, 12);
  spit(dir / "model-00001-of-00002.safetensors", shard1);
  spit(dir / "model-00002-of-00002.safetensors", shard2);
  spit(dir / "config.json", "{\"a\": 1}\n");
  spit(dir / "loftq_init/adapter_model.safetensors", random_bytes(4000, 13));
  hub::Client c(client_opts());
  hub::PreuploadRequest req;
  req.repo = "org/loftq";
  req.create = false;
  for (auto name : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})
    req.files.push_back({name, dir / name, std::nullopt});
  uint64_t last_done = 0, last_total = 0;
  auto pre = c.preupload_lfs(req, [&](uint64_t done, uint64_t total, const std::string&) {
    last_done = done;  // called under the client's lock, one at a time
    last_total = total;
  });
  ASSERT_TRUE(pre.ok()) << pre.error().message;
  EXPECT_EQ(last_total, shard1.size() + shard2.size());
  EXPECT_EQ(last_done, last_total);
  EXPECT_EQ(pre.value().lfs_uploaded, 2u);
  EXPECT_EQ(pre.value().bytes_uploaded, shard1.size() + shard2.size());
  EXPECT_EQ(pre.value().lfs.size(), 2u);
  EXPECT_TRUE(pre.value().regular.empty());
  ASSERT_EQ(pre.value().hashes.size(), 2u);
  const hub::KnownHash h1 = pre.value().hashes.at("model-00001-of-00002.safetensors");
  EXPECT_EQ(h1.sha256, st::sha256_hex(shard1));
  EXPECT_EQ(h1.size, shard1.size());
  EXPECT_TRUE(store.has_blob("org/loftq", h1.sha256));
  // No commit: the branch and its tree are as seeded.
  hub::Client reader(client_opts(false));
  auto info = reader.repo_info("org/loftq");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info.value().sha, commit);
  EXPECT_EQ(info.value().siblings.size(), 3u);
  // A second preupload finds the objects stored and sends nothing.
  auto again = c.preupload_lfs(req);
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again.value().lfs_uploaded, 0u);
  EXPECT_EQ(again.value().bytes_uploaded, 0u);

  hub::PublishRequest pr;
  pr.dir = dir;
  pr.repo = "org/loftq";
  pr.hashes = pre.value().hashes;
  auto pub = c.upload_folder(pr);
  ASSERT_TRUE(pub.ok()) << pub.error().message;
  EXPECT_EQ(pub.value().hashes_reused, 2u);
  EXPECT_EQ(pub.value().lfs_uploaded, 1u);  // the adapter only
  EXPECT_EQ(pub.value().bytes_uploaded, 4000u + 9u);
  hub::SnapshotRequest sr;
  sr.repo = "org/loftq";
  sr.local_dir = tmp / "back";
  auto got = reader.snapshot_download(sr);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got.value().commit, pub.value().commit_oid);
  EXPECT_EQ(got.value().files, 4u);  // the seeded files are deleted: the dir is the branch
  for (auto p : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "config.json", "loftq_init/adapter_model.safetensors"})
    EXPECT_EQ(slurp(tmp / "back" / p), slurp(dir / p)) << p;
}

// With create = false nothing appears on a server that has no such repo (or branch): the
// daemon's early upload never makes the repo of a job that may still fail.
TEST_F(MirrorWrite, PreuploadWithoutCreateNeedsTheRepoAndTheBranch) {
  start();
  spit(tmp / "shard.safetensors", random_bytes(5000, 14));
  hub::Client c(client_opts());
  hub::PreuploadRequest req;
  req.repo = "org/new";
  req.create = false;
  req.files.push_back({"shard.safetensors", tmp / "shard.safetensors", std::nullopt});
  auto pre = c.preupload_lfs(req);
  ASSERT_FALSE(pre.ok());
  EXPECT_EQ(pre.error().kind, hub::ErrorKind::RepoNotFound) << pre.error().message;
  EXPECT_FALSE(store.has_repo("org/new"));
  seed("org/new");
  req.branch = "dev";
  pre = c.preupload_lfs(req);
  ASSERT_FALSE(pre.ok());
  EXPECT_EQ(pre.error().kind, hub::ErrorKind::RevisionNotFound) << pre.error().message;
  EXPECT_FALSE(store.has_blob("org/new", st::sha256_hex(slurp(tmp / "shard.safetensors"))));
  // With create (the default) the repo and branch are made, as upload_folder makes them.
  req.repo = "org/made";
  req.create = true;
  pre = c.preupload_lfs(req);
  ASSERT_TRUE(pre.ok()) << pre.error().message;
  EXPECT_TRUE(store.has_repo("org/made"));
  EXPECT_EQ(pre.value().lfs_uploaded, 1u);
}

// A hash brought to upload_folder (PublishRequest::hashes) is taken only while the file is the
// version it came from; a rewritten file (same size, same path) is hashed again. A hash that
// does not match a file still at that version is refused by the server, which hashes what it
// receives: the branch does not move.
TEST_F(MirrorWrite, AKnownHashIsTakenOnlyForTheFileVersionItCameFrom) {
  start();
  fs::path dir = tmp / "layout";
  fs::create_directories(dir);
  spit(dir / "model.safetensors", random_bytes(20000, 15));
  auto stale =
      hub::known_hash(dir / "model.safetensors", st::sha256_hex(slurp(dir / "model.safetensors")));
  ASSERT_TRUE(stale.ok());
  // Rewritten through a new file and a rename, as every writer here does: a new inode.
  spit(dir / "model.safetensors.tmp", random_bytes(20000, 16));
  fs::rename(dir / "model.safetensors.tmp", dir / "model.safetensors");
  hub::Client c(client_opts());
  hub::PublishRequest pr;
  pr.dir = dir;
  pr.repo = "org/k";
  pr.hashes["model.safetensors"] = stale.value();
  auto pub = c.upload_folder(pr);
  ASSERT_TRUE(pub.ok()) << pub.error().message;
  EXPECT_EQ(pub.value().hashes_reused, 0u);
  hub::Client reader(client_opts(false));
  hub::SnapshotRequest sr;
  sr.repo = "org/k";
  sr.local_dir = tmp / "back";
  ASSERT_TRUE(reader.snapshot_download(sr).ok());
  EXPECT_EQ(slurp(tmp / "back" / "model.safetensors"), slurp(dir / "model.safetensors"));

  spit(dir / "model.safetensors.tmp", random_bytes(20000, 17));
  fs::rename(dir / "model.safetensors.tmp", dir / "model.safetensors");
  auto wrong = hub::known_hash(dir / "model.safetensors", st::sha256_hex("not these bytes"));
  ASSERT_TRUE(wrong.ok());
  pr.hashes["model.safetensors"] = wrong.value();
  auto bad = c.upload_folder(pr);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.error().message, ::testing::HasSubstr("sha256")) << bad.error().message;
  auto info = reader.repo_info("org/k");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info.value().sha, pub.value().commit_oid);
}
