// `loftqd status --config F [--json] [--limit N]`: the repos and jobs tables of the daemon's
// state database. A job left in downloading/quantizing/publishing while no loftqd holds the
// store's lock is shown as interrupted (it resumes when the daemon next runs).
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "config/config.h"
#include "daemon/commands.h"
#include "daemon/pipeline.h"
#include "storage/state.h"
#include "storage/store.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace loftqd::daemon {

namespace {

struct StatusArgs {
  std::string config;
  bool json = false;
  int limit = 50;
};

bool active(storage::JobState s) {
  using S = storage::JobState;
  return s == S::Downloading || s == S::Quantizing || s == S::Publishing;
}

// "2026-12-01T10:02:43+00:00" (local time with its offset); "-" for 0.
std::string when(int64_t t) {
  if (t <= 0) return "-";
  const std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  ::localtime_r(&tt, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S%z", &tm);
  std::string s = buf;
  if (s.size() > 5) s.insert(s.size() - 2, ":");  // +0000 -> +00:00 (RFC 3339)
  return s;
}

// A quantizing job's tensors done/total, and while the daemon runs it the ETA from this run's
// rate (an interrupted job has none: nothing is running).
json progress_json(const storage::JobProgress& p, bool running, int64_t now) {
  json o = {{"tensors_done", p.done}, {"tensors_total", p.total}, {"eta_s", nullptr}};
  if (running)
    if (auto eta = p.eta_s(now)) o["eta_s"] = *eta;
  return o;
}

std::string progress_text(const json& j) {
  if (!j.contains("progress")) return "";
  const json& p = j["progress"];
  std::string s = std::to_string(p["tensors_done"].get<int64_t>()) + "/" +
                  std::to_string(p["tensors_total"].get<int64_t>()) + " tensors";
  if (!p["eta_s"].is_null()) s += ", ETA " + std::to_string(p["eta_s"].get<int64_t>()) + " s";
  return s;
}

json job_json(const storage::Job& j, bool daemon_running, int64_t now,
              const std::optional<storage::JobProgress>& progress) {
  const bool interrupted = active(j.state) && !daemon_running;
  const bool finished = j.state == storage::JobState::Done || j.state == storage::JobState::Failed;
  json o = {{"id", j.id},
            {"repo", j.repo},
            {"revision", j.revision},
            {"target", j.target},
            {"upstream_commit", j.upstream_commit},
            {"config_hash", j.config_hash},
            {"state", interrupted ? "interrupted" : storage::job_state_name(j.state)},
            {"step", storage::job_state_name(j.state)},
            {"attempts", j.attempts},
            {"last_error", j.last_error},
            {"published_commit", j.published_commit},
            {"created_at", when(j.created_at)},
            {"updated_at", when(j.updated_at)},
            // Queue to done/failed for a finished job; the age of a running one.
            {"duration_s", (finished ? j.updated_at : now) - j.created_at}};
  if (progress && j.state == storage::JobState::Quantizing)
    o["progress"] = progress_json(*progress, !interrupted, now);
  if (j.state == storage::JobState::Queued && j.next_attempt_at > now)
    o["next_attempt_at"] = when(j.next_attempt_at);
  return o;
}

void print_text(const json& repos, const json& jobs, const json& counts, bool running) {
  std::printf("%-40s %-10s %-12s %-12s %-25s %-25s %s\n", "repo", "revision", "last seen",
              "last done", "last success", "last check", "check");
  for (const auto& r : repos)
    std::printf("%-40s %-10s %-12.12s %-12.12s %-25s %-25s %s\n",
                r["repo"].get<std::string>().c_str(), r["revision"].get<std::string>().c_str(),
                r["last_seen_commit"].get<std::string>().c_str(),
                r["last_processed_commit"].get<std::string>().c_str(),
                r["last_success_at"].get<std::string>().c_str(),
                r["last_check_at"].get<std::string>().c_str(),
                r["last_check_error"].get<std::string>().empty()
                    ? "ok"
                    : ("FAILED: " + r["last_check_error"].get<std::string>()).c_str());
  std::printf("\n%-6s %-28s %-32s %-12s %-12s %-8s %-25s %-9s %-26s %s\n", "job", "repo", "target",
              "commit", "state", "attempts", "updated", "duration", "progress", "last error");
  for (const auto& j : jobs)
    std::printf(
        "%-6lld %-28s %-32s %-12.12s %-12s %-8d %-25s %-9s %-26s %s\n", j["id"].get<long long>(),
        j["repo"].get<std::string>().c_str(), j["target"].get<std::string>().c_str(),
        j["upstream_commit"].get<std::string>().c_str(), j["state"].get<std::string>().c_str(),
        j["attempts"].get<int>(), j["updated_at"].get<std::string>().c_str(),
        (std::to_string(j["duration_s"].get<long long>()) + "s").c_str(), progress_text(j).c_str(),
        j["last_error"].get<std::string>().c_str());
  std::printf("\n");
  for (const auto& [state, n] : counts.items())
    std::printf("%s=%lld ", state.c_str(), n.get<long long>());
  std::printf("\ndaemon: %s\n", running ? "running" : "not running");
}

int status(const StatusArgs& a) {
  if (a.limit < 1) throw std::invalid_argument("--limit must be >= 1");
  auto cfg = config::load_config(a.config);
  config::apply_env(cfg);
  if (!fs::exists(cfg.state_db)) {
    if (a.json)
      std::printf("%s\n", json{{"state_db", cfg.state_db},
                               {"repos", json::array()},
                               {"jobs", json::array()},
                               {"counts", json::object()},
                               {"daemon_running", false}}
                              .dump(2)
                              .c_str());
    else
      std::printf("no state database at %s yet (the daemon has not run)\n", cfg.state_db.c_str());
    return kExitOk;
  }
  const bool running = storage::StoreLock::held(cfg.store);
  auto db = storage::StateDb::open(cfg.state_db);
  const int64_t now = now_s();
  json repos = json::array(), jobs = json::array(), counts = json::object();
  for (const auto& r : db->repos())
    repos.push_back({{"repo", r.repo},
                     {"revision", r.revision},
                     {"last_seen_commit", r.last_seen_commit},
                     {"last_seen_at", when(r.last_seen_at)},
                     {"last_processed_commit", r.last_processed_commit},
                     {"last_success_at", when(r.last_success_at)},
                     {"last_check_at", when(r.last_check_at)},
                     {"last_check_error", r.last_check_error}});
  for (const auto& j : db->jobs(a.limit))
    jobs.push_back(job_json(j, running, now, db->progress(j.id)));
  for (const auto& [state, n] : db->count_by_state()) counts[storage::job_state_name(state)] = n;
  if (a.json)
    std::printf("%s\n", json{{"state_db", cfg.state_db},
                             {"repos", repos},
                             {"jobs", jobs},
                             {"counts", counts},
                             {"daemon_running", running}}
                            .dump(2)
                            .c_str());
  else
    print_text(repos, jobs, counts, running);
  return kExitOk;
}

}  // namespace

Command add_status_command(CLI::App& app) {
  auto a = std::make_shared<StatusArgs>();
  auto* c = app.add_subcommand("status", "print the repos and jobs of the daemon's state database");
  c->add_option("--config", a->config, "daemon configuration file")->required();
  c->add_flag("--json", a->json, "one JSON document (repos, jobs, counts) instead of tables");
  c->add_option("--limit", a->limit, "newest jobs to show")->capture_default_str();
  return {c, [a] { return status(*a); }};
}

}  // namespace loftqd::daemon
