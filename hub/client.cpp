#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "hub/http.h"
#include "hub/hub.h"

#include "common/env.h"
#include "common/fs.h"
#include "common/strings.h"
#include "storage/store.h"

namespace fs = std::filesystem;
namespace st = loftqd::storage;
using nlohmann::json;

namespace loftqd::hub {

using common::trim;

const char* kind_name(ErrorKind k) {
  switch (k) {
    case ErrorKind::RepoNotFound:
      return "RepoNotFound";
    case ErrorKind::RevisionNotFound:
      return "RevisionNotFound";
    case ErrorKind::EntryNotFound:
      return "EntryNotFound";
    case ErrorKind::GatedRepo:
      return "GatedRepo";
    case ErrorKind::Unauthorized:
      return "Unauthorized";
    case ErrorKind::Forbidden:
      return "Forbidden";
    case ErrorKind::RangeNotSatisfiable:
      return "RangeNotSatisfiable";
    case ErrorKind::RateLimited:
      return "RateLimited";
    case ErrorKind::Server:
      return "Server";
    case ErrorKind::Conflict:
      return "Conflict";
    case ErrorKind::BadRequest:
      return "BadRequest";
    case ErrorKind::Network:
      return "Network";
    case ErrorKind::Timeout:
      return "Timeout";
    case ErrorKind::Offline:
      return "Offline";
    case ErrorKind::InvalidResponse:
      return "InvalidResponse";
    case ErrorKind::UnsafePath:
      return "UnsafePath";
    case ErrorKind::HashMismatch:
      return "HashMismatch";
    case ErrorKind::NoSpace:
      return "NoSpace";
    case ErrorKind::Io:
      return "Io";
  }
  return "?";
}

namespace {

std::string unquote_etag(std::string e) {
  e = trim(e);
  if (e.rfind("W/", 0) == 0) e = e.substr(2);
  if (e.size() >= 2 && e.front() == '"' && e.back() == '"') e = e.substr(1, e.size() - 2);
  return e;
}

// What a request is about, for error messages.
struct Ctx {
  std::string repo, revision, file;
  std::string describe() const {
    std::string s = "repo '" + repo + "'";
    if (!revision.empty()) s += ", revision '" + revision + "'";
    if (!file.empty()) s += ", file '" + file + "'";
    return s;
  }
};

Error from_storage(const st::Error& e, const Ctx& c) {
  ErrorKind k = ErrorKind::Io;
  if (e.code == st::Errc::HashMismatch || e.code == st::Errc::SizeMismatch)
    k = ErrorKind::HashMismatch;
  else if (e.code == st::Errc::NoSpace)
    k = ErrorKind::NoSpace;
  else if (e.code == st::Errc::InvalidPath)
    k = ErrorKind::UnsafePath;
  return {k, c.describe() + ": " + e.message};
}

bool retryable_status(int s) {
  return s == 408 || s == 429 || (s >= 500 && s <= 599);
}

bool retryable_transport(int curl_code) {
  switch (curl_code) {
    case 6:   // COULDNT_RESOLVE_HOST
    case 7:   // COULDNT_CONNECT
    case 16:  // HTTP2
    case 18:  // PARTIAL_FILE
    case 28:  // OPERATION_TIMEDOUT
    case 35:  // SSL_CONNECT_ERROR
    case 52:  // GOT_NOTHING
    case 55:  // SEND_ERROR
    case 56:  // RECV_ERROR
    case 92:  // HTTP2_STREAM
      return true;
    default:
      return false;
  }
}

// Seconds the server asks us to wait: Retry-After (seconds) or RateLimit "...;t=N".
std::optional<double> server_delay(const http::Response& r) {
  std::string ra = trim(r.header("retry-after"));
  if (!ra.empty() && std::all_of(ra.begin(), ra.end(), ::isdigit)) return std::stod(ra);
  std::string rl = r.header("ratelimit");
  auto t = rl.find(";t=");
  if (t == std::string::npos) t = rl.find("t=") == 0 ? 0 : std::string::npos;
  if (t != std::string::npos) {
    size_t p = rl.find('=', t) + 1;
    size_t e = p;
    while (e < rl.size() && std::isdigit(static_cast<unsigned char>(rl[e]))) ++e;
    if (e > p) return std::stod(rl.substr(p, e - p));
  }
  return std::nullopt;
}

std::string server_message(const http::Response& r) {
  std::string m = r.header("x-error-message");
  if (m.empty()) {
    try {
      auto j = json::parse(r.body);
      if (j.is_object() && j.contains("error") && j["error"].is_string())
        m = j["error"].get<std::string>();
    } catch (const std::exception&) {
      m = r.body.substr(0, 200);
    }
  }
  return trim(m);
}

// Maps a final non-2xx response (or a transport failure) to a typed error.
Error error_from(const http::Response& r, const Ctx& c, bool had_token) {
  if (!r.transport_ok()) {
    ErrorKind k = r.timed_out() ? ErrorKind::Timeout : ErrorKind::Network;
    return {k, c.describe() + ": " + (r.timed_out() ? "timed out: " : "network error: ") +
                   r.curl_error};
  }
  std::string code = trim(r.header("x-error-code"));
  std::string msg = server_message(r);
  std::string detail = " (HTTP " + std::to_string(r.status) + (msg.empty() ? "" : ": " + msg) + ")";
  if (code == "RepoNotFound")
    return {ErrorKind::RepoNotFound,
            "repository '" + c.repo + "' not found" +
                (had_token ? "" : " (if it is private or gated, set HF_TOKEN)") + detail,
            r.status};
  if (code == "RevisionNotFound")
    return {ErrorKind::RevisionNotFound,
            "revision '" + c.revision + "' not found in repo '" + c.repo + "'" + detail, r.status};
  if (code == "EntryNotFound")
    return {ErrorKind::EntryNotFound,
            "file '" + c.file + "' not found in repo '" + c.repo + "' at revision '" + c.revision +
                "'" + detail,
            r.status};
  if (code == "GatedRepo")
    return {ErrorKind::GatedRepo,
            "repo '" + c.repo + "' is gated: request access on the Hub and authenticate" + detail,
            r.status};
  switch (r.status) {
    case 401:
      return {ErrorKind::Unauthorized,
              c.describe() + ": " +
                  (had_token ? "the token was rejected (invalid or expired)"
                             : "authentication required: no token set (HF_TOKEN or "
                               "$HF_HOME/token)") +
                  detail,
              r.status};
    case 403:
      return {ErrorKind::Forbidden, c.describe() + ": the token lacks the rights for this" + detail,
              r.status};
    case 404:
      if (!c.file.empty())
        return {ErrorKind::EntryNotFound,
                "file '" + c.file + "' not found in repo '" + c.repo + "' at revision '" +
                    c.revision + "'" + detail,
                r.status};
      return {ErrorKind::RepoNotFound, c.describe() + ": not found" + detail, r.status};
    case 409:
    case 412:
      return {ErrorKind::Conflict, c.describe() + ": conflict" + detail, r.status};
    case 416:
      return {ErrorKind::RangeNotSatisfiable, c.describe() + ": range not satisfiable" + detail,
              r.status};
    case 429:
      return {ErrorKind::RateLimited, c.describe() + ": rate limited" + detail, r.status};
    default:
      break;
  }
  if (r.status >= 500)
    return {ErrorKind::Server, c.describe() + ": server error" + detail, r.status};
  if (r.status >= 400)
    return {ErrorKind::BadRequest, c.describe() + ": request refused" + detail, r.status};
  return {ErrorKind::InvalidResponse, c.describe() + ": unexpected response" + detail, r.status};
}

// "<url>; rel=\"next\"" from a Link header.
std::optional<std::string> next_link(const std::string& link) {
  size_t pos = 0;
  while (pos < link.size()) {
    size_t lt = link.find('<', pos);
    if (lt == std::string::npos) return std::nullopt;
    size_t gt = link.find('>', lt);
    if (gt == std::string::npos) return std::nullopt;
    size_t comma = link.find(',', gt);
    std::string params = link.substr(gt + 1, comma == std::string::npos ? comma : comma - gt - 1);
    if (params.find("rel=\"next\"") != std::string::npos ||
        params.find("rel=next") != std::string::npos)
      return link.substr(lt + 1, gt - lt - 1);
    if (comma == std::string::npos) return std::nullopt;
    pos = comma + 1;
  }
  return std::nullopt;
}

// Hex digests compared without regard to case.
bool same_hex(const std::string& a, const std::string& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

double jitter01() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

}  // namespace

std::optional<std::string> find_token(const std::optional<std::string>& config_token) {
  if (auto t = common::hub_env().token) return t;
  if (config_token && !config_token->empty()) return config_token;
  return std::nullopt;
}

std::optional<std::string> read_token_file(const fs::path& p) {
  std::string t = trim(common::read_file(p));
  return t.empty() ? std::nullopt : std::optional<std::string>(std::move(t));
}

ClientOptions options_from_env(const std::optional<std::string>& endpoint,
                               const std::optional<std::string>& config_token) {
  const common::HubEnv e = common::hub_env();
  ClientOptions o;
  if (endpoint && !endpoint->empty())
    o.endpoint = *endpoint;
  else if (e.endpoint)
    o.endpoint = *e.endpoint;
  while (!o.endpoint.empty() && o.endpoint.back() == '/') o.endpoint.pop_back();
  o.token =
      e.token ? e.token : (config_token && !config_token->empty() ? config_token : std::nullopt);
  o.offline = e.offline;
  o.user_agent = std::string("loftqd/") + LOFTQD_VERSION;
  return o;
}

// ---------------------------------------------------------------------------------------------

struct Client::Impl {
  const ClientOptions& opt;
  std::string origin;  // the endpoint's scheme://host:port: the only place the token goes

  explicit Impl(const ClientOptions& o) : opt(o), origin(http::origin_of(o.endpoint)) {}

  std::string api(const std::string& repo) const { return opt.endpoint + "/api/models/" + repo; }

  double backoff(int attempt, const http::Response* r) const {
    if (r) {
      if (auto d = server_delay(*r)) return std::min(*d, opt.max_retry_after_s);
    }
    double d = std::min(opt.backoff_cap_s, opt.backoff_base_s * std::pow(2.0, attempt));
    return d * (0.5 + 0.5 * jitter01());  // "equal jitter": never less than half the step
  }

  void sleep_s(double s) const {
    std::this_thread::sleep_for(std::chrono::duration<double>(std::max(0.0, s)));
  }

  // One request with redirects: relative ones always, absolute ones too unless `same_host_only`
  // (HEAD metadata). Authorization goes only to the endpoint's origin.
  http::Response send(http::Request req, bool auth, bool follow_cross_host = true,
                      std::string* final_url = nullptr) const {
    bool with_token = auth && opt.token.has_value();
    std::vector<std::string> base_headers = req.headers;
    base_headers.push_back("User-Agent: " + opt.user_agent);
    for (int hop = 0; hop < 10; ++hop) {
      req.headers = base_headers;
      if (with_token && http::origin_of(req.url) == origin)
        req.headers.push_back("Authorization: Bearer " + *opt.token);
      req.connect_timeout_s = opt.connect_timeout_s;
      req.stall_timeout_s = opt.stall_timeout_s;
      if (req.method == "GET") req.max_recv_bytes_per_s = opt.max_recv_bytes_per_s;
      http::Response r = http::perform(req);
      bool redirect = r.transport_ok() &&
                      (r.status == 301 || r.status == 302 || r.status == 303 || r.status == 307 ||
                       r.status == 308) &&
                      !r.header("location").empty();
      if (!redirect) {
        if (final_url) *final_url = req.url;
        return r;
      }
      std::string next = http::resolve_url(req.url, r.header("location"));
      bool cross = http::origin_of(next) != http::origin_of(req.url);
      if (cross && !follow_cross_host) {
        if (final_url) *final_url = next;
        return r;
      }
      if (r.status == 303 && req.method != "HEAD") {
        req.method = "GET";
        req.body.clear();
        req.upload_file.reset();
      }
      req.url = next;
    }
    http::Response r;
    r.curl_code = 47;  // TOO_MANY_REDIRECTS
    r.curl_error = "too many redirects";
    return r;
  }

  // API call with retries on 408/429/5xx and transport errors.
  Result<http::Response> call(http::Request req, const Ctx& c, bool auth = true,
                              bool retry = true) const {
    if (opt.offline)
      return Error{ErrorKind::Offline, c.describe() + ": HF_HUB_OFFLINE is set, no network"};
    if (req.total_timeout_s == 0) req.total_timeout_s = opt.api_timeout_s;
    for (int attempt = 0;; ++attempt) {
      http::Response r = send(req, auth);
      bool ok = r.transport_ok() && r.status >= 200 && r.status < 300;
      if (ok) return r;
      bool again =
          retry && attempt < opt.max_retries &&
          (r.transport_ok() ? retryable_status(r.status) : retryable_transport(r.curl_code));
      if (!again) return error_from(r, c, opt.token.has_value());
      double d = backoff(attempt, r.transport_ok() ? &r : nullptr);
      spdlog::warn("hub: {} {} -> {}; retry {}/{} in {:.1f}s", req.method, c.describe(),
                   r.transport_ok() ? "HTTP " + std::to_string(r.status) : r.curl_error,
                   attempt + 1, opt.max_retries, d);
      sleep_s(d);
    }
  }

  Result<json> call_json(http::Request req, const Ctx& c, bool retry = true) const {
    auto r = call(std::move(req), c, true, retry);
    if (!r) return r.error();
    try {
      return json::parse(r.value().body);
    } catch (const std::exception& e) {
      return Error{ErrorKind::InvalidResponse,
                   c.describe() + ": the server sent invalid JSON: " + e.what()};
    }
  }

  Result<bool> create_repo(const std::string& repo, bool is_private) const;
  Result<bool> create_branch(const std::string& repo, const std::string& branch,
                             const std::string& from = "main") const;

  std::string resolve_url(const std::string& repo, const std::string& rev,
                          const std::string& path) const {
    return opt.endpoint + "/" + repo + "/resolve/" + http::escape_segment(rev) + "/" +
           http::escape_path(path);
  }

  // Downloads `url` into `partial`, resuming from its size with Range. Each file region is
  // retried on its own; a 200 to a Range request starts over. `on_bytes` reports new bytes.
  // Hashes a download as it streams in (append mode), so that verification costs no second read.
  struct StreamHash {
    st::Digest digest;
    uint64_t size = 0;
    std::unique_ptr<st::Hasher> h;
    void reset() {
      h = std::make_unique<st::Hasher>(digest.algo);
      if (digest.algo == st::HashAlgo::Sha1) {
        std::string hdr = "blob " + std::to_string(size);
        h->update(hdr.data(), hdr.size() + 1);
      }
    }
  };

  Result<Ok> download_range(const std::string& url, const fs::path& partial, uint64_t begin,
                            uint64_t end, bool append_mode, const Ctx& c,
                            const std::function<void(int64_t)>& on_bytes,
                            StreamHash* sh = nullptr) const {
    // append_mode: the file holds [0, done); ranges: write at absolute offsets of [begin, end).
    int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
      return Error{ErrorKind::Io, c.describe() + ": cannot open " + partial.string() + ": " +
                                      std::strerror(errno)};
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    uint64_t pos = begin;
    if (append_mode) {
      struct stat sb {};
      ::fstat(fd, &sb);
      pos = static_cast<uint64_t>(sb.st_size);
      if (pos > end) {
        if (::ftruncate(fd, 0) != 0) return Error{ErrorKind::Io, "cannot truncate partial"};
        on_bytes(-static_cast<int64_t>(pos));
        pos = 0;
      }
      if (sh) {  // hash the prefix we already have
        sh->reset();
        int rfd = ::open(partial.c_str(), O_RDONLY | O_CLOEXEC);
        if (rfd < 0)
          return Error{ErrorKind::Io, c.describe() + ": cannot read " + partial.string()};
        std::vector<char> buf(1 << 20);
        uint64_t left = pos;
        while (left > 0) {
          ssize_t n = ::read(rfd, buf.data(), std::min<uint64_t>(left, buf.size()));
          if (n <= 0) break;
          sh->h->update(buf.data(), static_cast<size_t>(n));
          left -= static_cast<uint64_t>(n);
        }
        ::close(rfd);
        if (left != 0)
          return Error{ErrorKind::Io, c.describe() + ": cannot read " + partial.string()};
      }
    }
    int no_progress = 0;
    bool restarted_416 = false;
    for (int attempt = 0;; ++attempt) {
      if (pos >= end) return Ok{};
      http::Request req;
      req.url = url;
      bool ranged = pos > 0 || !append_mode;
      if (ranged)
        req.headers.push_back("Range: bytes=" + std::to_string(pos) + "-" +
                              (append_mode ? "" : std::to_string(end - 1)));
      uint64_t start_pos = pos;
      bool range_mismatch = false, write_failed = false;
      req.on_headers = [&](int status, const auto& headers) {
        if (status == 200 && pos > 0) {
          // The server ignored the Range: start over (only possible for the whole file).
          if (!append_mode || ::ftruncate(fd, 0) != 0) {
            range_mismatch = true;
            return;
          }
          on_bytes(-static_cast<int64_t>(pos));
          pos = 0;
          if (sh) sh->reset();
        } else if (status == 206) {
          auto it = headers.find("content-range");
          if (it != headers.end()) {
            // "bytes a-b/total": a must be where we are.
            auto sp = it->second.find(' ');
            uint64_t a = std::strtoull(it->second.c_str() + (sp == std::string::npos ? 0 : sp + 1),
                                       nullptr, 10);
            if (a != pos) range_mismatch = true;
          }
        }
      };
      req.sink = [&](const char* data, size_t n) {
        if (range_mismatch) return false;
        size_t take = static_cast<size_t>(std::min<uint64_t>(n, end - pos));
        const char* p = data;
        size_t left = take;
        while (left > 0) {
          ssize_t w = ::pwrite(fd, p, left, static_cast<off_t>(pos));
          if (w <= 0) {
            write_failed = true;
            return false;
          }
          if (sh) sh->h->update(p, static_cast<size_t>(w));
          p += w;
          left -= static_cast<size_t>(w);
          pos += static_cast<uint64_t>(w);
        }
        on_bytes(static_cast<int64_t>(take));
        return take == n;  // more than expected: stop (the hash check decides)
      };
      http::Response r = send(req, true);
      if (write_failed)
        return Error{ErrorKind::Io, c.describe() + ": cannot write " + partial.string() + ": " +
                                        std::strerror(errno)};
      if (range_mismatch)
        return Error{ErrorKind::InvalidResponse,
                     c.describe() + ": the server answered a Range request with the wrong bytes"};
      bool complete_2xx = r.transport_ok() && (r.status == 200 || r.status == 206);
      if ((complete_2xx || r.aborted_by_sink()) && pos >= end) return Ok{};
      if (complete_2xx && end == UINT64_MAX) return Ok{};
      if (r.transport_ok() && r.status == 416 && append_mode && !restarted_416) {
        // Our partial is not a prefix the server knows: drop it and start again once.
        restarted_416 = true;
        if (::ftruncate(fd, 0) != 0) return Error{ErrorKind::Io, "cannot truncate partial"};
        on_bytes(-static_cast<int64_t>(pos));
        pos = 0;
        if (sh) sh->reset();
        continue;
      }
      if (complete_2xx && pos < end) {
        // A body that ended early without a transport error: treat it as a cut connection.
        r.curl_code = 18;
        r.curl_error =
            "body ended after " + std::to_string(pos) + " of " + std::to_string(end) + " bytes";
      }
      bool progressed = pos > start_pos;
      no_progress = progressed ? 0 : no_progress + 1;
      bool again =
          (r.transport_ok() ? retryable_status(r.status) : retryable_transport(r.curl_code)) &&
          no_progress <= opt.max_retries && attempt < opt.max_retries + 100;
      if (!again) return error_from(r, c, opt.token.has_value());
      double d = progressed ? 0.0 : backoff(no_progress - 1, r.transport_ok() ? &r : nullptr);
      spdlog::warn("hub: download {}: {} at byte {}; resuming{}", c.describe(),
                   r.transport_ok() ? "HTTP " + std::to_string(r.status) : r.curl_error, pos,
                   d > 0 ? fmt::format(" in {:.1f}s", d) : std::string());
      sleep_s(d);
    }
  }

  // One file: partial -> verified (while streaming, else by reading it back) -> `commit(partial)`.
  // A hash mismatch deletes the partial and retries once. Returns bytes fetched.
  Result<uint64_t> fetch_file(const std::string& url, const fs::path& partial,
                              const st::Digest& digest, uint64_t size, const Ctx& c,
                              const std::function<st::Status(const fs::path&)>& commit,
                              std::atomic<uint64_t>& done, const ProgressFn& progress,
                              uint64_t total) const {
    uint64_t fetched = 0;
    auto on_bytes = [&](int64_t n) {
      fetched += static_cast<uint64_t>(std::max<int64_t>(n, 0));
      uint64_t v = done.fetch_add(static_cast<uint64_t>(n)) + static_cast<uint64_t>(n);
      if (progress) progress(v, total, c.file);
    };
    for (int round = 0; round < 2; ++round) {
      Result<Ok> got = Ok{};
      bool parallel = size >= opt.range_threshold && opt.parallel > 1;
      if (parallel) {
        // Parallel byte ranges into a separate temp (not resumable across runs; see docs).
        fs::path par = partial;
        par += ".parallel";
        std::error_code ec;
        fs::remove(par, ec);
        {
          int fd = ::open(par.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
          if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0) {
            if (fd >= 0) ::close(fd);
            return Error{ErrorKind::Io, c.describe() + ": cannot create " + par.string()};
          }
          ::close(fd);
        }
        int n = opt.parallel;
        uint64_t part = (size + static_cast<uint64_t>(n) - 1) / static_cast<uint64_t>(n);
        std::vector<std::optional<Error>> errs(static_cast<size_t>(n));
        std::mutex mu;
        std::vector<std::thread> threads;
        for (int i = 0; i < n; ++i) {
          uint64_t b = part * static_cast<uint64_t>(i), e = std::min(size, b + part);
          if (b >= e) continue;
          threads.emplace_back([&, i, b, e] {
            auto r = download_range(url, par, b, e, false, c, [&](int64_t k) {
              std::lock_guard<std::mutex> g(mu);
              on_bytes(k);
            });
            if (!r) errs[static_cast<size_t>(i)] = r.error();
          });
        }
        for (auto& t : threads) t.join();
        for (auto& e : errs)
          if (e) {
            fs::remove(par, ec);
            return *e;
          }
        fs::rename(par, partial, ec);
        if (ec) return Error{ErrorKind::Io, c.describe() + ": cannot rename " + par.string()};
      } else {
        StreamHash sh{digest, size, nullptr};
        got = download_range(url, partial, 0, size, true, c, on_bytes, &sh);
        if (!got) return got.error();
        std::error_code sec;
        uint64_t have = fs::file_size(partial, sec);
        std::string hex = sh.h->hex();
        if (!sec && have == size && hex == digest.hex) {
          auto m = commit(partial);  // verified while streaming
          if (!m) return from_storage(m.error(), c);
          return fetched;
        }
      }
      auto v = st::verify_file(partial, digest);
      if (v) {
        auto m = commit(partial);
        if (!m) return from_storage(m.error(), c);
        return fetched;
      }
      std::error_code ec;
      fs::remove(partial, ec);
      if (v.error().code == st::Errc::Io) return from_storage(v.error(), c);
      if (round == 0) {
        spdlog::warn("hub: {}: {}; deleted the partial, downloading again", c.describe(),
                     v.error().message);
        done.fetch_sub(size);
        continue;
      }
      return Error{ErrorKind::HashMismatch,
                   c.describe() + ": " + v.error().message + " (twice; the partial was deleted)"};
    }
    return Error{ErrorKind::HashMismatch, c.describe() + ": verification failed"};
  }
};

Client::Client(ClientOptions opt) : opt_(std::move(opt)) {
  while (!opt_.endpoint.empty() && opt_.endpoint.back() == '/') opt_.endpoint.pop_back();
  if (opt_.parallel < 1) opt_.parallel = 1;
}

Result<RepoInfo> Client::repo_info(const std::string& repo, const std::string& revision) {
  Ctx c{repo, revision, ""};
  if (auto p = st::repo_id_problem(repo))
    return Error{ErrorKind::BadRequest, "invalid repo id '" + repo + "': " + *p};
  Impl impl(opt_);
  http::Request req;
  req.url = impl.api(repo) + "/revision/" + http::escape_segment(revision);
  auto j = impl.call_json(req, c);
  if (!j) return j.error();
  try {
    RepoInfo info;
    const json& v = j.value();
    info.id = v.value("id", repo);
    info.sha = v.at("sha").get<std::string>();
    info.last_modified = v.value("lastModified", "");
    info.is_private = v.value("private", false);
    info.gated = v.contains("gated") && !(v["gated"].is_boolean() && !v["gated"].get<bool>());
    for (const auto& s : v.value("siblings", json::array()))
      info.siblings.push_back(s.at("rfilename").get<std::string>());
    if (!st::is_sha1_hex(info.sha))
      return Error{ErrorKind::InvalidResponse,
                   c.describe() + ": commit sha '" + info.sha + "' is not 40 hex digits"};
    return info;
  } catch (const std::exception& e) {
    return Error{ErrorKind::InvalidResponse, c.describe() + ": bad repo info: " + e.what()};
  }
}

Result<std::vector<TreeEntry>> Client::list_tree(const std::string& repo,
                                                 const std::string& revision, bool recursive,
                                                 const std::string& path) {
  Ctx c{repo, revision, path};
  Impl impl(opt_);
  std::string url = impl.api(repo) + "/tree/" + http::escape_segment(revision) +
                    (path.empty() ? "" : "/" + http::escape_path(path)) +
                    (recursive ? "?recursive=true" : "");
  std::vector<TreeEntry> out;
  std::set<std::string> seen_urls;
  while (true) {
    if (!seen_urls.insert(url).second)
      return Error{ErrorKind::InvalidResponse, c.describe() + ": tree pagination loops"};
    http::Request req;
    req.url = url;
    auto r = impl.call(req, c);
    if (!r) return r.error();
    try {
      auto j = json::parse(r.value().body);
      for (const auto& e : j) {
        TreeEntry t;
        t.type = e.at("type").get<std::string>();
        t.path = e.at("path").get<std::string>();
        t.oid = e.value("oid", "");
        t.size = e.value("size", uint64_t{0});
        if (e.contains("lfs") && e["lfs"].is_object()) {
          const auto& l = e["lfs"];
          t.lfs_sha256 =
              l.contains("oid") ? l["oid"].get<std::string>() : l.at("sha256").get<std::string>();
          t.size = l.value("size", t.size);
        }
        out.push_back(std::move(t));
      }
    } catch (const std::exception& e) {
      return Error{ErrorKind::InvalidResponse, c.describe() + ": bad tree listing: " + e.what()};
    }
    auto next = next_link(r.value().header("link"));
    if (!next) break;
    url = http::resolve_url(url, *next);
  }
  return out;
}

Result<FileMetadata> Client::file_metadata(const std::string& repo, const std::string& revision,
                                           const std::string& path) {
  Ctx c{repo, revision, path};
  if (opt_.offline) return Error{ErrorKind::Offline, c.describe() + ": HF_HUB_OFFLINE is set"};
  Impl impl(opt_);
  http::Request req;
  req.method = "HEAD";
  req.url = impl.resolve_url(repo, revision, path);
  req.headers.push_back("Accept-Encoding: identity");
  req.total_timeout_s = opt_.api_timeout_s;
  for (int attempt = 0;; ++attempt) {
    std::string final_url;
    http::Response r = impl.send(req, true, false, &final_url);
    bool redirected = r.transport_ok() && r.status >= 300 && r.status < 400;
    if (r.transport_ok() && ((r.status >= 200 && r.status < 300) || redirected)) {
      FileMetadata m;
      m.commit = trim(r.header("x-repo-commit"));
      std::string linked = r.header("x-linked-etag");
      m.etag = unquote_etag(linked.empty() ? r.header("etag") : linked);
      std::string sz = r.header("x-linked-size");
      if (sz.empty()) sz = r.header("content-length");
      m.size = std::strtoull(sz.c_str(), nullptr, 10);
      m.location = final_url;
      if (m.etag.empty())
        return Error{ErrorKind::InvalidResponse, c.describe() + ": no ETag in the response"};
      return m;
    }
    bool again = attempt < opt_.max_retries &&
                 (r.transport_ok() ? retryable_status(r.status) : retryable_transport(r.curl_code));
    if (!again) return error_from(r, c, opt_.token.has_value());
    impl.sleep_s(impl.backoff(attempt, r.transport_ok() ? &r : nullptr));
  }
}

Result<SnapshotResult> Client::snapshot_download(const SnapshotRequest& sr,
                                                 const ProgressFn& progress) {
  Ctx c{sr.repo, sr.revision, ""};
  if (auto p = st::repo_id_problem(sr.repo))
    return Error{ErrorKind::BadRequest, "invalid repo id '" + sr.repo + "': " + *p};
  if (sr.store.has_value() == sr.local_dir.has_value())
    return Error{ErrorKind::BadRequest, "give exactly one of a store and a local dir"};
  Impl impl(opt_);
  std::optional<st::Store> store;
  if (sr.store) store.emplace(*sr.store);

  if (opt_.offline) {
    if (!store)
      return Error{ErrorKind::Offline, c.describe() +
                                           ": HF_HUB_OFFLINE is set and a local dir cannot be "
                                           "resolved offline"};
    auto commit = store->resolve(sr.repo, sr.revision);
    if (!commit)
      return Error{ErrorKind::Offline,
                   c.describe() + ": HF_HUB_OFFLINE is set and the store has no such snapshot"};
    SnapshotResult res;
    res.commit = *commit;
    res.dir = store->snapshot_dir(sr.repo, *commit);
    auto files = store->list_snapshot(sr.repo, *commit);
    if (files) res.files = files.value().size();
    return res;
  }

  // 1. revision -> commit; 2. the tree at that commit.
  auto info = repo_info(sr.repo, sr.revision);
  if (!info) return info.error();
  const std::string commit = info.value().sha;
  auto tree = list_tree(sr.repo, commit, true);
  if (!tree) return tree.error();

  // 3. Every upstream name is validated before anything touches the disk.
  std::vector<TreeEntry> files;
  for (auto& e : tree.value()) {
    if (auto p = st::path_problem(e.path))
      return Error{ErrorKind::UnsafePath, c.describe() + ": the repo lists an unsafe file name '" +
                                              e.path + "' (" + *p + "); refusing the repo"};
    if (e.type != "file") continue;
    bool etag_ok = e.lfs_sha256 ? st::is_sha256_hex(*e.lfs_sha256) : st::is_sha1_hex(e.oid);
    if (!etag_ok)
      return Error{ErrorKind::InvalidResponse,
                   c.describe() + ": file '" + e.path + "' has no valid oid in the tree listing"};
    if (st::path_selected(e.path, sr.allow, sr.ignore)) files.push_back(std::move(e));
  }

  SnapshotResult res;
  res.commit = commit;
  res.files = files.size();
  fs::path local_cache;
  if (sr.local_dir) {
    res.dir = *sr.local_dir;
    local_cache = *sr.local_dir / ".cache" / "huggingface" / "download";
  } else {
    res.dir = store->snapshot_dir(sr.repo, commit);
  }

  // 4. What is missing, and is there room for it?
  struct Job {
    const TreeEntry* e;
    fs::path partial;
  };
  std::vector<Job> jobs;
  uint64_t need = 0;
  std::set<std::string> queued;  // one download per blob, even when paths share content
  for (const auto& e : files) {
    if (store) {
      if (store->has_blob(sr.repo, e.etag()) || !queued.insert(e.etag()).second) continue;
      jobs.push_back({&e, store->incomplete_path(sr.repo, e.etag())});
    } else {
      fs::path dst = *sr.local_dir / e.path;
      fs::path meta = local_cache / (e.path + ".metadata");
      std::ifstream mf(meta);
      std::string mcommit, metag;
      std::error_code ec;
      if (mf && std::getline(mf, mcommit) && std::getline(mf, metag) && metag == e.etag() &&
          fs::is_regular_file(dst, ec) && fs::file_size(dst, ec) == e.size)
        continue;
      jobs.push_back({&e, local_cache / (e.path + "." + e.etag() + ".incomplete")});
    }
    need += e.size;
  }
  fs::path space_dir = store ? *sr.store : *sr.local_dir;
  {
    std::error_code ec;
    fs::create_directories(space_dir, ec);
    if (ec)
      return Error{ErrorKind::Io, "cannot create " + space_dir.string() + ": " + ec.message()};
  }
  uint64_t have_partial = 0;
  for (const auto& j : jobs) {
    std::error_code ec;
    auto sz = fs::file_size(j.partial, ec);
    if (!ec) have_partial += std::min<uint64_t>(sz, j.e->size);
  }
  if (auto s = st::check_space(space_dir, need - have_partial, opt_.disk_reserve); !s)
    return from_storage(s.error(), c);

  // 5. Download: small files on a pool of `parallel` workers, then large files one at a time
  // in `parallel` byte ranges.
  std::atomic<uint64_t> done{have_partial};
  std::atomic<uint64_t> bytes{0};
  std::atomic<size_t> downloaded{0};
  std::mutex err_mu;
  std::optional<Error> first_error;
  auto run_job = [&](const Job& j) {
    const TreeEntry& e = *j.e;
    Ctx fc{sr.repo, sr.revision, e.path};
    st::Digest d =
        e.lfs_sha256 ? st::Digest::lfs(*e.lfs_sha256, e.size) : st::Digest::git(e.oid, e.size);
    std::error_code ec;
    fs::create_directories(j.partial.parent_path(), ec);
    std::function<st::Status(const fs::path&)> commit_fn;
    if (store) {
      // fetch_file calls this only with a verified partial.
      commit_fn = [&](const fs::path& p) { return store->install_blob(sr.repo, p, d.hex); };
    } else {
      commit_fn = [&](const fs::path& p) -> st::Status {
        fs::path dst = *sr.local_dir / e.path;
        std::error_code ec2;
        fs::create_directories(dst.parent_path(), ec2);
        if (::rename(p.c_str(), dst.c_str()) != 0)
          return st::Error{st::Errc::Io, "cannot move into " + dst.string()};
        // huggingface_hub's local_dir metadata: commit, etag, timestamp.
        fs::path meta = local_cache / (e.path + ".metadata");
        fs::create_directories(meta.parent_path(), ec2);
        auto now =
            std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
                .count();
        std::ofstream(meta) << commit << "\n" << e.etag() << "\n" << std::fixed << now << "\n";
        return st::ok_status();
      };
    }
    auto r = impl.fetch_file(impl.resolve_url(sr.repo, commit, e.path), j.partial, d, e.size, fc,
                             commit_fn, done, progress, need);
    if (!r) {
      std::lock_guard<std::mutex> g(err_mu);
      if (!first_error) first_error = r.error();
      return;
    }
    bytes += r.value();
    ++downloaded;
  };
  std::vector<const Job*> small, large;
  for (const auto& j : jobs)
    (j.e->size >= opt_.range_threshold && opt_.parallel > 1 ? large : small).push_back(&j);
  {
    std::atomic<size_t> next{0};
    std::vector<std::thread> pool;
    int n = std::min<int>(opt_.parallel, static_cast<int>(small.size()));
    for (int i = 0; i < n; ++i)
      pool.emplace_back([&] {
        for (size_t k; (k = next++) < small.size();) {
          {
            std::lock_guard<std::mutex> g(err_mu);
            if (first_error) return;
          }
          run_job(*small[k]);
        }
      });
    for (auto& t : pool) t.join();
  }
  for (const Job* j : large) {
    if (first_error) break;
    run_job(*j);
  }
  if (first_error) return *first_error;

  // 6. Link the snapshot and write the ref only once every file is in place.
  if (store) {
    for (const auto& e : files) {
      auto l = store->link_file(sr.repo, commit, e.path, e.etag());
      if (!l) return from_storage(l.error(), c);
    }
    std::error_code ec;
    fs::create_directories(res.dir, ec);  // an empty selection still has a snapshot dir
    if (sr.revision != commit) {
      auto w = store->write_ref(sr.repo, sr.revision, commit);
      if (!w) return from_storage(w.error(), c);
    }
  }
  res.bytes = bytes;
  res.downloaded = downloaded;
  return res;
}

// ---- write side ----

// Both return true when they made the repo/branch, false when it was there already (409).
Result<bool> Client::Impl::create_repo(const std::string& repo, bool is_private) const {
  Ctx c{repo, "", ""};
  if (auto p = st::repo_id_problem(repo))
    return Error{ErrorKind::BadRequest, "invalid repo id '" + repo + "': " + *p};
  http::Request req;
  req.method = "POST";
  req.url = opt.endpoint + "/api/repos/create";
  req.headers.push_back("Content-Type: application/json");
  auto slash = repo.find('/');
  json body = {{"name", slash == std::string::npos ? repo : repo.substr(slash + 1)},
               {"private", is_private},
               {"type", "model"}};
  if (slash != std::string::npos) body["organization"] = repo.substr(0, slash);
  req.body = body.dump();
  auto r = call(req, c);
  if (!r && r.error().http_status == 409) return false;
  if (!r) return r.error();
  return true;
}

Result<bool> Client::Impl::create_branch(const std::string& repo, const std::string& branch,
                                         const std::string& from) const {
  Ctx c{repo, branch, ""};
  http::Request req;
  req.method = "POST";
  req.url = api(repo) + "/branch/" + http::escape_segment(branch);
  req.headers.push_back("Content-Type: application/json");
  req.body = json{{"startingPoint", from}}.dump();
  auto r = call(req, c);
  if (!r && r.error().http_status == 409) return false;
  if (!r) return r.error();
  return true;
}

Result<Ok> Client::create_repo(const std::string& repo, bool is_private) {
  auto r = Impl(opt_).create_repo(repo, is_private);
  if (!r) return r.error();
  return Ok{};
}

Result<Ok> Client::create_branch(const std::string& repo, const std::string& branch,
                                 const std::string& from) {
  auto r = Impl(opt_).create_branch(repo, branch, from);
  if (!r) return r.error();
  return Ok{};
}

Result<CommitInfo> Client::upload_folder(const PublishRequest& pr, const ProgressFn& progress) {
  Ctx c{pr.repo, pr.branch, ""};
  Impl impl(opt_);
  if (opt_.offline) return Error{ErrorKind::Offline, c.describe() + ": HF_HUB_OFFLINE is set"};
  if (!opt_.token)
    return Error{ErrorKind::Unauthorized,
                 c.describe() + ": publishing needs a token (HF_TOKEN or $HF_HOME/token)"};
  std::error_code ec;
  if (!fs::is_directory(pr.dir, ec))
    return Error{ErrorKind::Io, "not a directory: " + pr.dir.string()};

  // Local files (regular files and links to them; .git and .cache/huggingface skipped).
  struct Local {
    std::string path;
    fs::path file;
    uint64_t size = 0;
    std::string sha256, sample;
    bool lfs = false;
  };
  std::vector<Local> locals;
  for (auto it = fs::recursive_directory_iterator(
           pr.dir, fs::directory_options::follow_directory_symlink, ec);
       !ec && it != fs::end(it); it.increment(ec)) {
    std::string rel = it->path().lexically_relative(pr.dir).generic_string();
    if (it->is_directory() && (rel == ".git" || rel == ".cache")) {
      it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file()) continue;
    if (auto p = st::path_problem(rel))
      return Error{ErrorKind::UnsafePath, "cannot publish '" + rel + "': " + *p};
    Local l{rel, it->path(), it->file_size(), "", "", false};
    locals.push_back(std::move(l));
  }
  if (ec) return Error{ErrorKind::Io, "cannot list " + pr.dir.string() + ": " + ec.message()};
  std::sort(locals.begin(), locals.end(), [](auto& a, auto& b) { return a.path < b.path; });
  uint64_t total = 0;
  for (auto& l : locals) {
    auto h = st::hash_file(l.file, st::HashAlgo::Sha256);
    if (!h) return from_storage(h.error(), c);
    l.sha256 = h.value();
    std::ifstream f(l.file, std::ios::binary);
    l.sample.resize(512);
    f.read(l.sample.data(), 512);
    l.sample.resize(static_cast<size_t>(f.gcount()));
    total += l.size;
  }

  // Repo and branch. One made here is new, so the publish is never "unchanged".
  auto made_repo = impl.create_repo(pr.repo, pr.is_private);
  if (!made_repo) return made_repo.error();
  bool fresh = made_repo.value();
  auto info = repo_info(pr.repo, pr.branch);
  if (!info && info.error().kind == ErrorKind::RevisionNotFound) {
    if (auto b = impl.create_branch(pr.repo, pr.branch); !b) return b.error();
    fresh = true;
    info = repo_info(pr.repo, pr.branch);
  }
  if (!info) return info.error();
  const std::string parent = info.value().sha;

  // The branch as it is: files that the dir lacks are deleted, and when every local file is
  // already there with the same content and nothing is to be deleted, no commit is made.
  std::vector<std::string> deletions;
  bool unchanged = !fresh;
  if (!fresh || pr.delete_missing) {
    auto tree = list_tree(pr.repo, parent, true);
    if (!tree) return tree.error();
    std::map<std::string, const TreeEntry*> remote;
    for (const auto& e : tree.value())
      if (e.type == "file") remote[e.path] = &e;
    if (pr.delete_missing) {
      std::set<std::string> have;
      for (const auto& l : locals) have.insert(l.path);
      for (const auto& [path, e] : remote)
        // .gitattributes (the Hub's LFS rules, made with the repo) is kept unless DIR has one.
        if (!have.count(path) && path != ".gitattributes") deletions.push_back(path);
    }
    unchanged = unchanged && deletions.empty();
    for (size_t i = 0; unchanged && i < locals.size(); ++i) {
      const Local& l = locals[i];
      auto it = remote.find(l.path);
      if (it == remote.end() || it->second->size != l.size) {
        unchanged = false;
      } else if (it->second->lfs_sha256) {
        unchanged = same_hex(*it->second->lfs_sha256, l.sha256);
      } else {
        auto h = st::hash_file(l.file, st::HashAlgo::Sha1, true);  // git blob sha1
        if (!h) return from_storage(h.error(), c);
        unchanged = same_hex(it->second->oid, h.value());
      }
    }
  }
  if (unchanged) {
    CommitInfo out;
    out.commit_oid = parent;
    out.commit_url = opt_.endpoint + "/" + pr.repo + "/commit/" + parent;
    out.files = locals.size();
    out.skipped = true;
    spdlog::info("hub: {}: every file is unchanged at commit {}; no commit made", c.describe(),
                 parent);
    if (progress) progress(total, total, "");
    return out;
  }

  // Preupload: which files go to LFS.
  for (size_t i = 0; i < locals.size(); i += 100) {
    json files = json::array();
    for (size_t k = i; k < std::min(locals.size(), i + 100); ++k)
      files.push_back({{"path", locals[k].path},
                       {"sample", st::base64_encode(locals[k].sample)},
                       {"size", locals[k].size}});
    http::Request req;
    req.method = "POST";
    req.url = impl.api(pr.repo) + "/preupload/" + http::escape_segment(pr.branch);
    req.headers.push_back("Content-Type: application/json");
    req.body = json{{"files", files}}.dump();
    auto j = impl.call_json(req, c);
    if (!j) return j.error();
    std::map<std::string, bool> mode;
    for (const auto& f : j.value().value("files", json::array()))
      mode[f.value("path", "")] = f.value("uploadMode", "regular") == "lfs";
    for (size_t k = i; k < std::min(locals.size(), i + 100); ++k)
      locals[k].lfs = mode.count(locals[k].path) ? mode[locals[k].path] : false;
  }

  // LFS uploads.
  CommitInfo out;
  std::atomic<uint64_t> done{0};
  std::vector<const Local*> lfs;
  for (const auto& l : locals)
    if (l.lfs) lfs.push_back(&l);
  for (size_t i = 0; i < lfs.size(); i += 100) {
    json objs = json::array();
    std::map<std::string, const Local*> by_oid;
    for (size_t k = i; k < std::min(lfs.size(), i + 100); ++k) {
      if (by_oid.emplace(lfs[k]->sha256, lfs[k]).second)  // identical files: one object
        objs.push_back({{"oid", lfs[k]->sha256}, {"size", lfs[k]->size}});
    }
    http::Request req;
    req.method = "POST";
    req.url = opt_.endpoint + "/" + pr.repo + ".git/info/lfs/objects/batch";
    req.headers = {"Content-Type: application/vnd.git-lfs+json",
                   "Accept: application/vnd.git-lfs+json"};
    req.body = json{{"operation", "upload"},
                    {"transfers", {"basic", "multipart"}},
                    {"objects", objs},
                    {"hash_algo", "sha256"},
                    {"ref", {{"name", "refs/heads/" + pr.branch}}}}
                   .dump();
    auto batch = impl.call_json(req, c);
    if (!batch) return batch.error();
    for (const auto& o : batch.value().value("objects", json::array())) {
      std::string oid = o.value("oid", "");
      auto it = by_oid.find(oid);
      if (it == by_oid.end())
        return Error{ErrorKind::InvalidResponse,
                     c.describe() + ": LFS batch answered an unknown oid"};
      const Local& l = *it->second;
      Ctx fc{pr.repo, pr.branch, l.path};
      if (o.contains("error"))
        return Error{ErrorKind::BadRequest, fc.describe() + ": LFS batch refused the object: " +
                                                o["error"].value("message", o["error"].dump())};
      if (!o.contains("actions") || !o["actions"].contains("upload")) {
        done += l.size;  // already stored
        if (progress) progress(done, total, l.path);
        continue;
      }
      const auto& up = o["actions"]["upload"];
      std::string href = up.at("href").get<std::string>();
      json header = up.value("header", json::object());
      std::vector<std::string> hdrs;
      std::map<uint64_t, std::string> parts;
      std::optional<uint64_t> chunk;
      for (auto& [k, v] : header.items()) {
        if (k == "chunk_size") {
          chunk = v.is_string() ? std::stoull(v.get<std::string>()) : v.get<uint64_t>();
        } else if (!k.empty() && std::all_of(k.begin(), k.end(), ::isdigit)) {
          parts[std::stoull(k)] = v.get<std::string>();
        } else if (v.is_string()) {
          hdrs.push_back(k + ": " + v.get<std::string>());
        }
      }
      // Upload URLs are presigned: our token goes there only when it is the endpoint's host.
      if (chunk && !parts.empty()) {
        json done_parts = json::array();
        for (auto& [num, url] : parts) {
          uint64_t off = (num - 1) * *chunk;
          if (off >= l.size)
            return Error{ErrorKind::InvalidResponse,
                         fc.describe() + ": multipart part out of range"};
          http::Request put;
          put.method = "PUT";
          put.url = url;
          put.upload_file = l.file;
          put.upload_offset = off;
          put.upload_length = std::min(*chunk, l.size - off);
          auto r = impl.call(put, fc, false);
          if (!r) return r.error();
          done_parts.push_back(
              {{"partNumber", num}, {"etag", unquote_etag(r.value().header("etag"))}});
          done += put.upload_length;
          out.bytes_uploaded += put.upload_length;
          if (progress) progress(done, total, l.path);
        }
        http::Request fin;
        fin.method = "POST";
        fin.url = href;
        fin.headers = {"Content-Type: application/vnd.git-lfs+json",
                       "Accept: application/vnd.git-lfs+json"};
        fin.body = json{{"oid", oid}, {"parts", done_parts}}.dump();
        auto r = impl.call(fin, fc, false);
        if (!r) return r.error();
      } else {
        http::Request put;
        put.method = "PUT";
        put.url = href;
        put.headers = hdrs;
        put.headers.push_back("Content-Type: application/octet-stream");
        put.upload_file = l.file;
        put.upload_length = l.size;
        put.total_timeout_s = -1;
        auto r = impl.call(put, fc, false);
        if (!r) return r.error();
        done += l.size;
        out.bytes_uploaded += l.size;
        if (progress) progress(done, total, l.path);
      }
      if (o["actions"].contains("verify")) {
        const auto& ver = o["actions"]["verify"];
        http::Request vr;
        vr.method = "POST";
        vr.url = ver.at("href").get<std::string>();
        vr.headers = {"Content-Type: application/vnd.git-lfs+json",
                      "Accept: application/vnd.git-lfs+json"};
        json ver_header = ver.value("header", json::object());
        for (auto& [k, v] : ver_header.items())
          if (v.is_string()) vr.headers.push_back(k + ": " + v.get<std::string>());
        vr.body = json{{"oid", oid}, {"size", l.size}}.dump();
        auto r = impl.call(vr, fc, http::origin_of(vr.url) == impl.origin);
        if (!r) return r.error();
      }
      ++out.lfs_uploaded;
    }
  }

  // One NDJSON commit.
  std::string nd;
  nd += json{{"key", "header"},
             {"value",
              {{"summary", pr.summary.empty() ? "Upload with loftqd" : pr.summary},
               {"description", pr.description},
               {"parentCommit", parent}}}}
            .dump() +
        "\n";
  for (const auto& l : locals) {
    if (l.lfs) {
      nd += json{{"key", "lfsFile"},
                 {"value",
                  {{"path", l.path}, {"algo", "sha256"}, {"oid", l.sha256}, {"size", l.size}}}}
                .dump() +
            "\n";
    } else {
      std::string content;
      try {
        content = common::read_file(l.file);
      } catch (const std::exception& e) {
        return Error{ErrorKind::Io, e.what()};
      }
      nd +=
          json{
              {"key", "file"},
              {"value",
               {{"path", l.path}, {"content", st::base64_encode(content)}, {"encoding", "base64"}}}}
              .dump() +
          "\n";
      done += l.size;
      out.bytes_uploaded += l.size;
    }
  }
  for (const auto& d : deletions)
    nd += json{{"key", "deletedFile"}, {"value", {{"path", d}}}}.dump() + "\n";
  http::Request req;
  req.method = "POST";
  req.url = impl.api(pr.repo) + "/commit/" + http::escape_segment(pr.branch);
  req.headers.push_back("Content-Type: application/x-ndjson");
  req.body = std::move(nd);
  // Not retried on 5xx: the parentCommit guard turns a duplicate into a 412 rather than a
  // second commit, but a clear failure is better than a guess.
  auto j = impl.call_json(req, c, false);
  if (!j) return j.error();
  out.commit_oid = j.value().value("commitOid", "");
  out.commit_url = j.value().value("commitUrl", "");
  out.files = locals.size();
  out.deleted = deletions.size();
  if (progress) progress(total, total, "");
  return out;
}

}  // namespace loftqd::hub
