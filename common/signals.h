// Signals set flags; the loop acts (STYLE §10). One self-pipe for the process: the handler only
// writes the signal number to it (async-signal-safe, whichever thread the kernel picks, BLAS
// workers started before main included), and the owner reads it with next().
#pragma once

#include <initializer_list>
#include <optional>

namespace loftqd::common {

class SignalPipe {
 public:
  // Installs the handler for `signals` (e.g. SIGTERM, SIGINT, SIGHUP). One instance at a time;
  // a second one while the first lives throws std::logic_error.
  explicit SignalPipe(std::initializer_list<int> signals);
  // Restores the previous handlers and closes the pipe.
  ~SignalPipe();
  SignalPipe(const SignalPipe&) = delete;
  SignalPipe& operator=(const SignalPipe&) = delete;

  // The next signal that arrived, waiting up to timeout_ms (-1: forever). nullopt on timeout
  // or after wake().
  std::optional<int> next(int timeout_ms = -1);
  // Makes a next() in another thread return nullopt (e.g. when the owner shuts down).
  void wake();

 private:
  int fds_[2] = {-1, -1};
  int signals_[8] = {};
  int count_ = 0;
  struct Saved;
  Saved* saved_ = nullptr;
};

}  // namespace loftqd::common
