// mirror/server.cpp: parse_listen, the extra routes served ahead of the Hub API (what run.cpp
// adds /healthz, /metrics and /webhook with), methods the mirror does not serve, and tokens of
// any form.
#include <gtest/gtest.h>
#include <httplib.h>

#include <stdexcept>
#include <string>

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
