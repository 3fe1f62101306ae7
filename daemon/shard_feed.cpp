#include "daemon/shard_feed.h"

#include <algorithm>

namespace loftqd::daemon {

ShardFeed::ShardFeed(hub::ClientOptions opt, hub::SnapshotRequest sr,
                     std::vector<std::string> shards, hub::ProgressFn progress)
    : opt_(std::move(opt)),
      sr_(std::move(sr)),
      shards_(std::move(shards)),
      progress_(std::move(progress)),
      thread_([this] { run(); }) {}

ShardFeed::~ShardFeed() {
  {
    std::lock_guard g(mu_);
    stop_ = true;
  }
  thread_.join();
}

void ShardFeed::run() {
  hub::Client client(opt_);
  // One call per shard, then the whole selection (which finds the shards in place).
  for (size_t i = 0; i <= shards_.size(); ++i) {
    {
      std::lock_guard g(mu_);
      if (stop_) break;
    }
    hub::SnapshotRequest one = sr_;
    if (i < shards_.size()) one.files = {shards_[i]};
    auto r = client.snapshot_download(one, progress_);
    std::lock_guard g(mu_);
    if (!r) {
      error_ = r.error();
      break;
    }
    result_.bytes += r.value().bytes;
    result_.downloaded += r.value().downloaded;
    if (i < shards_.size()) {
      ++done_;
    } else {
      result_.commit = r.value().commit;
      result_.dir = r.value().dir;
      result_.files = r.value().files;
      // The last call found the shards in place; they count once, as fetched by their own call.
    }
    cv_.notify_all();
  }
  std::lock_guard g(mu_);
  finished_ = true;
  seconds_ = clock_.seconds();
  cv_.notify_all();
}

std::optional<hub::Error> ShardFeed::wait(const std::string& shard) {
  const auto it = std::find(shards_.begin(), shards_.end(), shard);
  if (it == shards_.end()) return std::nullopt;
  const size_t need = static_cast<size_t>(it - shards_.begin()) + 1;
  std::unique_lock l(mu_);
  cv_.wait(l, [&] { return done_ >= need || finished_; });
  if (done_ >= need) return std::nullopt;
  if (error_) return error_;
  return hub::Error{hub::ErrorKind::Io, sr_.repo + ": the download of '" + shard + "' was stopped"};
}

hub::Result<hub::SnapshotResult> ShardFeed::finish() {
  std::unique_lock l(mu_);
  cv_.wait(l, [&] { return finished_; });
  if (error_) return *error_;
  if (result_.dir.empty())
    return hub::Error{hub::ErrorKind::Io, sr_.repo + ": the download was stopped"};
  return result_;
}

double ShardFeed::seconds() const {
  std::lock_guard g(mu_);
  return seconds_;
}

size_t ShardFeed::shards_done() const {
  std::lock_guard g(mu_);
  return done_;
}

}  // namespace loftqd::daemon
