// `loftqd sync --config F --once`: one pass of the daemon loop (check every watched repo, run
// its jobs), with the built-in mirror started in-process as the publish target.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <memory>
#include <string>

#include "common/strings.h"
#include "config/config.h"
#include "daemon/blas_kernels.h"
#include "daemon/commands.h"
#include "daemon/logging.h"
#include "daemon/pipeline.h"
#include "daemon/retention.h"
#include "mirror/mirror.h"
#include "storage/state.h"
#include "storage/store.h"

namespace fs = std::filesystem;

namespace loftqd::daemon {

namespace {

struct SyncArgs {
  std::string config;
  bool once = false;
  int threads = 0;
};

// One pass over every watched repo. Returns the exit code: 0 when every job succeeded.
int sync_once(const SyncArgs& a, const CliHooks& hooks) {
  // 1. Configuration (a bad one is a usage error: ConfigError is an invalid_argument).
  auto cfg = config::load_config(a.config);
  config::apply_env(cfg);
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  set_log_format(cfg.log_format);
  log_blas_kernels("sync");
  // 2. State, under the store's lock (one loftqd per store). The token is read first: an
  // unreadable one is a configuration error (exit 2).
  PipelineOptions po = pipeline_options(cfg, a.threads);
  const auto lock = storage::StoreLock::acquire(cfg.store);
  auto db = storage::StateDb::open(cfg.state_db);
  // 3. Publish targets: the store's mirror, started here on a free port, and/or the Hub.
  po.failpoint = hooks.failpoint;
  std::unique_ptr<mirror::Mirror> mirror;
  if (cfg.publish.mirror) {
    mirror::MirrorOptions mo;
    mo.store = cfg.store;
    mo.port = 0;
    mo.write_token = common::random_hex(32);
    mirror = std::make_unique<mirror::Mirror>(mo);
    mirror->start();
    po.mirror = PublishEndpoint{mirror->url(), mo.write_token};
  }
  // 4. One pass (under HF_HUB_OFFLINE it says so and checks nothing upstream).
  Pipeline p(cfg, *db, po);
  const auto report = p.sync_once();
  if (mirror) mirror->stop();
  // 5. Retention: what the store keeps (config retention), as `run` applies it after a pass.
  apply_retention(cfg, *db, nullptr, po.log);
  spdlog::log(report.ok() ? spdlog::level::info : spdlog::level::warn,
              "sync: {} repos checked ({} failed), {} jobs queued, {} done, {} failed",
              report.repos_checked, report.checks_failed, report.jobs_enqueued, report.jobs_done,
              report.jobs_failed);
  for (const auto& e : report.errors) spdlog::error("{}", e);
  return report.ok() ? kExitOk : kExitRuntime;
}

}  // namespace

Command add_sync_command(CLI::App& app, const CliHooks& hooks) {
  auto a = std::make_shared<SyncArgs>();
  auto* c = app.add_subcommand(
      "sync", "one pass of the daemon loop: check every watched repo, run its jobs");
  c->add_option("--config", a->config, "daemon configuration file")->required();
  // One pass is the only mode: --once is accepted (and documents the intent) but not required.
  c->add_flag("--once", a->once, "run one pass and exit (the default and only mode)");
  c->add_option("--threads", a->threads, "CPU threads for LoftQ (0 = all cores)");
  return {c, [a, hooks] { return sync_once(*a, hooks); }};
}

}  // namespace loftqd::daemon
