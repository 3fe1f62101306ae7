#include "daemon/progress.h"

#include <unistd.h>

#include <algorithm>

namespace loftqd::daemon {

Progress::Progress(std::string label, size_t total, FILE* out)
    : label_(std::move(label)),
      total_(total),
      out_(out),
      tty_(::isatty(::fileno(out)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  finish();
}

void Progress::update(size_t done, const std::string& detail) {
  auto now = std::chrono::steady_clock::now();
  double since_draw = std::chrono::duration<double>(now - last_draw_).count();
  // Redraw a terminal at most 10 times a second; log plainly every 10 s otherwise.
  if (since_draw < (tty_ ? 0.1 : 10.0) && done < total_) return;
  last_draw_ = now;
  double elapsed = std::chrono::duration<double>(now - start_).count();
  double frac =
      total_ ? std::min(1.0, static_cast<double>(done) / static_cast<double>(total_)) : 1.0;
  const std::string eta = eta_text(done, elapsed);
  if (tty_) {
    constexpr int kWidth = 30;
    int filled = static_cast<int>(frac * kWidth);
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(out_, "\r\033[K%s [%s] %zu/%zu %3.0f%% %.0fs%s %s", label_.c_str(), bar.c_str(),
                 done, total_, frac * 100.0, elapsed, eta.c_str(), detail.substr(0, 40).c_str());
  } else {
    std::fprintf(out_, "%s: %zu/%zu (%.0f%%) after %.0fs%s %s\n", label_.c_str(), done, total_,
                 frac * 100.0, elapsed, eta.c_str(), detail.c_str());
  }
  std::fflush(out_);
}

std::string Progress::eta_text(size_t done, double elapsed) const {
  if (done == 0 || done >= total_ || elapsed <= 0) return "";
  const double left = elapsed / static_cast<double>(done) * static_cast<double>(total_ - done);
  const auto s = static_cast<long long>(left + 0.5);
  char buf[48];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, ", ETA %lldh%02lldm", s / 3600, s / 60 % 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, ", ETA %lldm%02llds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, ", ETA %llds", s);
  return buf;
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (tty_) {
    std::fprintf(out_, "\r\033[K");
    std::fflush(out_);
  }
}

}  // namespace loftqd::daemon
