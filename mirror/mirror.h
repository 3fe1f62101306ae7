// The built-in Hub-compatible mirror (DESIGN §5): serves the Hub's read API from a store in the
// Hugging Face cache layout and, when a write token is configured, the write API (create repo,
// preupload, LFS batch + upload + verify, NDJSON commit, branches). HF_ENDPOINT=<url> makes
// stock Hub clients and `loftqd fetch` / `loftqd publish` talk to it.
//
// The implementation (library loftqd_mirror): server.cpp (lifecycle, routes, auth, errors),
// read_api.cpp, write_api.cpp and lfs.cpp, sharing mirror/internal.h.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace loftqd::mirror {

// A request to one of MirrorOptions::extra_routes and the handler's answer.
struct HttpExchange {
  std::string method, path, body;
  std::map<std::string, std::string> headers;  // names lower-cased
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string reply;
  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

struct MirrorOptions {
  std::filesystem::path store;
  std::string host = "127.0.0.1";
  int port = 8080;                         // 0: any free port (see Mirror::port())
  std::optional<std::string> write_token;  // write API enabled only when set
  // The caller holds storage::StoreLock on `store` (serve, run): at start every upload temp is
  // abandoned (no other process can be writing one) and removed whatever its age; otherwise
  // only those older than storage::kStaleTempAge.
  bool store_locked = false;
  int threads = 8;               // worker threads (handlers; never reading sockets)
  int keep_alive_timeout_s = 5;  // idle keep-alive connections close after this
  // The server core's limits (docs/hub.md, "The server core"): connections in total and from
  // one client address (more are refused at accept), the time a request has to complete its
  // headers, and how long a connection may go without a byte in either direction.
  unsigned max_connections = 1024;
  unsigned max_connections_per_ip = 256;
  unsigned header_timeout_s = 5;
  unsigned idle_timeout_s = 30;
  size_t tree_page_size = 1000;  // entries per tree page (Link: rel="next")
  // LFS objects at least this large are offered the multipart transfer, in parts of
  // multipart_chunk bytes, when the client lists "multipart".
  uint64_t multipart_threshold = uint64_t{256} << 20;
  uint64_t multipart_chunk = uint64_t{64} << 20;
  // Called once per request after it is answered (method, path, status); for logs.
  std::function<void(const std::string&, const std::string&, int)> on_request;
  // Endpoints served on the same listener ahead of the Hub API, keyed "METHOD /path" (exact
  // path, query ignored): the daemon's /healthz, /metrics and /webhook. Bodies up to 1 MiB.
  std::map<std::string, std::function<void(HttpExchange&)>> extra_routes;
  // Caps each file body's send rate (bytes per second; 0 = no cap). For operators sharing a
  // link, and for tests that need a download to last long enough to interrupt it.
  uint64_t max_bytes_per_s = 0;
};

// "HOST:PORT" (IPv6 hosts in brackets; port 0 = any) -> {host, port}; invalid_argument otherwise.
std::pair<std::string, int> parse_listen(const std::string& s);

class Mirror {
 public:
  explicit Mirror(MirrorOptions opt);
  ~Mirror();
  Mirror(const Mirror&) = delete;
  Mirror& operator=(const Mirror&) = delete;

  // Binds the listening socket; returns the port. Throws std::runtime_error on failure.
  int bind();
  // Serves until stop() (call bind() first). Blocks.
  void serve();
  // bind() + serve() on a background thread; returns the port once listening.
  int start();
  // Stops serving (from any thread); joins the background thread of start().
  void stop();
  int port() const;
  std::string url() const;  // http://host:port

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace loftqd::mirror
