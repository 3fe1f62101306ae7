#include "config/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "support/test_util.h"

using namespace loftqd::config;
using nlohmann::json;
using ::testing::Contains;
using ::testing::HasSubstr;

namespace {

std::vector<std::string> problems_of(const json& j) {
  try {
    parse_config(j);
  } catch (const ConfigError& e) {
    return e.problems();
  }
  return {};
}

}  // namespace

TEST(Config, ExampleConfigIsValid) {
  const auto c =
      load_config(std::filesystem::path(LOFTQD_SOURCE_DIR) / "systemd" / "loftqd.example.json");
  ASSERT_EQ(c.repos.size(), 3u);
  EXPECT_EQ(c.repos[0].loftq.plan.average_bits(), 3.0);
  EXPECT_EQ(c.repos[0].loftq.rank, 64);
  EXPECT_EQ(c.repos[1].loftq.to_json()["bits"], 4);
  EXPECT_FALSE(c.repos[1].loftq.plan.average_bits());
  EXPECT_EQ(c.repos[1].loftq.rank, 32);
  EXPECT_TRUE(c.repos[2].loftq.to_json().contains("bit_plan"));
  EXPECT_EQ(c.repos[0].allow_patterns.size(), 5u);
  EXPECT_EQ(c.schedule.poll_interval_s, 900);
  ASSERT_TRUE(c.schedule.nightly);
  EXPECT_EQ(c.schedule.nightly->start_minute, 120);
  EXPECT_EQ(c.limits.disk_reserve_bytes, 20ull << 30);
  EXPECT_EQ(c.limits.concurrent_uploads, 4);
  EXPECT_EQ(render_publish_as(c.repos[0].publish_as, c.repos[0], c.publish.hub_org),
            "my-org/Llama-2-7b-hf-loftq-avg3bit-64rank");
  EXPECT_EQ(render_publish_as(c.repos[2].publish_as, c.repos[2], c.publish.hub_org),
            "my-org/bart-large-loftq-mixed");
}

TEST(Config, MinimalConfigTakesTheDefaults) {
  const auto c =
      parse_config(json::parse(R"({"store": "/srv/store", "repos": [{"repo": "org/m"}]})"));
  EXPECT_EQ(c.state_db, "/srv/store/loftqd.db");
  EXPECT_EQ(c.hub.endpoint, "https://huggingface.co");
  EXPECT_EQ(c.repos[0].revision, "main");
  EXPECT_EQ(c.repos[0].loftq.plan.average_bits(), 3.0);  // 4-bit early layers, 2-bit later
  EXPECT_EQ(c.repos[0].loftq.plan_label(), "avg3bit");
  EXPECT_TRUE(c.publish.mirror);
  EXPECT_EQ(c.mirror.listen, "127.0.0.1:8080");
  EXPECT_EQ(render_publish_as(c.repos[0].publish_as, c.repos[0], c.publish.hub_org),
            "org/m-loftq-avg3bit-64rank");
}

TEST(Config, EveryProblemIsReportedWithItsPath) {
  const auto p = problems_of(json::parse(R"({
    "store": "/s",
    "colour": "blue",
    "log_level": "loud",
    "repos": [
      {"repo": "org/a", "loftq": {"rank": 0}},
      {"repo": "org/b", "loftq": {"bits": 5}},
      {"repo": "org/c", "loftq": {"bit_plan": [{"layers": "0-7", "bits": 4}, {"layers": "6-", "bits": 2}]}},
      {"repo": "org/d", "loftq": {"bits": 4, "avg_bits": 3}},
      {"repo": "not a repo"},
      {"repo": "org/e", "loftq": {"iters": "five", "quant": "fp4"}, "extra": 1},
      {"repo": "org/f", "loftq": {"quant": "uniform", "bits": 8}}
    ],
    "schedule": {"poll_interval": "soon", "nightly": "25:00-03:00", "timezone": "Mars/Olympus"},
    "mirror": {"listen": "localhost"},
    "limits": {"disk_reserve": "lots", "concurrent_downloads": 0, "concurrent_uploads": 65}
  })"));
  const std::vector<std::string> expected_paths = {
      "/colour: unknown key",
      "/log_level: must be one of",
      "/repos/0/loftq/rank: must be >= 1",
      "/repos/1/loftq/bits: bit plan rule *:5: 5 bits not supported",
      "/repos/2/loftq/bit_plan:",
      "/repos/3/loftq: set only one of bits, bit_plan and avg_bits",
      "/repos/4/repo: invalid repo id 'not a repo'",
      "/repos/5/extra: unknown key",
      "/repos/5/loftq/iters: must be an integer",
      "/repos/5/loftq/quant: must be \"nf\" or \"uniform\"",
      "/schedule/poll_interval: must be a positive duration",
      "/schedule/nightly: must look like",
      "/schedule/timezone: 'Mars/Olympus'",
      "/mirror/listen: must be HOST:PORT",
      "/limits/disk_reserve: must be a size",
      "/limits/concurrent_downloads: must be >= 1",
      "/limits/concurrent_uploads: must be <= 64",
  };
  for (const auto& e : expected_paths)
    EXPECT_TRUE(
        std::any_of(p.begin(), p.end(), [&](const std::string& s) { return s.starts_with(e); }))
        << "missing: " << e << "\n got:\n"
        << ::testing::PrintToString(p);
  EXPECT_THAT(p, Contains(HasSubstr("overlap")));
  // uniform 8-bit is valid: no problem reported for repo 6.
  EXPECT_FALSE(std::any_of(p.begin(), p.end(),
                           [](const std::string& s) { return s.starts_with("/repos/6"); }));
}

TEST(Config, TypesAndRequiredKeys) {
  auto p = problems_of(json::parse(R"({"repos": {"repo": "x/y"}, "publish": {"mirror": "yes"}})"));
  EXPECT_THAT(p, Contains(HasSubstr("/store: is required")));
  EXPECT_THAT(p, Contains(HasSubstr("/repos: must be an array")));
  EXPECT_THAT(p, Contains(HasSubstr("/publish/mirror: must be true or false")));
  p = problems_of(json::parse(R"([1, 2])"));
  EXPECT_THAT(p, Contains(HasSubstr("must be an object")));
  p = problems_of(json::parse(R"({"store": "/s", "publish": {"mirror": false}})"));
  EXPECT_THAT(p, Contains(HasSubstr("publishes nowhere")));
}

TEST(Config, PublishTargetsMustBeDistinctAndNotTheUpstream) {
  auto p = problems_of(json::parse(R"({"store": "/s", "repos": [
      {"repo": "org/a", "publish_as": "me/x"}, {"repo": "org/b", "publish_as": "me/x"},
      {"repo": "org/c", "publish_as": "{org}/{name}"}, {"repo": "org/d", "publish_as": "{org}/{nam}"}]})"));
  EXPECT_THAT(
      p, Contains(HasSubstr("/repos/1/publish_as: 'me/x' is also the target of /repos/0 (org/a)")));
  EXPECT_THAT(p, Contains(HasSubstr("/repos/2/publish_as: would overwrite the upstream")));
  EXPECT_THAT(p, Contains(HasSubstr("unknown placeholder {nam}")));
}

// Variants: one upstream repo may appear several times, each entry with its own target and
// settings; only the same target twice is refused, naming both entries.
TEST(Config, VariantsOfOneRepoNeedDistinctTargets) {
  const auto c = parse_config(json::parse(R"({"store": "/s", "repos": [
      {"repo": "org/a", "publish_as": "me/a-4bit", "loftq": {"bits": 4}},
      {"repo": "org/a", "publish_as": "me/a-2bit", "loftq": {"bits": 2}}]})"));
  ASSERT_EQ(c.repos.size(), 2u);
  EXPECT_EQ(c.repos[0].repo, c.repos[1].repo);
  EXPECT_NE(loftqd::config::config_hash(c.repos[0], std::nullopt),
            loftqd::config::config_hash(c.repos[1], std::nullopt));
  auto p = problems_of(json::parse(R"({"store": "/s", "repos": [
      {"repo": "org/a", "publish_as": "me/a", "loftq": {"bits": 4}},
      {"repo": "org/a", "publish_as": "me/a", "loftq": {"bits": 2}}]})"));
  EXPECT_THAT(
      p, Contains(HasSubstr("/repos/1/publish_as: 'me/a' is also the target of /repos/0 (org/a)")));
}

TEST(Config, PublishPrivateIsInheritTrueOrFalse) {
  auto parse = [](const json& priv) {
    json j = {{"store", "/s"}, {"publish", {{"mirror", true}}}};
    if (!priv.is_null()) j["publish"]["private"] = priv;
    return parse_config(j).publish.visibility;
  };
  EXPECT_EQ(parse(nullptr), Visibility::Inherit);
  EXPECT_EQ(parse("inherit"), Visibility::Inherit);
  EXPECT_EQ(parse(true), Visibility::Private);
  EXPECT_EQ(parse(false), Visibility::Public);
  auto p = problems_of(json{{"store", "/s"}, {"publish", {{"private", "yes"}}}});
  EXPECT_THAT(p, Contains(HasSubstr("/publish/private: must be \"inherit\", true or false")));
}

TEST(Config, LoadReportsUnreadableAndInvalidJson) {
  loftqd::testing::TempDir tmp;
  EXPECT_THROW(load_config(tmp / "missing.json"), ConfigError);
  loftqd::testing::spit(tmp / "bad.json", "{\"store\": ");
  try {
    load_config(tmp / "bad.json");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("bad.json"));
    EXPECT_THAT(e.what(), HasSubstr("not valid JSON"));
  }
}

TEST(Config, HashChangesWithSettingsOnly) {
  auto c = parse_config(
      json::parse(R"({"store": "/s", "repos": [{"repo": "org/a"}, {"repo": "org/b"}]})"));
  const auto h0 = config_hash(c.repos[0], c.publish.hub_org);
  EXPECT_EQ(h0.size(), 16u);
  EXPECT_EQ(h0, config_hash(c.repos[0], c.publish.hub_org));
  auto changed = c.repos[0];
  changed.loftq.rank = 32;
  EXPECT_NE(h0, config_hash(changed, c.publish.hub_org));
  changed = c.repos[0];
  changed.allow_patterns.push_back("*.md");  // does not change the published weights
  EXPECT_EQ(h0, config_hash(changed, c.publish.hub_org));
  EXPECT_NE(h0, config_hash(c.repos[0], std::string("other-org")));
}

TEST(Config, EnvironmentOverridesTheEndpoint) {
  auto c = parse_config(json::parse(R"({"store": "/s"})"));
  apply_env(c, [](const char* k) -> std::optional<std::string> {
    if (std::string(k) == "HF_ENDPOINT") return "http://127.0.0.1:9000/";
    return std::nullopt;
  });
  EXPECT_EQ(c.hub.endpoint, "http://127.0.0.1:9000");
}

TEST(Config, NightlyWindowWrapsPastMidnight) {
  NightlyWindow w{22 * 60, 2 * 60};
  EXPECT_TRUE(w.contains(23 * 60));
  EXPECT_TRUE(w.contains(60));
  EXPECT_FALSE(w.contains(12 * 60));
}

TEST(Config, SizesAcceptBinaryAndDecimalUnits) {
  auto with_reserve = [](const char* v) {
    return parse_config(json::parse(std::string(R"({"store": "/s", "limits": {"disk_reserve": )") +
                                    v + "}}"))
        .limits.disk_reserve_bytes;
  };
  EXPECT_EQ(with_reserve(R"("10G")"), 10ull << 30);
  EXPECT_EQ(with_reserve(R"("10GiB")"), 10ull << 30);
  EXPECT_EQ(with_reserve(R"("10GB")"), 10000000000ull);
  EXPECT_EQ(with_reserve("4096"), 4096u);
  const auto p = problems_of(json::parse(R"({"store": "/s", "limits": {"disk_reserve": "10Q"}})"));
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0], "/limits/disk_reserve: must be a size such as 10G, 512MiB, 1GB or 4096 (bytes)");
}

TEST(Config, RepoIdsFollowTheStoresRule) {
  const auto p = problems_of(json::parse(
      R"({"store": "/s", "repos": [{"repo": "org-/name"}, {"repo": "gpt2"}, {"repo": "a--b/c"}]})"));
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0],
            "/repos/0/repo: invalid repo id 'org-/name': name starts or ends with '.' or '-'");
  EXPECT_EQ(
      p[1],
      "/repos/1/repo: invalid repo id 'gpt2': repo id has no organization (expected org/name)");
  EXPECT_EQ(p[2], "/repos/2/repo: invalid repo id 'a--b/c': '--' and '..' are not allowed");
}

TEST(Config, AverageBitsWithModuleOverridesLikeTheCli) {
  const auto c = parse_config(json::parse(R"({
    "store": "/s",
    "defaults": {"loftq": {"avg_bits": 3, "overrides": [{"modules": ["down_proj"], "bits": 4}]}},
    "repos": [
      {"repo": "org/a"},
      {"repo": "org/b", "loftq": {"bits": 2}},
      {"repo": "org/c", "loftq": {"overrides": [], "lora_dropout": 0.05}}
    ]
  })"));
  // The same settings the CLI builds from --avg-bits 3 --override down_proj@*:4.
  loftqd::convert::LoftqSettings cli;
  cli.plan = loftqd::quant::BitPlan::average(3);
  cli.plan.add(loftqd::quant::BitPlan::parse("down_proj@*:4").rules()[0]);
  EXPECT_EQ(c.repos[0].loftq.to_json(), cli.to_json());
  EXPECT_EQ(c.repos[0].loftq.plan.to_string(), "avg 3 + down_proj@*:4");
  // A repo's own plan form replaces the default's base; the default's overrides stay.
  EXPECT_EQ(c.repos[1].loftq.plan.to_string(), "*:2,down_proj@*:4");
  EXPECT_EQ(c.repos[2].loftq.plan.to_string(), "avg 3");
  EXPECT_EQ(c.repos[2].loftq.lora_dropout, 0.05);
  const auto p = problems_of(json::parse(R"({"store": "/s", "repos": [
    {"repo": "org/a", "loftq": {"avg_bits": 3, "overrides": [{"layers": "0-3", "bits": 4}]}},
    {"repo": "org/b", "loftq": {"lora_dropout": 1.5, "svd": "fast"}}]})"));
  ASSERT_EQ(p.size(), 4u) << ::testing::PrintToString(p);
  EXPECT_EQ(p[0], "/repos/0/loftq/overrides/0: an override needs \"modules\"");
  EXPECT_THAT(p[1],
              ::testing::HasSubstr("/repos/0/loftq/avg_bits: bit plan rule 0-3:4: only module"));
  EXPECT_EQ(p[2], "/repos/1/loftq/svd: must be \"randomized\" or \"exact\"");
  EXPECT_EQ(p[3], "/repos/1/loftq/lora_dropout: must be in [0, 1)");
}

TEST(Config, DeviceIsParsedByTheBackendsOwnParser) {
  const auto c = parse_config(
      json::parse(R"({"store": "/s", "device": "cuda:1", "repos": [{"repo": "o/m"}]})"));
  EXPECT_EQ(c.device.name(), "cuda:1");
  EXPECT_EQ(c.repos[0].loftq.device.name(), "cuda:1");
  const auto p = problems_of(json::parse(R"({"store": "/s", "device": "cuda:-1"})"));
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0], "/device: must be auto, cpu, cuda or cuda:N");
}

TEST(Config, RetentionDefaultsAndBounds) {
  const auto d = parse_config(json::parse(R"({"store": "/s"})"));
  EXPECT_EQ(d.retention.keep_upstream_snapshots, 1);
  EXPECT_EQ(d.retention.keep_published_snapshots, 2);
  EXPECT_FALSE(d.retention.prune_orphaned_targets);
  const auto c = parse_config(json::parse(
      R"({"store": "/s", "retention": {"keep_upstream_snapshots": 0,
          "keep_published_snapshots": 5, "prune_orphaned_targets": true}})"));
  EXPECT_EQ(c.retention.keep_upstream_snapshots, 0);
  EXPECT_EQ(c.retention.keep_published_snapshots, 5);
  EXPECT_TRUE(c.retention.prune_orphaned_targets);
  const auto p = problems_of(json::parse(
      R"({"store": "/s", "retention": {"keep_upstream_snapshots": -1,
          "keep_published_snapshots": 0, "prune_orphaned_targets": "yes", "keep_all": 1}})"));
  EXPECT_THAT(p, Contains("/retention/keep_upstream_snapshots: must be >= 0"));
  // The head of a published target is what its branch serves: it is always kept.
  EXPECT_THAT(p, Contains("/retention/keep_published_snapshots: must be >= 1"));
  EXPECT_THAT(p, Contains("/retention/prune_orphaned_targets: must be true or false"));
  EXPECT_THAT(p, Contains("/retention/keep_all: unknown key"));
}
