// The mirror's server core under abuse, over real sockets (mirror/http_server.cpp): idle and
// trickling connections do not starve other clients, a request head must finish within the
// header deadline, one address gets a bounded number of connections, and write routes refuse
// (401/413) on the head without reading the body, so a huge unauthenticated body costs no memory.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "mirror_fixture.h"
#include "support/slow_clients.h"

using loftqd::mirror::HttpExchange;
using loftqd::mirror::MirrorOptions;
using loftqd::testing::closed_by_peer;
using loftqd::testing::connect_loopback;
using loftqd::testing::SlowClients;
using mirror_test::bearer;
using MirrorAbuse = mirror_test::MirrorFixture;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

// This process's resident set (kB), from /proc/self/status.
long rss_kb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Sends `bytes` bytes of body after `head` for as long as the server takes them (it may stop
// reading), then reads the answer's status line.
std::string raw_exchange(int port, const std::string& head, size_t bytes) {
  int s = connect_loopback(port);
  timeval tv{2, 0};
  ::setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  (void)::send(s, head.data(), head.size(), MSG_NOSIGNAL);
  const std::string chunk(1 << 16, 'x');
  for (size_t sent = 0; sent < bytes;) {
    ssize_t n = ::send(s, chunk.data(), std::min(chunk.size(), bytes - sent), MSG_NOSIGNAL);
    if (n <= 0) break;  // the server stopped reading (or closed): expected
    sent += static_cast<size_t>(n);
  }
  std::string answer;
  char buf[4096];
  for (ssize_t n;
       answer.find("\r\n") == std::string::npos && (n = ::recv(s, buf, sizeof buf, 0)) > 0;)
    answer.append(buf, static_cast<size_t>(n));
  ::close(s);
  return answer.substr(0, answer.find("\r\n"));
}

}  // namespace

// 200 sockets that say nothing and 16 that trickle a head a byte every 0.5 s: model info, a
// small file and an extra route (what `loftqd run` serves /healthz with) still answer within 1 s.
TEST_F(MirrorAbuse, IdleAndTricklingConnectionsDoNotStarveOthers) {
  seed();
  MirrorOptions o;
  o.extra_routes["GET /healthz"] = [](HttpExchange& ex) { ex.reply = "ok\n"; };
  start(o);
  SlowClients slow(mirror->port(), 200, 16);
  std::this_thread::sleep_for(1200ms);  // the tricklers are part-way into their heads
  for (int round = 0; round < 3; ++round) {
    for (const std::string path :
         {"/api/models/org/m", "/org/m/resolve/main/config.json", "/healthz"}) {
      auto cli = http();
      cli.set_connection_timeout(2);
      cli.set_read_timeout(2);
      const auto t0 = Clock::now();
      auto r = cli.Get(path);
      const double took = seconds_since(t0);
      ASSERT_TRUE(r) << path << ": no answer";
      EXPECT_EQ(r->status, 200) << path;
      EXPECT_LT(took, 1.0) << path;
    }
    std::this_thread::sleep_for(300ms);
  }
}

// A head that never ends is closed at the header deadline, however steadily it trickles; a
// connection that completes its request in time is answered.
TEST_F(MirrorAbuse, AnUnfinishedHeadIsClosedAtTheHeaderDeadline) {
  seed();
  MirrorOptions o;
  o.header_timeout_s = 1;
  start(o);
  const auto t0 = Clock::now();
  SlowClients slow(mirror->port(), 0, 0);
  int s = connect_loopback(mirror->port());
  const std::string head = "GET /api/models/org/m HTTP/1.1\r\nHost: x\r\nX-Slow: ";
  bool closed = false;
  for (size_t i = 0; i < 40 && !closed; ++i) {  // a byte every 100 ms, for up to 4 s
    const char c = i < head.size() ? head[i] : 'a';
    (void)::send(s, &c, 1, MSG_NOSIGNAL);
    closed = closed_by_peer(s, 100ms);
  }
  const double took = seconds_since(t0);
  ::close(s);
  EXPECT_TRUE(closed) << "still open after " << took << " s";
  EXPECT_GE(took, 0.9);
  EXPECT_LT(took, 2.5);
  EXPECT_EQ(http().Get("/api/models/org/m")->status, 200);
}

// One address gets max_connections_per_ip connections; the next is closed at once, and a slot
// freed is usable again.
TEST_F(MirrorAbuse, ConnectionsPerAddressAreBounded) {
  seed();
  MirrorOptions o;
  o.max_connections_per_ip = 4;
  start(o);
  std::vector<int> held;
  for (int i = 0; i < 4; ++i) held.push_back(connect_loopback(mirror->port()));
  std::this_thread::sleep_for(200ms);
  int extra = connect_loopback(mirror->port());
  EXPECT_TRUE(closed_by_peer(extra, 1000ms));
  ::close(extra);
  for (int s : held) EXPECT_FALSE(closed_by_peer(s, 10ms));
  ::close(held.back());
  held.pop_back();
  std::this_thread::sleep_for(200ms);
  auto cli = http();
  cli.set_read_timeout(2);
  auto r = cli.Get("/api/models/org/m");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  for (int s : held) ::close(s);
}

// An unauthenticated POST announcing 1 GiB is refused (401) from its head: the server reads at
// most what the socket buffers hold, and its memory does not grow with the body.
TEST_F(MirrorAbuse, AHugeUnauthenticatedBodyIsRefusedWithoutReadingIt) {
  seed();
  start();
  ASSERT_EQ(http().Get("/api/models/org/m")->status, 200);  // warm: threads and buffers exist
  const long before = rss_kb();
  for (const char* path :
       {"/api/repos/create", "/api/models/org/m/commit/main", "/api/models/org/m/preupload/main"}) {
    const std::string head = std::string("POST ") + path +
                             " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             "Content-Length: 1073741824\r\n\r\n";
    EXPECT_EQ(raw_exchange(mirror->port(), head, size_t{8} << 20), "HTTP/1.1 401 Unauthorized")
        << path;
  }
  const long after = rss_kb();
  EXPECT_LT(after - before, 4 * 1024) << "RSS " << before << " kB -> " << after << " kB";
  EXPECT_FALSE(store.has_repo("org/x"));
}

// With the token, a JSON body over its cap (1 MiB) is 413 on the head (the body is not read);
// nothing is created.
TEST_F(MirrorAbuse, BodiesOverTheirCapsAre413) {
  seed();
  start();
  const std::string auth = "Authorization: Bearer " + std::string(mirror_test::kWriteToken);
  EXPECT_EQ(
      raw_exchange(mirror->port(),
                   "POST /api/repos/create HTTP/1.1\r\nHost: x\r\n" + auth +
                       "\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n",
                   0),
      "HTTP/1.1 413 Content Too Large");
  // Read routes cap their bodies the same way.
  EXPECT_EQ(raw_exchange(mirror->port(),
                         "POST /api/models/org/m/paths-info/main HTTP/1.1\r\nHost: x\r\n"
                         "Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n",
                         0),
            "HTTP/1.1 413 Content Too Large");
  EXPECT_FALSE(store.has_repo("org/x"));
}

// Streamed bodies leave nothing behind: a commit (accepted or refused) removes its body temp,
// an LFS upload whose bytes do not match its oid is refused (400) and its upload temp removed,
// and one that matches becomes the blob (hashed on the way in).
TEST_F(MirrorAbuse, StreamedBodiesLeaveNoTemps) {
  seed();
  start();
  auto cli = http();
  const std::string header = R"({"key":"header","value":{"summary":"s"}})";
  const std::string file =
      R"({"key":"file","value":{"path":"a.txt","content":"aGk=","encoding":"base64"}})";
  EXPECT_EQ(cli.Post("/api/models/org/m/commit/main", bearer(), header + "\n" + file + "\n",
                     "application/x-ndjson")
                ->status,
            200);
  EXPECT_EQ(cli.Post("/api/models/org/m/commit/main", bearer(), header + "\n{\"key\":5}\n",
                     "application/x-ndjson")
                ->status,
            400);
  const std::string content = "lfs object content";
  const std::string oid = loftqd::storage::sha256_hex(content);
  const std::string batch = R"({"operation":"upload","transfers":["basic"],"objects":[{"oid":")" +
                            oid + R"(","size":)" + std::to_string(content.size()) + "}]}";
  auto b = cli.Post("/org/m.git/info/lfs/objects/batch", bearer(), batch,
                    "application/vnd.git-lfs+json");
  ASSERT_TRUE(b);
  ASSERT_EQ(b->status, 200) << b->body;
  const std::string href =
      nlohmann::json::parse(b->body)["objects"][0]["actions"]["upload"]["href"];
  const std::string path = href.substr(href.find("/api/"));
  std::string wrong = content;
  wrong[0] = 'L';
  EXPECT_EQ(cli.Put(path, wrong, "application/octet-stream")->status, 400);
  EXPECT_FALSE(store.has_blob("org/m", oid));
  EXPECT_EQ(cli.Put(path, content, "application/octet-stream")->status, 200);
  EXPECT_TRUE(store.has_blob("org/m", oid));
  for (auto& e : fs::directory_iterator(store.repo_dir("org/m") / "blobs")) {
    const std::string name = e.path().filename().string();
    EXPECT_EQ(name.find(".commit-body"), std::string::npos) << name;
    EXPECT_EQ(name.find(".upload-"), std::string::npos) << name;
  }
}

// A rate-capped download is sent in slices with its connection suspended between them (no thread
// held): the cap holds, other requests are answered meanwhile, and stop() during it returns at
// once (the suspended connection is woken and ended).
TEST_F(MirrorAbuse, RateCappedDownloadsHoldNoThreadAndStopPromptly) {
  seed();
  MirrorOptions o;
  o.max_bytes_per_s = 20000;  // the 70000-byte file takes 3.5 s
  o.threads = 1;
  start(o);
  std::atomic<size_t> got{0};
  std::thread slow_download([&] {
    auto cli = http();
    cli.set_read_timeout(10, 0);
    (void)cli.Get("/org/m/resolve/main/model.safetensors", [&](const char*, size_t n) {
      got += n;
      return true;
    });
  });
  std::this_thread::sleep_for(1000ms);
  const size_t after_1s = got.load();
  EXPECT_GT(after_1s, 0u);
  EXPECT_LT(after_1s, 45000u);  // about 20000 (+ a slice) after 1 s, not the whole file
  auto cli = http();
  cli.set_read_timeout(2, 0);
  const auto t0 = Clock::now();
  auto r = cli.Get("/api/models/org/m");  // the only worker is free: the download holds none
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_LT(seconds_since(t0), 1.0);
  const auto t1 = Clock::now();
  mirror->stop();
  EXPECT_LT(seconds_since(t1), 1.5);
  slow_download.join();
  EXPECT_LT(got.load(), 70000u);
}

// A request refused on its head is answered with Connection: close and the connection ends: its
// unread body is never taken for a next request (here, a whoami with the token inside the body).
TEST_F(MirrorAbuse, AnEarlyRefusalClosesTheConnection) {
  seed();
  start();
  const std::string inner = "GET /api/whoami-v2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                            std::string(mirror_test::kWriteToken) + "\r\n\r\n";
  const std::string req = "POST /api/repos/create HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                          std::to_string(inner.size()) + "\r\n\r\n" + inner;
  int s = connect_loopback(mirror->port());
  timeval tv{2, 0};
  ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ASSERT_EQ(::send(s, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  std::string answer;
  char buf[4096];
  for (ssize_t n; (n = ::recv(s, buf, sizeof buf, 0)) > 0;) answer.append(buf, n);
  ::close(s);
  EXPECT_EQ(answer.rfind("HTTP/1.1 401", 0), 0u) << answer;
  EXPECT_NE(answer.find("Connection: close"), std::string::npos) << answer;
  EXPECT_EQ(answer.find("HTTP/1.1", 1), std::string::npos) << "a second answer: " << answer;
}

// stop() releases the port and every descriptor the server held (listening socket, epoll,
// connections): a new mirror binds the same port, and start/stop cycles leak no descriptor.
TEST_F(MirrorAbuse, StopReleasesThePortAndItsDescriptors) {
  seed();
  auto open_fds = [] {
    return std::distance(fs::directory_iterator("/proc/self/fd"), fs::directory_iterator());
  };
  start();
  (void)http().Get("/api/models/org/m");
  const int port = mirror->port();
  mirror->stop();
  const auto before = open_fds();
  for (int i = 0; i < 3; ++i) {
    MirrorOptions o;
    o.store = tmp / "store";
    o.host = "127.0.0.1";
    o.port = port;
    mirror = std::make_unique<loftqd::mirror::Mirror>(o);
    ASSERT_EQ(mirror->start(), port);
    auto cli = http();
    EXPECT_EQ(cli.Get("/api/models/org/m")->status, 200);
    mirror->stop();
  }
  EXPECT_EQ(open_fds(), before);
}
