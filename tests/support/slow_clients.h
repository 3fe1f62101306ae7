// Misbehaving TCP clients for the server-core tests (tests/mirror/test_abuse.cpp,
// tests/integration/test_run.cpp): sockets that connect and say nothing, sockets that trickle a
// request head a byte at a time and never finish it, and a raw exchange helper.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace loftqd::testing {

// A connected TCP socket to 127.0.0.1:port; throws when the connection fails.
inline int connect_loopback(int port) {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) throw std::runtime_error("socket() failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(s);
    throw std::runtime_error("connect() failed");
  }
  return s;
}

// Whether the peer closed `s` within `within` (recv returns 0 or an error).
inline bool closed_by_peer(int s, std::chrono::milliseconds within) {
  pollfd p{s, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(within.count())) <= 0) return false;
  char c;
  return ::recv(s, &c, 1, MSG_DONTWAIT) <= 0;
}

// `idle` sockets that never send a byte and `trickling` ones that send a request head one byte
// every `every` and never end it, held open until destroyed.
class SlowClients {
 public:
  SlowClients(int port, int idle, int trickling,
              std::chrono::milliseconds every = std::chrono::milliseconds(500)) {
    for (int i = 0; i < idle; ++i) idle_.push_back(connect_loopback(port));
    for (int i = 0; i < trickling; ++i) trickling_.push_back(connect_loopback(port));
    thread_ = std::thread([this, every] {
      const std::string head = "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ";
      for (size_t at = 0; !stop_; ++at) {
        const char c = at < head.size() ? head[at] : 'a';
        for (int s : trickling_) (void)::send(s, &c, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        for (auto t = every; t.count() > 0 && !stop_; t -= std::chrono::milliseconds(50))
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
  }
  ~SlowClients() {
    stop_ = true;
    thread_.join();
    for (int s : idle_) ::close(s);
    for (int s : trickling_) ::close(s);
  }
  SlowClients(const SlowClients&) = delete;
  SlowClients& operator=(const SlowClients&) = delete;

 private:
  std::vector<int> idle_, trickling_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace loftqd::testing
