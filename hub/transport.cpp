// The request side of the Hub client: typed errors, retries, redirects, JSON and pagination.
#include "hub/transport.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <set>
#include <thread>

#include "common/ids.h"
#include "common/strings.h"

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

namespace detail {

namespace st = loftqd::storage;

namespace {

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

// The server's own words: X-Error-Message, else a JSON "error", else the body's start.
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

// The Hub's X-Error-Code, when it names the missing thing; nullopt otherwise.
std::optional<Error> error_from_code(const http::Response& r, const Ctx& c, bool had_token,
                                     const std::string& detail) {
  std::string code = trim(r.header("x-error-code"));
  if (code == "RepoNotFound")
    return Error{ErrorKind::RepoNotFound,
                 "repository '" + c.repo + "' not found" +
                     (had_token ? "" : " (if it is private or gated, set HF_TOKEN)") + detail,
                 r.status};
  if (code == "RevisionNotFound")
    return Error{ErrorKind::RevisionNotFound,
                 "revision '" + c.revision + "' not found in repo '" + c.repo + "'" + detail,
                 r.status};
  if (code == "EntryNotFound")
    return Error{ErrorKind::EntryNotFound,
                 "file '" + c.file + "' not found in repo '" + c.repo + "' at revision '" +
                     c.revision + "'" + detail,
                 r.status};
  if (code == "GatedRepo")
    return Error{
        ErrorKind::GatedRepo,
        "repo '" + c.repo + "' is gated: request access on the Hub and authenticate" + detail,
        r.status};
  return std::nullopt;
}

// The error for an HTTP status without a (known) X-Error-Code.
Error error_from_status(const http::Response& r, const Ctx& c, bool had_token,
                        const std::string& detail) {
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

// A uniform number in [0, 1) for backoff jitter (not for secrets: see common::random_hex).
double jitter01() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

bool is_redirect(const http::Response& r) {
  return r.transport_ok() &&
         (r.status == 301 || r.status == 302 || r.status == 303 || r.status == 307 ||
          r.status == 308) &&
         !r.header("location").empty();
}

}  // namespace

std::string Ctx::describe() const {
  std::string s = "repo '" + repo + "'";
  if (!revision.empty()) s += ", revision '" + revision + "'";
  if (!file.empty()) s += ", file '" + file + "'";
  return s;
}

std::optional<Error> check_repo_id(const std::string& repo) {
  if (auto p = common::repo_id_problem(repo))
    return Error{ErrorKind::BadRequest, common::repo_id_error(repo)};
  return std::nullopt;
}

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

Error error_from(const http::Response& r, const Ctx& c, bool had_token) {
  if (!r.transport_ok()) {
    ErrorKind k = r.timed_out() ? ErrorKind::Timeout : ErrorKind::Network;
    return {k, c.describe() + ": " + (r.timed_out() ? "timed out: " : "network error: ") +
                   r.curl_error};
  }
  std::string msg = server_message(r);
  std::string detail = " (HTTP " + std::to_string(r.status) + (msg.empty() ? "" : ": " + msg) + ")";
  if (auto e = error_from_code(r, c, had_token, detail)) return *e;
  return error_from_status(r, c, had_token, detail);
}

bool retryable(const http::Response& r) {
  return r.transport_ok() ? retryable_status(r.status) : retryable_transport(r.curl_code);
}

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

std::string unquote_etag(std::string e) {
  e = trim(e);
  if (e.rfind("W/", 0) == 0) e = e.substr(2);
  if (e.size() >= 2 && e.front() == '"' && e.back() == '"') e = e.substr(1, e.size() - 2);
  return e;
}

// ---- Transport ----

Transport::Transport(const ClientOptions& o) : opt(o), origin(http::origin_of(o.endpoint)) {}

std::string Transport::api(const std::string& repo) const {
  return opt.endpoint + "/api/models/" + repo;
}

std::string Transport::resolve_url(const std::string& repo, const std::string& rev,
                                   const std::string& path) const {
  return opt.endpoint + "/" + repo + "/resolve/" + common::escape_segment(rev) + "/" +
         common::escape_path(path);
}

Error Transport::error(const http::Response& r, const Ctx& c) const {
  return error_from(r, c, opt.token.has_value());
}

double Transport::backoff(int attempt, const http::Response* r) const {
  if (r) {
    if (auto d = server_delay(*r)) return std::min(*d, opt.max_retry_after_s);
  }
  double d = std::min(opt.backoff_cap_s, opt.backoff_base_s * std::pow(2.0, attempt));
  return d * (0.5 + 0.5 * jitter01());  // "equal jitter": never less than half the step
}

void Transport::sleep_s(double s) const {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point until =
      Clock::now() +
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(std::max(0.0, s)));
  // In slices, so that a cancel (ClientOptions::cancel) ends a backoff too.
  while (!(opt.cancel && opt.cancel->load())) {
    const Clock::duration left = until - Clock::now();
    if (left <= Clock::duration::zero()) return;
    std::this_thread::sleep_for(std::min<Clock::duration>(left, std::chrono::milliseconds(100)));
  }
}

http::Response Transport::send(http::Request req, bool auth, bool follow_cross_host,
                               std::string* final_url) const {
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
    if (req.upload_file) req.max_send_bytes_per_s = opt.max_send_bytes_per_s;
    req.cancel = opt.cancel;
    http::Response r = http::perform(req);
    if (!is_redirect(r)) {
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

Result<http::Response> Transport::call(http::Request req, const Ctx& c, bool auth,
                                       bool retry) const {
  if (opt.offline)
    return Error{ErrorKind::Offline, c.describe() + ": HF_HUB_OFFLINE is set, no network"};
  if (req.total_timeout_s == 0) req.total_timeout_s = opt.api_timeout_s;
  for (int attempt = 0;; ++attempt) {
    http::Response r = send(req, auth);
    bool ok = r.transport_ok() && r.status >= 200 && r.status < 300;
    if (ok) return r;
    bool again = retry && attempt < opt.max_retries && retryable(r);
    if (!again) return error(r, c);
    double d = backoff(attempt, r.transport_ok() ? &r : nullptr);
    spdlog::warn("hub: {} {} -> {}; retry {}/{} in {:.1f}s", req.method, c.describe(),
                 r.transport_ok() ? "HTTP " + std::to_string(r.status) : r.curl_error, attempt + 1,
                 opt.max_retries, d);
    sleep_s(d);
  }
}

Result<json> Transport::call_json(http::Request req, const Ctx& c, bool retry) const {
  auto r = call(std::move(req), c, true, retry);
  if (!r) return r.error();
  try {
    return json::parse(r.value().body);
  } catch (const std::exception& e) {
    return Error{ErrorKind::InvalidResponse,
                 c.describe() + ": the server sent invalid JSON: " + e.what()};
  }
}

Result<Ok> Transport::get_pages(
    std::string url, const Ctx& c,
    const std::function<Result<Ok>(const std::string& body)>& on_page) const {
  std::set<std::string> seen_urls;
  while (true) {
    if (!seen_urls.insert(url).second)
      return Error{ErrorKind::InvalidResponse, c.describe() + ": tree pagination loops"};
    http::Request req;
    req.url = url;
    auto r = call(req, c);
    if (!r) return r.error();
    if (auto p = on_page(r.value().body); !p) return p.error();
    auto next = next_link(r.value().header("link"));
    if (!next) return Ok{};
    url = http::resolve_url(url, *next);
  }
}

}  // namespace detail
}  // namespace loftqd::hub
