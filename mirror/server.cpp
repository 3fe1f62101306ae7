// The mirror's lifecycle (bind, serve, stop), its route table and dispatch, the extra routes,
// authentication and the checks and error answers every handler shares.
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "common/ids.h"
#include "common/strings.h"
#include "mirror/internal.h"

namespace fs = std::filesystem;
namespace st = loftqd::storage;
using nlohmann::json;

namespace loftqd::mirror {

namespace {

std::string bearer_of(const Request& req) {
  std::string h = req.get_header_value("Authorization");
  if (h.rfind("Bearer ", 0) == 0) return h.substr(7);
  if (h.rfind("Basic ", 0) == 0) {  // git-lfs style: user:token
    auto dec = st::base64_decode(h.substr(6));
    if (dec) {
      auto colon = dec->find(':');
      if (colon != std::string::npos) return dec->substr(colon + 1);
    }
  }
  return {};
}

}  // namespace

void send_error(Response& res, int status, const std::string& code, const std::string& message) {
  res.status = status;
  if (!code.empty()) res.set_header("X-Error-Code", code);
  res.set_header("X-Error-Message", message);
  res.set_content(json{{"error", message}}.dump(), kJson);
}

void send_json(Response& res, const json& j, int status) {
  res.status = status;
  res.set_content(j.dump(), kJson);
}

bool parse_json_body(const Request& req, Response& res, json& out, bool empty_is_object) {
  if (empty_is_object && req.body.empty()) {
    out = json::object();
    return true;
  }
  try {
    out = json::parse(req.body);
    return true;
  } catch (const std::exception&) {
    send_error(res, 400, "", "invalid JSON body");
    return false;
  }
}

std::optional<std::string> repo_of_body(const json& body, Response& res) {
  auto str = [&](const char* k) {
    return body.contains(k) && body[k].is_string() ? body[k].get<std::string>() : std::string();
  };
  const std::string name = str("name"), org = str("organization"), type = str("type");
  if (!type.empty() && type != "model") {
    send_error(res, 400, "", "this mirror serves model repos only");
    return std::nullopt;
  }
  std::string repo = org.empty() || name.find('/') != std::string::npos ? name : org + "/" + name;
  if (common::repo_id_problem(repo)) {
    send_error(res, 400, "", common::repo_id_error(repo));
    return std::nullopt;
  }
  return repo;
}

std::string quote_etag(const std::string& e) {
  return "\"" + e + "\"";
}

bool query_flag(const Request& req, const std::string& name, bool dflt) {
  if (!req.has_param(name)) return dflt;
  std::string v = common::lower(req.get_param_value(name));
  if (v.empty()) return dflt;
  if (v == "true" || v == "1") return true;
  if (v == "false" || v == "0") return false;
  throw std::invalid_argument("query parameter '" + name + "' must be true or false (got '" +
                              req.get_param_value(name) + "')");
}

size_t query_limit(const Request& req, size_t dflt, size_t max) {
  if (!req.has_param("limit")) return std::clamp<size_t>(dflt, 1, max);
  const std::string v = req.get_param_value("limit");
  size_t idx = 0;
  unsigned long n = 0;
  try {
    n = std::stoul(v, &idx);
  } catch (const std::exception&) {
    idx = 0;
  }
  if (idx == 0 || idx != v.size() || v[0] == '-')
    throw std::invalid_argument("query parameter 'limit' must be a positive integer (got '" + v +
                                "')");
  return std::clamp<size_t>(n, 1, max);
}

Mirror::Impl::Impl(MirrorOptions o)
    : opt(std::move(o)), store(opt.store), secret(common::random_hex(64)) {
  ServerOptions so;
  so.worker_threads = std::max(1, opt.threads);
  so.max_connections = opt.max_connections;
  so.max_connections_per_ip = opt.max_connections_per_ip;
  so.header_timeout_s = opt.header_timeout_s;
  so.idle_timeout_s = opt.idle_timeout_s;
  so.keep_alive_timeout_s = static_cast<unsigned>(std::max(0, opt.keep_alive_timeout_s));
  http = std::make_unique<HttpServer>(
      so, [this](const Request& head) { return admit(head); },
      [this](Request& req, Response& res) { handle(req, res); },
      [this](const Request& req, const Response& res) {
        if (opt.on_request) opt.on_request(req.method, req.path, res.status);
        spdlog::debug("mirror: {} {} -> {}", req.method, req.path, res.status);
      });
}

// ---- shared checks ----

std::optional<std::string> Mirror::Impl::resolve_name(const std::string& repo,
                                                      const std::string& rev) const {
  return store.resolve(repo, rev == "HEAD" ? std::string("main") : rev);
}

std::mutex& Mirror::Impl::lock_for(const std::string& repo) {
  std::lock_guard<std::mutex> g(repos_mu);
  auto& m = repo_mu[repo];
  if (!m) m = std::make_unique<std::mutex>();
  return *m;
}

std::string Mirror::Impl::base_url(const Request& req) const {
  std::string host = req.get_header_value("Host");
  if (host.empty()) host = opt.host + ":" + std::to_string(port);
  return "http://" + host;
}

bool Mirror::Impl::has_write_token(const Request& req) const {
  if (!opt.write_token) return false;
  std::string b = bearer_of(req);
  return !b.empty() && st::secure_equal(b, *opt.write_token);
}

bool Mirror::Impl::require_write(const Request& req, Response& res) const {
  if (has_write_token(req)) return true;
  send_error(res, 401, "",
             opt.write_token ? "Invalid or missing credentials in the Authorization header"
                             : "This mirror is read-only (no write token configured)");
  return false;
}

Target Mirror::Impl::parse_repo(const std::vector<std::string>& segs,
                                const std::set<std::string>& keywords) const {
  Target t;
  if (segs.empty()) return t;
  bool one = segs.size() == 1 ||
             (keywords.count(segs[1]) && !(segs.size() >= 3 && keywords.count(segs[2])) &&
              !store.has_repo(segs[0] + "/" + segs[1]));
  if (one) {
    t.repo = segs[0];
    t.rest.assign(segs.begin() + 1, segs.end());
  } else {
    t.repo = segs[0] + "/" + segs[1];
    t.rest.assign(segs.begin() + 2, segs.end());
  }
  return t;
}

bool Mirror::Impl::check_read(const Request& req, Response& res, const std::string& repo,
                              st::RepoMeta* meta_out) const {
  bool authed = has_write_token(req);
  if (common::repo_id_problem(repo) || !store.has_repo(repo) ||
      (!store.read_ref(repo, "main").has_value() && store.list_refs(repo).empty())) {
    send_error(res, authed ? 404 : 401, "RepoNotFound",
               "Repository Not Found for url: " + req.path +
                   ". Please make sure you specified the correct `repo_id` and `repo_type`." +
                   (authed ? ""
                           : " If you are trying to access a private or gated repo, make "
                             "sure you are authenticated."));
    return false;
  }
  auto meta = store.read_meta(repo).value_or(st::RepoMeta{});
  if (meta.is_private && !authed) {
    send_error(res, 401, "RepoNotFound",
               "Repository Not Found for url: " + req.path +
                   ". If you are trying to access a private or gated repo, make sure you are "
                   "authenticated.");
    return false;
  }
  if (meta.gated && !authed) {
    send_error(res, 401, "GatedRepo",
               "Access to model " + repo +
                   " is restricted. You must have access to it and be "
                   "authenticated to access it.");
    return false;
  }
  if (meta_out) *meta_out = meta;
  return true;
}

std::optional<Rev> Mirror::Impl::resolve_rev(const std::string& repo,
                                             const std::vector<std::string>& segs,
                                             bool greedy_path) const {
  for (size_t n = 1; n <= segs.size(); ++n) {
    std::string name = common::join(segs, "/", 0, n);
    if (auto c = resolve_name(repo, name)) return Rev{name, *c, n};
    if (!greedy_path) continue;
  }
  return std::nullopt;
}

void Mirror::Impl::revision_not_found(Response& res, const std::string& repo,
                                      const std::string& rev) const {
  send_error(res, 404, "RevisionNotFound", "Invalid rev id: " + rev + " (repo " + repo + ")");
}

// ---- dispatch ----

void Mirror::Impl::on_get(const Request& req, Response& res) {
  auto segs = common::split(std::string_view(req.path).substr(1), '/');
  if (req.path == "/") return root_page(req, res);
  if (req.path == "/api/whoami-v2") return whoami(req, res);
  if (req.path == "/api/models" || req.path == "/api/models/") return list_models(req, res);
  if (segs.size() >= 3 && segs[0] == "api" && segs[1] == "models") {
    std::vector<std::string> rest(segs.begin() + 2, segs.end());
    auto t = parse_repo(
        rest, {"revision", "tree", "refs", "commits", "xet-write-token", "xet-read-token"});
    if (t.rest.empty() || t.rest[0] == "revision") return repo_info(req, res, t);
    if (t.rest[0] == "tree") return tree(req, res, t);
    if (t.rest[0] == "refs") return refs(req, res, t);
    if (t.rest[0] == "commits") return list_commits(req, res, t);
    if (t.rest[0] == "xet-write-token" || t.rest[0] == "xet-read-token") return xet_token(req, res);
    return send_error(res, 404, "", "Not found: " + req.path);
  }
  auto t = parse_repo(segs, {"resolve", "raw", "commit"});
  if (!t.rest.empty() && t.rest[0] == "resolve") return resolve_file(req, res, t);
  if (!t.rest.empty() && t.rest[0] == "raw") return resolve_file(req, res, t, true);
  if (t.rest.size() == 2 && t.rest[0] == "commit") return commit_page(req, res, t);
  send_error(res, 404, "", "Not found: " + req.path);
}

void Mirror::Impl::on_post(const Request& req, Response& res) {
  auto segs = common::split(std::string_view(req.path).substr(1), '/');
  if (req.path == "/api/repos/create") return create_repo(req, res);
  if (segs.size() == 5 && segs[0] == "api" && segs[1] == "loftqd" && segs[2] == "lfs")
    return lfs_post(req, res, segs);
  if (segs.size() >= 3 && segs[0] == "api" && segs[1] == "models") {
    std::vector<std::string> rest(segs.begin() + 2, segs.end());
    auto t = parse_repo(rest, {"preupload", "commit", "branch", "paths-info", "tag"});
    if (t.rest.size() >= 2 && t.rest[0] == "tag") return create_tag(req, res, t);
    if (t.rest.size() >= 2 && t.rest[0] == "paths-info") return paths_info(req, res, t);
    if (t.rest.size() >= 2 && t.rest[0] == "preupload") return preupload(req, res, t);
    if (t.rest.size() >= 2 && t.rest[0] == "commit") return commit(req, res, t);
    if (t.rest.size() >= 2 && t.rest[0] == "branch") return create_branch(req, res, t);
  }
  const std::string suffix = ".git/info/lfs/objects/batch";
  if (req.path.size() > suffix.size() + 1 && req.path.ends_with(suffix))
    return lfs_batch(req, res, req.path.substr(1, req.path.size() - suffix.size() - 1));
  if (!require_write(req, res)) return;
  send_error(res, 404, "", "Not found: " + req.path);
}

void Mirror::Impl::on_put(const Request& req, Response& res) {
  auto segs = common::split(std::string_view(req.path).substr(1), '/');
  if (segs.size() >= 4 && segs[0] == "api" && segs[1] == "loftqd" && segs[2] == "lfs")
    return lfs_put(req, res, segs);
  if (!require_write(req, res)) return;
  send_error(res, 404, "", "Not found: " + req.path);
}

void Mirror::Impl::on_delete(const Request& req, Response& res) {
  auto segs = common::split(std::string_view(req.path).substr(1), '/');
  if (req.path == "/api/repos/delete") return delete_repo(req, res);
  if (segs.size() >= 3 && segs[0] == "api" && segs[1] == "models") {
    std::vector<std::string> rest(segs.begin() + 2, segs.end());
    auto t = parse_repo(rest, {"tag"});
    if (t.rest.size() >= 2 && t.rest[0] == "tag") return delete_tag(req, res, t);
  }
  if (!require_write(req, res)) return;
  send_error(res, 405, "", "not supported by this mirror: DELETE " + req.path);
}

bool Mirror::Impl::extra(const Request& req, Response& res) {
  auto it = opt.extra_routes.find(req.method + " " + req.path);
  if (it == opt.extra_routes.end()) return false;
  HttpExchange ex;
  ex.method = req.method;
  ex.path = req.path;
  ex.body = req.body;
  for (const auto& [k, v] : req.headers) ex.headers[common::lower(k)] = v;
  it->second(ex);
  res.status = ex.status;
  res.set_content(ex.reply, ex.content_type);
  return true;
}

namespace {

// A refusal decided from the head: the answer `fill` gives, sent without reading the body.
template <class Fill>
BodyPlan refused(Fill fill) {
  BodyPlan plan;
  plan.kind = BodyPlan::Refuse;
  plan.refusal = std::make_shared<Response>();
  fill(*plan.refusal);
  return plan;
}

}  // namespace

BodyPlan Mirror::Impl::admit(const Request& head) {
  const BodyPlan memory = BodyPlan::memory(kJsonBodyCap);
  if (opt.extra_routes.count(head.method + " " + head.path)) return memory;
  const std::string& m = head.method;
  if (m != "POST" && m != "PUT" && m != "DELETE") return memory;
  auto segs = common::split(std::string_view(head.path).substr(1), '/');
  if (segs.size() >= 4 && segs[0] == "api" && segs[1] == "loftqd" && segs[2] == "lfs") {
    if (m == "PUT") return lfs_put_plan(head, segs);
    // complete / verify: the upload ticket stands in for the token.
    std::string repo;
    uint64_t size = 0;
    Response res;
    if (segs.size() == 5 && !check_ticket(head, res, segs[3], repo, size))
      return refused([&](Response& r) { r = std::move(res); });
    return memory;
  }
  Target t;
  if (segs.size() >= 3 && segs[0] == "api" && segs[1] == "models") {
    std::vector<std::string> rest(segs.begin() + 2, segs.end());
    t = parse_repo(rest, {"preupload", "commit", "branch", "paths-info", "tag"});
  }
  const bool routed = t.rest.size() >= 2;
  if (m == "POST" && routed && t.rest[0] == "paths-info") return memory;  // a read
  // Every other write route needs the token, checked before a byte of the body is read.
  if (!has_write_token(head)) return refused([&](Response& r) { require_write(head, r); });
  if (m == "POST" && routed && t.rest[0] == "commit") return commit_plan(head, t.repo);
  return memory;
}

// An NDJSON commit body streams to a temp in the repo's blobs/ (an atomic-write temp name, so
// the temp sweeper takes it if it is ever left behind), up to kCommitBodyCap.
BodyPlan Mirror::Impl::commit_plan(const Request& head, const std::string& repo) {
  Response res;
  if (!check_read(head, res, repo)) return refused([&](Response& r) { r = std::move(res); });
  std::error_code ec;
  fs::create_directories(store.repo_dir(repo) / "blobs", ec);
  return BodyPlan::to_file(
      store.repo_dir(repo) / "blobs" /
          (".commit-body.tmp." + std::to_string(::getpid()) + "." + common::random_hex(12)),
      kCommitBodyCap);
}

void Mirror::Impl::handle(Request& req, Response& res) {
  try {
    if (extra(req, res)) return;
    if (req.method == "GET" || req.method == "HEAD") return on_get(req, res);
    if (req.method == "POST") return on_post(req, res);
    if (req.method == "PUT") return on_put(req, res);
    if (req.method == "DELETE") return on_delete(req, res);
    send_error(res, 405, "", "not supported by this mirror: " + req.method + " " + req.path);
  } catch (const std::exception& e) {
    res = Response();
    send_error(res, 400, "", e.what());
  }
}

void Mirror::Impl::start_temp_sweeper() {
  const auto first_age = opt.store_locked ? std::chrono::seconds(0) : storage::kStaleTempAge;
  if (size_t n = store.remove_stale_temps(first_age))
    spdlog::info("mirror: removed {} stale upload/temp file(s) from {}", n, opt.store.string());
  sweep_stop = false;
  sweeper = std::thread([this] {
    std::unique_lock<std::mutex> lk(sweep_mu);
    while (!sweep_cv.wait_for(lk, kTempSweepInterval, [this] { return sweep_stop; }))
      if (size_t n = store.remove_stale_temps())
        spdlog::info("mirror: removed {} stale upload/temp file(s)", n);
  });
}

void Mirror::Impl::stop_temp_sweeper() {
  {
    std::lock_guard<std::mutex> g(sweep_mu);
    sweep_stop = true;
  }
  sweep_cv.notify_all();
  if (sweeper.joinable()) sweeper.join();
}

// ---- public API ----

std::pair<std::string, int> parse_listen(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw std::invalid_argument("--listen must be HOST:PORT (got '" + s + "')");
  std::string host = s.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  int port = 0;
  try {
    size_t idx = 0;
    port = std::stoi(s.substr(colon + 1), &idx);
    if (idx != s.size() - colon - 1) throw std::invalid_argument("port");
  } catch (const std::exception&) {
    throw std::invalid_argument("--listen: bad port in '" + s + "'");
  }
  if (port < 0 || port > 65535) throw std::invalid_argument("--listen: port out of range");
  return {host, port};
}

Mirror::Mirror(MirrorOptions opt) : impl_(std::make_unique<Impl>(std::move(opt))) {}

Mirror::~Mirror() {
  stop();
}

int Mirror::bind() {
  auto& i = *impl_;
  std::error_code ec;
  fs::create_directories(i.opt.store, ec);
  i.port = i.http->bind(i.opt.host, i.opt.port);
  if (!i.sweeper.joinable()) i.start_temp_sweeper();
  return i.port;
}

void Mirror::serve() {
  auto& i = *impl_;
  {
    std::lock_guard<std::mutex> g(i.serve_mu);
    if (i.stop_requested) return;
    i.http->start();
    i.serving = i.served = true;
  }
  i.serve_cv.notify_all();
  std::unique_lock<std::mutex> lk(i.serve_mu);
  i.serve_cv.wait(lk, [&i] { return i.stop_requested; });
  i.http->stop();
  i.serving = false;
}

int Mirror::start() {
  int p = bind();
  impl_->thread = std::thread([this] { serve(); });
  std::unique_lock<std::mutex> lk(impl_->serve_mu);
  impl_->serve_cv.wait(lk, [this] { return impl_->serving || impl_->stop_requested; });
  return p;
}

void Mirror::stop() {
  if (!impl_) return;
  {
    std::lock_guard<std::mutex> g(impl_->serve_mu);
    impl_->stop_requested = true;
  }
  impl_->serve_cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
  std::lock_guard<std::mutex> g(impl_->serve_mu);
  if (!impl_->served) impl_->http->stop();  // bound, never served: closes the socket
  impl_->stop_temp_sweeper();
}

int Mirror::port() const {
  return impl_->port;
}

std::string Mirror::url() const {
  return "http://" + impl_->opt.host + ":" + std::to_string(impl_->port);
}

}  // namespace loftqd::mirror
