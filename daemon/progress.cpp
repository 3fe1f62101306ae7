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
  if (tty_) {
    constexpr int kWidth = 30;
    int filled = static_cast<int>(frac * kWidth);
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(out_, "\r\033[K%s [%s] %zu/%zu %3.0f%% %.0fs %s", label_.c_str(), bar.c_str(),
                 done, total_, frac * 100.0, elapsed, detail.substr(0, 40).c_str());
  } else {
    std::fprintf(out_, "%s: %zu/%zu (%.0f%%) after %.0fs %s\n", label_.c_str(), done, total_,
                 frac * 100.0, elapsed, detail.c_str());
  }
  std::fflush(out_);
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
