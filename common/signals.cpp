#include "common/signals.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace loftqd::common {

namespace {

int g_write_fd = -1;
constexpr unsigned char kWake = 0;  // no signal has number 0

void on_signal(int sig) {
  const int saved = errno;
  const auto c = static_cast<unsigned char>(sig);
  [[maybe_unused]] auto n = ::write(g_write_fd, &c, 1);
  errno = saved;
}

}  // namespace

struct SignalPipe::Saved {
  struct sigaction old[8];
};

SignalPipe::SignalPipe(std::initializer_list<int> signals) {
  if (g_write_fd >= 0) throw std::logic_error("SignalPipe: another instance is active");
  if (signals.size() > 8) throw std::logic_error("SignalPipe: at most 8 signals");
  if (::pipe2(fds_, O_CLOEXEC | O_NONBLOCK) != 0)
    throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
  g_write_fd = fds_[1];
  saved_ = new Saved{};
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : signals) {
    ::sigaction(s, &sa, &saved_->old[count_]);
    signals_[count_++] = s;
  }
}

SignalPipe::~SignalPipe() {
  for (int i = 0; i < count_; ++i) ::sigaction(signals_[i], &saved_->old[i], nullptr);
  delete saved_;
  g_write_fd = -1;
  ::close(fds_[0]);
  ::close(fds_[1]);
}

std::optional<int> SignalPipe::next(int timeout_ms) {
  pollfd p{fds_[0], POLLIN, 0};
  int r;
  do {
    r = ::poll(&p, 1, timeout_ms);
  } while (r < 0 && errno == EINTR);
  if (r <= 0) return std::nullopt;
  unsigned char c = kWake;
  if (::read(fds_[0], &c, 1) != 1 || c == kWake) return std::nullopt;
  return static_cast<int>(c);
}

void SignalPipe::wake() {
  const unsigned char c = kWake;
  [[maybe_unused]] auto n = ::write(fds_[1], &c, 1);
}

}  // namespace loftqd::common
