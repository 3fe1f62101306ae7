// mirror/read_api.cpp through a plain httplib::Client: model info (with and without blobs), the
// Hub's error codes, the paginated tree, resolve with HEAD, ETag and ranges, booleans in the
// clients' spellings, raw, whoami, the root page and the absence of Xet.
#include <gtest/gtest.h>
#include <httplib.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/strings.h"
#include "mirror/mirror.h"
#include "mirror_fixture.h"
#include "storage/store.h"
#include "support/test_util.h"

using loftqd::testing::slurp;
using nlohmann::json;
namespace st = loftqd::storage;
namespace hub = loftqd::hub;
using loftqd::mirror::MirrorOptions;
using mirror_test::bearer;
using mirror_test::MirrorRead;

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

// Past-the-end and empty-suffix ranges are 416 with "bytes */SIZE" (never a hang or an empty
// 206); an end past the file is clamped; several ranges get the whole file (200), as the Hub.
TEST_F(MirrorRead, RangesPastTheEndAre416AndMultiRangeIsTheWholeFile) {
  seed();
  start();
  auto cli = http();
  cli.set_read_timeout(5, 0);
  std::string data = slurp(store.snapshot_dir("org/m", commit) / "model.safetensors");
  const std::string n = std::to_string(data.size());
  const std::string url = "/org/m/resolve/main/model.safetensors";
  for (const std::string& range : std::vector<std::string>{
           "bytes=" + n + "-", "bytes=999999999999-", "bytes=" + n + "-" + n, "bytes=-0"}) {
    SCOPED_TRACE(range);
    auto r = cli.Get(url, {{"Range", range}});
    ASSERT_TRUE(r) << "no answer";
    EXPECT_EQ(r->status, 416);
    EXPECT_EQ(r->get_header_value("Content-Range"), "bytes */" + n);
    EXPECT_EQ(r->body, "");
  }
  // A start beyond 2^63 is refused by httplib itself before the handler: 416 too, though without
  // Content-Range (the server library's answer).
  auto huge = cli.Get(url, {{"Range", "bytes=99999999999999999999999-"}});
  ASSERT_TRUE(huge) << "no answer";
  EXPECT_EQ(huge->status, 416);
  auto clamped = cli.Get(url, {{"Range", "bytes=69990-999999999999"}});
  ASSERT_TRUE(clamped);
  EXPECT_EQ(clamped->status, 206);
  EXPECT_EQ(clamped->body, data.substr(69990));
  EXPECT_EQ(clamped->get_header_value("Content-Range"), "bytes 69990-69999/" + n);
  auto last = cli.Get(url, {{"Range", "bytes=-10"}});
  ASSERT_TRUE(last);
  EXPECT_EQ(last->status, 206);
  EXPECT_EQ(last->body, data.substr(data.size() - 10));
  auto middle = cli.Get(url, {{"Range", "bytes=5-9"}});
  ASSERT_TRUE(middle);
  EXPECT_EQ(middle->status, 206);
  EXPECT_EQ(middle->body, data.substr(5, 5));
  EXPECT_EQ(middle->get_header_value("Content-Range"), "bytes 5-9/" + n);
  for (const std::string& range :
       std::vector<std::string>{"bytes=0-9,20-29", "bytes=0-9, " + n + "-"}) {
    SCOPED_TRACE(range);
    auto multi = cli.Get(url, {{"Range", range}});
    ASSERT_TRUE(multi);
    EXPECT_EQ(multi->status, 200);
    EXPECT_EQ(multi->body, data);
    EXPECT_EQ(multi->get_header_value("Content-Range"), "");
  }
  auto head = cli.Head(url, {{"Range", "bytes=" + n + "-"}});
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 416);
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

// huggingface_hub 0.3x sends Python's spelling of booleans (requests encodes True as "True").
TEST_F(MirrorRead, BooleansInEveryHubSpelling) {
  seed();
  start();
  auto cli = http();
  auto tree_paths = [&](const std::string& query) {
    auto r = cli.Get("/api/models/org/m/tree/main" + query);
    EXPECT_EQ(r->status, 200) << query << r->body;
    std::set<std::string> paths;
    for (auto& e : json::parse(r->body)) paths.insert(e["path"].get<std::string>());
    return paths;
  };
  const std::set<std::string> all = {"config.json", "model.safetensors", "sub", "sub/dir",
                                     "sub/dir/t.json"};
  const std::set<std::string> top = {"config.json", "model.safetensors", "sub"};
  for (std::string v : {"True", "true", "1", "TRUE"})
    EXPECT_EQ(tree_paths("?recursive=" + v + "&expand=False"), all) << v;
  for (std::string v : {"False", "false", "0", ""}) EXPECT_EQ(tree_paths("?recursive=" + v), top);
  for (std::string v : {"True", "1"}) {
    auto j = json::parse(cli.Get("/api/models/org/m?blobs=" + v)->body);
    EXPECT_EQ(j["siblings"][1]["size"], 70000) << v;
    EXPECT_EQ(j["siblings"][1]["lfs"]["size"], 70000) << v;
    EXPECT_EQ(j["siblings"][0]["size"], std::string("{\"model_type\": \"llama\"}\n").size());
  }
  auto no = json::parse(cli.Get("/api/models/org/m?blobs=False")->body);
  EXPECT_FALSE(no["siblings"][1].contains("size"));
  // Anything else is refused, naming the parameter, instead of read as false.
  auto bad = cli.Get("/api/models/org/m/tree/main?recursive=yes");
  EXPECT_EQ(bad->status, 400);
  EXPECT_NE(bad->body.find("recursive"), std::string::npos) << bad->body;
  EXPECT_EQ(cli.Get("/api/models/org/m?blobs=maybe")->status, 400);
  EXPECT_EQ(cli.Get("/api/models/org/m/tree/main?limit=ten")->status, 400);
}

// Downloads never send Xet headers nor xetHash fields, so hf_xet falls back to plain HTTP; the
// Xet token routes answer an error that says how to turn Xet off.
TEST_F(MirrorRead, NoXetAnywhereAndXetTokensExplainTheWorkaround) {
  seed();
  start();
  auto cli = http();
  for (std::string route : {"xet-write-token", "xet-read-token"}) {
    auto r = cli.Get("/api/models/org/m/" + route + "/main", bearer());
    EXPECT_GE(r->status, 400) << route;
    EXPECT_NE(r->get_header_value("X-Error-Message").find("HF_HUB_DISABLE_XET=1"),
              std::string::npos)
        << route;
    EXPECT_NE(r->body.find("HF_HUB_DISABLE_XET=1"), std::string::npos) << route;
  }
  std::vector<httplib::Result> answers;
  answers.push_back(cli.Get("/org/m/resolve/main/model.safetensors"));
  answers.push_back(cli.Head("/org/m/resolve/main/model.safetensors"));
  answers.push_back(cli.Get("/org/m/resolve/main/config.json"));
  answers.push_back(cli.Get("/api/models/org/m?blobs=True"));
  answers.push_back(cli.Get("/api/models/org/m/tree/main?recursive=True&expand=True"));
  answers.push_back(cli.Post("/api/models/org/m/paths-info/main",
                             "{\"paths\":[\"model.safetensors\",\"sub\"],\"expand\":true}",
                             "application/json"));
  for (auto& r : answers) {
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    for (const auto& [name, value] : r->headers)
      EXPECT_NE(loftqd::common::lower(name).rfind("x-xet", 0), 0u) << name;
    EXPECT_EQ(r->body.find("xetHash"), std::string::npos);
  }
}

// /raw/ serves the same bytes as /resolve/, without the LFS headers (X-Linked-*); a missing file
// is 404, which is how @huggingface/hub's fileExists tells.
TEST_F(MirrorRead, RawServesTheFileAsResolveDoes) {
  seed();
  start();
  auto cli = http();
  auto resolved = cli.Get("/org/m/resolve/main/model.safetensors");
  auto raw = cli.Get("/org/m/raw/main/model.safetensors");
  ASSERT_EQ(raw->status, 200);
  EXPECT_EQ(raw->body, resolved->body);
  EXPECT_EQ(raw->body.size(), 70000u);
  EXPECT_TRUE(resolved->has_header("X-Linked-Etag"));
  EXPECT_FALSE(raw->has_header("X-Linked-Etag"));
  EXPECT_FALSE(raw->has_header("X-Linked-Size"));
  EXPECT_EQ(raw->get_header_value("X-Repo-Commit"), commit);
  EXPECT_EQ(cli.Get("/org/m/raw/" + commit + "/sub/dir/t.json")->body, "[1, 2, 3]\n");
  EXPECT_EQ(cli.Head("/org/m/raw/main/config.json")->status, 200);
  EXPECT_EQ(cli.Head("/org/m/raw/main/nope.json")->status, 404);
  EXPECT_EQ(cli.Head("/org/m/raw/nobranch/config.json")->status, 404);
}

TEST_F(MirrorRead, WhoamiHasNameTypeOrgsAndAuth) {
  seed();
  start();
  auto cli = http();
  EXPECT_EQ(cli.Get("/api/whoami-v2")->status, 401);
  auto r = cli.Get("/api/whoami-v2", bearer());
  ASSERT_EQ(r->status, 200);
  auto j = json::parse(r->body);
  EXPECT_TRUE(j["name"].is_string());
  EXPECT_EQ(j["type"], "user");
  EXPECT_EQ(j["orgs"], json::array());
  EXPECT_EQ(j["auth"]["type"], "access_token");
  EXPECT_EQ(j["auth"]["accessToken"]["role"], "write");
  EXPECT_EQ(r->body.find(mirror_test::kWriteToken), std::string::npos);
}

TEST_F(MirrorRead, RootPageSaysWhatThisIs) {
  start();
  auto r = http().Get("/");
  ASSERT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/html"), std::string::npos);
  EXPECT_NE(r->body.find("HF_ENDPOINT=http://127.0.0.1:" + std::to_string(mirror->port())),
            std::string::npos);
  EXPECT_NE(r->body.find("HF_HUB_DISABLE_XET=1"), std::string::npos);
}

// hub::Client::safetensors_header on files shorter than its first 100,000-byte Range, which
// the mirror clips like the Hub: the whole small file is the header block; a file too short
// for the length field, or whose header goes past its end, is refused naming it.
TEST_F(MirrorRead, SafetensorsHeadersOfFilesShorterThanTheFirstRange) {
  const std::map<std::string, std::string> content = {
      {"tiny.safetensors", loftqd::testing::raw_safetensors(
                               R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})")},
      {"short.safetensors", "12345"},
      {"past.safetensors", loftqd::testing::raw_safetensors(std::string(30, ' ')).substr(0, 20)}};
  std::map<std::string, std::string> files;
  for (const auto& [path, bytes] : content) {
    auto d = st::Digest::lfs(st::sha256_hex(bytes), bytes.size());
    ASSERT_TRUE(store.put_blob("org/h", bytes, d).ok());
    files[path] = d.hex;
  }
  ASSERT_TRUE(store.write_meta("org/h", {false, false, st::iso8601_now(), st::iso8601_now()}).ok());
  ASSERT_TRUE(store.commit_snapshot("org/h", "main", files, std::nullopt).ok());
  start();
  hub::Client c(client_opts());
  auto tiny = c.safetensors_header("org/h", "main", "tiny.safetensors");
  ASSERT_TRUE(tiny.ok()) << tiny.error().message;
  EXPECT_EQ(tiny.value(), content.at("tiny.safetensors"));
  for (const char* bad : {"short.safetensors", "past.safetensors"}) {
    auto r = c.safetensors_header("org/h", "main", bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().kind, hub::ErrorKind::InvalidResponse);
    EXPECT_NE(r.error().message.find(bad), std::string::npos) << r.error().message;
  }
}
