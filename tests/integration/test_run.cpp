// `loftqd run`: the long-running daemon as a child process against an in-process upstream Hub.
// Signals (SIGTERM, SIGHUP with good and bad configs), /healthz, /metrics, the webhook, and
// crash tests: kill -9 during download, quantization and publish, then a restart completes the
// job without downloading a verified blob twice or publishing twice. The tests that stop at a
// failpoint (LOFTQD_FAILPOINT) run loftqd-test (tests/support/loftqd_failpoints_main.cpp); the
// loftqd binary itself ignores that variable.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "hub/hub.h"
#include "integration/upstream.h"
#include "mirror/mirror.h"
#include "storage/state.h"
#include "support/slow_clients.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using loftqd::testing::Child;
using loftqd::testing::count_of;
using loftqd::testing::run_loftqd;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using loftqd::testing::Upstream;
using nlohmann::json;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

namespace {

constexpr const char* kSecret = "webhook-secret-for-tests";

json base_config(const TempDir& tmp, const std::string& endpoint, int rank) {
  return {
      {"hub", {{"endpoint", endpoint}}},
      {"store", (tmp / "store").string()},
      {"log_level", "info"},
      {"schedule", {{"poll_interval", "1h"}}},
      {"mirror", {{"listen", "127.0.0.1:0"}, {"webhook_secret_file", (tmp / "secret").string()}}},
      {"repos",
       {{{"repo", "up/tiny"},
         {"publish_as", "me/tiny-loftq"},
         {"loftq", {{"rank", rank}, {"iters", 2}, {"avg_bits", 3}}}}}},
      {"publish", {{"mirror", true}}}};
}

fs::path write_config(const TempDir& tmp, const json& cfg) {
  spit(tmp / "secret", std::string(kSecret) + "\n");
  spit(tmp / "loftqd.json", cfg.dump(2));
  return tmp / "loftqd.json";
}

// The daemon's mirror URL, from its start-up line ("... HF_ENDPOINT=http://127.0.0.1:PORT"),
// the last one when it was restarted into the same log.
std::string daemon_url(const std::string& log) {
  const std::string key = "HF_ENDPOINT=";
  const size_t at = log.rfind(key);
  if (at == std::string::npos) return "";
  const size_t end = log.find_first_of(" \n", at);
  return log.substr(at + key.size(), end == std::string::npos ? end : end - at - key.size());
}

httplib::Client http(const std::string& url) {
  httplib::Client c(url);
  c.set_connection_timeout(5);
  c.set_read_timeout(10);
  return c;
}

// `promtool check metrics` on `text` (its lint rules: HELP/TYPE, units, counters' _total, ...):
// its output, "" when clean; nullopt when promtool is not installed (Debian: prometheus).
std::optional<std::string> promtool_check(const std::string& text, const fs::path& dir) {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0) return std::nullopt;
  spit(dir / "metrics.txt", text);
  const std::string cmd = "promtool check metrics < '" + (dir / "metrics.txt").string() + "' 2>&1";
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
    if (::pclose(p) != 0 && out.empty()) out = "promtool failed";
  }
  return out;
}

#ifndef LOFTQD_TEST_BINARY
#error "LOFTQD_TEST_BINARY must name the loftqd-test executable"
#endif

// The daemon with failpoints, stopping `spec` ("name:ms[,...]") at each named point.
std::unique_ptr<Child> with_failpoints(const std::vector<std::string>& args, const fs::path& log,
                                       const std::string& spec) {
  return std::make_unique<Child>(args, log, std::vector<std::string>{"LOFTQD_FAILPOINT=" + spec},
                                 LOFTQD_TEST_BINARY);
}

std::vector<std::string> run_args(const fs::path& cfg) {
  return {"run", "--config", cfg.string(), "--threads", "1"};
}

// The one job of these tests (they watch one repo at one commit).
std::optional<loftqd::storage::Job> only_job(const fs::path& store) {
  auto db = loftqd::storage::StateDb::open(store / "loftqd.db");
  auto jobs = db->jobs();
  if (jobs.empty()) return std::nullopt;
  return jobs.front();
}

// Polls the state db until `pred(job)` holds; false on timeout.
template <class Pred>
bool wait_for_job(const fs::path& store, Pred pred, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    std::error_code ec;
    if (fs::exists(store / "loftqd.db", ec)) {
      try {
        auto j = only_job(store);
        if (j && pred(*j)) return true;
      } catch (const std::exception&) {
        // the daemon may be creating the schema right now
      }
    }
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

// What a reader of the daemon's store sees for me/tiny-loftq while the daemon is down: nothing,
// or a complete revision whose every file verifies (snapshot_download checks each hash).
// Returns the revision's commit, or "" when the repo is not there.
std::string read_published(const TempDir& tmp, const std::string& label) {
  loftqd::mirror::MirrorOptions mo;
  mo.store = tmp / "store";
  mo.port = 0;
  loftqd::mirror::Mirror m(mo);
  m.start();
  loftqd::hub::ClientOptions co;
  co.endpoint = m.url();
  loftqd::hub::Client c(co);
  auto info = c.repo_info("me/tiny-loftq", "main");
  if (!info) {
    m.stop();
    return "";
  }
  loftqd::hub::SnapshotRequest sr;
  sr.repo = "me/tiny-loftq";
  sr.revision = info.value().sha;
  sr.store = tmp / ("reader-" + label);
  auto snap = c.snapshot_download(sr);
  m.stop();
  EXPECT_TRUE(snap) << label << ": " << (snap ? "" : snap.error().message);
  if (!snap) return "";
  EXPECT_TRUE(fs::exists(snap.value().dir / "loftq.json")) << label;
  EXPECT_TRUE(fs::exists(snap.value().dir / "loftq_init" / "adapter_model.safetensors")) << label;
  return info.value().sha;
}

size_t published_revisions(const TempDir& tmp) {
  const fs::path snaps = tmp / "store" / "models--me--tiny-loftq" / "snapshots";
  std::error_code ec;
  if (!fs::exists(snaps, ec)) return 0;
  return static_cast<size_t>(std::distance(fs::directory_iterator(snaps), {}));
}

}  // namespace

TEST(Run, PublishesServesHealthMetricsAndWebhookThenStopsOnSigterm) {
  TempDir tmp;
  Upstream up(tmp.path());
  const auto cfg = write_config(tmp, base_config(tmp, up.url(), 8));
  Child d(run_args(cfg), tmp / "run.log");
  ASSERT_TRUE(d.wait_for_log("step=done", 120s)) << d.log();
  const std::string url = daemon_url(d.log());
  ASSERT_FALSE(url.empty()) << d.log();
  auto c = http(url);

  auto h = c.Get("/healthz");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200) << h->body;
  EXPECT_EQ(json::parse(h->body)["status"], "ok");

  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  EXPECT_THAT(m->get_header_value("Content-Type"), HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(m->body, HasSubstr("loftqd_jobs{state=\"done\"} 1\n"));
  EXPECT_THAT(m->body, HasSubstr("loftqd_last_success_timestamp_seconds{repo=\"up/tiny\"} "));
  EXPECT_THAT(m->body, HasSubstr("# TYPE loftqd_tensor_seconds histogram"));
  // 2 layers x 7 llama projections, each timed once.
  EXPECT_THAT(m->body, HasSubstr("loftqd_tensors_quantized_total 14\n"));
  EXPECT_THAT(m->body, HasSubstr("loftqd_tensor_seconds_count 14\n"));
  EXPECT_THAT(m->body, ::testing::Not(HasSubstr("loftqd_downloaded_bytes_total 0\n")));
  EXPECT_THAT(m->body, HasSubstr("loftqd_tensor_seconds_bucket{le=\"0.05\"} "));
  EXPECT_THAT(m->body, HasSubstr("loftqd_build_info{version=\""));
  EXPECT_THAT(m->body, HasSubstr("loftqd_last_check_timestamp_seconds{repo=\"up/tiny\"} "));
  EXPECT_THAT(m->body, HasSubstr("loftqd_step_duration_seconds_count{step=\"publish\"} 1\n"));
  if (const auto lint = promtool_check(m->body, tmp.path()))
    EXPECT_EQ(*lint, "") << m->body;
  else
    std::fprintf(stderr, "promtool not installed: the format rules are checked by test_metrics\n");
  // HEAD answers like GET, without a body.
  for (const char* path : {"/healthz", "/metrics"}) {
    auto head = c.Head(path);
    ASSERT_TRUE(head) << path;
    EXPECT_EQ(head->status, 200) << path;
    EXPECT_EQ(head->body, "") << path;
  }
  // Per-repo health.
  const auto hj = json::parse(h->body);
  ASSERT_EQ(hj["repos"].size(), 1u) << h->body;
  EXPECT_EQ(hj["repos"][0]["repo"], "up/tiny");
  EXPECT_EQ(hj["repos"][0]["ok"], true);

  // The result is served by the daemon's own mirror (the Hub read API).
  auto info = c.Get("/api/models/me/tiny-loftq");
  ASSERT_TRUE(info);
  EXPECT_EQ(info->status, 200) << info->body;

  // The webhook: the secret is required; a watched repo's push is checked at once (the poll
  // interval is an hour, so nothing else would notice the new commit).
  const std::string c2 = up.publish("second revision");
  const json hook = {{"event", {{"action", "update"}, {"scope", "repo.content"}}},
                     {"repo", {{"type", "model"}, {"name", "up/tiny"}, {"headSha", c2}}}};
  auto bad = c.Post("/webhook", hook.dump(), "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 401);
  httplib::Headers hs = {{"X-Webhook-Secret", kSecret}};
  auto other =
      c.Post("/webhook", hs, json{{"repo", {{"type", "model"}, {"name", "someone/else"}}}}.dump(),
             "application/json");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 202);
  EXPECT_THAT(other->body, HasSubstr("not watched"));
  auto garbage = c.Post("/webhook", hs, "{not json", "application/json");
  ASSERT_TRUE(garbage);
  EXPECT_EQ(garbage->status, 400);
  auto ok = c.Post("/webhook", hs, hook.dump(), "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 202) << ok->body;
  ASSERT_TRUE(d.wait_for_log("step=done", 120s, 2)) << d.log();
  EXPECT_THAT(d.log(), HasSubstr("commit=" + c2));
  EXPECT_THAT(d.log(), HasSubstr("step=webhook"));

  d.signal(SIGTERM);
  auto rc = d.wait(30s);
  ASSERT_TRUE(rc.has_value()) << d.log();
  EXPECT_EQ(*rc, 0) << d.log();
  EXPECT_THAT(d.log(), HasSubstr("stopped cleanly"));
  // No secret of the configuration reaches the log.
  EXPECT_THAT(d.log(), ::testing::Not(HasSubstr(kSecret)));
}

TEST(Run, SighupAppliesAGoodConfigAndKeepsTheOldOneOnABadOne) {
  TempDir tmp;
  Upstream up(tmp.path());
  const auto cfg = write_config(tmp, base_config(tmp, up.url(), 8));
  Child d(run_args(cfg), tmp / "run.log");
  ASSERT_TRUE(d.wait_for_log("step=done", 120s)) << d.log();

  // A bad config: rejected with its JSON paths, the daemon keeps serving the old one.
  json bad = base_config(tmp, up.url(), 8);
  bad["repos"][0]["loftq"]["rank"] = 0;
  bad["bogus_key"] = 1;
  spit(cfg, bad.dump());
  d.signal(SIGHUP);
  ASSERT_TRUE(d.wait_for_log("rejected, keeping the previous configuration", 30s)) << d.log();
  EXPECT_THAT(d.log(), HasSubstr("/repos/0/loftq/rank"));
  EXPECT_THAT(d.log(), HasSubstr("/bogus_key"));
  EXPECT_TRUE(d.running());
  auto h = http(daemon_url(d.log())).Get("/healthz");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);

  // A good one with a new rank: applied, and the same upstream commit is published again.
  write_config(tmp, base_config(tmp, up.url(), 4));
  d.signal(SIGHUP);
  ASSERT_TRUE(d.wait_for_log("applied; watching 1 repos", 30s)) << d.log();
  // The reload says what changed.
  EXPECT_THAT(d.log(), HasSubstr("reload: new settings for up/tiny -> me/tiny-loftq (published "
                                 "again)"));
  ASSERT_TRUE(d.wait_for_log("step=done", 120s, 2)) << d.log();
  const fs::path repo_dir = tmp / "store" / "models--me--tiny-loftq";
  const std::string head = slurp(repo_dir / "refs" / "main");
  EXPECT_EQ(
      json::parse(slurp(repo_dir / "snapshots" / head / "loftq_init" / "adapter_config.json"))["r"],
      4);
  d.signal(SIGINT);
  auto rc = d.wait(30s);
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(*rc, 0) << d.log();
}

// Retention in the daemon: after the pass that published, the download no job needs is freed
// (keep_upstream_snapshots 0) and /metrics counts the bytes; at the next start, before any pass,
// the target that the configuration no longer names is pruned (prune_orphaned_targets).
TEST(Run, RetentionRunsAfterEachPassAndAtStart) {
  TempDir tmp;
  Upstream up(tmp.path());
  json j = base_config(tmp, up.url(), 4);
  j["retention"] = {{"keep_upstream_snapshots", 0}, {"keep_published_snapshots", 1}};
  const auto cfg = write_config(tmp, j);
  const fs::path upstream = tmp / "store" / "models--up--tiny";
  {
    Child d(run_args(cfg), tmp / "run.log");
    ASSERT_TRUE(d.wait_for_log("step=retention snapshots_removed=", 120s)) << d.log();
    EXPECT_TRUE(fs::is_empty(upstream / "snapshots")) << d.log();
    EXPECT_TRUE(fs::is_empty(upstream / "blobs")) << d.log();
    EXPECT_THAT(d.log(), HasSubstr("up/tiny@" + up.commit()));
    EXPECT_EQ(published_revisions(tmp), 1u);  // the repo's empty first commit went too
    EXPECT_EQ(read_published(tmp, "after-retention").empty(), false);
    // Idle now: /healthz says when the next poll is (1 h), not the 30 s wake-up.
    std::string state;
    for (int i = 0; i < 100 && state.rfind("idle", 0) != 0; ++i) {
      if (auto h = http(daemon_url(d.log())).Get("/healthz"))
        state = json::parse(h->body)["state"].get<std::string>();
      std::this_thread::sleep_for(50ms);
    }
    EXPECT_THAT(state, ::testing::MatchesRegex("idle; next check in 35[0-9][0-9] s")) << state;
    auto m = http(daemon_url(d.log())).Get("/metrics");
    ASSERT_TRUE(m);
    EXPECT_THAT(m->body, HasSubstr("loftqd_retention_freed_bytes_total "));
    EXPECT_THAT(m->body, ::testing::Not(HasSubstr("loftqd_retention_freed_bytes_total 0\n")));
    d.signal(SIGTERM);
    ASSERT_EQ(d.wait(30s), 0) << d.log();
  }
  j["repos"][0]["publish_as"] = "me/tiny-elsewhere";
  j["retention"]["prune_orphaned_targets"] = true;
  write_config(tmp, j);
  Child d(run_args(cfg), tmp / "run2.log");
  ASSERT_TRUE(d.wait_for_log("run: watching", 60s)) << d.log();
  const std::string log = d.log();
  const size_t pruned = log.find("repos_removed=1");
  ASSERT_NE(pruned, std::string::npos) << log;
  EXPECT_LT(pruned, log.find("run: watching")) << log;  // at start, before the first pass
  EXPECT_THAT(log, HasSubstr("repos=me/tiny-loftq"));
  EXPECT_FALSE(fs::exists(tmp / "store" / "models--me--tiny-loftq"));
  d.signal(SIGTERM);
  EXPECT_EQ(d.wait(30s), 0) << d.log();
}

TEST(Run, BadConfigAtStartExitsTwoNamingEveryProblem) {
  TempDir tmp;
  json bad = base_config(tmp, "http://127.0.0.1:9", 8);
  bad["repos"][0]["loftq"]["bits"] = 5;
  bad["repos"][0]["loftq"].erase("avg_bits");
  bad["mirror"]["listen"] = "nonsense";
  const auto cfg = write_config(tmp, bad);
  auto r = run_loftqd(run_args(cfg));
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("/repos/0/loftq/bits"));
  auto missing = run_loftqd({"run", "--config", (tmp / "nope.json").string()});
  EXPECT_EQ(missing.exit_code, 2) << missing.out;
  EXPECT_THAT(missing.out, HasSubstr("nope.json"));
}

// One loftqd per store: a second run, a sync (without --once: one pass is the default) and a
// serve of the same store are refused while the daemon runs, naming its pid; another store on
// the daemon's listen address fails naming the address and errno (no SO_REUSEPORT sharing).
TEST(Run, ASecondInstanceOnTheStoreOrThePortFailsClearly) {
  TempDir tmp;
  Upstream up(tmp.path());
  const auto cfg = write_config(tmp, base_config(tmp, up.url(), 8));
  Child d(run_args(cfg), tmp / "run.log");
  ASSERT_TRUE(d.wait_for_log("step=done", 120s)) << d.log();
  const std::string busy =
      "another loftqd (pid " + std::to_string(d.pid()) + ") is using " + (tmp / "store").string();
  for (const std::vector<std::string>& args :
       {run_args(cfg), std::vector<std::string>{"sync", "--config", cfg.string()},
        std::vector<std::string>{"serve", "--store", (tmp / "store").string(), "--listen",
                                 "127.0.0.1:0"}}) {
    const auto r = run_loftqd(args);
    EXPECT_EQ(r.exit_code, 1) << args[0] << ": " << r.out;
    EXPECT_THAT(r.out, HasSubstr(busy)) << args[0];
  }
  const std::string url = daemon_url(d.log());
  const std::string hostport = url.substr(std::string("http://").size());
  const auto port =
      run_loftqd({"serve", "--store", (tmp / "other-store").string(), "--listen", hostport});
  EXPECT_EQ(port.exit_code, 1) << port.out;
  EXPECT_THAT(port.out,
              HasSubstr("cannot listen on " + hostport + ": Address already in use (errno " +
                        std::to_string(EADDRINUSE) + ")"));
  // The daemon alone answers on its port, and is unharmed.
  EXPECT_TRUE(d.running());
  auto h = http(url).Get("/healthz");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  d.signal(SIGTERM);
  auto rc = d.wait(30s);
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(*rc, 0) << d.log();
  // Released with the daemon: the same store may be served now.
  const auto after = run_loftqd({"sync", "--config", cfg.string(), "--once"});
  EXPECT_THAT(after.out, ::testing::Not(HasSubstr("another loftqd"))) << after.out;
}

// What a killed serve leaves mid-upload (blobs/{oid}.upload-{hex}, {oid}.multipart) is gone
// once the next serve of the store has started, however young: it holds the store's lock, so
// nothing else can be writing them. Blobs and download partials stay.
TEST(Run, TheNextServeRemovesUploadTempsAKilledOneLeft) {
  TempDir tmp;
  const fs::path blobs = tmp / "store" / "models--org--m" / "blobs";
  fs::create_directories(blobs);
  const std::string oid(64, 'a');
  const fs::path upload = blobs / (oid + ".upload-0123abcd"),
                 multipart = blobs / (oid + ".multipart");
  const fs::path blob = blobs / std::string(64, 'b'), partial = blobs / (oid + ".incomplete");
  for (const auto& p : {upload, multipart, blob, partial}) spit(p, "bytes");
  Child s({"serve", "--store", (tmp / "store").string(), "--listen", "127.0.0.1:0", "--port-file",
           (tmp / "port").string()},
          tmp / "serve.log");
  ASSERT_TRUE(s.wait_for_log("mirror: serving", 30s)) << s.log();
  EXPECT_FALSE(fs::exists(upload));
  EXPECT_FALSE(fs::exists(multipart));
  EXPECT_TRUE(fs::exists(blob));
  EXPECT_TRUE(fs::exists(partial));
  EXPECT_THAT(s.log(), HasSubstr("removed 2 stale upload/temp file(s)"));
  s.signal(SIGTERM);
  auto rc = s.wait(30s);
  ASSERT_TRUE(rc.has_value());
  EXPECT_EQ(*rc, 0) << s.log();
}

// Secret files are read at start: unreadable or empty is a configuration error (exit 2, not a
// crash and not a restart loop) naming the config key and the path.
TEST(Run, UnreadableSecretFilesExitTwoNamingKeyAndPath) {
  TempDir tmp;
  const std::string missing = (tmp / "etc" / "hub-token").string();
  for (const auto& [key, edit] : std::vector<std::pair<std::string, std::function<void(json&)>>>{
           {"hub.token_file", [&](json& j) { j["hub"]["token_file"] = missing; }},
           {"mirror.write_token_file", [&](json& j) { j["mirror"]["write_token_file"] = missing; }},
           {"mirror.webhook_secret_file",
            [&](json& j) { j["mirror"]["webhook_secret_file"] = tmp.path().string(); }}}) {
    json j = base_config(tmp, "http://127.0.0.1:9", 8);
    edit(j);
    const auto cfg = write_config(tmp, j);
    for (const char* cmd : {"run", "sync"}) {
      if (std::string(cmd) == "sync" && key != "hub.token_file") continue;  // sync: hub only
      const auto r = run_loftqd({cmd, "--config", cfg.string()});
      EXPECT_EQ(r.exit_code, 2) << cmd << " " << key << ": " << r.out;
      EXPECT_THAT(r.out, HasSubstr(key + ": ")) << cmd;
      EXPECT_THAT(r.out,
                  HasSubstr(key == "mirror.webhook_secret_file" ? tmp.path().string() : missing));
      EXPECT_THAT(r.out, ::testing::Not(HasSubstr("terminate"))) << r.out;
    }
  }
  spit(tmp / "empty", "\n");
  const auto serve = run_loftqd({"serve", "--store", (tmp / "s").string(), "--listen",
                                 "127.0.0.1:0", "--write-token-file", (tmp / "empty").string()});
  EXPECT_EQ(serve.exit_code, 2) << serve.out;
  EXPECT_THAT(serve.out,
              HasSubstr("--write-token-file: " + (tmp / "empty").string() + " is empty"));
}

TEST(Run, SigtermDuringQuantizationCheckpointsAndTheRestartResumes) {
  TempDir tmp;
  Upstream up(tmp.path());
  const auto cfg = write_config(tmp, base_config(tmp, up.url(), 8));
  // Each finished tensor pauses 200 ms, so SIGTERM lands mid-model.
  auto d = with_failpoints(run_args(cfg), tmp / "run.log", "tensor:200");
  ASSERT_TRUE(d->wait_for_log("failpoint=tensor", 120s, 3)) << d->log();
  // `status` beside the running daemon: the job's tensors done of the backbone's 21 (2 layers x
  // (7 projections + 2 norms), the embedding, the final norm, the head) and an ETA.
  auto st = run_loftqd({"status", "--config", cfg.string(), "--json"});
  ASSERT_EQ(st.exit_code, 0) << st.out;
  const json running = json::parse(st.out.substr(st.out.find('{')))["jobs"][0];
  EXPECT_EQ(running["state"], "quantizing") << st.out;
  ASSERT_TRUE(running.contains("progress")) << st.out;
  EXPECT_EQ(running["progress"]["tensors_total"], 21) << st.out;
  EXPECT_GE(running["progress"]["tensors_done"].get<int>(), 2) << st.out;
  EXPECT_TRUE(running["progress"]["eta_s"].is_number()) << st.out;
  d->signal(SIGTERM);
  auto rc = d->wait(30s);
  ASSERT_TRUE(rc.has_value()) << d->log();
  EXPECT_EQ(*rc, 0) << d->log();
  EXPECT_THAT(d->log(), HasSubstr("step=interrupted"));
  auto job = only_job(tmp / "store");
  ASSERT_TRUE(job);
  EXPECT_EQ(job->state, loftqd::storage::JobState::Quantizing);
  const size_t done =
      loftqd::storage::StateDb::open(tmp / "store" / "loftqd.db")->tensors_done(job->id).size();
  EXPECT_GE(done, 3u);
  EXPECT_LT(done, 14u);
  EXPECT_EQ(published_revisions(tmp), 0u);
  // Stopped: shown as interrupted, its progress kept, no ETA (nothing runs it).
  st = run_loftqd({"status", "--config", cfg.string(), "--json"});
  const json stopped = json::parse(st.out.substr(st.out.find('{')))["jobs"][0];
  EXPECT_EQ(stopped["state"], "interrupted") << st.out;
  EXPECT_TRUE(stopped["progress"]["eta_s"].is_null()) << st.out;
  EXPECT_THAT(run_loftqd({"status", "--config", cfg.string()}).out, HasSubstr("/21 tensors"));

  Child again(run_args(cfg), tmp / "run2.log");
  ASSERT_TRUE(again.wait_for_log("step=done", 120s)) << again.log();
  EXPECT_THAT(again.log(), HasSubstr("resume_from=" + std::to_string(done)));
  EXPECT_THAT(again.log(), HasSubstr("resumed=" + std::to_string(done)));
  again.signal(SIGTERM);
  EXPECT_EQ(again.wait(30s).value_or(-1), 0);
  const std::string head = read_published(tmp, "after");
  ASSERT_FALSE(head.empty());
  auto v = run_loftqd(
      {"verify", (tmp / "store" / "models--me--tiny-loftq" / "snapshots" / head).string(),
       "--original", (tmp / "store" / "models--up--tiny" / "snapshots" / up.commit()).string()});
  EXPECT_EQ(v.exit_code, 0) << v.out;
}

TEST(Crash, KillDuringDownloadResumesAndNeverRefetchesAVerifiedBlob) {
  TempDir tmp;
  // 256 KiB/s per file body: the ~1 MB weights file takes seconds, the small files don't.
  Upstream up(tmp.path(), 256 << 10);
  const auto cfg = write_config(tmp, base_config(tmp, up.url(), 8));
  const fs::path blobs = tmp / "store" / "models--up--tiny" / "blobs";
  auto partial_bytes = [&] {
    uint64_t n = 0;
    std::error_code ec;
    if (fs::exists(blobs, ec))
      for (const auto& e : fs::directory_iterator(blobs, ec)) {
        if (e.path().extension() != ".incomplete") continue;
        // A small file's partial may be renamed into place between the listing and the size:
        // file_size's error value (all ones) is no size.
        std::error_code size_ec;
        const uint64_t size = fs::file_size(e.path(), size_ec);
        if (!size_ec) n += size;
      }
    return n;
  };
  {
    Child d(run_args(cfg), tmp / "run.log");
    const auto until = std::chrono::steady_clock::now() + 60s;
    while (partial_bytes() < (64u << 10) && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(5ms);
    ASSERT_GE(partial_bytes(), 64u << 10) << d.log();
    d.signal(SIGKILL);
    d.wait(10s);
  }
  // What is verified now must never be fetched again.
  std::set<std::string> verified;
  for (const auto& e : fs::directory_iterator(blobs))
    if (e.path().extension() != ".incomplete") verified.insert(e.path().filename().string());
  EXPECT_FALSE(verified.empty());  // config.json and the other small files came first
  EXPECT_FALSE(fs::exists(tmp / "store" / "models--up--tiny" / "snapshots" / up.commit() /
                          "model.safetensors"));
  const size_t before = up.requests().size();

  Child again(run_args(cfg), tmp / "run2.log");
  ASSERT_TRUE(again.wait_for_log("step=done", 180s)) << again.log();
  again.signal(SIGTERM);
  EXPECT_EQ(again.wait(30s).value_or(-1), 0);

  // Map each file of the upstream commit to its blob (the snapshot's relative symlinks).
  std::map<std::string, std::string> blob_of;
  const fs::path snap = up.store() / "models--up--tiny" / "snapshots" / up.commit();
  for (const auto& e : fs::recursive_directory_iterator(snap))
    if (e.is_symlink())
      blob_of[e.path().lexically_relative(snap).string()] = fs::read_symlink(e.path()).filename();
  const auto reqs = up.requests();
  int resumed = 0;
  for (size_t i = before; i < reqs.size(); ++i) {
    const auto& r = reqs[i];
    const std::string marker = "/resolve/" + up.commit() + "/";
    const auto pos = r.path.find(marker);
    if (r.method != "GET" || pos == std::string::npos) continue;
    const std::string file = r.path.substr(pos + marker.size());
    ASSERT_TRUE(blob_of.count(file)) << file;
    EXPECT_FALSE(verified.count(blob_of[file])) << file << " was downloaded again";
    if (r.status == 206) ++resumed;
  }
  EXPECT_GE(resumed, 1);  // the weights continued from the partial file
}

TEST(Crash, KillDuringQuantizationResumesFromFinishedTensors) {
  TempDir tmp;
  Upstream up(tmp.path());
  const auto cfg = write_config(tmp, base_config(tmp, up.url(), 8));
  size_t done = 0;
  {
    auto d = with_failpoints(run_args(cfg), tmp / "run.log", "tensor:150");
    ASSERT_TRUE(d->wait_for_log("failpoint=tensor", 120s, 5)) << d->log();
    d->signal(SIGKILL);
    d->wait(10s);
    auto job = only_job(tmp / "store");
    ASSERT_TRUE(job);
    done =
        loftqd::storage::StateDb::open(tmp / "store" / "loftqd.db")->tensors_done(job->id).size();
  }
  EXPECT_GE(done, 4u);
  EXPECT_EQ(read_published(tmp, "killed"), "");
  Child again(run_args(cfg), tmp / "run2.log");
  ASSERT_TRUE(again.wait_for_log("step=done", 120s)) << again.log();
  EXPECT_THAT(again.log(), HasSubstr("resumed=" + std::to_string(done)));
  again.signal(SIGTERM);
  EXPECT_EQ(again.wait(30s).value_or(-1), 0);
  EXPECT_FALSE(read_published(tmp, "after").empty());
}

TEST(Crash, KillAroundThePublishCommitPublishesExactlyOnce) {
  TempDir tmp;
  Upstream up(tmp.path());
  const auto cfg = write_config(tmp, base_config(tmp, up.url(), 8));
  // 1. Killed before the upload: nothing is published; a reader sees no repo.
  {
    auto d = with_failpoints(run_args(cfg), tmp / "run1.log", "publish:30000");
    ASSERT_TRUE(d->wait_for_log("failpoint=publish", 120s)) << d->log();
    d->signal(SIGKILL);
    d->wait(10s);
  }
  EXPECT_EQ(read_published(tmp, "before-upload"), "");
  EXPECT_TRUE(wait_for_job(
      tmp / "store",
      [](const loftqd::storage::Job& j) {
        return j.state == loftqd::storage::JobState::Publishing;
      },
      1s));
  // 2. Killed after the commit but before the state db recorded it: a reader sees the complete
  // revision.
  std::string first;
  {
    auto d = with_failpoints(run_args(cfg), tmp / "run2.log", "published:30000");
    ASSERT_TRUE(d->wait_for_log("failpoint=published", 120s)) << d->log();
    d->signal(SIGKILL);
    d->wait(10s);
  }
  first = read_published(tmp, "after-commit");
  ASSERT_FALSE(first.empty());
  const size_t revisions = published_revisions(tmp);  // the repo's initial commit + ours
  // 3. The restart finishes the job without a second commit.
  Child again(run_args(cfg), tmp / "run3.log");
  ASSERT_TRUE(again.wait_for_log("step=done", 120s)) << again.log();
  EXPECT_THAT(again.log(), HasSubstr("unchanged=yes"));
  again.signal(SIGTERM);
  EXPECT_EQ(again.wait(30s).value_or(-1), 0);
  EXPECT_EQ(read_published(tmp, "final"), first);
  EXPECT_EQ(published_revisions(tmp), revisions);
  auto job = only_job(tmp / "store");
  ASSERT_TRUE(job);
  EXPECT_EQ(job->state, loftqd::storage::JobState::Done);
  EXPECT_EQ(job->published_commit, first);
}

// A refresh killed while its backbone goes up early: nothing is committed by it (a reader still
// sees the first publish); the restart sends the file again and publishes exactly one new
// revision, complete.
TEST(Crash, KillDuringAnEarlyUploadCommitsNothingAndTheRestartPublishesOnce) {
  TempDir tmp;
  Upstream up(tmp.path());
  json config = base_config(tmp, up.url(), 8);
  const auto cfg = write_config(tmp, config);
  {
    Child d(run_args(cfg), tmp / "run0.log");
    ASSERT_TRUE(d.wait_for_log("step=done", 120s)) << d.log();
    d.signal(SIGTERM);
    EXPECT_EQ(d.wait(30s).value_or(-1), 0);
  }
  const std::string first = read_published(tmp, "first");
  ASSERT_FALSE(first.empty());
  const size_t revisions = published_revisions(tmp);
  config["repos"][0]["loftq"]["quant"] = "uniform";  // new backbone bytes for the same target
  write_config(tmp, config);
  {
    auto d = with_failpoints(run_args(cfg), tmp / "run1.log", "early_upload:30000");
    ASSERT_TRUE(d->wait_for_log("failpoint=early_upload", 120s)) << d->log();
    // The layout is finished while the upload is held: the publish step waits for it.
    ASSERT_TRUE(d->wait_for_log("step=quantize done", 25s)) << d->log();
    d->signal(SIGKILL);
    d->wait(10s);
  }
  EXPECT_EQ(read_published(tmp, "killed"), first);
  EXPECT_EQ(published_revisions(tmp), revisions);
  Child again(run_args(cfg), tmp / "run2.log");
  ASSERT_TRUE(again.wait_for_log("step=done", 120s)) << again.log();
  // The layout was whole when the kill came, so the restart reuses it and uploads it all.
  EXPECT_THAT(again.log(), HasSubstr("step=quantize reused="));
  EXPECT_THAT(again.log(), ::testing::Not(HasSubstr("step=publish early")));
  again.signal(SIGTERM);
  EXPECT_EQ(again.wait(30s).value_or(-1), 0);
  const std::string second = read_published(tmp, "final");
  EXPECT_FALSE(second.empty());
  EXPECT_NE(second, first);
  // One commit, by the restart (retention then keeps the newest snapshots, so count lines).
  EXPECT_EQ(count_of(slurp(tmp / "run1.log"), "step=publish target="), 0u);
  EXPECT_EQ(count_of(again.log(), "step=publish target="), 1u);
  auto db = loftqd::storage::StateDb::open(tmp / "store" / "loftqd.db");
  size_t done = 0;
  for (const auto& j : db->jobs())
    if (j.published_commit == second) done += j.state == loftqd::storage::JobState::Done;
  EXPECT_EQ(done, 1u);
}

TEST(Failpoints, TheLoftqdBinaryIgnoresLoftqdFailpoint) {
  TempDir tmp;
  Upstream up(tmp.path());
  const auto cfg = write_config(tmp, base_config(tmp, up.url(), 8));
  // Were the variable read, each of these points would stall the job for a minute.
  Child d({"sync", "--config", cfg.string(), "--once", "--threads", "1"}, tmp / "sync.log",
          {"LOFTQD_FAILPOINT=tensor:60000,publish:60000,published:60000"});
  auto rc = d.wait(120s);
  ASSERT_TRUE(rc.has_value()) << d.log();
  EXPECT_EQ(*rc, 0) << d.log();
  EXPECT_THAT(d.log(), HasSubstr("step=done"));
  EXPECT_THAT(d.log(), ::testing::Not(HasSubstr("failpoint=")));
}

// The daemon's /healthz shares the mirror's listener: 200 idle and 16 trickling connections
// held open on it do not keep it from answering within 1 s.
TEST(Run, HealthzAnswersWhileSlowClientsHoldTheListener) {
  TempDir tmp;
  Upstream up(tmp.path());
  const auto cfg = write_config(tmp, base_config(tmp, up.url(), 8));
  Child d(run_args(cfg), tmp / "run.log");
  ASSERT_TRUE(d.wait_for_log("HF_ENDPOINT=", 60s)) << d.log();
  const std::string url = daemon_url(d.log());
  ASSERT_FALSE(url.empty()) << d.log();
  const int port = std::stoi(url.substr(url.rfind(':') + 1));
  loftqd::testing::SlowClients slow(port, 200, 16);
  std::this_thread::sleep_for(1200ms);
  for (int round = 0; round < 3; ++round) {
    auto c = http(url);
    const auto t0 = std::chrono::steady_clock::now();
    auto h = c.Get("/healthz");
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(h) << "no answer";
    EXPECT_EQ(h->status, 200) << h->body;
    EXPECT_LT(took, 1.0);
    std::this_thread::sleep_for(300ms);
  }
}
