// systemd's service notification protocol (sd_notify(3)) for `loftqd run` under Type=notify.
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace loftqd::daemon {

// systemd's notify protocol (sd_notify(3)) via libsystemd; every call is a no-op when
// NOTIFY_SOCKET is unset. Thread-safe.
class Notifier {
 public:
  // Reads NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID once (sd_watchdog_enabled,
  // unset_environment=0).
  Notifier();
  bool active() const;                     // NOTIFY_SOCKET is set
  void ready(const std::string& status);   // "READY=1\nSTATUS=..."
  void status(const std::string& status);  // "STATUS=..."
  // "RELOADING=1\nSTATUS=..." (+ MONOTONIC_USEC=now, as systemd 253+ expects for
  // Type=notify-reload; harmless on 252).
  void reloading(const std::string& status);
  void stopping(const std::string& status);  // "STOPPING=1\nSTATUS=..."
  void watchdog();                           // "WATCHDOG=1"
  // Half of WATCHDOG_USEC (the interval at which WATCHDOG=1 should be sent); nullopt without a
  // watchdog (or without NOTIFY_SOCKET).
  std::optional<std::chrono::milliseconds> watchdog_interval() const;

 private:
  void send(const std::string& state) const;

  bool active_ = false;
  std::optional<std::chrono::milliseconds> watchdog_interval_;
};

}  // namespace loftqd::daemon
