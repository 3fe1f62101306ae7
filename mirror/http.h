// Internal to loftqd_mirror: the mirror's own HTTP request and response types and the
// event-driven server core that carries them (http_server.cpp, over libmicrohttpd; docs/hub.md,
// "The server core"). Handlers see a complete Request (its body in memory or, for uploads and
// commits, already streamed to a file) on a worker thread and fill a Response (content or a file
// range that is sent from the file).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

namespace loftqd::mirror {

// Orders header names without regard to case.
struct CaseLess {
  bool operator()(const std::string& a, const std::string& b) const;
};
using Headers = std::multimap<std::string, std::string, CaseLess>;
using Params = std::multimap<std::string, std::string>;  // query parameters, repeated keys kept

struct Request {
  std::string method, path;  // path percent-decoded, without the query
  Params params;
  Headers headers;
  std::string body;                 // the body, unless it went to body_file
  std::filesystem::path body_file;  // where a streamed body went (empty: it is in `body`)
  uint64_t body_size = 0;           // bytes of body received (either way)
  std::string body_sha256;          // of a streamed body, when its plan asked for it

  bool has_header(const std::string& name) const { return headers.count(name) > 0; }
  std::string get_header_value(const std::string& name) const;
  bool has_param(const std::string& name) const { return params.count(name) > 0; }
  std::string get_param_value(const std::string& name) const;  // the first one, or ""
};

struct Response {
  int status = 200;
  Headers headers;
  std::string body;
  // A file body: `length` bytes of `fd` from `offset` (the server closes fd), sent at most
  // `rate` bytes per second when rate > 0.
  int fd = -1;
  uint64_t offset = 0, length = 0, rate = 0;

  Response() = default;
  Response(const Response&) = delete;
  Response& operator=(const Response&) = delete;
  Response(Response&& o) noexcept;
  Response& operator=(Response&& o) noexcept;
  ~Response();

  void set_header(const std::string& name, const std::string& value);
  void set_content(std::string content, const std::string& content_type);
  // Takes ownership of `fd`.
  void set_file(int fd, uint64_t offset, uint64_t length, const std::string& content_type,
                uint64_t rate = 0);
};

// What happens to a request's body, decided from its method, path and headers before a byte of
// it is read.
struct BodyPlan {
  enum Kind { Refuse, Memory, File } kind = Memory;
  uint64_t limit = 0;  // Memory / File: the most bytes accepted (more: 413 or the connection drops)
  // File: the body is written to `file` from `file_offset` (created; truncated when `truncate`),
  // its sha256 computed on the way when `hash`, the file removed after the answer when
  // `remove_after`.
  std::filesystem::path file;
  uint64_t file_offset = 0;
  bool truncate = true, hash = false, remove_after = true;
  std::shared_ptr<Response> refusal;  // Refuse: the answer, sent without reading the body

  static BodyPlan memory(uint64_t limit) {
    BodyPlan p;
    p.limit = limit;
    return p;
  }
  static BodyPlan to_file(std::filesystem::path file, uint64_t limit) {
    BodyPlan p;
    p.kind = File;
    p.limit = limit;
    p.file = std::move(file);
    return p;
  }
};

struct ServerOptions {
  int worker_threads = 8;                 // handlers run here, once a request is complete
  int poll_threads = 2;                   // event loops (epoll) reading and sending
  unsigned max_connections = 1024;        // in total; more are refused at accept
  unsigned max_connections_per_ip = 256;  // from one client address
  unsigned idle_timeout_s = 30;           // no byte in either direction for this long: closed
  unsigned header_timeout_s = 5;          // a request's headers must be complete within this
  unsigned keep_alive_timeout_s = 5;      // extra time a kept-alive connection has for the next
};

// The server core: libmicrohttpd's epoll loops (MHD_USE_INTERNAL_POLLING_THREAD), limits on
// connections, a header deadline enforced by a reaper thread, bodies read by the loops into
// memory or a file under the plan `admit` gives, and `handle` run on the worker pool with the
// connection suspended until it answers.
class HttpServer {
 public:
  using Admit = std::function<BodyPlan(const Request& head)>;
  using Handle = std::function<void(Request& req, Response& res)>;
  using Log = std::function<void(const Request& req, const Response& res)>;

  HttpServer(ServerOptions opt, Admit admit, Handle handle, Log log);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Creates the listening socket (SO_REUSEADDR, not SO_REUSEPORT); returns the port. Throws
  // std::runtime_error naming the address and errno.
  int bind(const std::string& host, int port);
  // Starts serving on the bound socket (returns at once; the loops run on their own threads).
  void start();
  // Stops accepting, lets handlers in progress finish, closes every connection. Idempotent.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace loftqd::mirror
