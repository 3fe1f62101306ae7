// What `loftqd fetch` and `loftqd publish` share: the Hub client flags, the client they make,
// a byte progress bar and the error line.
#pragma once

#include <CLI/CLI.hpp>
#include <mutex>
#include <optional>
#include <string>

#include "daemon/progress.h"
#include "hub/hub.h"

namespace loftqd::daemon {

struct ClientFlags {
  std::string endpoint;
  int parallel = 4;
  std::string disk_reserve = "1G", range_threshold = "256M", limit_rate = "0";
  int max_retries = 5;
  double backoff = 1.0;
  long stall_timeout = 30, connect_timeout = 10;
};

// --endpoint, --max-retries, --backoff, --stall-timeout, --connect-timeout.
void add_client_flags(CLI::App* c, ClientFlags& f);
// hub::options_from_env (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE) with the flags on top;
// std::invalid_argument for a bad size or --parallel.
hub::Client make_client(const ClientFlags& f);

// A thread-safe progress bar for byte counts.
struct ByteProgress {
  std::mutex mu;
  std::optional<Progress> bar;
  std::string label;
  explicit ByteProgress(std::string l) : label(std::move(l)) {}
  hub::ProgressFn fn();
  void finish();
};

// Prints "loftqd: error: MESSAGE [Kind]"; returns kExitRuntime.
int report_error(const hub::Error& e);

}  // namespace loftqd::daemon
