// A one-line progress bar on a terminal; periodic plain log lines otherwise.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <string>

namespace loftqd::daemon {

class Progress {
 public:
  // `total` units of work (bytes, tensors...). Draws on stderr when it is a terminal.
  Progress(std::string label, size_t total, FILE* out = stderr);
  ~Progress();
  void update(size_t done, const std::string& detail = {});
  void finish();
  // ", ETA 4m05s" from the rate so far ("" before the first unit and once done).
  std::string eta_text(size_t done, double elapsed_s) const;

 private:
  std::string label_;
  size_t total_;
  FILE* out_;
  bool tty_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace loftqd::daemon
