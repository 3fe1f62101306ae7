// daemon/scheduler: which repos `run` checks when, with the time passed in (no sleeping).
#include "daemon/scheduler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>

using loftqd::daemon::Scheduler;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using namespace std::chrono_literals;

namespace {

using Time = Scheduler::Clock::time_point;
const Time t0{};  // any steady-clock origin will do

loftqd::config::Schedule every(int64_t seconds) {
  loftqd::config::Schedule s;
  s.poll_interval_s = seconds;
  return s;
}

loftqd::config::Schedule nightly(int start_minute, int end_minute) {
  loftqd::config::Schedule s = every(3600);
  s.nightly = loftqd::config::NightlyWindow{start_minute, end_minute};
  return s;
}

Scheduler::LocalTime at(long day, int hour, int minute) {
  return {hour * 60 + minute, day};
}

// The repos due at `now`, marked checked then (as run() does).
Scheduler::Due check(Scheduler& s, Time now, Scheduler::LocalTime local = at(1, 12, 0)) {
  auto d = s.due(now, local);
  for (const auto& r : d.repos) s.checked(r, now);
  return d;
}

}  // namespace

TEST(Scheduler, EveryRepoIsDueAtStartThenOncePerPollInterval) {
  Scheduler s(every(600), {"a/x", "b/y"});
  auto d = check(s, t0);
  EXPECT_THAT(d.repos, ElementsAre("a/x", "b/y"));
  EXPECT_EQ(d.why, "poll");
  EXPECT_THAT(check(s, t0 + 599s).repos, IsEmpty());
  EXPECT_EQ(check(s, t0 + 599s).why, "");
  EXPECT_THAT(check(s, t0 + 600s).repos, ElementsAre("a/x", "b/y"));
  EXPECT_THAT(check(s, t0 + 1199s).repos, IsEmpty());
}

TEST(Scheduler, EachRepoKeepsItsOwnNextCheck) {
  Scheduler s(every(600), {"a/x", "b/y"});
  s.checked("a/x", t0);
  s.checked("b/y", t0 + 300s);
  EXPECT_THAT(check(s, t0 + 600s).repos, ElementsAre("a/x"));
  EXPECT_THAT(check(s, t0 + 900s).repos, ElementsAre("b/y"));
}

TEST(Scheduler, WakesAtTheEarliestPollButAtMostEveryThirtySeconds) {
  Scheduler s(every(3600), {"a/x", "b/y"});
  EXPECT_EQ(s.wake_at(t0), t0 + Scheduler::kMaxSleep);  // never checked: the retry cadence
  s.checked("a/x", t0);
  s.checked("b/y", t0 - 3590s);
  EXPECT_EQ(s.wake_at(t0), t0 + 10s);
  Scheduler slow(every(3600), {"a/x"});
  slow.checked("a/x", t0);
  EXPECT_EQ(slow.wake_at(t0), t0 + 30s);
}

// What /healthz and sd_notify call "next check in": the next poll, not the 30 s wake-up.
TEST(Scheduler, TheNextPollIsNotCappedByTheWakeUpCadence) {
  Scheduler s(every(3600), {"a/x", "b/y"});
  EXPECT_EQ(s.next_poll(), std::nullopt);  // never checked: due now
  s.checked("a/x", t0);
  EXPECT_EQ(s.next_poll(), std::nullopt);  // b/y still due
  s.checked("b/y", t0 + 100s);
  EXPECT_EQ(s.next_poll(), t0 + 3600s);
  EXPECT_EQ(s.wake_at(t0), t0 + Scheduler::kMaxSleep);
}

TEST(Scheduler, WebhookMakesAWatchedRepoDueAtOnce) {
  Scheduler s(every(3600), {"a/x", "b/y"});
  check(s, t0);
  EXPECT_FALSE(s.webhook_pending());
  EXPECT_FALSE(s.webhook("someone/else"));  // not watched: nothing queued
  EXPECT_FALSE(s.webhook_pending());
  EXPECT_TRUE(s.webhook("b/y"));
  EXPECT_TRUE(s.webhook("b/y"));  // twice before a decision: checked once
  EXPECT_TRUE(s.webhook_pending());
  auto d = check(s, t0 + 5s);
  EXPECT_THAT(d.repos, ElementsAre("b/y"));
  EXPECT_EQ(d.why, "webhook");
  EXPECT_FALSE(s.webhook_pending());  // taken by due()
  EXPECT_THAT(check(s, t0 + 10s).repos, IsEmpty());
}

TEST(Scheduler, NightlyWindowChecksEveryRepoOncePerLocalDay) {
  Scheduler s(nightly(2 * 60, 4 * 60), {"a/x", "b/y"});  // 02:00-04:00
  check(s, t0, at(1, 1, 0));
  Time now = t0 + 60s;
  EXPECT_THAT(check(s, now, at(1, 1, 59)).repos, IsEmpty());  // before the window
  auto d = check(s, now + 60s, at(1, 2, 0));
  EXPECT_THAT(d.repos, ElementsAre("a/x", "b/y"));
  EXPECT_EQ(d.why, "nightly");
  EXPECT_TRUE(d.nightly);
  // Still inside the window, the same day: not again.
  auto again = check(s, now + 120s, at(1, 3, 59));
  EXPECT_THAT(again.repos, IsEmpty());
  EXPECT_FALSE(again.nightly);
  EXPECT_THAT(check(s, now + 180s, at(1, 4, 0)).repos, IsEmpty());  // the window has closed
  // The next local day: once more.
  auto next = check(s, now + 240s, at(2, 2, 30));
  EXPECT_THAT(next.repos, ElementsAre("a/x", "b/y"));
  EXPECT_TRUE(next.nightly);
}

TEST(Scheduler, NightlyWindowMayWrapPastMidnight) {
  Scheduler s(nightly(23 * 60, 1 * 60), {"a/x"});  // 23:00-01:00
  check(s, t0, at(1, 12, 0));
  EXPECT_TRUE(check(s, t0 + 1s, at(1, 23, 30)).nightly);
  // 00:30 is another local day, inside the same wrapped window: it counts as that day's run.
  EXPECT_TRUE(check(s, t0 + 2s, at(2, 0, 30)).nightly);
  EXPECT_FALSE(check(s, t0 + 3s, at(2, 0, 45)).nightly);
  EXPECT_FALSE(check(s, t0 + 4s, at(2, 12, 0)).nightly);
}

TEST(Scheduler, NoNightlyWindowWithoutOne) {
  Scheduler s(every(3600), {"a/x"});
  check(s, t0);
  for (int h = 0; h < 24; ++h) EXPECT_FALSE(check(s, t0 + 1s, at(1, h, 0)).nightly) << h;
}

TEST(Scheduler, ReconfigureMakesEveryRepoDueAndKeepsWebhooksAndTheNightlyDay) {
  Scheduler s(nightly(2 * 60, 4 * 60), {"a/x"});
  EXPECT_TRUE(check(s, t0, at(1, 2, 0)).nightly);
  s.webhook("a/x");
  s.reconfigure(nightly(2 * 60, 4 * 60), {"a/x", "c/z"});
  EXPECT_EQ(s.watched(), 2u);
  EXPECT_TRUE(s.watches("c/z"));
  EXPECT_TRUE(s.webhook_pending());
  auto d = check(s, t0 + 10s, at(1, 2, 10));
  EXPECT_THAT(d.repos, ElementsAre("a/x", "c/z"));
  EXPECT_EQ(d.why, "webhook");
  EXPECT_FALSE(d.nightly);  // it already ran today
  // A new poll interval applies from the next check on.
  s.reconfigure(every(60), {"a/x"});
  EXPECT_FALSE(s.watches("c/z"));
  EXPECT_FALSE(s.webhook("c/z"));
  check(s, t0 + 20s);
  EXPECT_THAT(check(s, t0 + 80s).repos, ElementsAre("a/x"));
}

TEST(Scheduler, LocalNowIsAValidTimeOfDay) {
  for (bool utc : {true, false}) {
    const auto lt = Scheduler::local_now(utc);
    EXPECT_GE(lt.minute_of_day, 0);
    EXPECT_LT(lt.minute_of_day, 24 * 60);
    EXPECT_GT(lt.day, 0);
  }
}
