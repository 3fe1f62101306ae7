// `loftqd sync --config F --once` and `loftqd demo` against an in-process mirror as upstream.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "hub/hub.h"
#include "integration/upstream.h"
#include "mirror/mirror.h"
#include "model/synth.h"
#include "storage/state.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
namespace model = loftqd::model;
using loftqd::testing::Child;
using loftqd::testing::run_loftqd;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using nlohmann::json;
using ::testing::HasSubstr;

using loftqd::testing::Upstream;

namespace {

fs::path write_config(const TempDir& tmp, const std::string& endpoint, int rank) {
  const json cfg = {{"hub", {{"endpoint", endpoint}}},
                    {"store", (tmp / "store").string()},
                    {"log_level", "info"},
                    {"repos",
                     {{{"repo", "up/tiny"},
                       {"publish_as", "me/tiny-loftq"},
                       {"loftq", {{"rank", rank}, {"iters", 2}, {"avg_bits", 3}}}}}},
                    {"publish", {{"mirror", true}}}};
  spit(tmp / "loftqd.json", cfg.dump(2));
  return tmp / "loftqd.json";
}

}  // namespace

TEST(Sync, NewCommitIsPublishedExactlyOnceAndConfigChangesRepublish) {
  TempDir tmp;
  Upstream up(tmp.path());
  const auto cfg = write_config(tmp, up.url(), 8);

  auto r1 = run_loftqd({"sync", "--config", cfg.string(), "--once", "--threads", "1"});
  ASSERT_EQ(r1.exit_code, 0) << r1.out;
  EXPECT_THAT(r1.out, HasSubstr("step=done"));
  EXPECT_THAT(r1.out, HasSubstr("1 done, 0 failed"));
  // The result is in the store's mirror, a complete LoftQ layout carrying the upstream commit.
  const fs::path repo_dir = tmp / "store" / "models--me--tiny-loftq";
  ASSERT_TRUE(fs::exists(repo_dir / "refs" / "main"));
  const std::string published = slurp(repo_dir / "refs" / "main");
  const fs::path snap = repo_dir / "snapshots" / published;
  const json lj = json::parse(slurp(snap / "loftq.json"));
  EXPECT_EQ(lj["source"]["repo"], "up/tiny");
  EXPECT_EQ(lj["source"]["commit"], up.commit());
  EXPECT_EQ(
      json::parse(slurp(snap / "loftq_init" / "adapter_config.json"))["base_model_name_or_path"],
      "me/tiny-loftq");
  const fs::path upstream_snap = tmp / "store" / "models--up--tiny" / "snapshots" / up.commit();
  auto v = run_loftqd({"verify", snap.string(), "--original", upstream_snap.string()});
  EXPECT_EQ(v.exit_code, 0) << v.out;

  // A second pass finds nothing new and runs nothing.
  auto r2 = run_loftqd({"sync", "--config", cfg.string(), "--once"});
  ASSERT_EQ(r2.exit_code, 0) << r2.out;
  EXPECT_THAT(r2.out, HasSubstr("0 jobs queued, 0 done"));
  EXPECT_EQ(slurp(repo_dir / "refs" / "main"), published);

  // A new upstream commit is picked up, once; its unchanged blobs are not downloaded again.
  const std::string c2 = up.publish("second revision");
  auto r3 = run_loftqd({"sync", "--config", cfg.string(), "--once", "--threads", "1"});
  ASSERT_EQ(r3.exit_code, 0) << r3.out;
  EXPECT_THAT(r3.out, HasSubstr("commit=" + c2));
  EXPECT_THAT(r3.out, HasSubstr("1 jobs queued, 1 done"));
  EXPECT_THAT(r3.out, HasSubstr("fetched=1 "));  // only NOTE.txt is new

  // A config change re-publishes the same upstream commit.
  write_config(tmp, up.url(), 4);
  auto r4 = run_loftqd({"sync", "--config", cfg.string(), "--once", "--threads", "1"});
  ASSERT_EQ(r4.exit_code, 0) << r4.out;
  EXPECT_THAT(r4.out, HasSubstr("1 jobs queued, 1 done"));
  const std::string p4 = slurp(repo_dir / "refs" / "main");
  EXPECT_EQ(
      json::parse(slurp(repo_dir / "snapshots" / p4 / "loftq_init" / "adapter_config.json"))["r"],
      4);

  auto st = run_loftqd({"status", "--config", cfg.string()});
  EXPECT_EQ(st.exit_code, 0) << st.out;
  EXPECT_THAT(st.out, HasSubstr("done=3"));
}

TEST(Sync, MissingUpstreamRepoFailsPermanentlyWithExitOne) {
  TempDir tmp;
  Upstream up(tmp.path());
  const json cfg = {{"hub", {{"endpoint", up.url()}}},
                    {"store", (tmp / "store").string()},
                    {"repos", {{{"repo", "up/missing"}}}}};
  spit(tmp / "c.json", cfg.dump());
  auto r = run_loftqd({"sync", "--config", (tmp / "c.json").string(), "--once"});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("up/missing"));
  // Visible: a warning, counted in the summary, and in status although it was never seen.
  EXPECT_THAT(r.out, HasSubstr(" warning repo=up/missing revision=main step=check error="));
  EXPECT_THAT(r.out, HasSubstr("1 repos checked (1 failed)"));
  const auto st = run_loftqd({"status", "--config", (tmp / "c.json").string(), "--json"});
  ASSERT_EQ(st.exit_code, 0) << st.out;
  const auto j = json::parse(st.out);
  ASSERT_EQ(j["repos"].size(), 1u) << st.out;
  EXPECT_EQ(j["repos"][0]["repo"], "up/missing");
  EXPECT_NE(j["repos"][0]["last_check_error"], "");
  EXPECT_NE(j["repos"][0]["last_check_at"], "-");
}

TEST(Sync, HfHubOfflineMakesNoNetworkRequestAndSaysSo) {
  TempDir tmp;
  Upstream up(tmp.path());
  const auto cfg = write_config(tmp, up.url(), 8);
  const size_t before = up.requests().size();  // the upstream's own set-up
  Child d({"sync", "--config", cfg.string(), "--once"}, tmp / "sync.log", {"HF_HUB_OFFLINE=1"});
  auto rc = d.wait(std::chrono::seconds(60));
  ASSERT_TRUE(rc.has_value()) << d.log();
  EXPECT_EQ(*rc, 1) << d.log();  // nothing could be checked
  EXPECT_THAT(d.log(), HasSubstr("HF_HUB_OFFLINE is set: no network request"));
  EXPECT_THAT(d.log(), HasSubstr("repo=up/tiny step=check skipped=offline"));
  EXPECT_THAT(d.log(), HasSubstr("up/tiny: not checked: HF_HUB_OFFLINE is set"));
  EXPECT_THAT(d.log(), HasSubstr("0 repos checked (1 failed), 0 jobs queued"));
  EXPECT_THAT(d.log(), HasSubstr(" warning repo=up/tiny step=check skipped=offline"));
  EXPECT_EQ(up.requests().size(), before);
  EXPECT_FALSE(fs::exists(tmp / "store" / "models--up--tiny"));
}

TEST(Demo, RunsEndToEndAndLeavesAServableStore) {
  TempDir tmp;
  auto r = run_loftqd({"demo", "--workdir", (tmp / "demo").string(), "--threads", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("Published demo/tiny-llama-loftq"));
  EXPECT_THAT(r.out, HasSubstr("HF_ENDPOINT=http://127.0.0.1:8080"));
  EXPECT_THAT(r.out, HasSubstr("subfolder=\"loftq_init\""));
  EXPECT_THAT(r.out, HasSubstr("model.layers.3.mlp.down_proj.weight"));
  EXPECT_TRUE(
      fs::exists(tmp / "demo" / "store" / "models--demo--tiny-llama-loftq" / "refs" / "main"));
  EXPECT_TRUE(fs::exists(tmp / "demo" / "store" / "models--demo--tiny-llama" / "refs" / "main"));
}

// log_format "json": every line is one JSON object with the time (with its offset), the level
// and the fields of the message.
TEST(Sync, JsonLogFormatWritesOneObjectPerLine) {
  TempDir tmp;
  Upstream up(tmp.path());
  const json cfg = {{"hub", {{"endpoint", up.url()}}},
                    {"store", (tmp / "store").string()},
                    {"log_format", "json"},
                    {"repos", {{{"repo", "up/missing"}}}}};
  spit(tmp / "c.json", cfg.dump());
  auto r = run_loftqd({"sync", "--config", (tmp / "c.json").string()});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  std::istringstream in(r.out);
  std::string line;
  bool saw_check = false;
  size_t lines = 0;
  while (std::getline(in, line)) {
    ++lines;
    const auto j = json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    const std::string t = j.value("time", "");
    ASSERT_GE(t.size(), 6u) << line;
    EXPECT_TRUE(t[t.size() - 6] == '+' || t[t.size() - 6] == '-') << t;  // +HH:MM
    if (j.value("step", "") == "check") {
      saw_check = true;
      EXPECT_EQ(j["level"], "warning");
      EXPECT_EQ(j["repo"], "up/missing");
    }
  }
  EXPECT_GT(lines, 0u);
  EXPECT_TRUE(saw_check) << r.out;
}
