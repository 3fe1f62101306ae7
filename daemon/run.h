// `loftqd run --config F`: the long-running daemon (DESIGN §7). Polls each watched repo every
// schedule.poll_interval, forces a refresh check of every repo once per nightly window, checks a
// repo at once when the Hub's webhook says it changed (POST /webhook), runs the jobs, publishes,
// and serves the mirror with /healthz and /metrics on the same listener.
//
// Signals: SIGTERM/SIGINT stop taking work; a running quantization stops at the next tensor
// boundary (finished tensors are checkpointed) and the process exits 0. A download or upload
// in flight is abandoned after stop_grace_s (its partial files resume on restart); a second
// signal exits at once. SIGHUP reloads the configuration; a bad new one is logged and the old
// one keeps running. Under systemd (NOTIFY_SOCKET) it sends READY=1, STATUS=... and WATCHDOG=1.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace loftqd::daemon {

struct RunOptions {
  std::string config_path;
  int threads = 0;                       // CPU threads for LoftQ (0 = all cores)
  std::optional<std::string> log_level;  // overrides the config's log_level
  int stop_grace_s = 90;                 // after SIGTERM, the longest wait for a clean stop
  // The watchdog is fed while the daemon makes progress at least this often (a tensor, a
  // download chunk, a scheduler wake-up); a hang longer than this lets systemd restart it.
  int stall_limit_s = 1800;
  // Test seam (PipelineOptions::failpoint); null in production.
  std::function<void(const std::string&)> failpoint;
};

// Returns the exit code (0 after a signal-initiated stop). Throws config::ConfigError (exit 2)
// for a bad configuration at start-up.
int run_command(const RunOptions& opt);

}  // namespace loftqd::daemon
