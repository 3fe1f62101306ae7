// mirror/repo_api.cpp through a plain httplib::Client: the commit log and its paginated listing,
// commitUrl, tags as refs (and downloads by tag), repo deletion, the model listing, and cardData
// and tags from the README front matter.
#include <gtest/gtest.h>

#include <httplib.h>
#include <cctype>

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "mirror/internal.h"
#include "mirror_fixture.h"
#include "storage/store.h"

using nlohmann::json;
namespace st = loftqd::storage;
using loftqd::mirror::parse_front_matter;
using mirror_test::bearer;
using mirror_test::MirrorFixture;

namespace {

using MirrorRepo = MirrorFixture;

// Commits one utf-8 file to org/m's main as the clients do; returns the answer's JSON.
json commit_file(httplib::Client& cli, const std::string& repo, const std::string& path,
                 const std::string& content, const std::string& summary,
                 const std::string& description = "") {
  std::string body =
      json{{"key", "header"}, {"value", {{"summary", summary}, {"description", description}}}}
          .dump() +
      "\n" +
      json{{"key", "file"},
           {"value", {{"path", path}, {"content", content}, {"encoding", "utf-8"}}}}
          .dump() +
      "\n";
  auto r = cli.Post("/api/models/" + repo + "/commit/main", bearer(), body, "application/x-ndjson");
  EXPECT_EQ(r->status, 200) << r->body;
  return json::parse(r->body);
}

// The path and query of a Link header's rel="next" URL ("" when there is none).
std::string next_link(const httplib::Result& r) {
  std::string link = r->get_header_value("Link");
  if (link.empty()) return "";
  EXPECT_NE(link.find("rel=\"next\""), std::string::npos) << link;
  auto a = link.find('<'), b = link.find('>');
  std::string url = link.substr(a + 1, b - a - 1);
  return url.substr(url.find("/api/"));
}

// YYYY-MM-DDTHH:MM:SS[.fraction]Z (no std::regex: GCC 12 warns inside it under ASan).
bool is_iso_date(const std::string& s) {
  const std::string shape = "dddd-dd-ddTdd:dd:dd";
  if (s.size() < shape.size() + 1 || s.back() != 'Z') return false;
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] == 'd' ? !std::isdigit(static_cast<unsigned char>(s[i])) : s[i] != shape[i])
      return false;
  const std::string rest = s.substr(shape.size(), s.size() - shape.size() - 1);
  if (rest.empty()) return true;
  return rest.size() > 1 && rest[0] == '.' &&
         rest.find_first_not_of("0123456789", 1) == std::string::npos;
}

}  // namespace

TEST_F(MirrorRepo, CommitsAreListedNewestFirstInPages) {
  seed();
  start();
  auto cli = http();
  std::vector<std::string> ids = {commit};  // the seeded commit (not made through the API)
  for (int i = 1; i <= 3; ++i)
    ids.push_back(commit_file(cli, "org/m", "f" + std::to_string(i) + ".txt", "x",
                              "commit " + std::to_string(i), "body " + std::to_string(i))
                      .at("commitOid"));
  std::vector<json> listed;
  std::string url = "/api/models/org/m/commits/main?limit=3";
  int pages = 0;
  for (; pages < 5 && !url.empty(); ++pages) {
    auto r = cli.Get(url);
    ASSERT_EQ(r->status, 200) << url << r->body;
    for (auto& c : json::parse(r->body)) listed.push_back(c);
    url = next_link(r);
  }
  EXPECT_EQ(pages, 2);
  ASSERT_EQ(listed.size(), 4u);
  for (size_t i = 0; i < 3; ++i) {
    const json& c = listed[i];
    int n = 3 - static_cast<int>(i);
    EXPECT_EQ(c["id"], ids[static_cast<size_t>(n)]);
    EXPECT_EQ(c["title"], "commit " + std::to_string(n));
    EXPECT_EQ(c["message"], "body " + std::to_string(n));
    ASSERT_EQ(c["authors"].size(), 1u);
    EXPECT_TRUE(c["authors"][0]["user"].is_string());
    EXPECT_TRUE(is_iso_date(c["date"].get<std::string>())) << c["date"];
  }
  EXPECT_EQ(listed[3]["id"], commit);
  EXPECT_TRUE(listed[3]["title"].is_string());
  // A revision other than main, and an unknown one.
  auto at = json::parse(cli.Get("/api/models/org/m/commits/" + ids[2])->body);
  ASSERT_EQ(at.size(), 3u);
  EXPECT_EQ(at[0]["id"], ids[2]);
  EXPECT_EQ(cli.Get("/api/models/org/m/commits/nope")->status, 404);
  EXPECT_EQ(cli.Get("/api/models/org/m/commits/main?p=x")->status, 400);
}

TEST_F(MirrorRepo, CommitUrlResolves) {
  seed();
  start();
  auto cli = http();
  auto c = commit_file(cli, "org/m", "a.txt", "x", "add a");
  std::string url = c.at("commitUrl");
  std::string prefix = "http://127.0.0.1:" + std::to_string(mirror->port()) + "/";
  ASSERT_EQ(url.rfind(prefix, 0), 0u) << url;
  auto r = cli.Get("/" + url.substr(prefix.size()));
  ASSERT_EQ(r->status, 200) << url;
  auto j = json::parse(r->body);
  EXPECT_EQ(j["id"], c["commitOid"]);
  EXPECT_EQ(j["title"], "add a");
  EXPECT_EQ(j["parent"], commit);
  EXPECT_EQ(cli.Get("/org/m/commit/" + std::string(40, 'e'))->status, 404);
}

TEST_F(MirrorRepo, TagsAreRefsThatDownloadsResolve) {
  seed();
  start();
  auto cli = http();
  const std::string tag_body = R"({"tag": "v1.0", "message": "first"})";
  EXPECT_EQ(cli.Post("/api/models/org/m/tag/main", tag_body, "application/json")->status, 401);
  auto r = cli.Post("/api/models/org/m/tag/main", bearer(), tag_body, "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(cli.Post("/api/models/org/m/tag/main", bearer(), tag_body, "application/json")->status,
            409);
  EXPECT_EQ(
      cli.Post("/api/models/org/m/tag/main", bearer(), R"({"tag": "main"})", "application/json")
          ->status,
      409);
  EXPECT_EQ(cli.Post("/api/models/org/m/tag/nope", bearer(), R"({"tag": "v2"})", "application/json")
                ->status,
            404);
  EXPECT_EQ(cli.Post("/api/models/org/m/tag/main", bearer(),
                     R"({"tag": ")" + std::string(40, 'a') + "\"}", "application/json")
                ->status,
            400);
  // A tag is not a branch: commits to it are refused.
  std::string onto_tag =
      json{{"key", "header"}, {"value", {{"summary", "x"}}}}.dump() + "\n" +
      json{{"key", "file"}, {"value", {{"path", "t.txt"}, {"content", "eA=="}}}}.dump() + "\n";
  auto refused =
      cli.Post("/api/models/org/m/commit/v1.0", bearer(), onto_tag, "application/x-ndjson");
  EXPECT_EQ(refused->status, 400);
  EXPECT_NE(refused->body.find("tag"), std::string::npos) << refused->body;
  EXPECT_EQ(store.read_ref("org/m", "v1.0"), commit);
  // main moves on; the tag stays where it was made.
  commit_file(cli, "org/m", "config.json", "{}\n", "change config");
  auto refs = json::parse(cli.Get("/api/models/org/m/refs")->body);
  ASSERT_EQ(refs["tags"].size(), 1u);
  EXPECT_EQ(refs["tags"][0],
            json({{"name", "v1.0"}, {"ref", "refs/tags/v1.0"}, {"targetCommit", commit}}));
  for (const auto& b : refs["branches"]) EXPECT_NE(b["name"], "v1.0");
  auto old = cli.Get("/org/m/resolve/v1.0/config.json");
  ASSERT_EQ(old->status, 200);
  EXPECT_EQ(old->body, "{\"model_type\": \"llama\"}\n");
  EXPECT_EQ(old->get_header_value("X-Repo-Commit"), commit);
  EXPECT_EQ(cli.Get("/org/m/resolve/main/config.json")->body, "{}\n");
  // Deleting the tag removes the ref.
  EXPECT_EQ(cli.Delete("/api/models/org/m/tag/v1.0")->status, 401);
  EXPECT_EQ(cli.Delete("/api/models/org/m/tag/v1.0", bearer())->status, 200);
  EXPECT_EQ(cli.Delete("/api/models/org/m/tag/main", bearer())->status, 404);  // a branch
  EXPECT_EQ(json::parse(cli.Get("/api/models/org/m/refs")->body)["tags"], json::array());
  EXPECT_EQ(cli.Get("/org/m/resolve/v1.0/config.json")->status, 404);
}

TEST_F(MirrorRepo, DeleteRepoNeedsTheWriteToken) {
  seed();
  seed("org/keep");
  start();
  auto cli = http();
  const std::string body = R"({"name": "m", "organization": "org", "type": "model"})";
  EXPECT_EQ(cli.Delete("/api/repos/delete", body, "application/json")->status, 401);
  EXPECT_EQ(cli.Delete("/api/repos/delete", bearer("wrong"), body, "application/json")->status,
            401);
  EXPECT_TRUE(store.has_repo("org/m"));
  auto r = cli.Delete("/api/repos/delete", bearer(), body, "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_FALSE(store.has_repo("org/m"));
  EXPECT_EQ(cli.Get("/api/models/org/m", bearer())->status, 404);
  EXPECT_EQ(cli.Delete("/api/repos/delete", bearer(), body, "application/json")->status, 404);
  EXPECT_EQ(cli.Delete("/api/repos/delete", bearer(), R"({"name": "keep", "type": "dataset",
      "organization": "org"})",
                       "application/json")
                ->status,
            400);
  EXPECT_EQ(cli.Get("/api/models/org/keep")->status, 200);
  EXPECT_EQ(store.list_repos(), std::vector<std::string>{"org/keep"});
}

TEST_F(MirrorRepo, ModelListingFiltersAndPages) {
  seed("org/alpha");
  seed("org/Beta");
  seed("other/gamma");
  seed("org/hidden", /*is_private=*/true);
  start();
  auto cli = http();
  auto ids = [&](const std::string& query, const httplib::Headers& h = {}) {
    auto r = cli.Get("/api/models" + query, h);
    EXPECT_EQ(r->status, 200) << query << r->body;
    std::vector<std::string> out;
    for (auto& m : json::parse(r->body)) out.push_back(m["id"]);
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(ids(""), (V{"org/Beta", "org/alpha", "other/gamma"}));
  EXPECT_EQ(ids("?author=org"), (V{"org/Beta", "org/alpha"}));
  EXPECT_EQ(ids("?author=org", bearer()), (V{"org/Beta", "org/alpha", "org/hidden"}));
  EXPECT_EQ(ids("?search=beta"), (V{"org/Beta"}));
  EXPECT_EQ(ids("?author=other&search=gam&full=True&sort=lastModified"), (V{"other/gamma"}));
  EXPECT_EQ(ids("?author=nobody"), V{});
  // Pages of one, followed through Link.
  V paged;
  std::string url = "/api/models?limit=1&author=org";
  for (int i = 0; i < 5 && !url.empty(); ++i) {
    auto r = cli.Get(url);
    ASSERT_EQ(r->status, 200) << url;
    auto page = json::parse(r->body);
    EXPECT_EQ(page.size(), 1u);
    for (auto& m : page) paged.push_back(m["id"]);
    url = next_link(r);
  }
  EXPECT_EQ(paged, (V{"org/Beta", "org/alpha"}));
  auto m = json::parse(cli.Get("/api/models?search=alpha")->body).at(0);
  EXPECT_EQ(m["sha"], store.read_ref("org/alpha", "main"));
  EXPECT_EQ(m["private"], false);
  EXPECT_TRUE(m["tags"].is_array());
  EXPECT_TRUE(is_iso_date(m["lastModified"].get<std::string>()));
  EXPECT_FALSE(m.contains("siblings"));
}

TEST_F(MirrorRepo, CardDataAndTagsComeFromTheReadmeFrontMatter) {
  seed();
  start();
  auto cli = http();
  EXPECT_EQ(json::parse(cli.Get("/api/models/org/m")->body)["tags"], json::array());
  const std::string readme =
      "---\nlicense: apache-2.0\nlibrary_name: peft\nbase_model: org/base  # the backbone\n"
      "tags:\n- loftq\n- \"4-bit\" # quoted\ndatasets: [c4, wikitext]\nquant:\n  bits: 4\n  rank: "
      "16\n"
      "inference: false\n---\n# A LoftQ model\n\ntags: not front matter\n";
  commit_file(cli, "org/m", "README.md", readme, "card");
  auto j = json::parse(cli.Get("/api/models/org/m")->body);
  EXPECT_EQ(j["tags"], json({"loftq", "4-bit", "license:apache-2.0"}));
  EXPECT_EQ(j["cardData"], json({{"license", "apache-2.0"},
                                 {"library_name", "peft"},
                                 {"base_model", "org/base"},
                                 {"tags", {"loftq", "4-bit"}},
                                 {"datasets", {"c4", "wikitext"}},
                                 {"quant", {{"bits", 4}, {"rank", 16}}},
                                 {"inference", false}}));
  auto listed = json::parse(cli.Get("/api/models?filter=loftq")->body);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0]["cardData"]["license"], "apache-2.0");
  EXPECT_EQ(json::parse(cli.Get("/api/models?filter=other")->body), json::array());
}

TEST(FrontMatter, TheSubsetAndItsRefusals) {
  std::string problem;
  EXPECT_EQ(parse_front_matter("# no front matter\n", problem), json::object());
  EXPECT_EQ(parse_front_matter("---\ntags: loftq\n---\n", problem), json({{"tags", "loftq"}}));
  EXPECT_EQ(parse_front_matter("---\r\nn: 3\r\nx: 'a: b'\r\n---\r\n", problem),
            json({{"n", 3}, {"x", "a: b"}}));
  auto bad = parse_front_matter("---\nmodel-index:\n- name: m\n  results: []\n---\n", problem);
  EXPECT_FALSE(bad);
  EXPECT_NE(problem.find("line 3"), std::string::npos) << problem;
  EXPECT_FALSE(parse_front_matter("---\ntags: [a]\n", problem));
  EXPECT_NE(problem.find("closing"), std::string::npos) << problem;
  EXPECT_FALSE(parse_front_matter("---\njust text\n---\n", problem));
  EXPECT_NE(problem.find("line 2"), std::string::npos) << problem;
}
