// Retention in the blob store: old snapshots beyond a count removed, whole repos removed when
// asked, and the blobs that no remaining snapshot links to freed. Which repos get which policy
// is the caller's decision (the daemon's: daemon/retention.h); this file only applies it.
//
// Crash-safe by order: a snapshot disappears in one rename (to snapshots/.gc-{commit}-{hex})
// before its files are deleted, a repo in one rename (to <root>/.gc-{folder}-{hex}), and a blob
// is deleted only when no snapshot left in the store links to it. Killed at any point, the store
// is consistent (every snapshot whole, every link resolving, every ref naming a snapshot); what
// was left behind is garbage the next run removes (the .gc- leftovers first).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "storage/store.h"

namespace loftqd::storage {

struct RepoPolicy {
  std::string repo;
  // The whole repo folder goes (snapshots, blobs, refs, metadata).
  bool remove_repo = false;
  // The newest snapshots kept, by the time each was written into the store. Snapshots that a
  // ref (branch or tag) names, and `pinned` ones, are kept on top of these.
  size_t keep_snapshots = 1;
  std::set<std::string> pinned;  // commits that must stay (a queued or running job's)
  // Whether unreferenced blobs and .incomplete partials are deleted. False while a job may
  // still link blobs it has downloaded (a queued or running job of this repo).
  bool sweep_blobs = true;
  // Unreferenced blobs written less than this long ago stay: an upload through the mirror's
  // write API puts its blobs in place before the commit that links them.
  std::chrono::seconds min_blob_age{0};
};

struct GcReport {
  std::vector<std::string> snapshots_removed;  // "repo@commit"
  std::vector<std::string> repos_removed;
  size_t blobs_removed = 0;         // blobs and partials
  uint64_t bytes_freed = 0;         // file contents deleted (blobs, partials, removed repos)
  std::vector<std::string> errors;  // what could not be removed (tried again next time)
  bool empty() const {
    return snapshots_removed.empty() && repos_removed.empty() && blobs_removed == 0 &&
           bytes_freed == 0;
  }
};

struct GcHooks {
  // Test seam: called after each removal ("snapshot", "repo", "blob"); a throw from it stops
  // the run there, as a crash would.
  std::function<void(const std::string&)> after_step;
};

// Applies each policy to its repo (repos without a policy are not touched), after removing the
// leftovers of an interrupted run.
GcReport collect_garbage(const Store& store, const std::vector<RepoPolicy>& policies,
                         const GcHooks& hooks = {});

}  // namespace loftqd::storage
