#include "hub/http.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <mutex>
#include <stdexcept>

namespace loftqd::hub::http {

namespace {

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// One easy handle per thread, reset between requests, so connections are reused.
struct Handle {
  CURL* h = nullptr;
  Handle() {
    global_init();
    h = curl_easy_init();
    if (!h) throw std::runtime_error("curl_easy_init failed");
  }
  ~Handle() { curl_easy_cleanup(h); }
};

CURL* thread_handle() {
  thread_local Handle handle;
  curl_easy_reset(handle.h);
  return handle.h;
}

struct Ctx {
  const Request* req;
  Response* res;
  CURL* curl;
  bool headers_done = false;
  bool sink_aborted = false;
  int fd = -1;
  uint64_t upload_left = 0;
};

void finish_headers(Ctx& c) {
  if (c.headers_done) return;
  c.headers_done = true;
  long code = 0;
  curl_easy_getinfo(c.curl, CURLINFO_RESPONSE_CODE, &code);
  c.res->status = static_cast<int>(code);
  if (c.req->on_headers) c.req->on_headers(c.res->status, c.res->headers);
}

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto& c = *static_cast<Ctx*>(user);
  std::string line(data, size * n);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  if (line.rfind("HTTP/", 0) == 0) {  // a new response (e.g. after 100 Continue)
    c.res->headers.clear();
    c.headers_done = false;
    return size * n;
  }
  if (line.empty()) {
    long code = 0;
    curl_easy_getinfo(c.curl, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 200 || code == 0) finish_headers(c);
    return size * n;
  }
  auto colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    size_t v = colon + 1;
    while (v < line.size() && (line[v] == ' ' || line[v] == '\t')) ++v;
    c.res->headers.emplace(name, line.substr(v));
  }
  return size * n;
}

size_t on_body(char* data, size_t size, size_t n, void* user) {
  auto& c = *static_cast<Ctx*>(user);
  finish_headers(c);
  size_t len = size * n;
  if (c.req->sink && c.res->status >= 200 && c.res->status < 300) {
    if (!c.req->sink(data, len)) {
      c.sink_aborted = true;
      return 0;  // CURLE_WRITE_ERROR
    }
    return len;
  }
  if (c.res->body.size() < (size_t{16} << 20) || !c.req->sink) c.res->body.append(data, len);
  return len;
}

size_t on_read(char* buf, size_t size, size_t n, void* user) {
  auto& c = *static_cast<Ctx*>(user);
  size_t want = std::min<uint64_t>(size * n, c.upload_left);
  if (want == 0) return 0;
  ssize_t r = ::read(c.fd, buf, want);
  if (r < 0) return CURL_READFUNC_ABORT;
  c.upload_left -= static_cast<uint64_t>(r);
  return static_cast<size_t>(r);
}

}  // namespace

std::string Response::header(const std::string& lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

bool Response::timed_out() const {
  return curl_code == CURLE_OPERATION_TIMEDOUT;
}
bool Response::aborted_by_sink() const {
  return curl_code == CURLE_WRITE_ERROR;
}

namespace {

// CURLOPT_XFERINFOFUNCTION: libcurl calls it about once a second even when no byte moves.
int on_progress(void* cancel, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<const std::atomic<bool>*>(cancel)->load() ? 1 : 0;
}

}  // namespace

Response perform(const Request& req) {
  Response res;
  if (req.cancel && req.cancel->load()) {
    res.curl_code = CURLE_ABORTED_BY_CALLBACK;
    res.curl_error = "cancelled";
    return res;
  }
  CURL* curl = thread_handle();
  Ctx ctx{&req, &res, curl};
  curl_slist* hdrs = nullptr;
  for (const auto& h : req.headers) hdrs = curl_slist_append(hdrs, h.c_str());
  hdrs = curl_slist_append(hdrs, "Expect:");  // no 100-continue round trip
  curl_easy_setopt(curl, CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, req.connect_timeout_s);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, req.stall_timeout_s);
  if (req.total_timeout_s > 0) curl_easy_setopt(curl, CURLOPT_TIMEOUT, req.total_timeout_s);
  if (req.max_recv_bytes_per_s > 0)
    curl_easy_setopt(curl, CURLOPT_MAX_RECV_SPEED_LARGE,
                     static_cast<curl_off_t>(req.max_recv_bytes_per_s));
  if (req.max_send_bytes_per_s > 0)
    curl_easy_setopt(curl, CURLOPT_MAX_SEND_SPEED_LARGE,
                     static_cast<curl_off_t>(req.max_send_bytes_per_s));
  if (req.cancel) {  // (thread_handle()'s reset leaves progress callbacks off otherwise)
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, const_cast<std::atomic<bool>*>(req.cancel));
  }
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &ctx);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &ctx);
  if (req.method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (req.method == "POST" || req.method == "PUT") {
    if (req.upload_file) {
      ctx.fd = ::open(req.upload_file->c_str(), O_RDONLY | O_CLOEXEC);
      if (ctx.fd < 0) {
        curl_slist_free_all(hdrs);
        res.curl_code = CURLE_READ_ERROR;
        res.curl_error = "cannot open " + req.upload_file->string();
        return res;
      }
      ::lseek(ctx.fd, static_cast<off_t>(req.upload_offset), SEEK_SET);
      ctx.upload_left = req.upload_length;
      curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(curl, CURLOPT_READFUNCTION, on_read);
      curl_easy_setopt(curl, CURLOPT_READDATA, &ctx);
      curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req.upload_length));
      if (req.method == "POST") curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "POST");
    } else {
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, req.body.data());
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
      if (req.method == "PUT") curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "PUT");
    }
  } else if (req.method != "GET") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
  CURLcode rc = curl_easy_perform(curl);
  finish_headers(ctx);
  long code = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
  res.status = static_cast<int>(code);
  res.curl_code = rc;
  if (rc != CURLE_OK) res.curl_error = errbuf[0] ? errbuf : curl_easy_strerror(rc);
  if (ctx.fd >= 0) ::close(ctx.fd);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, nullptr);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, nullptr);
  curl_slist_free_all(hdrs);
  return res;
}

std::string resolve_url(const std::string& base, const std::string& location) {
  global_init();
  CURLU* u = curl_url();
  std::string out = location;
  if (curl_url_set(u, CURLUPART_URL, base.c_str(), 0) == CURLUE_OK &&
      curl_url_set(u, CURLUPART_URL, location.c_str(), 0) == CURLUE_OK) {
    char* s = nullptr;
    if (curl_url_get(u, CURLUPART_URL, &s, 0) == CURLUE_OK) {
      out = s;
      curl_free(s);
    }
  }
  curl_url_cleanup(u);
  return out;
}

std::string origin_of(const std::string& url) {
  global_init();
  CURLU* u = curl_url();
  std::string out;
  if (curl_url_set(u, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK) {
    char *scheme = nullptr, *host = nullptr, *port = nullptr;
    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    curl_url_get(u, CURLUPART_HOST, &host, 0);
    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT);
    out = std::string(scheme ? scheme : "") + "://" + (host ? host : "") + ":" + (port ? port : "");
    for (char* p : {scheme, host, port})
      if (p) curl_free(p);
  }
  curl_url_cleanup(u);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return out;
}

}  // namespace loftqd::hub::http
