// hub/api.cpp against the fault-injecting test Hub (tests/fault): repo info, the paginated
// tree, typed errors naming repo, revision and file, and the token lookup order.
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
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
