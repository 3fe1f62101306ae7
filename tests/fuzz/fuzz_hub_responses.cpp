// libFuzzer: what the Hub client reads out of a response without a socket (hub/transport.cpp):
// the typed error of a non-2xx reply (JSON or text body, X-Error-Code/X-Error-Message), the
// Retry-After / RateLimit delay, the Link rel="next" URL and ETags. The input is split at its
// first NUL byte into a header value (used for every header) and a body.
#include <cstddef>
#include <cstdint>
#include <string>

#include "hub/transport.h"

namespace detail = loftqd::hub::detail;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  auto a = in.find('\0');
  std::string header = in.substr(0, a);
  std::string body = a == std::string::npos ? "" : in.substr(a + 1);
  loftqd::hub::http::Response r;
  r.status = 400 + static_cast<int>(size % 200);
  r.headers.emplace("x-error-code", header);
  r.headers.emplace("x-error-message", header);
  r.headers.emplace("retry-after", header);
  r.headers.emplace("ratelimit", header);
  r.headers.emplace("content-type", "application/json");
  r.body = body;
  detail::Ctx c{"org/name", "main", "file.bin"};
  (void)detail::error_from(r, c, size & 1);
  (void)detail::retryable(r);
  if (auto d = detail::server_delay(r); d && !(*d >= 0)) __builtin_trap();
  (void)detail::next_link(header);
  (void)detail::unquote_etag(header);
  return 0;
}
