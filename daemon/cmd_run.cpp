// `loftqd run --config F`: the flags of the daemon (daemon/run.cpp is the daemon itself).
#include <memory>
#include <string>

#include "daemon/commands.h"
#include "daemon/run.h"

namespace loftqd::daemon {

namespace {

struct RunArgs {
  RunOptions opt;
  std::string level;
};

}  // namespace

Command add_run_command(CLI::App& app, const CliHooks& hooks) {
  auto a = std::make_shared<RunArgs>();
  auto* c = app.add_subcommand(
      "run", "the daemon: watch, schedule, process, publish, serve the mirror (foreground)");
  c->add_option("--config", a->opt.config_path, "daemon configuration file")->required();
  c->add_option("--threads", a->opt.threads, "CPU threads for LoftQ (0 = all cores)");
  c->add_option("--log-level", a->level,
                "trace, debug, info, warn, error, critical or off (overrides log_level)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  c->add_option("--stop-grace", a->opt.stop_grace_s,
                "seconds SIGTERM waits for a download/upload in flight before exiting")
      ->capture_default_str();
  return {c, [a, hooks] {
            if (!a->level.empty()) a->opt.log_level = a->level;
            a->opt.failpoint = hooks.failpoint;
            return run_command(a->opt);
          }};
}

}  // namespace loftqd::daemon
