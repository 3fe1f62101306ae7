// mirror/server.cpp: parse_listen, the extra routes served ahead of the Hub API (what run.cpp
// adds /healthz, /metrics and /webhook with), methods the mirror does not serve, and tokens of
// any form.
#include <gtest/gtest.h>
#include <httplib.h>

#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/strings.h"
#include "mirror/mirror.h"
#include "mirror_fixture.h"

using loftqd::mirror::HttpExchange;
using loftqd::mirror::MirrorOptions;
using loftqd::mirror::parse_listen;
using mirror_test::bearer;
using MirrorServer = mirror_test::MirrorFixture;

TEST(MirrorListen, ParsesHostAndPort) {
  EXPECT_EQ(parse_listen("127.0.0.1:8080"), (std::pair<std::string, int>{"127.0.0.1", 8080}));
  EXPECT_EQ(parse_listen("[::1]:0"), (std::pair<std::string, int>{"::1", 0}));
  EXPECT_EQ(parse_listen("0.0.0.0:65535").second, 65535);
  for (const char* bad : {"8080", ":8080", "host:", "host:80x", "host:-1", "host:65536"})
    EXPECT_THROW(parse_listen(bad), std::invalid_argument) << bad;
}

TEST_F(MirrorServer, ExtraRoutesAnswerAheadOfTheHubApi) {
  seed();
  MirrorOptions o;
  o.extra_routes["GET /healthz"] = [](HttpExchange& ex) { ex.reply = "ok\n"; };
  o.extra_routes["POST /api/repos/create"] = [](HttpExchange& ex) {
    ex.status = 202;
    ex.content_type = "application/json";
    ex.reply = ex.method + " " + ex.path + " " + ex.header("x-test-header") + " " + ex.body;
  };
  start(o);
  auto cli = http();
  auto h = cli.Get("/healthz");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(h->body, "ok\n");
  auto p = cli.Post("/api/repos/create", {{"X-Test-Header", "v"}}, "b", "text/plain");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->status, 202);
  EXPECT_EQ(p->get_header_value("Content-Type"), "application/json");
  EXPECT_EQ(p->body, "POST /api/repos/create v b");
  EXPECT_FALSE(store.has_repo("org/x"));
  EXPECT_EQ(cli.Get("/api/models/org/m")->status, 200);  // other paths still reach the Hub API
  EXPECT_EQ(cli.Get("/nope")->status, 404);
}

TEST_F(MirrorServer, UnknownDeletesAreRefused) {
  seed();
  start();
  auto cli = http();
  EXPECT_EQ(cli.Delete("/api/repos/delete")->status, 401);
  EXPECT_EQ(cli.Delete("/api/models/org/m/nope")->status, 401);
  EXPECT_EQ(cli.Delete("/api/models/org/m/nope", bearer())->status, 405);
  EXPECT_TRUE(store.has_repo("org/m"));
}

// The mirror takes whatever token it was given: the docs' hf_ recipe, an old base64 one with
// '+', '/' and '=', or any other string; only that exact string is accepted.
TEST_F(MirrorServer, AnyTokenStringIsAccepted) {
  seed();
  for (std::string token : {"hf_AbC123xyz", "q+/Zr9=", "not-an-hf-token with space"}) {
    MirrorOptions o;
    o.write_token = token;
    start(o);
    auto cli = http();
    auto r = cli.Get("/api/whoami-v2", bearer(token));
    EXPECT_EQ(r->status, 200) << token;
    EXPECT_EQ(cli.Get("/api/whoami-v2", bearer(token + "x"))->status, 401) << token;
    EXPECT_EQ(cli.Post("/api/models/org/m/branch/b" + std::to_string(token.size()), bearer(token),
                       "{}", "application/json")
                  ->status,
              200)
        << token;
    mirror->stop();
  }
}

namespace {

// The route column of docs/hub.md's route table: "METHOD[|METHOD] /path..." per row.
std::vector<std::string> documented_routes() {
  std::ifstream f(std::string(LOFTQD_SOURCE_DIR) + "/docs/hub.md");
  std::vector<std::string> out;
  std::string line;
  bool in_table = false;
  while (std::getline(f, line)) {
    if (line.rfind("| Route |", 0) == 0) in_table = true;
    if (!in_table) continue;
    if (line.rfind("| `", 0) != 0) {
      if (line.rfind("|", 0) != 0) break;
      continue;
    }
    auto b = line.find('`', 3);
    out.push_back(line.substr(3, b - 3));
  }
  return out;
}

}  // namespace

// Every route docs/hub.md lists is dispatched to a handler (not the generic "Not found" nor
// 405): the table stays true as routes change.
TEST_F(MirrorServer, EveryDocumentedRouteIsServed) {
  seed();
  start();
  auto routes = documented_routes();
  ASSERT_GE(routes.size(), 20u);
  auto cli = http();
  size_t checked = 0;
  for (const auto& route : routes) {
    auto space = route.find(' ');
    std::string methods = route.substr(0, space);
    if (methods != "GET" && methods != "POST" && methods != "DELETE" && methods != "GET\\|HEAD")
      continue;  // e.g. "create_pr=1", described in words
    std::string path = route.substr(space + 1);
    path = path.substr(0, path.find_first_of(" ?["));
    for (auto [from, to] :
         std::vector<std::pair<std::string, std::string>>{{"{repo}", "org/m"},
                                                          {"{rev}", "main"},
                                                          {"{path}", "config.json"},
                                                          {"{sha}", commit},
                                                          {"{tag}", "v0"},
                                                          {"{branch}", "b1"}})
      for (size_t at; (at = path.find(from)) != std::string::npos;)
        path.replace(at, from.size(), to);
    httplib::Result r = methods == "POST"     ? cli.Post(path, bearer(), "{}", "application/json")
                        : methods == "DELETE" ? cli.Delete(path, bearer(), "{}", "application/json")
                                              : cli.Get(path, bearer());
    ASSERT_TRUE(r) << route;
    EXPECT_NE(r->status, 405) << route << " -> " << path;
    EXPECT_FALSE(r->status == 404 &&
                 r->get_header_value("X-Error-Message").rfind("Not found: ", 0) == 0)
        << route << " -> " << path << " is not routed";
    ++checked;
  }
  EXPECT_GE(checked, 18u);
  EXPECT_TRUE(store.has_repo("org/m"));  // DELETE /api/repos/delete with {} deleted nothing
}

// The docs' token recipe makes a token @huggingface/hub accepts (hf_ prefix) and the mirror too.
TEST_F(MirrorServer, TheDocumentedTokenRecipeWorks) {
  std::ifstream f(std::string(LOFTQD_SOURCE_DIR) + "/docs/hub.md");
  std::string line, recipe;
  while (std::getline(f, line))
    if (line.rfind("echo \"hf_", 0) == 0 &&
        line.find("> /etc/loftqd/write-token") != std::string::npos)
      recipe = line.substr(0, line.find(" > "));
  ASSERT_FALSE(recipe.empty()) << "docs/hub.md has no hf_ token recipe";
  FILE* p = ::popen(("bash -c '" + recipe + "'").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[256] = {};
  size_t n = std::fread(buf, 1, sizeof buf - 1, p);
  ::pclose(p);
  std::string token = loftqd::common::trim(std::string(buf, n));
  ASSERT_EQ(token.rfind("hf_", 0), 0u) << token;
  EXPECT_GE(token.size(), 3u + 24u);  // 24 random bytes, base64 without + / =: at least 24 chars
  EXPECT_EQ(
      token.find_first_not_of("hf_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"),
      std::string::npos);
  MirrorOptions o;
  o.write_token = token;
  start(o);
  EXPECT_EQ(http().Get("/api/whoami-v2", bearer(token))->status, 200);
}
