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
