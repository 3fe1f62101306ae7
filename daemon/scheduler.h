// When `loftqd run` checks each watched repo (DESIGN §7): every schedule.poll_interval, once per
// local day inside the nightly window, and at once after a webhook. Only decisions live here:
// the caller passes the time in and does the waiting, so the rules are testable without sleeps.
// Not thread-safe: run() guards its one Scheduler with the mutex its HTTP handlers share.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "config/config.h"

namespace loftqd::daemon {

class Scheduler {
 public:
  using Clock = std::chrono::steady_clock;
  // The longest wait between two decisions: retries that fall due and the nightly window are
  // noticed within this much.
  static constexpr std::chrono::seconds kMaxSleep{30};

  // Wall time in the schedule's time zone.
  struct LocalTime {
    int minute_of_day = 0;
    long day = 0;  // a number unique and increasing per local day
  };
  // Now, in the process's time zone (`utc`: in UTC). run() sets TZ before any thread exists.
  static LocalTime local_now(bool utc);

  struct Due {
    std::set<std::string> repos;  // to check now
    std::string why;              // "webhook", "nightly", "poll", or "" when nothing is due
    bool nightly = false;         // the nightly window opened on this call
  };

  Scheduler(const config::Schedule& schedule, std::vector<std::string> repos);
  // A reloaded configuration: the new settings and repos, every repo due at once (a changed
  // setting is a new config hash, hence a new job). Queued webhooks and the day the nightly
  // window last ran are kept.
  void reconfigure(const config::Schedule& schedule, std::vector<std::string> repos);

  size_t watched() const { return repos_.size(); }
  bool watches(const std::string& repo) const;
  // A webhook says `repo` changed: due at the next decision. False when it is not watched.
  bool webhook(const std::string& repo);
  bool webhook_pending() const { return !webhooks_.empty(); }

  // What to check at `now`: queued webhooks (taken), every repo when the nightly window is open
  // and has not run on this local day yet, and each repo whose poll interval has passed (or
  // that was never checked).
  Due due(Clock::time_point now, const LocalTime& local);
  // `repo` was checked at `now`: its next poll is one interval later.
  void checked(const std::string& repo, Clock::time_point now);
  // The latest time to decide again: the earliest next poll, at most kMaxSleep after `now`.
  Clock::time_point wake_at(Clock::time_point now) const;
  // When the next poll of some repo is due (not capped: what "next check in" means); nullopt
  // when a repo was never checked (it is due now) or nothing is watched.
  std::optional<Clock::time_point> next_poll() const;

 private:
  std::chrono::seconds poll_interval_;
  std::optional<config::NightlyWindow> nightly_;
  std::vector<std::string> repos_;  // config order
  std::set<std::string> webhooks_;
  std::map<std::string, Clock::time_point> next_check_;
  std::optional<long> nightly_done_day_;
};

}  // namespace loftqd::daemon
