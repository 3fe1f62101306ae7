#include "daemon/shard_feed.h"

#include <algorithm>
#include <chrono>

#include "common/parallel.h"

namespace loftqd::daemon {

ShardFeed::ShardFeed(hub::ClientOptions opt, hub::SnapshotRequest sr,
                     std::vector<std::string> shards, int jobs, hub::ProgressFn progress)
    : opt_([&] {
        opt.cancel = &cancel_;
        return std::move(opt);
      }()),
      sr_(std::move(sr)),
      shards_(std::move(shards)),
      jobs_(std::clamp(jobs, 1, 64)),
      progress_(std::move(progress)),
      done_(shards_.size(), false),
      thread_([this] { run(); }) {}

ShardFeed::~ShardFeed() {
  cancel_ = true;
  thread_.join();
}

std::optional<hub::Error> ShardFeed::stopped() const {
  if (!cancel_) return std::nullopt;
  return hub::Error{hub::ErrorKind::Io, sr_.repo + ": the download was stopped"};
}

hub::Result<hub::Ok> ShardFeed::fetch_shard(size_t i) {
  if (auto e = stopped()) return *e;
  hub::SnapshotRequest one = sr_;
  one.files = {shards_[i]};
  auto r = hub::Client(opt_).snapshot_download(one, progress_);
  if (!r) return r.error();
  std::lock_guard g(mu_);
  result_.add(r.value());
  done_[i] = true;
  cv_.notify_all();
  return hub::Ok{};
}

void ShardFeed::run() {
  // The shards, `jobs_` at a time, then the whole selection, which finds them in place (they
  // count once, as fetched by their own calls).
  auto shards = common::parallel_each<hub::Error>(shards_.size(), jobs_,
                                                  [this](size_t i) { return fetch_shard(i); });
  std::optional<hub::Error> error = shards ? stopped() : shards.error();
  if (!error) {
    auto r = hub::Client(opt_).snapshot_download(sr_, progress_);
    if (r) {
      std::lock_guard g(mu_);
      result_.add(r.value());
    } else {
      error = r.error();
    }
  }
  std::lock_guard g(mu_);
  error_ = error;
  finished_ = true;
  seconds_ = clock_.seconds();
  cv_.notify_all();
}

std::optional<hub::Error> ShardFeed::wait(const std::string& shard,
                                          const std::function<bool()>& should_stop) {
  const auto it = std::find(shards_.begin(), shards_.end(), shard);
  if (it == shards_.end()) return std::nullopt;
  const size_t i = static_cast<size_t>(it - shards_.begin());
  std::unique_lock l(mu_);
  while (!cv_.wait_for(l, std::chrono::milliseconds(100), [&] { return done_[i] || finished_; }))
    if (should_stop && should_stop())
      return hub::Error{hub::ErrorKind::Io,
                        sr_.repo + ": stopped while waiting for the download of '" + shard + "'"};
  if (done_[i]) return std::nullopt;
  return error_;  // finished without it: set whenever a shard is left out
}

hub::Result<hub::SnapshotResult> ShardFeed::finish() {
  std::unique_lock l(mu_);
  cv_.wait(l, [&] { return finished_; });
  if (error_) return *error_;
  return result_;
}

double ShardFeed::seconds() const {
  std::lock_guard g(mu_);
  return seconds_;
}

}  // namespace loftqd::daemon
