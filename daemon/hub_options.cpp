#include "daemon/hub_options.h"

namespace loftqd::daemon {

std::optional<std::string> no_env(const char*) {
  return std::nullopt;
}

hub::ClientOptions upstream_client_options(const config::Config& cfg,
                                           const common::EnvLookup& lookup) {
  const common::HubEnv e = common::hub_env(lookup);
  hub::ClientOptions o;
  o.endpoint = cfg.hub.endpoint;
  while (!o.endpoint.empty() && o.endpoint.back() == '/') o.endpoint.pop_back();
  // The config's token file is read even when the environment has a token, so that a broken
  // one is reported at start-up either way.
  const auto config_token =
      cfg.hub.token_file ? hub::read_token_file(*cfg.hub.token_file) : std::nullopt;
  o.token = e.token ? e.token : config_token;
  o.offline = e.offline;
  o.parallel = cfg.limits.concurrent_downloads;
  o.disk_reserve = cfg.limits.disk_reserve_bytes;
  return o;
}

hub::ClientOptions publish_client_options(const PublishEndpoint& ep) {
  hub::ClientOptions o;
  o.endpoint = ep.endpoint;
  o.token = ep.token;
  o.offline = ep.offline;
  return o;
}

}  // namespace loftqd::daemon
