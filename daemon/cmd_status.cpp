// `loftqd status --config F`: the repos and jobs tables of the daemon's state database.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "config/config.h"
#include "daemon/commands.h"
#include "storage/state.h"

namespace fs = std::filesystem;

namespace loftqd::daemon {

namespace {

int status(const std::string& config_path) {
  auto cfg = config::load_config(config_path);
  config::apply_env(cfg);
  if (!fs::exists(cfg.state_db)) {
    std::printf("no state database at %s yet (the daemon has not run)\n", cfg.state_db.c_str());
    return kExitOk;
  }
  auto db = storage::StateDb::open(cfg.state_db);
  std::printf("%-40s %-10s %-12s %-12s\n", "repo", "revision", "last seen", "last done");
  for (const auto& r : db->repos())
    std::printf("%-40s %-10s %-12.12s %-12.12s\n", r.repo.c_str(), r.revision.c_str(),
                r.last_seen_commit.c_str(), r.last_processed_commit.c_str());
  std::printf("\n%-6s %-32s %-12s %-16s %-12s %-8s %s\n", "job", "repo", "commit", "config",
              "state", "attempts", "last error");
  for (const auto& j : db->jobs(50))
    std::printf("%-6lld %-32s %-12.12s %-16s %-12s %-8d %s\n", static_cast<long long>(j.id),
                j.repo.c_str(), j.upstream_commit.c_str(), j.config_hash.c_str(),
                storage::job_state_name(j.state), j.attempts, j.last_error.c_str());
  std::printf("\n");
  for (const auto& [state, n] : db->count_by_state())
    std::printf("%s=%lld ", storage::job_state_name(state), static_cast<long long>(n));
  std::printf("\n");
  return kExitOk;
}

}  // namespace

Command add_status_command(CLI::App& app) {
  auto config_path = std::make_shared<std::string>();
  auto* c = app.add_subcommand("status", "print the jobs table from the daemon's state database");
  c->add_option("--config", *config_path, "daemon configuration file")->required();
  return {c, [config_path] { return status(*config_path); }};
}

}  // namespace loftqd::daemon
