// The mirror's server core over libmicrohttpd (mirror/http.h; docs/hub.md, "The server core"):
// epoll loops that never run a handler, a header deadline, connection limits, bodies streamed
// under a plan decided from the head, handlers on a worker pool while their connection is
// suspended, and file bodies sent from the file (sendfile) or, under a rate cap, by a reader
// that suspends the connection between slices.
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include "mirror/http.h"
#include "storage/store.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace loftqd::mirror {

// ---- Request / Response ----

bool CaseLess::operator()(const std::string& a, const std::string& b) const {
  return strcasecmp(a.c_str(), b.c_str()) < 0;
}

std::string Request::get_header_value(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

std::string Request::get_param_value(const std::string& name) const {
  auto it = params.find(name);
  return it == params.end() ? std::string() : it->second;
}

Response::Response(Response&& o) noexcept
    : status(o.status),
      headers(std::move(o.headers)),
      body(std::move(o.body)),
      fd(std::exchange(o.fd, -1)),
      offset(o.offset),
      length(o.length),
      rate(o.rate) {}

Response& Response::operator=(Response&& o) noexcept {
  if (this != &o) {
    if (fd >= 0) ::close(fd);
    status = o.status;
    headers = std::move(o.headers);
    body = std::move(o.body);
    fd = std::exchange(o.fd, -1);
    offset = o.offset;
    length = o.length;
    rate = o.rate;
  }
  return *this;
}

Response::~Response() {
  if (fd >= 0) ::close(fd);
}

void Response::set_header(const std::string& name, const std::string& value) {
  headers.erase(name);
  headers.emplace(name, value);
}

void Response::set_content(std::string content, const std::string& content_type) {
  body = std::move(content);
  set_header("Content-Type", content_type);
}

void Response::set_file(int file_fd, uint64_t off, uint64_t len, const std::string& content_type,
                        uint64_t bytes_per_s) {
  if (fd >= 0) ::close(fd);
  fd = file_fd;
  offset = off;
  length = len;
  rate = bytes_per_s;
  body.clear();
  set_header("Content-Type", content_type);
}

// Runs jobs on a fixed set of threads; drain() waits until none is queued or running. (Named
// namespace: HttpServer::Impl holds one, and Impl is declared in the header.)
class WorkerPool {
 public:
  explicit WorkerPool(int n) {
    for (int i = 0; i < std::max(1, n); ++i) threads_.emplace_back([this] { loop(); });
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> g(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void post(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> g(mu_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
  }
  void drain() {
    std::unique_lock<std::mutex> lk(mu_);
    idle_cv_.wait(lk, [this] { return jobs_.empty() && running_ == 0; });
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [this] { return quit_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      ++running_;
      lk.unlock();
      job();
      lk.lock();
      --running_;
      if (jobs_.empty() && running_ == 0) idle_cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  int running_ = 0;
  bool quit_ = false;
};

namespace {

// One request in flight (MHD's per-request context).
struct Exchange {
  Request req;
  BodyPlan plan;
  int fd = -1;  // the body file while it is written
  std::unique_ptr<storage::Hasher> hasher;
  Response res;
  bool dispatched = false;
  std::atomic<bool> answered{false};
  ~Exchange() {
    if (fd >= 0) ::close(fd);
    if (plan.kind == BodyPlan::File && plan.remove_after && !plan.file.empty()) {
      std::error_code ec;
      fs::remove(plan.file, ec);
    }
  }
};

// A rate-capped file body being sent.
struct RateBody {
  int fd;
  uint64_t offset, length, rate;
  Clock::time_point t0;
  MHD_Connection* con = nullptr;
  void* impl = nullptr;
};

bool parse_u64(const std::string& s, uint64_t& v) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size();
}

MHD_Result collect(void* cls, MHD_ValueKind, const char* key, const char* value) {
  auto* m = static_cast<std::multimap<std::string, std::string, CaseLess>*>(cls);
  m->emplace(key ? key : "", value ? value : "");
  return MHD_YES;
}

MHD_Result collect_params(void* cls, MHD_ValueKind, const char* key, const char* value) {
  static_cast<Params*>(cls)->emplace(key ? key : "", value ? value : "");
  return MHD_YES;
}

void log_mhd(void*, const char* fm, va_list ap) {
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fm, ap);
  std::string s(buf);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  spdlog::debug("mirror http: {}", s);
}

}  // namespace

struct HttpServer::Impl {
  ServerOptions opt;
  Admit admit;
  Handle handle;
  Log log;
  int listen_fd = -1;
  MHD_Daemon* daemon = nullptr;
  std::unique_ptr<WorkerPool> pool;
  std::atomic<bool> stopping{false};

  // Connections whose headers are due (the reaper shuts down those past their deadline).
  struct Conn {
    int fd;
    std::optional<Clock::time_point> deadline;
  };
  std::mutex conns_mu;
  std::map<MHD_Connection*, Conn> conns;
  // Rate-capped bodies waiting for their next slice.
  std::multimap<Clock::time_point, MHD_Connection*> wakeups;
  std::condition_variable timer_cv;
  bool timer_quit = false;
  std::thread timer;

  void timer_loop();
  MHD_Result on_access(MHD_Connection* con, const char* url, const char* method, const char* upload,
                       size_t* upload_size, void** ctx);
  MHD_Result first_call(MHD_Connection* con, const char* url, const char* method, void** ctx);
  MHD_Result receive(Exchange& ex, const char* data, size_t n);
  MHD_Result dispatch(MHD_Connection* con, Exchange& ex);
  MHD_Result queue(MHD_Connection* con, const Request& req, Response& res);
  ssize_t read_rated(RateBody& rb, uint64_t pos, char* buf, size_t max);
};

// Every ~100 ms: shuts down the connections past their header deadline, resumes the rate-capped
// bodies whose next slice is due.
void HttpServer::Impl::timer_loop() {
  std::unique_lock<std::mutex> lk(conns_mu);
  for (;;) {
    timer_cv.wait_for(lk, std::chrono::milliseconds(100));
    const auto now = Clock::now();
    for (auto& [con, c] : conns) {
      if (c.deadline && *c.deadline <= now) {
        ::shutdown(c.fd, SHUT_RDWR);  // MHD sees the end and closes it (CLOSED erases it)
        c.deadline.reset();
      }
    }
    std::vector<MHD_Connection*> due;
    while (!wakeups.empty() && (timer_quit || stopping || wakeups.begin()->first <= now)) {
      due.push_back(wakeups.begin()->second);
      wakeups.erase(wakeups.begin());
    }
    const bool quit = timer_quit;
    // MHD takes its own locks in resume (and holds them around the notify callbacks).
    lk.unlock();
    for (auto* con : due) MHD_resume_connection(con);
    lk.lock();
    if (quit && wakeups.empty()) return;
  }
}

MHD_Result HttpServer::Impl::queue(MHD_Connection* con, const Request& req, Response& res) {
  MHD_Response* r = nullptr;
  if (res.fd >= 0 && res.rate > 0) {
    auto* rb = new RateBody{res.fd, res.offset, res.length, res.rate, Clock::now()};
    rb->con = con;
    rb->impl = this;
    r = MHD_create_response_from_callback(
        res.length, 64 * 1024,
        [](void* cls, uint64_t pos, char* buf, size_t max) -> ssize_t {
          auto* b = static_cast<RateBody*>(cls);
          return static_cast<Impl*>(b->impl)->read_rated(*b, pos, buf, max);
        },
        rb,
        [](void* cls) {
          auto* b = static_cast<RateBody*>(cls);
          ::close(b->fd);
          delete b;
        });
    if (r)
      res.fd = -1;
    else
      delete rb;
  } else if (res.fd >= 0) {
    r = MHD_create_response_from_fd_at_offset64(res.length, res.fd, res.offset);
    if (r) res.fd = -1;  // MHD closes it
  } else {
    r = MHD_create_response_from_buffer(res.body.size(), res.body.data(), MHD_RESPMEM_MUST_COPY);
  }
  if (!r) return MHD_NO;
  for (const auto& [k, v] : res.headers)
    if (strcasecmp(k.c_str(), "Content-Length") != 0)
      MHD_add_response_header(r, k.c_str(), v.c_str());
  MHD_Result ok = MHD_queue_response(con, static_cast<unsigned>(res.status), r);
  MHD_destroy_response(r);
  if (log) log(req, res);
  return ok;
}

ssize_t HttpServer::Impl::read_rated(RateBody& rb, uint64_t pos, char* buf, size_t max) {
  if (pos >= rb.length) return MHD_CONTENT_READER_END_OF_STREAM;
  if (stopping) return MHD_CONTENT_READER_END_WITH_ERROR;
  // Slices of about 1/20 s worth; the next one is due when the bytes so far fit the rate.
  const size_t slice = std::clamp<uint64_t>(rb.rate / 20, 4096, 1 << 20);
  const auto due = rb.t0 + std::chrono::microseconds(pos * 1000000 / rb.rate);
  if (due > Clock::now()) {
    MHD_suspend_connection(rb.con);
    {
      std::lock_guard<std::mutex> g(conns_mu);
      wakeups.emplace(timer_quit ? Clock::now() : due, rb.con);
    }
    timer_cv.notify_all();
    return 0;
  }
  size_t n = std::min<uint64_t>({max, slice, rb.length - pos});
  ssize_t got = ::pread(rb.fd, buf, n, static_cast<off_t>(rb.offset + pos));
  return got <= 0 ? MHD_CONTENT_READER_END_WITH_ERROR : got;
}

MHD_Result HttpServer::Impl::first_call(MHD_Connection* con, const char* url, const char* method,
                                        void** ctx) {
  {
    std::lock_guard<std::mutex> g(conns_mu);
    if (auto it = conns.find(con); it != conns.end()) it->second.deadline.reset();
  }
  auto ex = std::make_unique<Exchange>();
  ex->req.method = method;
  ex->req.path = url;
  MHD_get_connection_values(con, MHD_HEADER_KIND, collect, &ex->req.headers);
  MHD_get_connection_values(con, MHD_GET_ARGUMENT_KIND, collect_params, &ex->req.params);
  auto* raw = ex.get();
  *ctx = ex.release();
  Exchange& e = *raw;
  if (stopping) {
    e.plan.kind = BodyPlan::Refuse;
    Response r;
    r.status = 503;
    r.set_content("{\"error\": \"the mirror is shutting down\"}", "application/json");
    return queue(con, e.req, r);
  }
  try {
    e.plan = admit(e.req);
  } catch (const std::exception& err) {
    e.plan = BodyPlan{};
    e.plan.kind = BodyPlan::Refuse;
    e.plan.refusal = std::make_shared<Response>();
    e.plan.refusal->status = 400;
    e.plan.refusal->set_content(std::string("{\"error\": \"") + err.what() + "\"}",
                                "application/json");
  }
  // An announced body over the plan's limit is refused before it is read.
  if (e.plan.kind != BodyPlan::Refuse) {
    const std::string cl = e.req.get_header_value("Content-Length");
    uint64_t announced = 0;
    if (!cl.empty() && parse_u64(cl, announced) && announced > e.plan.limit) {
      auto r = std::make_shared<Response>();
      r->status = 413;
      r->set_header("X-Error-Message", "request body too large");
      r->set_content("{\"error\": \"request body too large: " + cl + " bytes, at most " +
                         std::to_string(e.plan.limit) + " accepted here\"}",
                     "application/json");
      if (e.plan.kind == BodyPlan::File && !e.plan.remove_after) e.plan.file.clear();
      e.plan.kind = BodyPlan::Refuse;
      e.plan.refusal = r;
    }
  }
  if (e.plan.kind == BodyPlan::Refuse) return queue(con, e.req, *e.plan.refusal);
  if (e.plan.kind == BodyPlan::File) {
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (e.plan.truncate ? O_TRUNC : 0);
    e.fd = ::open(e.plan.file.c_str(), flags, 0644);
    if (e.fd < 0) {
      spdlog::error("mirror: cannot create {}: {}", e.plan.file.string(), std::strerror(errno));
      e.plan.file.clear();
      Response r;
      r.status = 500;
      r.set_content("{\"error\": \"cannot create the upload file\"}", "application/json");
      return queue(con, e.req, r);
    }
    if (e.plan.hash) e.hasher = std::make_unique<storage::Hasher>(storage::HashAlgo::Sha256);
  }
  return MHD_YES;
}

MHD_Result HttpServer::Impl::receive(Exchange& ex, const char* data, size_t n) {
  // A body over the limit without an announced length: the connection is dropped.
  if (ex.req.body_size + n > ex.plan.limit) {
    spdlog::warn("mirror: {} {}: body over {} bytes, connection closed", ex.req.method, ex.req.path,
                 ex.plan.limit);
    return MHD_NO;
  }
  if (ex.plan.kind == BodyPlan::Memory) {
    ex.req.body.append(data, n);
  } else {
    uint64_t pos = ex.plan.file_offset + ex.req.body_size;
    for (size_t done = 0; done < n;) {
      ssize_t w = ::pwrite(ex.fd, data + done, n - done, static_cast<off_t>(pos + done));
      if (w <= 0) {
        spdlog::error("mirror: writing {}: {}", ex.plan.file.string(), std::strerror(errno));
        return MHD_NO;
      }
      done += static_cast<size_t>(w);
    }
    if (ex.hasher) ex.hasher->update(data, n);
  }
  ex.req.body_size += n;
  return MHD_YES;
}

MHD_Result HttpServer::Impl::dispatch(MHD_Connection* con, Exchange& ex) {
  ex.dispatched = true;
  if (ex.plan.kind == BodyPlan::File) {
    ::close(ex.fd);
    ex.fd = -1;
    ex.req.body_file = ex.plan.file;
    if (ex.hasher) ex.req.body_sha256 = ex.hasher->hex();
  }
  if (stopping) {
    ex.res.status = 503;
    ex.res.set_content("{\"error\": \"the mirror is shutting down\"}", "application/json");
    ex.answered = true;
    return queue(con, ex.req, ex.res);
  }
  MHD_suspend_connection(con);
  pool->post([this, con, &ex] {
    try {
      handle(ex.req, ex.res);
    } catch (const std::exception& e) {
      ex.res = Response();
      ex.res.status = 500;
      ex.res.set_content(std::string("{\"error\": \"internal error: ") + e.what() + "\"}",
                         "application/json");
    }
    ex.answered = true;
    MHD_resume_connection(con);
  });
  return MHD_YES;
}

MHD_Result HttpServer::Impl::on_access(MHD_Connection* con, const char* url, const char* method,
                                       const char* upload, size_t* upload_size, void** ctx) {
  if (*ctx == nullptr) return first_call(con, url, method, ctx);
  auto& ex = *static_cast<Exchange*>(*ctx);
  if (*upload_size > 0) {
    size_t n = *upload_size;
    *upload_size = 0;
    return receive(ex, upload, n);
  }
  if (!ex.dispatched) return dispatch(con, ex);
  if (ex.answered) return queue(con, ex.req, ex.res);
  return MHD_YES;
}

// ---- HttpServer ----

HttpServer::HttpServer(ServerOptions opt, Admit admit, Handle handle, Log log)
    : impl_(std::make_unique<Impl>()) {
  impl_->opt = opt;
  impl_->admit = std::move(admit);
  impl_->handle = std::move(handle);
  impl_->log = std::move(log);
}

HttpServer::~HttpServer() {
  stop();
}

int HttpServer::bind(const std::string& host, int port) {
  auto& i = *impl_;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string where = host + ":" + std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
    throw std::runtime_error("mirror: cannot listen on " + where + ": " + gai_strerror(rc));
  int err = 0;
  for (addrinfo* a = res; a && i.listen_fd < 0; a = a->ai_next) {
    int s = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (s < 0) {
      err = errno;
      continue;
    }
    int yes = 1;
    ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (::bind(s, a->ai_addr, a->ai_addrlen) == 0 && ::listen(s, SOMAXCONN) == 0) {
      i.listen_fd = s;
    } else {
      err = errno;
      ::close(s);
    }
  }
  ::freeaddrinfo(res);
  if (i.listen_fd < 0)
    throw std::runtime_error("mirror: cannot listen on " + where + ": " + std::strerror(err) +
                             " (errno " + std::to_string(err) + ")");
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(i.listen_fd, reinterpret_cast<sockaddr*>(&ss), &len);
  return ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

void HttpServer::start() {
  auto& i = *impl_;
  if (i.listen_fd < 0) throw std::runtime_error("mirror: start() before bind()");
  i.stopping = false;
  i.timer_quit = false;
  i.pool = std::make_unique<WorkerPool>(i.opt.worker_threads);
  i.timer = std::thread([&i] { i.timer_loop(); });
  auto access = [](void* cls, MHD_Connection* con, const char* url, const char* method, const char*,
                   const char* upload, size_t* upload_size, void** ctx) {
    return static_cast<Impl*>(cls)->on_access(con, url, method, upload, upload_size, ctx);
  };
  auto notify = [](void* cls, MHD_Connection* con, void**, MHD_ConnectionNotificationCode code) {
    auto& s = *static_cast<Impl*>(cls);
    std::lock_guard<std::mutex> g(s.conns_mu);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
      const auto* info = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
      if (info)
        s.conns[con] = {info->connect_fd,
                        Clock::now() + std::chrono::seconds(s.opt.header_timeout_s)};
    } else {
      s.conns.erase(con);
    }
  };
  // After each answer, a kept-alive connection has keep-alive + header time for the next head.
  auto completed = [](void* cls, MHD_Connection* con, void** ctx, MHD_RequestTerminationCode toe) {
    auto& s = *static_cast<Impl*>(cls);
    delete static_cast<Exchange*>(*ctx);
    *ctx = nullptr;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) return;
    std::lock_guard<std::mutex> g(s.conns_mu);
    if (auto it = s.conns.find(con); it != s.conns.end())
      it->second.deadline =
          Clock::now() + std::chrono::seconds(s.opt.header_timeout_s + s.opt.keep_alive_timeout_s);
  };
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                   MHD_USE_ERROR_LOG;
  i.daemon = MHD_start_daemon(
      flags, 0, nullptr, nullptr, +access, &i, MHD_OPTION_LISTEN_SOCKET, i.listen_fd,
      MHD_OPTION_THREAD_POOL_SIZE, static_cast<unsigned>(std::max(1, i.opt.poll_threads)),
      MHD_OPTION_CONNECTION_LIMIT, i.opt.max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
      i.opt.max_connections_per_ip, MHD_OPTION_CONNECTION_TIMEOUT, i.opt.idle_timeout_s,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, static_cast<size_t>(128 * 1024),
      MHD_OPTION_NOTIFY_COMPLETED, +completed, &i, MHD_OPTION_NOTIFY_CONNECTION, +notify, &i,
      MHD_OPTION_EXTERNAL_LOGGER, log_mhd, nullptr, MHD_OPTION_END);
  if (!i.daemon) {
    i.timer_quit = true;
    i.timer_cv.notify_all();
    i.timer.join();
    i.pool.reset();
    throw std::runtime_error("mirror: the HTTP server (libmicrohttpd) did not start");
  }
}

void HttpServer::stop() {
  auto& i = *impl_;
  if (i.daemon) {
    // New requests are answered 503 from here on and never dispatched; answers in progress
    // finish; rate-capped bodies are woken and end. (No MHD_quiesce_daemon: in 0.9.75 it races
    // the epoll loops' own removal of the listening socket at the connection limit and panics.)
    i.stopping = true;
    i.timer_cv.notify_all();
    i.pool->drain();
    {
      std::lock_guard<std::mutex> g(i.conns_mu);
      i.timer_quit = true;
    }
    i.timer_cv.notify_all();
    i.timer.join();
    MHD_stop_daemon(i.daemon);  // closes every connection and the listening socket
    i.daemon = nullptr;
    i.listen_fd = -1;
    i.pool.reset();
  }
  if (i.listen_fd >= 0) {
    ::close(i.listen_fd);
    i.listen_fd = -1;
  }
}

}  // namespace loftqd::mirror
