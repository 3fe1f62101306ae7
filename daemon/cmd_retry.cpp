// `loftqd retry --config F JOB` and `loftqd retry --config F --repo R`: failed jobs back to the
// queue. A job is re-queued for the entry that publishes its repo to its target now, under that
// entry's current config hash (so a job that failed before an upgrade or a settings change runs
// with the settings configured now). The daemon picks it up at its next pass (SIGHUP: at once);
// `sync` runs it too.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/config.h"
#include "daemon/commands.h"
#include "daemon/pipeline.h"
#include "storage/state.h"

namespace fs = std::filesystem;

namespace loftqd::daemon {

namespace {

struct RetryArgs {
  std::string config, repo;
  int64_t job = 0;
};

// The hash the job's target has in the configuration now; invalid_argument when no entry
// publishes the job's repo to its target any more (retrying it could only fail).
std::string current_hash(const config::Config& cfg, const storage::Job& j) {
  for (const auto& r : cfg.repos)
    if (r.repo == j.repo &&
        config::render_publish_as(r.publish_as, r, cfg.publish.hub_org) == j.target)
      return config::config_hash(r, cfg.publish.hub_org);
  throw std::invalid_argument("job " + std::to_string(j.id) + ": no entry of the configuration " +
                              "publishes " + j.repo + " to " + j.target + " any more");
}

int retry(const RetryArgs& a) {
  if ((a.job > 0) == !a.repo.empty())
    throw std::invalid_argument("retry: give either a JOB id or --repo R");
  auto cfg = config::load_config(a.config);
  config::apply_env(cfg);
  if (!fs::exists(cfg.state_db))
    throw std::invalid_argument("no state database at " + cfg.state_db + " (nothing to retry)");
  auto db = storage::StateDb::open(cfg.state_db);
  std::vector<storage::Job> jobs;
  if (a.job > 0) {
    auto j = db->job(a.job);
    if (!j) throw std::invalid_argument("no job " + std::to_string(a.job));
    if (j->state != storage::JobState::Failed)
      throw std::invalid_argument("job " + std::to_string(a.job) + " is " +
                                  storage::job_state_name(j->state) + ", not failed");
    jobs.push_back(*j);
  } else {
    jobs = db->failed_jobs(a.repo);
    if (jobs.empty()) {
      std::printf("no failed jobs for %s\n", a.repo.c_str());
      return kExitOk;
    }
  }
  std::vector<std::string> hashes;  // checked for every job before any is changed
  for (const auto& j : jobs) hashes.push_back(current_hash(cfg, j));
  for (size_t i = 0; i < jobs.size(); ++i) {
    const auto& j = jobs[i];
    const bool rehash = hashes[i] != j.config_hash;
    if (!db->requeue(j.id, now_s(), rehash ? std::optional(hashes[i]) : std::nullopt))
      throw std::runtime_error("job " + std::to_string(j.id) + " changed state meanwhile");
    std::printf("job %lld (%s -> %s) queued again%s\n", static_cast<long long>(j.id),
                j.repo.c_str(), j.target.c_str(),
                rehash ? " with the settings configured now" : "");
  }
  std::printf("the daemon runs %s at its next pass (systemctl reload loftqd: at once)\n",
              jobs.size() == 1 ? "it" : "them");
  return kExitOk;
}

}  // namespace

Command add_retry_command(CLI::App& app) {
  auto a = std::make_shared<RetryArgs>();
  auto* c =
      app.add_subcommand("retry", "queue failed jobs again (one JOB, or every one of --repo)");
  c->add_option("--config", a->config, "daemon configuration file")->required();
  c->add_option("JOB", a->job, "the id of a failed job (loftqd status)")
      ->check(CLI::PositiveNumber);
  c->add_option("--repo", a->repo, "every failed job of this upstream repo");
  return {c, [a] { return retry(*a); }};
}

}  // namespace loftqd::daemon
