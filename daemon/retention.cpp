#include "daemon/retention.h"

#include <cstdio>
#include <map>
#include <set>

#include "common/strings.h"

namespace loftqd::daemon {

namespace {

std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / (1024.0 * 1024.0));
  return buf;
}

}  // namespace

std::vector<storage::RepoPolicy> retention_policies(const config::Config& cfg,
                                                    const storage::StateDb& db,
                                                    const storage::Store& store) {
  std::set<std::string> watched, targets;
  for (const auto& r : cfg.repos) {
    watched.insert(r.repo);
    targets.insert(config::render_publish_as(r.publish_as, r, cfg.publish.hub_org));
  }
  std::map<std::string, std::set<std::string>> needed;  // repo -> commits of unfinished jobs
  std::set<std::string> busy;                           // repos and targets of unfinished jobs
  for (const auto& j : db.unfinished_jobs()) {
    needed[j.repo].insert(j.upstream_commit);
    busy.insert(j.repo);
    busy.insert(j.target);
  }
  const std::set<std::string> job_targets = db.job_targets();
  const std::set<std::string> job_upstreams = db.job_upstreams();
  std::vector<storage::RepoPolicy> out;
  for (const auto& repo : store.list_repos()) {
    const bool hosted = store.read_meta(repo).has_value();  // made through the mirror
    storage::RepoPolicy p;
    p.repo = repo;
    if (targets.count(repo)) {
      p.keep_snapshots = static_cast<size_t>(cfg.retention.keep_published_snapshots);
      p.min_blob_age = kUploadGrace;
      // A running job uploads its backbone's objects before the commit that names them
      // (publish.early_upload): however long its LoftQ takes, they stay until it is done.
      p.sweep_blobs = !busy.count(repo);
    } else if (watched.count(repo)) {
      if (hosted) continue;  // the daemon watches a repo its own mirror hosts: not a download
      p.keep_snapshots = static_cast<size_t>(cfg.retention.keep_upstream_snapshots);
      if (auto it = needed.find(repo); it != needed.end()) p.pinned = it->second;
      p.sweep_blobs = !busy.count(repo);
    } else if (job_targets.count(repo) || (job_upstreams.count(repo) && !hosted)) {
      if (!cfg.retention.prune_orphaned_targets || busy.count(repo)) continue;
      p.remove_repo = true;
    } else {
      continue;
    }
    out.push_back(std::move(p));
  }
  return out;
}

storage::GcReport apply_retention(
    const config::Config& cfg, const storage::StateDb& db, Metrics* metrics,
    const std::function<void(spdlog::level::level_enum, const std::string&)>& log) {
  storage::GcReport r;
  try {
    const storage::Store store(cfg.store);
    r = storage::collect_garbage(store, retention_policies(cfg, db, store));
  } catch (const std::exception& e) {
    r.errors.push_back(e.what());
  }
  if (metrics) metrics->retention_ran(r.bytes_freed, r.errors.empty());
  for (const auto& e : r.errors)
    log(spdlog::level::warn,
        "step=retention error=\"" + e + "\" (tried again after the next pass)");
  if (r.empty()) {
    log(spdlog::level::debug, "step=retention nothing to remove");
    return r;
  }
  std::string line =
      "step=retention snapshots_removed=" + std::to_string(r.snapshots_removed.size()) +
      " repos_removed=" + std::to_string(r.repos_removed.size()) +
      " blobs_removed=" + std::to_string(r.blobs_removed) +
      " bytes_freed=" + std::to_string(r.bytes_freed) + " (" + mib(r.bytes_freed) + ")";
  if (!r.snapshots_removed.empty()) line += " snapshots=" + common::join(r.snapshots_removed, ",");
  if (!r.repos_removed.empty()) line += " repos=" + common::join(r.repos_removed, ",");
  log(spdlog::level::info, line);
  return r;
}

}  // namespace loftqd::daemon
