// The read-only Hub API: the token and options from the environment, repo info, the tree
// listing and file metadata (HEAD on resolve).
#include <cstdlib>

#include "hub/hub.h"
#include "hub/transport.h"

#include "common/env.h"
#include "common/fs.h"
#include "common/ids.h"
#include "common/parallel.h"
#include "common/strings.h"

namespace fs = std::filesystem;

namespace loftqd::hub {

using common::trim;
using detail::Ctx;
using detail::json;
using detail::Transport;

namespace {

// One entry of a tree listing page.
TreeEntry tree_entry(const json& e) {
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
  return t;
}

// The headers of a 2xx or redirect answer to HEAD on resolve.
Result<FileMetadata> metadata_from(const http::Response& r, const std::string& final_url,
                                   const Ctx& c) {
  FileMetadata m;
  m.commit = trim(r.header("x-repo-commit"));
  std::string linked = r.header("x-linked-etag");
  m.etag = detail::unquote_etag(linked.empty() ? r.header("etag") : linked);
  std::string sz = r.header("x-linked-size");
  if (sz.empty()) sz = r.header("content-length");
  m.size = std::strtoull(sz.c_str(), nullptr, 10);
  m.location = final_url;
  if (m.etag.empty())
    return Error{ErrorKind::InvalidResponse, c.describe() + ": no ETag in the response"};
  return m;
}

}  // namespace

std::optional<std::string> find_token(const std::optional<std::string>& config_token) {
  if (auto t = common::hub_env().token) return t;  // HF_TOKEN, else $HF_HOME/token
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
  // As find_token: HF_TOKEN, then $HF_HOME/token, then the config's token.
  o.token =
      e.token ? e.token : (config_token && !config_token->empty() ? config_token : std::nullopt);
  o.offline = e.offline;
  o.user_agent = std::string("loftqd/") + LOFTQD_VERSION;
  return o;
}

Client::Client(ClientOptions opt) : opt_(std::move(opt)) {
  while (!opt_.endpoint.empty() && opt_.endpoint.back() == '/') opt_.endpoint.pop_back();
  if (opt_.parallel < 1) opt_.parallel = 1;
}

Result<RepoInfo> Client::repo_info(const std::string& repo, const std::string& revision) {
  Ctx c{repo, revision, ""};
  if (auto e = detail::check_repo_id(repo)) return *e;
  Transport t(opt_);
  http::Request req;
  req.url = t.api(repo) + "/revision/" + common::escape_segment(revision);
  auto j = t.call_json(req, c);
  if (!j) return j.error();
  try {
    RepoInfo info;
    const json& v = j.value();
    info.id = v.value("id", repo);
    info.sha = v.at("sha").get<std::string>();
    info.last_modified = v.value("lastModified", "");
    info.is_private = v.value("private", false);
    info.gated = v.contains("gated") && !(v["gated"].is_boolean() && !v["gated"].get<bool>());
    if (v.contains("cardData") && v["cardData"].is_object()) {
      const json& lic = v["cardData"].value("license", json());
      if (lic.is_string() && !lic.get<std::string>().empty()) info.license = lic.get<std::string>();
      if (lic.is_array() && !lic.empty() && lic[0].is_string())
        info.license = lic[0].get<std::string>();
    }
    for (const auto& s : v.value("siblings", json::array()))
      info.siblings.push_back(s.at("rfilename").get<std::string>());
    if (!common::is_sha1_hex(info.sha))
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
  Transport t(opt_);
  std::string url = t.api(repo) + "/tree/" + common::escape_segment(revision) +
                    (path.empty() ? "" : "/" + common::escape_path(path)) +
                    (recursive ? "?recursive=true" : "");
  std::vector<TreeEntry> out;
  auto pages = t.get_pages(url, c, [&](const std::string& body) -> Result<Ok> {
    try {
      for (const auto& e : json::parse(body)) out.push_back(tree_entry(e));
    } catch (const std::exception& e) {
      return Error{ErrorKind::InvalidResponse, c.describe() + ": bad tree listing: " + e.what()};
    }
    return Ok{};
  });
  if (!pages) return pages.error();
  return out;
}

Result<FileMetadata> Client::file_metadata(const std::string& repo, const std::string& revision,
                                           const std::string& path) {
  Ctx c{repo, revision, path};
  if (opt_.offline) return Error{ErrorKind::Offline, c.describe() + ": HF_HUB_OFFLINE is set"};
  Transport t(opt_);
  http::Request req;
  req.method = "HEAD";
  req.url = t.resolve_url(repo, revision, path);
  req.headers.push_back("Accept-Encoding: identity");
  req.total_timeout_s = opt_.api_timeout_s;
  for (int attempt = 0;; ++attempt) {
    std::string final_url;
    http::Response r = t.send(req, true, false, &final_url);
    bool redirected = r.transport_ok() && r.status >= 300 && r.status < 400;
    if (r.transport_ok() && ((r.status >= 200 && r.status < 300) || redirected))
      return metadata_from(r, final_url, c);
    bool again = attempt < opt_.max_retries && detail::retryable(r);
    if (!again) return t.error(r, c);
    t.sleep_s(t.backoff(attempt, r.transport_ok() ? &r : nullptr));
  }
}

namespace {

// The first `len` bytes of a file (fewer when it is shorter): a GET with Range that reads no
// more than that, whatever the server sends.
Result<std::string> file_prefix(const Transport& t, const std::string& url, uint64_t len,
                                const Ctx& c) {
  std::string body;
  bool too_long = false;
  http::Request req;
  req.url = url;
  req.headers.push_back("Range: bytes=0-" + std::to_string(len - 1));
  req.headers.push_back("Accept-Encoding: identity");
  req.on_headers = [&](int, const std::multimap<std::string, std::string>&) {
    body.clear();  // each attempt starts over
    too_long = false;
  };
  req.sink = [&](const char* p, size_t n) {
    if (body.size() + n > len) {
      too_long = true;
      return false;
    }
    body.append(p, n);
    return true;
  };
  auto r = t.call(std::move(req), c);
  if (too_long)
    return Error{ErrorKind::InvalidResponse,
                 c.describe() + ": the server sent more than the " + std::to_string(len) +
                     " bytes a Range request asked for (it ignores Range)"};
  if (!r) return r.error();
  return body;
}

}  // namespace

Result<std::string> Client::safetensors_header(const std::string& repo, const std::string& revision,
                                               const std::string& path) {
  constexpr uint64_t kFirst = 100'000, kMaxHeader = 100'000'000;
  const Ctx c{repo, revision, path};
  if (auto e = detail::check_repo_id(repo)) return *e;
  const Transport t(opt_);
  const std::string url = t.resolve_url(repo, revision, path);
  auto first = file_prefix(t, url, kFirst, c);
  if (!first) return first.error();
  std::string& head = first.value();
  if (head.size() < 8)
    return Error{ErrorKind::InvalidResponse,
                 c.describe() + ": " + std::to_string(head.size()) +
                     " bytes, too short for a safetensors header length"};
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | static_cast<unsigned char>(head[static_cast<size_t>(i)]);
  if (n > kMaxHeader)
    return Error{ErrorKind::InvalidResponse, c.describe() + ": safetensors header length " +
                                                 std::to_string(n) + " exceeds the limit of " +
                                                 std::to_string(kMaxHeader)};
  auto past_end = [&](size_t file_size) {
    return Error{ErrorKind::InvalidResponse,
                 c.describe() + ": safetensors header length " + std::to_string(n) +
                     " goes past the end of the file (" + std::to_string(file_size) + " bytes)"};
  };
  if (8 + n > head.size()) {
    if (head.size() < kFirst) return past_end(head.size());  // the whole file came
    auto all = file_prefix(t, url, 8 + n, c);
    if (!all) return all.error();
    if (all.value().size() != 8 + n) return past_end(all.value().size());
    return std::move(all.value());
  }
  head.resize(8 + n);
  return std::move(head);
}

Result<std::vector<std::string>> Client::safetensors_headers(
    const std::string& repo, const std::string& revision, const std::vector<std::string>& paths) {
  std::vector<std::string> out(paths.size());
  auto all = common::parallel_each<Error>(paths.size(), opt_.parallel, [&](size_t i) -> Result<Ok> {
    auto h = safetensors_header(repo, revision, paths[i]);
    if (!h) return h.error();
    out[i] = std::move(h.value());
    return Ok{};
  });
  if (!all) return all.error();
  return out;
}

}  // namespace loftqd::hub
