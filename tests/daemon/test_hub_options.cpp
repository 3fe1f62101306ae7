// daemon/hub_options: the one builder of the daemon's upstream client options.
#include "daemon/hub_options.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "support/test_util.h"

using loftqd::daemon::upstream_client_options;
using loftqd::testing::spit;
using loftqd::testing::TempDir;

namespace {

loftqd::common::EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

loftqd::config::Config config(const TempDir& tmp, bool with_token_file) {
  nlohmann::json j = {{"hub", {{"endpoint", "http://hub.example/"}}},
                      {"store", (tmp / "store").string()},
                      {"limits", {{"concurrent_downloads", 7}, {"disk_reserve", "3G"}}},
                      {"repos", {{{"repo", "a/b"}}}}};
  if (with_token_file) j["hub"]["token_file"] = (tmp / "config-token").string();
  return loftqd::config::parse_config(j);
}

}  // namespace

TEST(HubOptions, EndpointAndLimitsComeFromTheConfig) {
  TempDir tmp;
  const auto o = upstream_client_options(config(tmp, false), loftqd::daemon::no_env);
  EXPECT_EQ(o.endpoint, "http://hub.example");
  EXPECT_EQ(o.parallel, 7);
  EXPECT_EQ(o.disk_reserve, 3ull << 30);
  EXPECT_FALSE(o.token);
  EXPECT_FALSE(o.offline);
}

TEST(HubOptions, TokenOrderIsHfTokenThenHfHomeThenTheConfigFile) {
  TempDir tmp;
  spit(tmp / "config-token", "from-config\n");
  std::filesystem::create_directories(tmp / "hf-home");
  spit(tmp / "hf-home" / "token", "from-hf-home\n");
  const auto cfg = config(tmp, true);
  const std::string home = (tmp / "hf-home").string();
  EXPECT_EQ(upstream_client_options(cfg, env_of({{"HF_TOKEN", "from-env"}, {"HF_HOME", home}}))
                .token.value_or(""),
            "from-env");
  EXPECT_EQ(upstream_client_options(cfg, env_of({{"HF_HOME", home}})).token.value_or(""),
            "from-hf-home");
  EXPECT_EQ(upstream_client_options(cfg, env_of({{"HF_HOME", (tmp / "none").string()}}))
                .token.value_or(""),
            "from-config");
}

TEST(HubOptions, HfHubOfflineIsHonoured) {
  TempDir tmp;
  const auto cfg = config(tmp, false);
  EXPECT_TRUE(upstream_client_options(cfg, env_of({{"HF_HUB_OFFLINE", "1"}})).offline);
  EXPECT_TRUE(upstream_client_options(cfg, env_of({{"HF_HUB_OFFLINE", "true"}})).offline);
  EXPECT_FALSE(upstream_client_options(cfg, env_of({{"HF_HUB_OFFLINE", "0"}})).offline);
}

TEST(HubOptions, PublishOptionsCarryTheEndpointTokenAndOfflineFlag) {
  const auto o = loftqd::daemon::publish_client_options({"http://m:1", "tok", true});
  EXPECT_EQ(o.endpoint, "http://m:1");
  EXPECT_EQ(o.token.value_or(""), "tok");
  EXPECT_TRUE(o.offline);
}

TEST(ReadSecret, UnreadableOrEmptyFilesAreConfigErrorsNamingKeyAndPath) {
  TempDir tmp;
  using loftqd::daemon::read_secret;
  EXPECT_FALSE(read_secret(std::nullopt, "hub.token_file", loftqd::daemon::no_env));
  const std::string missing = (tmp / "missing").string();
  const auto m = loftqd::testing::error_of(
      [&] { read_secret(missing, "hub.token_file", loftqd::daemon::no_env); });
  EXPECT_NE(m.find("hub.token_file"), std::string::npos) << m;
  EXPECT_NE(m.find(missing), std::string::npos) << m;
  EXPECT_NE(m.find("No such file or directory"), std::string::npos) << m;
  EXPECT_THROW(read_secret(missing, "k", loftqd::daemon::no_env), std::invalid_argument);
  // A directory where the file should be, and an empty file.
  EXPECT_THROW(read_secret(tmp.path().string(), "k", loftqd::daemon::no_env),
               std::invalid_argument);
  spit(tmp / "empty", " \n");
  const auto e = loftqd::testing::error_of([&] {
    read_secret((tmp / "empty").string(), "mirror.write_token_file", loftqd::daemon::no_env);
  });
  EXPECT_NE(e.find("mirror.write_token_file: " + (tmp / "empty").string() + " is empty"),
            std::string::npos)
      << e;
  spit(tmp / "ok", "  s3cret\n");
  EXPECT_EQ(read_secret((tmp / "ok").string(), "k", loftqd::daemon::no_env).value_or(""), "s3cret");
}

// systemd's LoadCredential=: a credential named like the file wins over the file itself (which
// the service's DynamicUser may not be able to read); without one the file is read as named.
TEST(ReadSecret, CredentialsDirectoryHoldsTheFileByName) {
  TempDir tmp;
  using loftqd::daemon::read_secret;
  std::filesystem::create_directories(tmp / "creds");
  spit(tmp / "creds" / "hub-token", "from-credential\n");
  spit(tmp / "hub-token", "from-file\n");
  spit(tmp / "other-token", "other-file\n");
  const auto env = env_of({{"CREDENTIALS_DIRECTORY", (tmp / "creds").string()}});
  EXPECT_EQ(read_secret((tmp / "hub-token").string(), "k", env).value_or(""), "from-credential");
  EXPECT_EQ(read_secret((tmp / "other-token").string(), "k", env).value_or(""), "other-file");
  // The file itself need not be readable, or even exist, for the service user.
  const std::string gone = (tmp / "gone" / "hub-token").string();
  EXPECT_EQ(read_secret(gone, "k", env).value_or(""), "from-credential");
  spit(tmp / "creds" / "empty-token", "");
  const auto m = loftqd::testing::error_of(
      [&] { read_secret((tmp / "empty-token").string(), "hub.token_file", env); });
  EXPECT_NE(m.find("the credential for " + (tmp / "empty-token").string()), std::string::npos) << m;
  // The token the upstream client uses comes through the same path.
  nlohmann::json j = {{"store", (tmp / "store").string()},
                      {"hub", {{"token_file", gone}}},
                      {"repos", {{{"repo", "a/b"}}}}};
  EXPECT_EQ(upstream_client_options(loftqd::config::parse_config(j), env).token.value_or(""),
            "from-credential");
}
