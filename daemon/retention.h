// The daemon's retention (config `retention`, docs/configuration.md): which repos of the store
// are loftqd's and what each keeps, applied with storage::collect_garbage after every pass of
// `run` and `sync` and when `run` starts.
//
//   - a watched upstream repo (the downloads): the newest keep_upstream_snapshots snapshots, plus
//     every commit a queued or running job needs; while such a job exists its blobs are not swept
//     (it may link what it has downloaded). A repo the store's mirror hosts (uploaded through its
//     write API) is not a download and is left alone.
//   - a configured target (published into the mirror): the newest keep_published_snapshots, plus
//     whatever a branch or tag serves; blobs uploaded in the last kUploadGrace are spared, and
//     no blob is swept while a job for it is unfinished (early uploads precede their commit).
//   - an orphan (a target or a downloaded upstream that a job named but no entry names now): the
//     whole repo, only with prune_orphaned_targets, and never while a job still needs it.
//   - any other repo in the store: untouched.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "config/config.h"
#include "daemon/metrics.h"
#include "storage/retention.h"
#include "storage/state.h"
#include "storage/store.h"

namespace loftqd::daemon {

inline constexpr std::chrono::seconds kUploadGrace = std::chrono::minutes(15);

std::vector<storage::RepoPolicy> retention_policies(const config::Config& cfg,
                                                    const storage::StateDb& db,
                                                    const storage::Store& store);

// Plans, collects and reports: one info line with what was removed and the bytes freed (a debug
// line when nothing was), a warning per error. Never throws: retention failing must not stop
// the daemon (what it could not remove is tried again after the next pass).
storage::GcReport apply_retention(
    const config::Config& cfg, const storage::StateDb& db, Metrics* metrics,
    const std::function<void(spdlog::level::level_enum, const std::string&)>& log);

}  // namespace loftqd::daemon
