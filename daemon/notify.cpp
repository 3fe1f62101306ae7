#include "daemon/notify.h"

#include <systemd/sd-daemon.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <system_error>

#include <spdlog/spdlog.h>

namespace loftqd::daemon {

namespace {

// sd_notify's assignments are newline-separated (and the message is a C string): a newline,
// carriage return or NUL inside a STATUS text would end it early or inject another field.
std::string status_field(const std::string& s) {
  std::string out = "STATUS=";
  out.reserve(out.size() + s.size());
  for (char c : s) out += (c == '\n' || c == '\r' || c == '\0') ? ' ' : c;
  return out;
}

std::uint64_t monotonic_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000u +
         static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
}

}  // namespace

Notifier::Notifier() {
  const char* socket = std::getenv("NOTIFY_SOCKET");
  active_ = socket != nullptr && *socket != '\0';
  if (!active_) return;
  std::uint64_t usec = 0;
  // > 0 only when WATCHDOG_USEC is valid and WATCHDOG_PID (if set) is this process.
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    const auto half =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::microseconds(usec / 2));
    watchdog_interval_ = std::max(half, std::chrono::milliseconds(1));
  }
}

bool Notifier::active() const {
  return active_;
}

std::optional<std::chrono::milliseconds> Notifier::watchdog_interval() const {
  return watchdog_interval_;
}

void Notifier::ready(const std::string& status) {
  send("READY=1\n" + status_field(status));
}

void Notifier::status(const std::string& status) {
  send(status_field(status));
}

void Notifier::reloading(const std::string& status) {
  send("RELOADING=1\n" + status_field(status) +
       "\nMONOTONIC_USEC=" + std::to_string(monotonic_usec()));
}

void Notifier::stopping(const std::string& status) {
  send("STOPPING=1\n" + status_field(status));
}

void Notifier::watchdog() {
  send("WATCHDOG=1");
}

// sd_notify opens, sends on and closes its own socket per call and reads no mutable state of
// ours, so concurrent calls need no lock.
void Notifier::send(const std::string& state) const {
  if (!active_) return;
  const int r = sd_notify(0, state.c_str());
  if (r < 0) {
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true))
      spdlog::warn("sd_notify: {} (further failures are not logged)",
                   std::system_category().message(-r));
  }
}

}  // namespace loftqd::daemon
