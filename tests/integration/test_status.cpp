// `loftqd status --config F`: the jobs table, and config errors as exit code 2.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "hub/hub.h"
#include "integration/upstream.h"
#include "storage/state.h"
#include "storage/store.h"
#include "support/test_util.h"

using loftqd::testing::run_loftqd;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using ::testing::HasSubstr;

TEST(Status, BadConfigIsAUsageErrorListingEveryProblem) {
  TempDir tmp;
  spit(tmp / "c.json",
       R"({"store": 5, "repos": [{"repo": "org/m", "loftq": {"rank": -1}}], "bogus": true})");
  auto r = run_loftqd({"status", "--config", (tmp / "c.json").string()});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("c.json"));
  EXPECT_THAT(r.out, HasSubstr("/store: must be a string"));
  EXPECT_THAT(r.out, HasSubstr("/repos/0/loftq/rank: must be >= 1"));
  EXPECT_THAT(r.out, HasSubstr("/bogus: unknown key"));
  r = run_loftqd({"status", "--config", (tmp / "missing.json").string()});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("cannot read"));
}

TEST(Status, PrintsReposAndJobs) {
  TempDir tmp;
  const std::string store = (tmp / "store").string();
  spit(tmp / "c.json", R"({"store": ")" + store + R"(", "repos": [{"repo": "org/m"}]})");
  auto r = run_loftqd({"status", "--config", (tmp / "c.json").string()});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("no state database"));
  std::filesystem::create_directories(tmp / "store");
  {
    auto db = loftqd::storage::StateDb::open(tmp / "store" / "loftqd.db");
    db->repo_seen("org/m", "main", "0123456789abcdef", 1);
    auto j = db->enqueue("org/m", "main", "0123456789abcdef", "feedfacecafebeef", "org/m-loftq", 2);
    db->record_failure(j.id, "RepoNotFound: org/m", true, 5, 0, 3);
  }
  r = run_loftqd({"status", "--config", (tmp / "c.json").string()});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("org/m"));
  EXPECT_THAT(r.out, HasSubstr("failed"));
  EXPECT_THAT(r.out, HasSubstr("RepoNotFound: org/m"));
  EXPECT_THAT(r.out, HasSubstr("failed=1"));
}

// --json: one document with the target, times with their offset and durations per job; a job
// left mid-step is "interrupted" while no loftqd holds the store, its step while one does;
// --limit keeps the newest jobs.
TEST(Status, JsonShowsTargetsTimesAndInterruptedJobs) {
  TempDir tmp;
  const auto store = tmp / "store";
  spit(tmp / "c.json", R"({"store": ")" + store.string() + R"(", "repos": [{"repo": "org/m"}]})");
  std::filesystem::create_directories(store);
  int64_t first = 0, second = 0;
  {
    auto db = loftqd::storage::StateDb::open(store / "loftqd.db");
    first = db->enqueue("org/m", "main", "0123456789abcdef", "aaaa", "me/m-4bit", 1000).id;
    second = db->enqueue("org/m", "main", "0123456789abcdef", "bbbb", "me/m-2bit", 2000).id;
    db->set_state(second, loftqd::storage::JobState::Quantizing, 2100);
    db->set_published(first, "c0ffee", 1600);
  }
  auto status_json = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"status", "--config", (tmp / "c.json").string(), "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    const auto r = run_loftqd(args);
    EXPECT_EQ(r.exit_code, 0) << r.out;
    return nlohmann::json::parse(r.out);
  };
  auto j = status_json({});
  EXPECT_EQ(j["daemon_running"], false);
  ASSERT_EQ(j["jobs"].size(), 2u);
  const auto& newest = j["jobs"][0];
  EXPECT_EQ(newest["id"], second);
  EXPECT_EQ(newest["target"], "me/m-2bit");
  EXPECT_EQ(newest["state"], "interrupted");
  EXPECT_EQ(newest["step"], "quantizing");
  const auto& done = j["jobs"][1];
  EXPECT_EQ(done["target"], "me/m-4bit");
  EXPECT_EQ(done["state"], "done");
  EXPECT_EQ(done["duration_s"], 600);  // queued at 1000, done at 1600
  // 1600 s after the epoch, with the zone offset (RFC 3339); TZ is the test's own.
  const std::string updated = done["updated_at"];
  EXPECT_EQ(updated.size(), std::string("1970-01-01T00:26:40+00:00").size()) << updated;
  EXPECT_EQ(updated[updated.size() - 3], ':') << updated;
  EXPECT_EQ(status_json({"--limit", "1"})["jobs"].size(), 1u);
  {
    const auto lock = loftqd::storage::StoreLock::acquire(store);  // as a running daemon would
    auto busy = status_json({});
    EXPECT_EQ(busy["daemon_running"], true);
    EXPECT_EQ(busy["jobs"][0]["state"], "quantizing");
  }
  // The tables say the same.
  const auto text = run_loftqd({"status", "--config", (tmp / "c.json").string()});
  EXPECT_THAT(text.out, HasSubstr("me/m-2bit"));
  EXPECT_THAT(text.out, HasSubstr("interrupted"));
  EXPECT_THAT(text.out, HasSubstr("daemon: not running"));
  EXPECT_EQ(run_loftqd({"status", "--config", (tmp / "c.json").string(), "--limit", "0"}).exit_code,
            2);
}

// `loftqd retry JOB` / `--repo R`: a failed job is queued again (due now, attempts cleared), under
// the hash its target has in the configuration now; anything else is refused with exit 2.
TEST(Retry, RequeuesFailedJobsOfTheConfiguredTargets) {
  TempDir tmp;
  const auto store = tmp / "store";
  const std::string cfg = (tmp / "c.json").string();
  spit(cfg,
       R"({"store": ")" + store.string() +
           R"(", "repos": [{"repo": "org/m", "publish_as": "me/m-4bit", "loftq": {"bits": 4}}]})");
  std::filesystem::create_directories(store);
  int64_t failed = 0, gone = 0, queued = 0;
  {
    auto db = loftqd::storage::StateDb::open(store / "loftqd.db");
    failed = db->enqueue("org/m", "main", "c1", "0000000000000000", "me/m-4bit", 1).id;
    db->record_failure(failed, "the configuration changed", true, 5, 0, 2);
    gone = db->enqueue("org/m", "main", "c1", "1111111111111111", "me/m-old", 3).id;
    db->record_failure(gone, "x", true, 5, 0, 4);
    queued = db->enqueue("org/m", "main", "c2", "2222222222222222", "me/m-4bit", 5).id;
  }
  auto r = run_loftqd({"retry", "--config", cfg, std::to_string(failed)});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out,
              HasSubstr("job " + std::to_string(failed) + " (org/m -> me/m-4bit) queued again"));
  {
    auto db = loftqd::storage::StateDb::open(store / "loftqd.db");
    const auto j = *db->job(failed);
    EXPECT_EQ(j.state, loftqd::storage::JobState::Queued);
    EXPECT_EQ(j.attempts, 0);
    EXPECT_EQ(j.last_error, "");
    EXPECT_NE(j.config_hash, "0000000000000000");  // the entry's hash now
    EXPECT_EQ(j.config_hash.size(), 16u);
  }
  // Not failed, unknown, a target no entry publishes any more, neither or both selectors.
  for (const auto& [args, says] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{std::to_string(queued)}, "is queued, not failed"},
           {{"999"}, "no job 999"},
           {{std::to_string(gone)}, "publishes org/m to me/m-old any more"},
           {{"--repo", "org/m"}, "publishes org/m to me/m-old any more"},
           {{}, "give either a JOB id or --repo R"}}) {
    std::vector<std::string> argv = {"retry", "--config", cfg};
    argv.insert(argv.end(), args.begin(), args.end());
    const auto e = run_loftqd(argv);
    EXPECT_EQ(e.exit_code, 2) << e.out;
    EXPECT_THAT(e.out, HasSubstr(says));
  }
  auto none = run_loftqd({"retry", "--config", cfg, "--repo", "org/other"});
  EXPECT_EQ(none.exit_code, 0) << none.out;
  EXPECT_THAT(none.out, HasSubstr("no failed jobs for org/other"));
}

// check-config: what `run` would accept at start-up, and per target what it would build.
TEST(CheckConfig, PrintsEachTargetAndExitsTwoOnProblems) {
  TempDir tmp;
  const std::string cfg = (tmp / "c.json").string();
  const std::string store = (tmp / "store").string();
  spit(cfg, R"({"store": ")" + store + R"(", "repos": [
      {"repo": "org/m", "publish_as": "me/m-4bit", "loftq": {"bits": 4, "rank": 8}},
      {"repo": "org/m", "publish_as": "me/m-2bit", "loftq": {"bits": 2, "rank": 8}}]})");
  auto r = run_loftqd({"check-config", "--config", cfg});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("valid"));
  EXPECT_THAT(r.out, HasSubstr("2 targets"));
  EXPECT_THAT(r.out, HasSubstr("org/m@main -> me/m-4bit"));
  EXPECT_THAT(r.out, HasSubstr("org/m@main -> me/m-2bit"));
  EXPECT_FALSE(std::filesystem::exists(store));  // checking changes nothing
  spit(cfg, R"({"store": ")" + store + R"(", "repos": [
      {"repo": "org/m", "publish_as": "me/m"}, {"repo": "org/m", "publish_as": "me/m"}]})");
  r = run_loftqd({"check-config", "--config", cfg});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("/repos/1/publish_as: 'me/m' is also the target of /repos/0"));
  const std::string token = (tmp / "no-such-token").string();
  spit(cfg, R"({"store": ")" + store + R"(", "hub": {"token_file": ")" + token +
                R"("}, "repos": [{"repo": "org/m"}]})");
  r = run_loftqd({"check-config", "--config", cfg});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("hub.token_file: "));
  EXPECT_THAT(r.out, HasSubstr(token));
}

// check-config against a reachable upstream: per target the commit, the bytes to download (less
// what the store has), the target modules from the registry and the bits of every layer; problems
// that would fail the job (a missing repo, no weights selected) exit 2; an unreachable upstream
// is said and is not a problem.
TEST(CheckConfig, PrintsTargetsBitsAndBytesFromTheUpstream) {
  TempDir tmp;
  loftqd::testing::Upstream up(tmp.path());
  const std::string cfg = (tmp / "c.json").string();
  const std::string store = (tmp / "store").string();
  const nlohmann::json plan = nlohmann::json::array({{{"layers", "0"}, {"bits", 4}},
                                                     {{"layers", "1-"}, {"bits", 2}},
                                                     {{"modules", {"down_proj"}}, {"bits", 4}}});
  nlohmann::json j = {
      {"hub", {{"endpoint", up.url()}}},
      {"store", store},
      {"repos",
       {{{"repo", "up/tiny"}, {"publish_as", "me/avg"}, {"loftq", {{"avg_bits", 3}}}},
        {{"repo", "up/tiny"}, {"publish_as", "me/plan"}, {"loftq", {{"bit_plan", plan}}}}}}};
  spit(cfg, j.dump());
  auto r = run_loftqd({"check-config", "--config", cfg});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("upstream: up/tiny@main is commit " + up.commit()));
  uint64_t total = 0;
  size_t files = 0;
  loftqd::hub::ClientOptions o;
  o.endpoint = up.url();
  const auto tree = loftqd::hub::Client(o).list_tree("up/tiny", up.commit());
  ASSERT_TRUE(tree);
  for (const auto& e : tree.value())
    if (e.type == "file") total += e.size, ++files;
  EXPECT_THAT(r.out, HasSubstr("download: " + std::to_string(files) + " files, " +
                               std::to_string(total) + " bytes"));
  EXPECT_THAT(r.out, HasSubstr("target modules: q_proj k_proj v_proj o_proj gate_proj up_proj "
                               "down_proj"));
  EXPECT_THAT(r.out, HasSubstr("stack layers: 2 layers (config.json num_hidden_layers)"));
  // avg_bits 3 on 2 layers: the first at 4 bits, the second at 2.
  EXPECT_THAT(r.out, HasSubstr("bits (avg_bits 3;"));
  EXPECT_THAT(r.out, HasSubstr("    layers 0: 4 bits\n    layers 1: 2 bits\n"));
  // The explicit plan with a module override on top.
  EXPECT_THAT(r.out,
              HasSubstr("    layers 1: q_proj+k_proj+v_proj+o_proj+gate_proj+up_proj 2 bits, "
                        "down_proj 4 bits\n"));
  EXPECT_FALSE(std::filesystem::exists(store));  // checking changes nothing

  // What the store holds already is not downloaded again.
  loftqd::hub::SnapshotRequest sr;
  sr.repo = "up/tiny";
  sr.revision = up.commit();
  sr.store = store;
  ASSERT_TRUE(loftqd::hub::Client(o).snapshot_download(sr));
  r = run_loftqd({"check-config", "--config", cfg});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out,
              HasSubstr("download: " + std::to_string(files) + " files, 0 bytes (0.00 GiB), " +
                        std::to_string(total) + " bytes of them in the store already"));

  // A repo that does not exist and a selection without weights: exit 2, each named.
  // A plan that leaves layer 1 without bits, too.
  j["repos"] = {{{"repo", "up/missing"}, {"publish_as", "me/a"}},
                {{"repo", "up/tiny"}, {"publish_as", "me/b"}, {"allow_patterns", {"*.json"}}},
                {{"repo", "up/tiny"},
                 {"publish_as", "me/c"},
                 {"loftq", {{"bit_plan", {{{"layers", "0"}, {"bits", 4}}}}}}}};
  spit(cfg, j.dump());
  r = run_loftqd({"check-config", "--config", cfg});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("3 problems"));
  EXPECT_THAT(r.out, HasSubstr("    layers 1: none\n"));
  EXPECT_THAT(r.out, HasSubstr("up/tiny: bit plan '0:4' gives no bits for layer 1 (q_proj)"));
  EXPECT_THAT(r.out, HasSubstr("  up/missing: "));
  EXPECT_THAT(r.out, HasSubstr("up/tiny: no .safetensors file is selected"));

  // Out of reach: said, and not a problem of the configuration.
  j["hub"]["endpoint"] = "http://127.0.0.1:1";
  j["repos"] = {{{"repo", "up/tiny"}, {"publish_as", "me/a"}}};
  spit(cfg, j.dump());
  r = run_loftqd({"check-config", "--config", cfg});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("upstream: not reachable ("));
  EXPECT_THAT(r.out, HasSubstr("bytes to download, targets and bits unknown"));
}
