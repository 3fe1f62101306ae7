// `loftqd check-config --config F`: validates the configuration as `run` would at start-up
// (every problem with its JSON path, the listen address, every secret file readable) and prints,
// per target, what the daemon would do with it. Exit 0 when `run` would start, 2 otherwise.
#include <cstdio>
#include <memory>
#include <string>

#include "config/config.h"
#include "daemon/commands.h"
#include "daemon/hub_options.h"
#include "mirror/mirror.h"

namespace loftqd::daemon {

namespace {

int check_config(const std::string& path) {
  auto cfg = config::load_config(path);  // ConfigError (exit 2) listing every problem
  config::apply_env(cfg);
  if (cfg.mirror.enabled) mirror::parse_listen(cfg.mirror.listen);
  upstream_client_options(cfg);  // hub.token_file
  read_secret(cfg.mirror.write_token_file, "mirror.write_token_file");
  read_secret(cfg.mirror.webhook_secret_file, "mirror.webhook_secret_file");
  const char* visibility = cfg.publish.visibility == config::Visibility::Private  ? "private"
                           : cfg.publish.visibility == config::Visibility::Public ? "public"
                                                                                  : "inherit";
  std::printf("%s: valid; store %s, state db %s, %zu targets, publish to %s%s%s (visibility %s)\n",
              path.c_str(), cfg.store.c_str(), cfg.state_db.c_str(), cfg.repos.size(),
              cfg.publish.mirror ? "the mirror" : "",
              cfg.publish.mirror && cfg.publish.hub_org ? " and " : "",
              cfg.publish.hub_org ? ("the Hub as " + *cfg.publish.hub_org).c_str() : "",
              visibility);
  for (const auto& r : cfg.repos) {
    const std::string target = config::render_publish_as(r.publish_as, r, cfg.publish.hub_org);
    std::printf("\n%s@%s -> %s (config %s)\n", r.repo.c_str(), r.revision.c_str(), target.c_str(),
                config::config_hash(r, cfg.publish.hub_org).c_str());
    std::printf("  loftq: %s\n", r.loftq.to_json().dump().c_str());
    std::string allow, ignore;
    for (const auto& p : r.allow_patterns) allow += (allow.empty() ? "" : " ") + p;
    for (const auto& p : r.ignore_patterns) ignore += (ignore.empty() ? "" : " ") + p;
    std::printf("  files: allow [%s] ignore [%s]\n", allow.c_str(), ignore.c_str());
  }
  return kExitOk;
}

}  // namespace

Command add_check_config_command(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto* c = app.add_subcommand(
      "check-config", "validate a daemon configuration (exit 2 on problems) and print its targets");
  c->add_option("--config", *path, "daemon configuration file")->required();
  return {c, [path] { return check_config(*path); }};
}

}  // namespace loftqd::daemon
