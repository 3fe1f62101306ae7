// Internal: one HTTP exchange over libcurl (no redirects, no retries: transport.h does those).
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace loftqd::hub::http {

struct Request {
  std::string method = "GET";  // GET, HEAD, POST, PUT
  std::string url;
  std::vector<std::string> headers;  // "Name: value"
  std::string body;                  // POST/PUT body (when no upload file)
  // PUT/POST of a file region instead of `body`.
  std::optional<std::filesystem::path> upload_file;
  uint64_t upload_offset = 0, upload_length = 0;
  // Streams the body of a 2xx response; returning false aborts the transfer. When unset the
  // body is collected into Response::body.
  std::function<bool(const char*, size_t)> sink;
  // Called once the status line and headers of the final response are in (before the body).
  std::function<void(int status, const std::multimap<std::string, std::string>& headers)>
      on_headers;
  long connect_timeout_s = 10;
  long stall_timeout_s = 30;
  long total_timeout_s = 0;           // 0: none
  uint64_t max_recv_bytes_per_s = 0;  // 0: unlimited
  uint64_t max_send_bytes_per_s = 0;  // 0: unlimited
  // When set, the exchange is aborted (CURLE_ABORTED_BY_CALLBACK) within about a second of it
  // turning true, and not started when it already is.
  const std::atomic<bool>* cancel = nullptr;
};

struct Response {
  int status = 0;
  int curl_code = 0;  // CURLcode; 0 = the exchange completed
  std::string curl_error;
  std::multimap<std::string, std::string> headers;  // names lowercased
  std::string body;                                 // error bodies always land here
  std::string header(const std::string& lower_name) const;
  bool transport_ok() const { return curl_code == 0; }
  bool timed_out() const;
  bool aborted_by_sink() const;
};

Response perform(const Request& req);

// URL helpers (libcurl's URL API).
std::string resolve_url(const std::string& base, const std::string& location);
std::string origin_of(const std::string& url);  // scheme://host:port

}  // namespace loftqd::hub::http
