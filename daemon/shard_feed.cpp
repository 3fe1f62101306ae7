#include "daemon/shard_feed.h"

#include <algorithm>
#include <chrono>

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
  {
    std::lock_guard g(mu_);
    stop_ = true;
  }
  cancel_ = true;
  thread_.join();
}

void ShardFeed::fetch_shards(hub::Client& client) {
  while (true) {
    size_t i;
    {
      std::lock_guard g(mu_);
      if (stop_ || error_ || next_ >= shards_.size()) return;
      i = next_++;
    }
    hub::SnapshotRequest one = sr_;
    one.files = {shards_[i]};
    auto r = client.snapshot_download(one, progress_);
    std::lock_guard g(mu_);
    if (!r) {
      if (!error_) error_ = r.error();
      return;
    }
    result_.bytes += r.value().bytes;
    result_.downloaded += r.value().downloaded;
    done_[i] = true;
    cv_.notify_all();
  }
}

void ShardFeed::run() {
  hub::Client client(opt_);
  {
    std::vector<std::thread> more;
    const size_t extra = std::min(static_cast<size_t>(jobs_), shards_.size());
    for (size_t k = 1; k < extra; ++k)
      more.emplace_back([this] {
        hub::Client c(opt_);
        fetch_shards(c);
      });
    fetch_shards(client);
    for (auto& t : more) t.join();
  }
  // The whole selection, which finds the shards in place (they count once, as fetched by
  // their own calls).
  bool go;
  {
    std::lock_guard g(mu_);
    go = !stop_ && !error_;
  }
  if (go) {
    auto r = client.snapshot_download(sr_, progress_);
    std::lock_guard g(mu_);
    if (!r) {
      error_ = r.error();
    } else {
      result_.bytes += r.value().bytes;
      result_.downloaded += r.value().downloaded;
      result_.commit = r.value().commit;
      result_.dir = r.value().dir;
      result_.files = r.value().files;
    }
  }
  std::lock_guard g(mu_);
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

}  // namespace loftqd::daemon
