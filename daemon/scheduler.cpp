#include "daemon/scheduler.h"

#include <time.h>

#include <algorithm>

namespace loftqd::daemon {

Scheduler::LocalTime Scheduler::local_now(bool utc) {
  time_t t = ::time(nullptr);
  struct tm tm {};
  if (utc)
    ::gmtime_r(&t, &tm);
  else
    ::localtime_r(&t, &tm);
  const long day = (tm.tm_year - 70) * 366L + tm.tm_yday;  // monotone, unique per local day
  return {tm.tm_hour * 60 + tm.tm_min, day};
}

Scheduler::Scheduler(const config::Schedule& schedule, std::vector<std::string> repos) {
  reconfigure(schedule, std::move(repos));
}

void Scheduler::reconfigure(const config::Schedule& schedule, std::vector<std::string> repos) {
  poll_interval_ = std::chrono::seconds(schedule.poll_interval_s);
  nightly_ = schedule.nightly;
  repos_ = std::move(repos);
  next_check_.clear();
}

bool Scheduler::watches(const std::string& repo) const {
  return std::find(repos_.begin(), repos_.end(), repo) != repos_.end();
}

bool Scheduler::webhook(const std::string& repo) {
  if (!watches(repo)) return false;
  webhooks_.insert(repo);
  return true;
}

Scheduler::Due Scheduler::due(Clock::time_point now, const LocalTime& local) {
  Due d;
  d.repos.swap(webhooks_);
  if (!d.repos.empty()) d.why = "webhook";
  if (nightly_ && nightly_->contains(local.minute_of_day) && nightly_done_day_ != local.day) {
    nightly_done_day_ = local.day;
    d.repos.insert(repos_.begin(), repos_.end());
    d.why = "nightly";
    d.nightly = true;
  }
  for (const auto& r : repos_) {
    auto it = next_check_.find(r);
    if (it == next_check_.end() || it->second <= now) {
      d.repos.insert(r);
      if (d.why.empty()) d.why = "poll";
    }
  }
  return d;
}

void Scheduler::checked(const std::string& repo, Clock::time_point now) {
  next_check_[repo] = now + poll_interval_;
}

Scheduler::Clock::time_point Scheduler::wake_at(Clock::time_point now) const {
  auto wake = now + kMaxSleep;
  for (const auto& [repo, t] : next_check_) wake = std::min(wake, t);
  return wake;
}

std::optional<Scheduler::Clock::time_point> Scheduler::next_poll() const {
  std::optional<Clock::time_point> next;
  for (const auto& r : repos_) {
    auto it = next_check_.find(r);
    if (it == next_check_.end()) return std::nullopt;
    if (!next || it->second < *next) next = it->second;
  }
  return next;
}

}  // namespace loftqd::daemon
