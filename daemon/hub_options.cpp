#include "daemon/hub_options.h"

#include <filesystem>
#include <stdexcept>

namespace fs = std::filesystem;

namespace loftqd::daemon {

std::optional<std::string> read_secret(const std::optional<std::string>& path, const char* key,
                                       const common::EnvLookup& lookup) {
  if (!path) return std::nullopt;
  fs::path p = *path;
  std::string via;
  if (const auto creds = common::env("CREDENTIALS_DIRECTORY", lookup)) {
    const fs::path c = fs::path(*creds) / fs::path(*path).filename();
    std::error_code ec;
    if (fs::exists(c, ec)) {
      via = " (the credential for " + *path + ")";
      p = c;
    }
  }
  std::optional<std::string> s;
  try {
    s = hub::read_token_file(p);
  } catch (const std::exception& e) {
    throw std::invalid_argument(std::string(key) + ": " + e.what() + via);
  }
  if (!s) throw std::invalid_argument(std::string(key) + ": " + p.string() + via + " is empty");
  return s;
}

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
  const auto config_token = read_secret(cfg.hub.token_file, "hub.token_file", lookup);
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
  o.max_send_bytes_per_s = ep.max_send_bytes_per_s;
  return o;
}

}  // namespace loftqd::daemon
