// The daemon's JSON configuration: parse, validate (every problem with its JSON path), env
// overrides, publish_as templates. Documented in docs/configuration.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/env.h"
#include "convert/settings.h"
#include "quant/device.h"

namespace loftqd::config {

// LoftQ settings of a watched repo (global defaults merged in): the typed settings that the CLI
// flags parse into too (convert/settings.h).
using LoftqSettings = convert::LoftqSettings;

struct RepoConfig {
  std::string repo;  // org/name upstream
  std::string revision = "main";
  std::vector<std::string> allow_patterns;
  std::vector<std::string> ignore_patterns;
  std::string publish_as;  // template, rendered with render_publish_as()
  LoftqSettings loftq;
};

struct NightlyWindow {
  int start_minute = 0;  // minutes after midnight, in the schedule's time zone
  int end_minute = 0;    // may be < start (the window wraps past midnight)
  bool contains(int minute_of_day) const;
};

struct Schedule {
  int64_t poll_interval_s = 3600;
  std::optional<NightlyWindow> nightly;
  std::string timezone = "UTC";  // "UTC", "local" or an IANA name from /usr/share/zoneinfo
};

struct HubSettings {
  std::string endpoint = "https://huggingface.co";
  std::optional<std::string> token_file;  // used when HF_TOKEN and $HF_HOME/token are absent
};

// publish.private: "inherit" (default: private when the upstream repo is private or gated),
// true (always private) or false (always public).
enum class Visibility { Inherit, Private, Public };

struct PublishTargets {
  std::optional<std::string> hub_org;  // publish to the Hub under this org
  bool mirror = true;                  // publish to the built-in mirror
  Visibility visibility = Visibility::Inherit;
  // Each backbone shard goes up (as an LFS object, no commit) as soon as it is written, while
  // LoftQ runs on the next ones, and the adapter once LoftQ is done; the commit still comes only
  // after the whole layout is made.
  bool early_upload = true;
};

struct MirrorSettings {
  bool enabled = true;
  std::string listen = "127.0.0.1:8080";
  std::optional<std::string> write_token_file;
  std::optional<std::string> webhook_secret_file;
};

struct Limits {
  int concurrent_downloads = 4;
  int concurrent_uploads = 4;  // publishing: files hashed and LFS objects uploaded at once
  int concurrent_jobs = 1;
  uint64_t disk_reserve_bytes = 10ull << 30;
  int max_attempts = 5;
};

// What the store keeps (docs/configuration.md, "retention"); applied after every pass of `run`
// and `sync` and when `run` starts (daemon/retention.h).
struct Retention {
  int keep_upstream_snapshots = 1;      // newest downloaded upstream commits kept per watched repo
  int keep_published_snapshots = 2;     // newest commits kept per published target in the mirror
  bool prune_orphaned_targets = false;  // remove loftqd's repos that no entry names any more
};

struct Config {
  HubSettings hub;
  std::string store;     // blob store root (required)
  std::string state_db;  // default: <store>/loftqd.db
  std::string log_level = "info";
  std::string log_format = "text";  // "text" or "json" (one JSON object per line)
  quant::DeviceChoice device;  // "device": auto | cpu | cuda | cuda:N (also in every repo's loftq)
  LoftqSettings defaults;
  std::vector<RepoConfig> repos;
  Schedule schedule;
  PublishTargets publish;
  MirrorSettings mirror;
  Limits limits;
  Retention retention;
};

// Every problem found, each "JSON-path: message" (e.g. "/repos/2/loftq/rank: must be > 0").
class ConfigError : public std::invalid_argument {
 public:
  ConfigError(std::string source, std::vector<std::string> problems);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::vector<std::string> problems_;
};

// Parses and validates; throws ConfigError listing every problem. `source` names the file in
// messages.
Config parse_config(const nlohmann::json& j, const std::string& source = "config");
Config load_config(const std::filesystem::path& p);  // ConfigError also for unreadable/bad JSON

// HF_ENDPOINT overrides hub.endpoint. (Tokens are resolved by the hub client.) `lookup`
// defaults to the process environment.
void apply_env(Config& c, const common::EnvLookup& lookup = {});

// "{org}/{name}-loftq-{plan}-{rank}rank" -> "my-org/Llama-2-7b-hf-loftq-avg3bit-64rank".
// {org}: publish.hub_org if set, else the upstream org; {upstream_org}, {name}, {plan}, {rank},
// {iters}, {quant}. std::invalid_argument for an unknown placeholder or a result that is not a
// valid "org/name".
std::string render_publish_as(const std::string& tmpl, const RepoConfig& repo,
                              const std::optional<std::string>& hub_org);

// Stable 16-hex hash of everything that changes a repo's published result (LoftQ settings,
// target name). A config change re-publishes; an unchanged one never runs twice.
std::string config_hash(const RepoConfig& repo, const std::optional<std::string>& hub_org);

}  // namespace loftqd::config
