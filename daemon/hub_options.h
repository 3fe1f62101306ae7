// The one place the daemon builds its upstream Hub client options (sync, run, the pipeline).
#pragma once

#include "common/env.h"
#include "config/config.h"
#include "hub/hub.h"

namespace loftqd::daemon {

// Where results go: the built-in mirror (endpoint + write token) and/or the Hub under an org.
struct PublishEndpoint {
  std::string endpoint;
  std::optional<std::string> token;
  bool offline = false;  // HF_HUB_OFFLINE, for the Hub (never for the daemon's own mirror)
  uint64_t max_send_bytes_per_s = 0;  // per upload connection; 0: unlimited (bench_pipeline's)
};

// A secret named by the configuration key `key` (hub.token_file, mirror.write_token_file,
// mirror.webhook_secret_file, --write-token-file): the file's content without surrounding
// whitespace, nullopt when `path` is unset. Under systemd's LoadCredential= (the environment has
// CREDENTIALS_DIRECTORY) a credential named like the file (its last path component) is read
// from there instead, so a DynamicUser service can use root-owned 0600 files. An unreadable or
// empty file throws std::invalid_argument (a configuration error, exit 2) naming key and path.
std::optional<std::string> read_secret(const std::optional<std::string>& path, const char* key,
                                       const common::EnvLookup& lookup = {});

// Client options for downloads from the configured upstream Hub:
// - endpoint: cfg.hub.endpoint (config::apply_env has already put HF_ENDPOINT there);
// - token: HF_TOKEN, then $HF_HOME/token, then the file named by hub.token_file;
// - offline: HF_HUB_OFFLINE (the client then makes no network request at all);
// - parallel downloads and the disk reserve: limits.concurrent_downloads, disk_reserve_bytes.
// `lookup` replaces the process environment (tests, and the demo, whose upstream is its own
// in-process mirror).
hub::ClientOptions upstream_client_options(const config::Config& cfg,
                                           const common::EnvLookup& lookup = {});

// Client options for uploads to `ep` (and for the demo's reads from its own mirror).
hub::ClientOptions publish_client_options(const PublishEndpoint& ep);

// An environment with nothing set (for upstream_client_options of a self-contained run).
std::optional<std::string> no_env(const char* name);

// The line logged when HF_HUB_OFFLINE keeps a pass from checking anything upstream.
inline constexpr const char* kOfflineNotice =
    "HF_HUB_OFFLINE is set: no network request; watched repos are not checked upstream (jobs "
    "already queued run from the local store)";

}  // namespace loftqd::daemon
