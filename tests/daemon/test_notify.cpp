// Notifier (daemon/notify.h): the exact sd_notify datagrams, received on a socket of our own.
#include "daemon/notify.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "support/test_util.h"

namespace {

using loftqd::daemon::Notifier;
using loftqd::testing::TempDir;
using namespace std::chrono_literals;

constexpr std::array<const char*, 3> kVars = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"};

std::uint64_t monotonic_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000u +
         static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
}

// Saves the notify variables, clears them for the test and puts them back afterwards (the
// test binary itself may run under a service manager).
class NotifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* k : kVars) {
      if (const char* v = std::getenv(k)) saved_[k] = v;
      ::unsetenv(k);
    }
    socket_path_ = (dir_.path() / "notify").string();
    sockaddr_un addr{};
    ASSERT_LT(socket_path_.size(), sizeof(addr.sun_path)) << socket_path_;
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd_, 0);
    addr.sun_family = AF_UNIX;
    socket_path_.copy(addr.sun_path, socket_path_.size());
    ASSERT_EQ(::bind(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  }

  void TearDown() override {
    if (fd_ >= 0) ::close(fd_);
    for (const char* k : kVars) {
      auto it = saved_.find(k);
      if (it != saved_.end())
        ::setenv(k, it->second.c_str(), 1);
      else
        ::unsetenv(k);
    }
  }

  void set_socket() { ::setenv("NOTIFY_SOCKET", socket_path_.c_str(), 1); }

  // The next datagram, or nullopt when none arrives within `wait`.
  std::optional<std::string> next(std::chrono::milliseconds wait = 2000ms) const {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(wait.count())) != 1) return std::nullopt;
    std::array<char, 4096> buf{};
    const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
    if (n < 0) return std::nullopt;
    return std::string(buf.data(), static_cast<size_t>(n));
  }

  TempDir dir_;
  std::string socket_path_;
  int fd_ = -1;
  std::map<std::string, std::string> saved_;
};

TEST_F(NotifyTest, SendsEachMessageExactly) {
  set_socket();
  ::setenv("WATCHDOG_USEC", "2000000", 1);
  ::setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
  Notifier n;
  EXPECT_TRUE(n.active());
  ASSERT_TRUE(n.watchdog_interval().has_value());
  EXPECT_EQ(*n.watchdog_interval(), 1000ms);
  // unset_environment=0: the variables stay for whoever reads them next.
  EXPECT_NE(std::getenv("NOTIFY_SOCKET"), nullptr);
  EXPECT_NE(std::getenv("WATCHDOG_USEC"), nullptr);
  EXPECT_NE(std::getenv("WATCHDOG_PID"), nullptr);

  n.ready("idle; watching 3 repos");
  EXPECT_EQ(next(), "READY=1\nSTATUS=idle; watching 3 repos");

  n.status("downloading org/model (2/7 files)");
  EXPECT_EQ(next(), "STATUS=downloading org/model (2/7 files)");

  const std::uint64_t before = monotonic_usec();
  n.reloading("reloading /etc/loftqd/loftqd.json");
  const std::uint64_t after = monotonic_usec();
  auto msg = next();
  ASSERT_TRUE(msg.has_value());
  const std::string prefix =
      "RELOADING=1\nSTATUS=reloading /etc/loftqd/loftqd.json\nMONOTONIC_USEC=";
  ASSERT_EQ(msg->substr(0, prefix.size()), prefix) << *msg;
  const std::string usec = msg->substr(prefix.size());
  ASSERT_FALSE(usec.empty());
  ASSERT_EQ(usec.find_first_not_of("0123456789"), std::string::npos) << usec;
  const std::uint64_t t = std::stoull(usec);
  EXPECT_GE(t, before);
  EXPECT_LE(t, after);

  n.stopping("stopping");
  EXPECT_EQ(next(), "STOPPING=1\nSTATUS=stopping");

  n.watchdog();
  EXPECT_EQ(next(), "WATCHDOG=1");

  EXPECT_EQ(next(100ms), std::nullopt);  // nothing else was sent
}

TEST_F(NotifyTest, StatusNeverCarriesANewline) {
  set_socket();
  Notifier n;
  n.status("line one\nline two\r\nthree");
  EXPECT_EQ(next(), "STATUS=line one line two  three");
  n.ready("a\nREADY=0");
  EXPECT_EQ(next(), "READY=1\nSTATUS=a READY=0");
  n.stopping(std::string("nul\0byte", 8));
  EXPECT_EQ(next(), "STOPPING=1\nSTATUS=nul byte");
  n.status("");
  EXPECT_EQ(next(), "STATUS=");
}

TEST_F(NotifyTest, WithoutNotifySocketNothingIsSent) {
  ::setenv("WATCHDOG_USEC", "2000000", 1);
  ::setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
  Notifier n;
  EXPECT_FALSE(n.active());
  EXPECT_EQ(n.watchdog_interval(), std::nullopt);
  // The environment is read once, at construction: a socket appearing later is not used.
  set_socket();
  n.ready("r");
  n.status("s");
  n.reloading("l");
  n.stopping("t");
  n.watchdog();
  EXPECT_EQ(next(200ms), std::nullopt);
}

TEST_F(NotifyTest, EmptyNotifySocketIsInactive) {
  ::setenv("NOTIFY_SOCKET", "", 1);
  Notifier n;
  EXPECT_FALSE(n.active());
  EXPECT_EQ(n.watchdog_interval(), std::nullopt);
  n.watchdog();  // no crash, nothing to send to
}

TEST_F(NotifyTest, WatchdogForAnotherPidIsDisabled) {
  set_socket();
  ::setenv("WATCHDOG_USEC", "2000000", 1);
  ::setenv("WATCHDOG_PID", std::to_string(::getpid() + 1).c_str(), 1);
  Notifier n;
  EXPECT_TRUE(n.active());
  EXPECT_EQ(n.watchdog_interval(), std::nullopt);
  n.ready("still notifies");
  EXPECT_EQ(next(), "READY=1\nSTATUS=still notifies");
}

TEST_F(NotifyTest, WatchdogWithoutPidOrWithBadValues) {
  set_socket();
  ::setenv("WATCHDOG_USEC", "120000000", 1);  // WatchdogSec=120, no WATCHDOG_PID: this process
  EXPECT_EQ(Notifier().watchdog_interval(), std::chrono::milliseconds(60000));
  ::setenv("WATCHDOG_USEC", "garbage", 1);
  EXPECT_EQ(Notifier().watchdog_interval(), std::nullopt);
  ::setenv("WATCHDOG_USEC", "0", 1);
  EXPECT_EQ(Notifier().watchdog_interval(), std::nullopt);
  ::unsetenv("WATCHDOG_USEC");
  EXPECT_EQ(Notifier().watchdog_interval(), std::nullopt);
}

TEST_F(NotifyTest, ConcurrentCallsSendWholeDatagrams) {
  set_socket();
  Notifier n;
  ASSERT_TRUE(n.active());
  constexpr int kThreads = 4;
  constexpr int kEach = 50;
  std::vector<std::thread> senders;
  for (int t = 0; t < kThreads; ++t)
    senders.emplace_back([&n, t] {
      for (int i = 0; i < kEach; ++i) {
        if (i % 2)
          n.watchdog();
        else
          n.status("thread " + std::to_string(t) + " step " + std::to_string(i));
      }
    });
  // Read while they send: a full datagram queue blocks the senders.
  std::map<std::string, int> seen;
  int received = 0;
  for (; received < kThreads * kEach; ++received) {
    auto m = next();
    if (!m) break;
    ++seen[*m];
  }
  if (received < kThreads * kEach) {
    ::close(fd_);  // unblock any sender before failing
    fd_ = -1;
  }
  for (auto& s : senders) s.join();
  ASSERT_EQ(received, kThreads * kEach);
  EXPECT_EQ(seen["WATCHDOG=1"], kThreads * kEach / 2);
  for (int t = 0; t < kThreads; ++t)
    for (int i = 0; i < kEach; i += 2)
      EXPECT_EQ(seen["STATUS=thread " + std::to_string(t) + " step " + std::to_string(i)], 1);
}

}  // namespace
