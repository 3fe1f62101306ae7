// The shards of an upstream snapshot, downloaded on threads of their own in the order the
// quantize step reads them, so that shard k + 1 arrives while shard k is quantized (issue 14).
// Each shard is one snapshot_download call (SnapshotRequest::files): verified, installed and
// linked into the snapshot before wait() lets the reader open it. `jobs` shards are fetched at
// once (started in order), as snapshot_download fetches files below its range threshold; a
// large shard is already fetched in parallel byte ranges, so those come one at a time. After
// the first failure no shard starts. The rest of the selection follows the shards in one last
// call, which also finds everything in place and links it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/stopwatch.h"
#include "hub/hub.h"

namespace loftqd::daemon {

class ShardFeed {
 public:
  // Starts at once. `sr` is the whole selection; `shards` the shard files still to fetch, in
  // the order they will be waited for. `progress` is called from the feed's thread.
  ShardFeed(hub::ClientOptions opt, hub::SnapshotRequest sr, std::vector<std::string> shards,
            int jobs = 1, hub::ProgressFn progress = {});
  // Stops the feed: the transfers in flight are cancelled (ClientOptions::cancel; their
  // partials stay for the next download to resume), no call starts, and the threads are joined.
  ~ShardFeed();
  ShardFeed(const ShardFeed&) = delete;
  ShardFeed& operator=(const ShardFeed&) = delete;

  // Blocks until `shard` is in the snapshot: nullopt then, or the error that ended the feed
  // before it got there (a shard the feed does not fetch returns at once), or an error saying
  // so when `should_stop` (polled every 100 ms) returns true first.
  std::optional<hub::Error> wait(const std::string& shard,
                                 const std::function<bool()>& should_stop = {});
  // Blocks until the whole selection is in place: the last call's result with the files
  // fetched and bytes received by every call added up, or the first error.
  hub::Result<hub::SnapshotResult> finish();
  // How long the feed ran (once finish() has returned).
  double seconds() const;

 private:
  void run();
  hub::Result<hub::Ok> fetch_shard(size_t i);
  std::optional<hub::Error> stopped() const;  // the error of a feed stopped (cancel_) in between

  std::atomic<bool> cancel_{false};  // set by the destructor; opt_.cancel points here
  const hub::ClientOptions opt_;
  const hub::SnapshotRequest sr_;
  const std::vector<std::string> shards_;
  const int jobs_;
  const hub::ProgressFn progress_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<bool> done_;  // per shard: in place
  bool finished_ = false;
  std::optional<hub::Error> error_;
  hub::SnapshotResult result_;  // every call's, added up (SnapshotResult::add)
  const common::Stopwatch clock_;
  double seconds_ = 0;
  std::thread thread_;  // last: started once every member above exists
};

}  // namespace loftqd::daemon
