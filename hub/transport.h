// Internal to hub/: everything between a Client call and one HTTP exchange (hub/http.h). Typed
// errors from responses, the retry loop (backoff with jitter, Retry-After and RateLimit t=),
// redirects with the token kept to the endpoint's origin, JSON calls and Link pagination.
// api.cpp, download.cpp and publish.cpp build on it; nothing outside hub/ includes it.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "hub/http.h"
#include "hub/hub.h"

#include "storage/store.h"

namespace loftqd::hub::detail {

using nlohmann::json;

// What a request is about, for error messages.
struct Ctx {
  std::string repo, revision, file;
  std::string describe() const;
};

// BadRequest "invalid repo id ..." when `repo` is not a repo id; nullopt when it is.
std::optional<Error> check_repo_id(const std::string& repo);
// A storage error as a client error naming the repo, revision and file.
Error from_storage(const storage::Error& e, const Ctx& c);
// Maps a final non-2xx response (or a transport failure) to a typed error.
Error error_from(const http::Response& r, const Ctx& c, bool had_token);
// 408, 429 and 5xx; or, for a failed exchange, the curl codes of a cut or refused connection.
bool retryable(const http::Response& r);
// Seconds the server asks us to wait: Retry-After (seconds) or RateLimit "...;t=N".
std::optional<double> server_delay(const http::Response& r);
// The URL of rel="next" in a Link header.
std::optional<std::string> next_link(const std::string& link);
// An ETag without W/ and quotes.
std::string unquote_etag(std::string e);

// The request side of a Client: holds its options (by reference) and the endpoint's origin.
class Transport {
 public:
  explicit Transport(const ClientOptions& o);

  const ClientOptions& opt;
  const std::string origin;  // the endpoint's scheme://host:port: the only place the token goes

  std::string api(const std::string& repo) const;  // {endpoint}/api/models/{repo}
  std::string resolve_url(const std::string& repo, const std::string& rev,
                          const std::string& path) const;
  Error error(const http::Response& r, const Ctx& c) const;  // error_from with our token state

  // Delay before retry `attempt` (0-based): what the server asked for (capped), else
  // exponential backoff with "equal jitter".
  double backoff(int attempt, const http::Response* r) const;
  void sleep_s(double s) const;

  // One request with redirects: relative ones always, cross-origin ones unless
  // !follow_cross_host (then the redirect is returned and `final_url` names its target).
  // Authorization goes only to the endpoint's origin.
  http::Response send(http::Request req, bool auth, bool follow_cross_host = true,
                      std::string* final_url = nullptr) const;
  // API call with retries on 408/429/5xx and transport errors; Offline when HF_HUB_OFFLINE.
  Result<http::Response> call(http::Request req, const Ctx& c, bool auth = true,
                              bool retry = true) const;
  // call() and the body parsed as JSON.
  Result<json> call_json(http::Request req, const Ctx& c, bool retry = true) const;
  // GETs `url` and every page after it (Link: rel="next"), handing each body to `on_page`.
  Result<Ok> get_pages(std::string url, const Ctx& c,
                       const std::function<Result<Ok>(const std::string& body)>& on_page) const;
};

}  // namespace loftqd::hub::detail
