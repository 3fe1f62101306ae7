#include "config/config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "common/env.h"
#include "common/ids.h"
#include "common/parse.h"
#include "common/strings.h"
#include "quant/bitplan.h"
#include "quant/quantizer.h"

using nlohmann::json;

namespace loftqd::config {

namespace {

// Walks a JSON document, collecting "path: message" problems instead of stopping at the first.
class Reader {
 public:
  std::vector<std::string> problems;

  void bad(const std::string& path, const std::string& msg) {
    problems.push_back((path.empty() ? "/" : path) + ": " + msg);
  }

  bool object(const json& j, const std::string& path) {
    if (j.is_object()) return true;
    bad(path, "must be an object");
    return false;
  }

  void known_keys(const json& j, const std::string& path, std::initializer_list<const char*> keys) {
    for (auto it = j.begin(); it != j.end(); ++it)
      if (std::none_of(keys.begin(), keys.end(), [&](const char* k) { return it.key() == k; }))
        bad(path + "/" + it.key(), "unknown key");
  }

  template <class F>
  void field(const json& j, const std::string& path, const char* key, F&& f) {
    if (j.contains(key)) f(j[key], path + "/" + key);
  }

  void str(const json& j, const std::string& path, const char* key, std::string& out) {
    field(j, path, key, [&](const json& v, const std::string& p) {
      if (v.is_string())
        out = v.get<std::string>();
      else
        bad(p, "must be a string");
    });
  }
  void opt_str(const json& j, const std::string& path, const char* key,
               std::optional<std::string>& out) {
    field(j, path, key, [&](const json& v, const std::string& p) {
      if (v.is_null())
        out.reset();
      else if (v.is_string())
        out = v.get<std::string>();
      else
        bad(p, "must be a string or null");
    });
  }
  void boolean(const json& j, const std::string& path, const char* key, bool& out) {
    field(j, path, key, [&](const json& v, const std::string& p) {
      if (v.is_boolean())
        out = v.get<bool>();
      else
        bad(p, "must be true or false");
    });
  }
  void integer(const json& j, const std::string& path, const char* key, int& out, int min,
               int max) {
    field(j, path, key, [&](const json& v, const std::string& p) {
      if (!v.is_number_integer()) return bad(p, "must be an integer");
      const int64_t x = v.get<int64_t>();
      if (x < min) return bad(p, "must be >= " + std::to_string(min));
      if (x > max) return bad(p, "must be <= " + std::to_string(max));
      out = static_cast<int>(x);
    });
  }
  // An integer checked by one of the settings validators (convert/settings.h).
  void integer(const json& j, const std::string& path, const char* key, int& out,
               std::string (*problem)(int64_t)) {
    field(j, path, key, [&](const json& v, const std::string& p) {
      if (!v.is_number_integer()) return bad(p, "must be an integer");
      const int64_t x = v.get<int64_t>();
      if (auto why = problem(x); !why.empty()) return bad(p, why);
      out = static_cast<int>(x);
    });
  }
  void strings(const json& j, const std::string& path, const char* key,
               std::vector<std::string>& out) {
    field(j, path, key, [&](const json& v, const std::string& p) {
      if (!v.is_array()) return bad(p, "must be an array of strings");
      out.clear();
      for (size_t i = 0; i < v.size(); ++i) {
        if (!v[i].is_string() || v[i].get<std::string>().empty())
          bad(p + "/" + std::to_string(i), "must be a non-empty string");
        else
          out.push_back(v[i].get<std::string>());
      }
    });
  }
};

// A plan as the config writes it: one base form (bits, bit_plan or avg_bits) and module
// overrides on top. Kept apart while the defaults and a repo's keys are merged.
struct PlanParts {
  quant::BitPlan base = quant::BitPlan::average(3.0);  // the daemon's default: 4-bit early layers
  std::vector<quant::PlanRule> overrides;

  quant::BitPlan plan() const {
    quant::BitPlan p = base;
    for (const auto& r : overrides) p.add(r);
    return p;
  }
};

// The plan keys of one loftq object on top of `parts`.
void read_plan(Reader& r, const json& j, const std::string& path, PlanParts& parts) {
  const int forms =
      int(j.contains("bits")) + int(j.contains("bit_plan")) + int(j.contains("avg_bits"));
  if (forms > 1) r.bad(path, "set only one of bits, bit_plan and avg_bits");
  r.field(j, path, "bits", [&](const json& v, const std::string& p) {
    if (!v.is_number_integer()) return r.bad(p, "must be an integer");
    parts.base = quant::BitPlan::uniform(v.get<int>());
  });
  r.field(j, path, "avg_bits", [&](const json& v, const std::string& p) {
    if (!v.is_number()) return r.bad(p, "must be a number in [2, 4]");
    if (auto why = convert::avg_bits_problem(v.get<double>()); !why.empty()) return r.bad(p, why);
    parts.base = quant::BitPlan::average(v.get<double>());
  });
  r.field(j, path, "bit_plan", [&](const json& v, const std::string& p) {
    try {
      parts.base = quant::BitPlan::from_json(v);
    } catch (const std::invalid_argument& e) {
      r.bad(p, e.what());
    }
  });
  r.field(j, path, "overrides", [&](const json& v, const std::string& p) {
    try {
      parts.overrides = quant::BitPlan::from_json(v).rules();
      for (size_t i = 0; i < parts.overrides.size(); ++i)
        if (parts.overrides[i].modules.empty())
          r.bad(p + "/" + std::to_string(i), "an override needs \"modules\"");
    } catch (const std::invalid_argument& e) {
      r.bad(p, e.what());
    }
  });
}

// LoftQ settings on top of `base` (the defaults); `parts` holds the plan as written.
LoftqSettings read_loftq(Reader& r, const json& j, const std::string& path,
                         const LoftqSettings& base, PlanParts& parts) {
  LoftqSettings s = base;
  if (!r.object(j, path)) return s;
  r.known_keys(j, path,
               {"rank", "iters", "quant", "block_size", "bits", "bit_plan", "avg_bits", "overrides",
                "target_modules", "svd", "lora_alpha", "lora_dropout"});
  r.integer(j, path, "rank", s.rank, convert::rank_problem);
  r.integer(j, path, "iters", s.iters, convert::iters_problem);
  r.integer(j, path, "block_size", s.block_size, convert::block_size_problem);
  r.field(j, path, "quant", [&](const json& v, const std::string& p) {
    try {
      s.quant = quant::parse_method(v.is_string() ? v.get<std::string>() : "");
    } catch (const std::invalid_argument&) {
      r.bad(p, "must be \"nf\" or \"uniform\"");
    }
  });
  r.field(j, path, "svd", [&](const json& v, const std::string& p) {
    try {
      s.svd = quant::parse_svd_mode(v.is_string() ? v.get<std::string>() : "");
    } catch (const std::invalid_argument&) {
      r.bad(p, "must be \"randomized\" or \"exact\"");
    }
  });
  r.strings(j, path, "target_modules", s.target_modules);
  r.field(j, path, "lora_alpha", [&](const json& v, const std::string& p) {
    if (v.is_null()) return s.lora_alpha.reset();
    if (!v.is_number()) return r.bad(p, "must be a number > 0");
    if (auto why = convert::lora_alpha_problem(v.get<double>()); !why.empty()) return r.bad(p, why);
    s.lora_alpha = v.get<double>();
  });
  r.field(j, path, "lora_dropout", [&](const json& v, const std::string& p) {
    if (!v.is_number()) return r.bad(p, "must be a number in [0, 1)");
    if (auto why = convert::lora_dropout_problem(v.get<double>()); !why.empty())
      return r.bad(p, why);
    s.lora_dropout = v.get<double>();
  });
  read_plan(r, j, path, parts);
  s.plan = parts.plan();
  return s;
}

// Checks the merged settings as a whole (bits in the quantizer's set, plan without overlaps):
// the settings' own validator, each problem under its key.
void check_loftq(Reader& r, const LoftqSettings& s, const std::string& path) {
  for (const auto& p : convert::validate(s)) r.bad(path + "/" + p.key, p.message);
}

NightlyWindow parse_window(Reader& r, const std::string& s, const std::string& path, bool& ok) {
  NightlyWindow w;
  int h1, m1, h2, m2;
  char c1, dash, c2;
  std::istringstream in(s);
  ok = static_cast<bool>(in >> h1 >> c1 >> m1 >> dash >> h2 >> c2 >> m2) && c1 == ':' &&
       c2 == ':' && dash == '-' && in.peek() == std::char_traits<char>::eof() && h1 >= 0 &&
       h1 < 24 && h2 >= 0 && h2 <= 24 && m1 >= 0 && m1 < 60 && m2 >= 0 && m2 < 60 &&
       !(h2 == 24 && m2 != 0);
  if (!ok) {
    r.bad(path, "must look like \"02:00-05:00\"");
    return w;
  }
  w.start_minute = h1 * 60 + m1;
  w.end_minute = h2 * 60 + m2;
  if (w.start_minute == w.end_minute) {
    r.bad(path, "the window is empty");
    ok = false;
  }
  return w;
}

// A duration or size from JSON: a number (seconds, bytes) or a string for common/parse.h.
std::optional<int64_t> json_duration(const json& j) {
  if (j.is_number_integer())
    return j.get<int64_t>() > 0 ? std::optional<int64_t>(j.get<int64_t>()) : std::nullopt;
  return j.is_string() ? common::parse_duration(j.get<std::string>()) : std::nullopt;
}
std::optional<uint64_t> json_size(const json& j) {
  if (j.is_number_unsigned() || (j.is_number_integer() && j.get<int64_t>() >= 0))
    return j.get<uint64_t>();
  return j.is_string() ? common::parse_size(j.get<std::string>()) : std::nullopt;
}

bool valid_listen(const std::string& s) {
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size()) return false;
  const std::string port = s.substr(colon + 1);
  if (!std::all_of(port.begin(), port.end(), ::isdigit) || port.size() > 5) return false;
  const int p = std::stoi(port);
  return p >= 0 && p <= 65535;
}

}  // namespace

bool NightlyWindow::contains(int m) const {
  return start_minute < end_minute ? (m >= start_minute && m < end_minute)
                                   : (m >= start_minute || m < end_minute);
}

ConfigError::ConfigError(std::string source, std::vector<std::string> problems)
    : std::invalid_argument(source + ": " + std::to_string(problems.size()) + " problem(s):\n  " +
                            common::join(problems, "\n  ")),
      problems_(std::move(problems)) {}

std::string render_publish_as(const std::string& tmpl, const RepoConfig& repo,
                              const std::optional<std::string>& hub_org) {
  const size_t slash = repo.repo.find('/');
  const std::string up_org = slash == std::string::npos ? "" : repo.repo.substr(0, slash);
  const std::string name = slash == std::string::npos ? repo.repo : repo.repo.substr(slash + 1);
  const std::map<std::string, std::string> vars = {{"org", hub_org.value_or(up_org)},
                                                   {"upstream_org", up_org},
                                                   {"name", name},
                                                   {"plan", repo.loftq.plan_label()},
                                                   {"rank", std::to_string(repo.loftq.rank)},
                                                   {"iters", std::to_string(repo.loftq.iters)},
                                                   {"quant", quant::method_name(repo.loftq.quant)}};
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] != '{') {
      out += tmpl[i];
      continue;
    }
    const size_t close = tmpl.find('}', i);
    if (close == std::string::npos)
      throw std::invalid_argument("publish_as '" + tmpl + "': unclosed '{'");
    const std::string key = tmpl.substr(i + 1, close - i - 1);
    auto it = vars.find(key);
    if (it == vars.end())
      throw std::invalid_argument("publish_as '" + tmpl + "': unknown placeholder {" + key +
                                  "} (known: org, upstream_org, name, plan, rank, iters, quant)");
    out += it->second;
    i = close;
  }
  if (common::namespaced_repo_id_problem(out))
    throw std::invalid_argument("publish_as '" + tmpl + "' gives " +
                                common::repo_id_error(out, true));
  return out;
}

std::string config_hash(const RepoConfig& repo, const std::optional<std::string>& hub_org) {
  const json j = {{"loftq", repo.loftq.to_json()},
                  {"publish_as", render_publish_as(repo.publish_as, repo, hub_org)}};
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the canonical JSON (keys sorted)
  for (unsigned char c : j.dump()) h = (h ^ c) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

namespace {

// The per-repo defaults ("defaults"), applied to every entry of "repos" before its own keys.
struct RepoDefaults {
  RepoConfig repo;  // revision, patterns, publish_as, loftq
  PlanParts plan;
};

void read_hub(Reader& r, const json& j, Config& c) {
  r.field(j, "", "hub", [&](const json& v, const std::string& p) {
    if (!r.object(v, p)) return;
    r.known_keys(v, p, {"endpoint", "token_file"});
    r.str(v, p, "endpoint", c.hub.endpoint);
    r.opt_str(v, p, "token_file", c.hub.token_file);
    if (!(c.hub.endpoint.starts_with("http://") || c.hub.endpoint.starts_with("https://")))
      r.bad(p + "/endpoint", "must start with http:// or https://");
  });
}

// store, state_db, log_level, log_format, device.
void read_top_level(Reader& r, const json& j, Config& c) {
  if (!j.contains("store")) r.bad("/store", "is required");
  r.str(j, "", "store", c.store);
  if (j.contains("store") && c.store.empty()) r.bad("/store", "must not be empty");
  r.str(j, "", "state_db", c.state_db);
  if (c.state_db.empty() && !c.store.empty()) c.state_db = c.store + "/loftqd.db";
  r.str(j, "", "log_level", c.log_level);
  static const std::set<std::string> levels = {"trace", "debug",    "info", "warn",
                                               "error", "critical", "off"};
  if (!levels.count(c.log_level))
    r.bad("/log_level", "must be one of trace, debug, info, warn, error, critical, off");
  r.str(j, "", "log_format", c.log_format);
  if (c.log_format != "text" && c.log_format != "json")
    r.bad("/log_format", "must be \"text\" or \"json\"");
  r.field(j, "", "device", [&](const json& v, const std::string& p) {
    try {
      c.device = quant::parse_device(v.is_string() ? v.get<std::string>() : "");
    } catch (const std::invalid_argument&) {
      r.bad(p, "must be auto, cpu, cuda or cuda:N");
    }
  });
}

RepoDefaults read_defaults(Reader& r, const json& j, Config& c) {
  RepoDefaults d;
  d.repo.publish_as = "{org}/{name}-loftq-{plan}-{rank}rank";
  d.repo.loftq.plan = d.plan.plan();
  r.field(j, "", "defaults", [&](const json& v, const std::string& p) {
    if (!r.object(v, p)) return;
    r.known_keys(v, p, {"revision", "allow_patterns", "ignore_patterns", "publish_as", "loftq"});
    r.str(v, p, "revision", d.repo.revision);
    r.strings(v, p, "allow_patterns", d.repo.allow_patterns);
    r.strings(v, p, "ignore_patterns", d.repo.ignore_patterns);
    r.str(v, p, "publish_as", d.repo.publish_as);
    r.field(v, p, "loftq", [&](const json& l, const std::string& lp) {
      d.repo.loftq = read_loftq(r, l, lp, d.repo.loftq, d.plan);
    });
  });
  d.repo.loftq.device = c.device;
  c.defaults = d.repo.loftq;
  return d;
}

void read_publish(Reader& r, const json& j, Config& c) {
  r.field(j, "", "publish", [&](const json& v, const std::string& p) {
    if (!r.object(v, p)) return;
    r.known_keys(v, p, {"hub_org", "mirror", "private", "early_upload"});
    r.opt_str(v, p, "hub_org", c.publish.hub_org);
    r.boolean(v, p, "mirror", c.publish.mirror);
    r.boolean(v, p, "early_upload", c.publish.early_upload);
    r.field(v, p, "private", [&](const json& x, const std::string& xp) {
      if (x.is_boolean())
        c.publish.visibility = x.get<bool>() ? Visibility::Private : Visibility::Public;
      else if (x != "inherit")
        r.bad(xp, "must be \"inherit\", true or false");
    });
    if (c.publish.hub_org && (c.publish.hub_org->find('/') != std::string::npos ||
                              common::repo_id_problem(*c.publish.hub_org)))
      r.bad(p + "/hub_org", "'" + *c.publish.hub_org + "' is not a valid org name");
  });
  if (!c.publish.hub_org && !c.publish.mirror)
    r.bad("/publish", "publishes nowhere: set hub_org or mirror: true");
}

// One entry of "repos" on top of the defaults; its publish target must be new.
RepoConfig read_repo(Reader& r, const json& o, const std::string& rp, const RepoDefaults& d,
                     const Config& c, std::map<std::string, std::string>& seen_targets) {
  RepoConfig rc = d.repo;
  PlanParts plan = d.plan;
  if (!r.object(o, rp)) return rc;
  r.known_keys(o, rp,
               {"repo", "revision", "allow_patterns", "ignore_patterns", "publish_as", "loftq"});
  if (!o.contains("repo")) r.bad(rp + "/repo", "is required");
  r.str(o, rp, "repo", rc.repo);
  const auto repo_problem = common::namespaced_repo_id_problem(rc.repo);
  if (o.contains("repo") && repo_problem) r.bad(rp + "/repo", common::repo_id_error(rc.repo, true));
  r.str(o, rp, "revision", rc.revision);
  if (rc.revision.empty()) r.bad(rp + "/revision", "must not be empty");
  r.strings(o, rp, "allow_patterns", rc.allow_patterns);
  r.strings(o, rp, "ignore_patterns", rc.ignore_patterns);
  r.str(o, rp, "publish_as", rc.publish_as);
  r.field(o, rp, "loftq", [&](const json& l, const std::string& lp) {
    rc.loftq = read_loftq(r, l, lp, d.repo.loftq, plan);
  });
  check_loftq(r, rc.loftq, rp + "/loftq");
  if (repo_problem) return rc;
  try {
    const std::string target = render_publish_as(rc.publish_as, rc, c.publish.hub_org);
    if (target == rc.repo)
      r.bad(rp + "/publish_as", "would overwrite the upstream repo '" + rc.repo + "'");
    // Variants of one upstream repo are fine; two entries publishing to one repo are not.
    const auto [it, fresh] = seen_targets.emplace(target, rp + " (" + rc.repo + ")");
    if (!fresh)
      r.bad(rp + "/publish_as", "'" + target + "' is also the target of " + it->second +
                                    ": each entry needs its own publish_as");
  } catch (const std::invalid_argument& e) {
    r.bad(rp + "/publish_as", e.what());
  }
  return rc;
}

// (An empty watch list is allowed: the daemon then only serves the mirror.)
void read_repos(Reader& r, const json& j, const RepoDefaults& d, Config& c) {
  std::map<std::string, std::string> seen_targets;  // target -> "/repos/N (repo)"
  r.field(j, "", "repos", [&](const json& v, const std::string& p) {
    if (!v.is_array()) return r.bad(p, "must be an array");
    for (size_t i = 0; i < v.size(); ++i)
      c.repos.push_back(read_repo(r, v[i], p + "/" + std::to_string(i), d, c, seen_targets));
  });
  check_loftq(r, c.defaults, "/defaults/loftq");
}

void read_schedule(Reader& r, const json& j, Config& c) {
  r.field(j, "", "schedule", [&](const json& v, const std::string& p) {
    if (!r.object(v, p)) return;
    r.known_keys(v, p, {"poll_interval", "nightly", "timezone"});
    r.field(v, p, "poll_interval", [&](const json& d, const std::string& dp) {
      auto secs = json_duration(d);
      if (!secs)
        r.bad(dp, "must be a positive duration such as \"15m\", \"1h\" or a number of seconds");
      else if (*secs < 10)
        r.bad(dp, "must be at least 10 seconds");
      else
        c.schedule.poll_interval_s = *secs;
    });
    r.field(v, p, "nightly", [&](const json& n, const std::string& np) {
      if (n.is_null()) return c.schedule.nightly.reset();
      if (!n.is_string()) return r.bad(np, "must be a string such as \"02:00-05:00\" or null");
      bool ok = false;
      auto w = parse_window(r, n.get<std::string>(), np, ok);
      if (ok) c.schedule.nightly = w;
    });
    r.str(v, p, "timezone", c.schedule.timezone);
    const auto& tz = c.schedule.timezone;
    if (tz != "UTC" && tz != "local" &&
        (tz.find("..") != std::string::npos || tz.empty() || tz[0] == '/' ||
         !std::filesystem::is_regular_file(std::filesystem::path("/usr/share/zoneinfo") / tz)))
      r.bad(p + "/timezone",
            "'" + tz + "' is not UTC, local or a time zone in /usr/share/zoneinfo");
  });
}

void read_mirror(Reader& r, const json& j, Config& c) {
  r.field(j, "", "mirror", [&](const json& v, const std::string& p) {
    if (!r.object(v, p)) return;
    r.known_keys(v, p, {"enabled", "listen", "write_token_file", "webhook_secret_file"});
    r.boolean(v, p, "enabled", c.mirror.enabled);
    r.str(v, p, "listen", c.mirror.listen);
    if (!valid_listen(c.mirror.listen))
      r.bad(p + "/listen", "must be HOST:PORT, e.g. 127.0.0.1:8080");
    r.opt_str(v, p, "write_token_file", c.mirror.write_token_file);
    r.opt_str(v, p, "webhook_secret_file", c.mirror.webhook_secret_file);
  });
  if (c.publish.mirror && !c.mirror.enabled)
    r.bad("/publish/mirror", "is true but /mirror/enabled is false");
}

void read_limits(Reader& r, const json& j, Config& c) {
  r.field(j, "", "limits", [&](const json& v, const std::string& p) {
    if (!r.object(v, p)) return;
    r.known_keys(v, p,
                 {"concurrent_downloads", "concurrent_uploads", "concurrent_jobs", "disk_reserve",
                  "max_attempts"});
    r.integer(v, p, "concurrent_downloads", c.limits.concurrent_downloads, 1, 64);
    r.integer(v, p, "concurrent_uploads", c.limits.concurrent_uploads, 1, 64);
    r.integer(v, p, "concurrent_jobs", c.limits.concurrent_jobs, 1, 64);
    r.integer(v, p, "max_attempts", c.limits.max_attempts, 1, 1000);
    r.field(v, p, "disk_reserve", [&](const json& d, const std::string& dp) {
      auto size = json_size(d);
      if (!size)
        r.bad(dp, std::string("must be ") + common::kSizeExample);
      else
        c.limits.disk_reserve_bytes = *size;
    });
  });
}

void read_retention(Reader& r, const json& j, Config& c) {
  r.field(j, "", "retention", [&](const json& v, const std::string& p) {
    if (!r.object(v, p)) return;
    r.known_keys(v, p,
                 {"keep_upstream_snapshots", "keep_published_snapshots", "prune_orphaned_targets"});
    // 0 upstream snapshots: a download is deleted once no queued or running job needs it. A
    // published target always keeps its head (what its branch serves).
    r.integer(v, p, "keep_upstream_snapshots", c.retention.keep_upstream_snapshots, 0, 1000);
    r.integer(v, p, "keep_published_snapshots", c.retention.keep_published_snapshots, 1, 1000);
    r.boolean(v, p, "prune_orphaned_targets", c.retention.prune_orphaned_targets);
  });
}

}  // namespace

Config parse_config(const json& j, const std::string& source) {
  Reader r;
  Config c;
  if (!r.object(j, "")) throw ConfigError(source, r.problems);
  r.known_keys(j, "",
               {"hub", "store", "state_db", "log_level", "log_format", "device", "defaults",
                "repos", "schedule", "publish", "mirror", "limits", "retention"});
  read_hub(r, j, c);
  read_top_level(r, j, c);
  const RepoDefaults defaults = read_defaults(r, j, c);
  read_publish(r, j, c);  // before the repos: publish_as renders {org} from hub_org
  read_repos(r, j, defaults, c);
  read_schedule(r, j, c);
  read_mirror(r, j, c);
  read_limits(r, j, c);
  read_retention(r, j, c);
  if (!r.problems.empty()) throw ConfigError(source, r.problems);
  return c;
}

Config load_config(const std::filesystem::path& p) {
  std::ifstream f(p);
  if (!f) throw ConfigError(p.string(), {"/: cannot read the file"});
  std::stringstream ss;
  ss << f.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::parse_error& e) {
    throw ConfigError(p.string(), {std::string("/: not valid JSON (") + e.what() + ")"});
  }
  return parse_config(j, p.string());
}

void apply_env(Config& c, const common::EnvLookup& lookup) {
  if (auto e = common::hub_env(lookup).endpoint) c.hub.endpoint = *e;
}

}  // namespace loftqd::config
