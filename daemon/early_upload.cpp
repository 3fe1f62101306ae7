#include "daemon/early_upload.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "common/stopwatch.h"
#include "storage/store.h"

namespace fs = std::filesystem;

namespace loftqd::daemon {

EarlyUpload::EarlyUpload(std::vector<Target> targets, std::string repo, std::string tag, LogFn log,
                         std::function<void(const std::string&)> failpoint, int jobs,
                         std::function<void()> heartbeat)
    : targets_([&] {
        for (auto& t : targets) t.options.cancel = &cancel_;
        return std::move(targets);
      }()),
      repo_(std::move(repo)),
      tag_(std::move(tag)),
      log_(std::move(log)),
      failpoint_(std::move(failpoint)),
      heartbeat_(std::move(heartbeat)),
      off_(targets_.size(), false) {
  for (int i = 0; i < std::clamp(jobs, 1, 16); ++i) threads_.emplace_back([this] { run(); });
}

EarlyUpload::~EarlyUpload() {
  cancel_ = true;
  {
    std::lock_guard g(mu_);
    closing_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  for (const auto& item : queue_) ::close(item.fd);
}

void EarlyUpload::say(spdlog::level::level_enum level, const std::string& line) const {
  if (log_) log_(level, tag_ + " " + line);
}

void EarlyUpload::add(const std::string& path, const fs::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    say(spdlog::level::warn, "step=publish early file=" + path + " error=\"cannot open " +
                                 file.string() + ": " + std::strerror(errno) +
                                 "\" (the publish step uploads it)");
    return;
  }
  {
    std::lock_guard g(mu_);
    queue_.push_back(Item{path, fd});
    ++done_.files;
  }
  cv_.notify_all();
}

void EarlyUpload::run() {
  std::unique_lock l(mu_);
  for (;;) {
    cv_.wait(l, [&] { return closing_ || !queue_.empty(); });
    if (closing_) return;
    Item item = queue_.front();
    queue_.pop_front();
    ++busy_;
    l.unlock();
    upload(item);
    ::close(item.fd);
    l.lock();
    --busy_;
    cv_.notify_all();
  }
}

// One file: hashed once (the identity taken first, so a file changed since cannot pass for
// this hash), then sent to each target that has not failed.
void EarlyUpload::upload(const Item& item) {
  // The file as opened in add(), whatever its path has become since.
  const fs::path file = "/proc/self/fd/" + std::to_string(item.fd);
  auto skip = [&](const std::string& why) {
    if (!cancel_)
      say(spdlog::level::warn, "step=publish early file=" + item.path + " error=\"" + why +
                                   "\" (the publish step uploads it)");
  };
  auto id = hub::known_hash(file, "");
  if (!id) return skip(id.error().message);
  auto sha = storage::hash_file(file, storage::HashAlgo::Sha256);
  if (!sha) return skip(sha.error().message);
  hub::KnownHash known = id.value();
  known.sha256 = sha.value();
  {
    std::lock_guard g(mu_);
    done_.hashes[item.path] = known;
  }
  std::call_once(checked_, [this] { check_repos(); });
  for (size_t t = 0; t < targets_.size() && !cancel_; ++t) {
    if (target_off(t)) continue;
    const common::Stopwatch sw;
    hub::PreuploadRequest req;
    req.repo = repo_;
    req.create = false;
    req.files.push_back({item.path, file, known});
    std::string error;
    try {
      if (failpoint_) failpoint_("early_upload");
      auto r = hub::Client(targets_[t].options)
                   .preupload_lfs(req, [this](uint64_t, uint64_t, const std::string&) {
                     if (heartbeat_) heartbeat_();
                   });
      if (r) {
        {
          std::lock_guard g(mu_);
          done_.bytes_sent += r.value().bytes_uploaded;
        }
        say(spdlog::level::info, "step=publish early target=" + targets_[t].where +
                                     " file=" + item.path +
                                     " bytes_uploaded=" + std::to_string(r.value().bytes_uploaded) +
                                     " seconds=" + sw.str());
        continue;
      }
      error = r.error().message;
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (cancel_) return;  // stopped: not a failure of the target
    turn_off(t);
    say(spdlog::level::warn, "step=publish early target=" + targets_[t].where +
                                 " file=" + item.path + " error=\"" + error +
                                 "\" (no more early uploads there; the publish step uploads "
                                 "what is missing)");
  }
}

// Whether each target has the repo and its main branch: a first publish has neither, and its
// publish step makes them. A failed check counts as a failed upload.
void EarlyUpload::check_repos() {
  for (size_t t = 0; t < targets_.size() && !cancel_; ++t) {
    auto info = hub::Client(targets_[t].options).repo_info(repo_, "main");
    if (info) continue;
    turn_off(t);
    const hub::ErrorKind k = info.error().kind;
    if (k == hub::ErrorKind::RepoNotFound || k == hub::ErrorKind::RevisionNotFound)
      say(spdlog::level::info, "step=publish early=off target=" + targets_[t].where +
                                   " reason=\"no such repo or branch yet\"");
    else if (!cancel_)
      say(spdlog::level::warn, "step=publish early=off target=" + targets_[t].where + " error=\"" +
                                   info.error().message +
                                   "\" (the publish step uploads everything)");
  }
}

bool EarlyUpload::target_off(size_t t) {
  std::lock_guard g(target_mu_);
  return off_[t];
}

void EarlyUpload::turn_off(size_t t) {
  std::lock_guard g(target_mu_);
  off_[t] = true;
}

EarlyUpload::Done EarlyUpload::finish() {
  const common::Stopwatch sw;
  std::unique_lock l(mu_);
  cv_.wait(l, [&] { return queue_.empty() && busy_ == 0; });
  Done d = done_;
  d.waited_s = sw.seconds();
  return d;
}

}  // namespace loftqd::daemon
