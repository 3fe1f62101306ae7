#include "mirror/mirror.h"

#include <fcntl.h>
#include <httplib.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "common/strings.h"
#include "hub/http.h"
#include "storage/store.h"

namespace fs = std::filesystem;
namespace st = loftqd::storage;
using nlohmann::json;

namespace loftqd::mirror {

namespace {

constexpr const char* kJson = "application/json";

// Files the Hub's default .gitattributes sends to LFS; anything at least 10 MiB or with a NUL
// byte in its first 512 bytes goes there too.
bool lfs_by_name(std::string_view path) {
  static const char* kExt[] = {
      ".7z",          ".arrow",   ".bin",     ".bz2",    ".ckpt",    ".ftz", ".gguf", ".gz",
      ".h5",          ".joblib",  ".mlmodel", ".model",  ".msgpack", ".npy", ".npz",  ".onnx",
      ".ot",          ".parquet", ".pb",      ".pickle", ".pkl",     ".pt",  ".pth",  ".rar",
      ".safetensors", ".tar",     ".tflite",  ".tgz",    ".wasm",    ".xz",  ".zip",  ".zst"};
  for (const char* e : kExt)
    if (path.ends_with(e)) return true;
  return false;
}

std::string quote_etag(const std::string& e) {
  return "\"" + e + "\"";
}

void send_error(httplib::Response& res, int status, const std::string& code,
                const std::string& message) {
  res.status = status;
  if (!code.empty()) res.set_header("X-Error-Code", code);
  res.set_header("X-Error-Message", message);
  res.set_content(json{{"error", message}}.dump(), kJson);
}

void send_json(httplib::Response& res, const json& j, int status = 200) {
  res.status = status;
  res.set_content(j.dump(), kJson);
}

std::string bearer_of(const httplib::Request& req) {
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

std::string hmac_hex(const std::string& key, const std::string& data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; ++i) {
    s += kHex[out[i] >> 4];
    s += kHex[out[i] & 15];
  }
  return s;
}

// A repo reference parsed out of a request path.
struct Target {
  std::string repo;
  std::vector<std::string> rest;  // path segments after the repo id
};

}  // namespace

struct Mirror::Impl {
  MirrorOptions opt;
  st::Store store;
  httplib::Server svr;
  std::string secret;  // signs LFS upload URLs (never the write token)
  std::thread thread;
  int port = -1;
  std::mutex repos_mu;
  std::map<std::string, std::unique_ptr<std::mutex>> repo_mu;

  explicit Impl(MirrorOptions o) : opt(std::move(o)), store(opt.store) {
    unsigned char key[32];
    if (RAND_bytes(key, sizeof key) != 1) throw std::runtime_error("RAND_bytes failed");
    secret.assign(reinterpret_cast<char*>(key), sizeof key);
    int threads = std::max(1, opt.threads);
    svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    svr.set_keep_alive_max_count(1000);
    svr.set_keep_alive_timeout(opt.keep_alive_timeout_s);
    svr.set_read_timeout(60);
    svr.set_write_timeout(60);
    svr.set_payload_max_length(std::numeric_limits<size_t>::max());
    routes();
  }

  // A revision name to a commit; "HEAD" is the default branch (main).
  std::optional<std::string> resolve_name(const std::string& repo, const std::string& rev) const {
    return store.resolve(repo, rev == "HEAD" ? std::string("main") : rev);
  }

  std::mutex& lock_for(const std::string& repo) {
    std::lock_guard<std::mutex> g(repos_mu);
    auto& m = repo_mu[repo];
    if (!m) m = std::make_unique<std::mutex>();
    return *m;
  }

  std::string base_url(const httplib::Request& req) const {
    std::string host = req.get_header_value("Host");
    if (host.empty()) host = opt.host + ":" + std::to_string(port);
    return "http://" + host;
  }

  bool has_write_token(const httplib::Request& req) const {
    if (!opt.write_token) return false;
    std::string b = bearer_of(req);
    return !b.empty() && st::secure_equal(b, *opt.write_token);
  }

  // Write endpoints: 401 unless the write token is configured and presented.
  bool require_write(const httplib::Request& req, httplib::Response& res) const {
    if (has_write_token(req)) return true;
    send_error(res, 401, "",
               opt.write_token ? "Invalid or missing credentials in the Authorization header"
                               : "This mirror is read-only (no write token configured)");
    return false;
  }

  // Splits "org/name/rest..." (or "name/rest...") into a repo id and the rest, knowing which
  // keywords follow a repo id in the API.
  Target parse_repo(const std::vector<std::string>& segs,
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

  // Read access: 401 (anonymous) / 404 (with the token) RepoNotFound for a missing repo; private
  // and gated repos need the token.
  bool check_read(const httplib::Request& req, httplib::Response& res, const std::string& repo,
                  st::RepoMeta* meta_out = nullptr) const {
    bool authed = has_write_token(req);
    if (st::repo_id_problem(repo) || !store.has_repo(repo) ||
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

  // Resolves the revision at the front of `segs` (one segment, or three for refs/pr/N and
  // refs/convert/X; a branch with slashes is matched shortest-first). Returns {revision, commit,
  // number of segments used}.
  struct Rev {
    std::string name, commit;
    size_t used = 0;
  };
  std::optional<Rev> resolve_rev(const std::string& repo, const std::vector<std::string>& segs,
                                 bool greedy_path) const {
    for (size_t n = 1; n <= segs.size(); ++n) {
      std::string name = common::join(segs, "/", 0, n);
      if (auto c = resolve_name(repo, name)) return Rev{name, *c, n};
      if (!greedy_path) continue;
    }
    return std::nullopt;
  }

  void revision_not_found(httplib::Response& res, const std::string& repo,
                          const std::string& rev) const {
    send_error(res, 404, "RevisionNotFound", "Invalid rev id: " + rev + " (repo " + repo + ")");
  }

  // ---- read API ----

  void repo_info(const httplib::Request& req, httplib::Response& res, const Target& t) {
    st::RepoMeta meta;
    if (!check_read(req, res, t.repo, &meta)) return;
    std::string rev = "main";
    if (!t.rest.empty()) {
      if (t.rest[0] != "revision" || t.rest.size() < 2)
        return send_error(res, 404, "", "Not found: " + req.path);
      rev = common::join(t.rest, "/", 1, t.rest.size());
    }
    auto commit = resolve_name(t.repo, rev);
    if (!commit) return revision_not_found(res, t.repo, rev);
    auto files = store.list_snapshot(t.repo, *commit);
    if (!files) return send_error(res, 500, "", files.error().message);
    bool blobs = req.get_param_value("blobs") == "true" || req.get_param_value("blobs") == "1";
    json siblings = json::array();
    for (const auto& f : files.value()) {
      json s = {{"rfilename", f.path}};
      if (blobs) {
        s["size"] = f.size;
        s["blobId"] = f.git_oid();
        if (f.lfs())
          s["lfs"] = {{"sha256", f.etag},
                      {"size", f.size},
                      {"pointerSize", st::lfs_pointer(f.etag, f.size).size()}};
      }
      siblings.push_back(std::move(s));
    }
    auto slash = t.repo.find('/');
    json j = {{"_id", t.repo},
              {"id", t.repo},
              {"modelId", t.repo},
              {"author", slash == std::string::npos ? std::string() : t.repo.substr(0, slash)},
              {"sha", *commit},
              {"lastModified", meta.last_modified.empty() ? st::iso8601_now() : meta.last_modified},
              {"createdAt", meta.created_at.empty() ? st::iso8601_now() : meta.created_at},
              {"private", meta.is_private},
              {"gated", meta.gated ? json("auto") : json(false)},
              {"disabled", false},
              {"downloads", 0},
              {"likes", 0},
              {"tags", json::array()},
              {"library_name", "peft"},
              {"siblings", std::move(siblings)}};
    send_json(res, j);
  }

  void tree(const httplib::Request& req, httplib::Response& res, const Target& t) {
    if (!check_read(req, res, t.repo)) return;
    // rest = tree / {rev...} / {path...}
    std::vector<std::string> segs(t.rest.begin() + 1, t.rest.end());
    if (segs.empty()) return send_error(res, 404, "", "Not found: " + req.path);
    auto rev = resolve_rev(t.repo, segs, true);
    if (!rev) return revision_not_found(res, t.repo, segs[0]);
    std::string prefix = common::join(segs, "/", rev->used, segs.size());
    bool recursive =
        req.get_param_value("recursive") == "true" || req.get_param_value("recursive") == "1";
    auto files = store.list_snapshot(t.repo, rev->commit);
    if (!files) return send_error(res, 500, "", files.error().message);
    // Entries: files, and the folders on the way (type "directory").
    std::map<std::string, json> entries;
    bool found_prefix = prefix.empty();
    for (const auto& f : files.value()) {
      std::string rel;
      if (prefix.empty()) {
        rel = f.path;
      } else if (f.path.rfind(prefix + "/", 0) == 0) {
        rel = f.path.substr(prefix.size() + 1);
        found_prefix = true;
      } else {
        continue;
      }
      auto parts = common::split(rel, '/');
      std::string base = prefix;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        std::string dir = base.empty() ? parts[i] : base + "/" + parts[i];
        if (!entries.count(dir))
          entries[dir] = {{"type", "directory"},
                          {"oid", st::sha1_hex("tree " + rev->commit + " " + dir)},
                          {"size", 0},
                          {"path", dir}};
        base = dir;
        if (!recursive) break;
      }
      if (!recursive && parts.size() > 1) continue;
      json e = {{"type", "file"}, {"oid", f.git_oid()}, {"size", f.size}, {"path", f.path}};
      if (f.lfs())
        e["lfs"] = {{"oid", f.etag},
                    {"size", f.size},
                    {"pointerSize", st::lfs_pointer(f.etag, f.size).size()}};
      entries[f.path] = std::move(e);
    }
    if (!found_prefix)
      return send_error(res, 404, "EntryNotFound",
                        "Path " + prefix + " not found in " + t.repo + " at " + rev->name);
    size_t limit = opt.tree_page_size;
    if (req.has_param("limit")) {
      try {
        limit = std::clamp<size_t>(std::stoul(req.get_param_value("limit")), 1, 10000);
      } catch (const std::exception&) {
      }
    }
    size_t cursor = 0;
    if (req.has_param("cursor")) {
      auto dec = st::base64_decode(req.get_param_value("cursor"));
      try {
        cursor = dec ? std::stoul(*dec) : 0;
      } catch (const std::exception&) {
        return send_error(res, 400, "", "invalid cursor");
      }
    }
    json page = json::array();
    size_t i = 0;
    for (auto& [path, e] : entries) {
      if (i >= cursor && i < cursor + limit) page.push_back(e);
      ++i;
    }
    if (cursor + limit < entries.size()) {
      std::string next = base_url(req) + "/api/models/" + t.repo + "/tree/" +
                         hub::http::escape_segment(rev->name) +
                         (prefix.empty() ? "" : "/" + hub::http::escape_path(prefix)) +
                         "?cursor=" + st::base64_encode(std::to_string(cursor + limit)) +
                         "&limit=" + std::to_string(limit) + (recursive ? "&recursive=true" : "");
      res.set_header("Link", "<" + next + ">; rel=\"next\"");
    }
    send_json(res, page);
  }

  void refs(const httplib::Request& req, httplib::Response& res, const Target& t) {
    if (!check_read(req, res, t.repo)) return;
    json branches = json::array();
    for (const auto& r : store.list_refs(t.repo)) {
      if (r.rfind("refs/", 0) == 0) continue;
      auto c = store.read_ref(t.repo, r);
      if (c) branches.push_back({{"name", r}, {"ref", "refs/heads/" + r}, {"targetCommit", *c}});
    }
    send_json(res, {{"branches", branches}, {"tags", json::array()}, {"converts", json::array()}});
  }

  void resolve_file(const httplib::Request& req, httplib::Response& res, const Target& t) {
    if (!check_read(req, res, t.repo)) return;
    std::vector<std::string> segs(t.rest.begin() + 1, t.rest.end());
    if (segs.size() < 2) return send_error(res, 404, "EntryNotFound", "no file in " + req.path);
    // Try revisions shortest-first, leaving at least one segment for the file path.
    std::optional<Rev> rev;
    for (size_t n = 1; n < segs.size(); ++n) {
      std::string name = common::join(segs, "/", 0, n);
      if (auto c = resolve_name(t.repo, name)) {
        rev = Rev{name, *c, n};
        break;
      }
    }
    if (!rev) return revision_not_found(res, t.repo, segs[0]);
    std::string path = common::join(segs, "/", rev->used, segs.size());
    if (auto p = st::path_problem(path)) return send_error(res, 400, "", "invalid path: " + *p);
    auto link = store.snapshot_dir(t.repo, rev->commit) / path;
    std::error_code ec;
    auto target = fs::read_symlink(link, ec);
    std::string etag = ec ? "" : target.filename().string();
    if (ec || (!st::is_sha1_hex(etag) && !st::is_sha256_hex(etag)) || !store.has_blob(t.repo, etag))
      return send_error(res, 404, "EntryNotFound",
                        path + " does not exist on \"" + rev->name + "\" of " + t.repo);
    auto blob = store.blob_path(t.repo, etag);
    uint64_t size = fs::file_size(blob, ec);
    if (ec) return send_error(res, 500, "", "cannot stat blob");
    res.set_header("ETag", quote_etag(etag));
    res.set_header("X-Repo-Commit", rev->commit);
    res.set_header("Accept-Ranges", "bytes");
    if (etag.size() == 64) {
      res.set_header("X-Linked-Etag", quote_etag(etag));
      res.set_header("X-Linked-Size", std::to_string(size));
    }
    res.set_header("Content-Disposition",
                   "inline; filename=\"" + fs::path(path).filename().string() + "\"");
    if (size == 0) {
      res.set_content("", "application/octet-stream");
      return;
    }
    int fd = ::open(blob.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return send_error(res, 500, "", "cannot open blob");
    auto holder = std::make_shared<int>(fd);
    const uint64_t rate = opt.max_bytes_per_s;
    res.set_content_provider(
        size, "application/octet-stream",
        [holder, rate](size_t offset, size_t length, httplib::DataSink& sink) {
          // With a rate cap, send in chunks of about 1/20 s worth and sleep between them.
          const size_t chunk = rate ? std::clamp<size_t>(rate / 20, 4096, 1 << 20) : (1 << 20);
          std::vector<char> buf(std::min<size_t>(length, chunk));
          const auto t0 = std::chrono::steady_clock::now();
          uint64_t sent = 0;
          while (length > 0) {
            ssize_t n = ::pread(*holder, buf.data(), std::min(length, buf.size()),
                                static_cast<off_t>(offset));
            if (n <= 0) return false;
            if (!sink.write(buf.data(), static_cast<size_t>(n))) return false;
            offset += static_cast<size_t>(n);
            length -= static_cast<size_t>(n);
            sent += static_cast<uint64_t>(n);
            if (rate)
              std::this_thread::sleep_until(t0 + std::chrono::microseconds(sent * 1000000 / rate));
          }
          return true;
        },
        [holder](bool) { ::close(*holder); });
  }

  // ---- write API ----

  void create_repo(const httplib::Request& req, httplib::Response& res) {
    if (!require_write(req, res)) return;
    json body;
    try {
      body = json::parse(req.body);
    } catch (const std::exception&) {
      return send_error(res, 400, "", "invalid JSON body");
    }
    std::string name = body.value("name", "");
    std::string org = body.contains("organization") && body["organization"].is_string()
                          ? body["organization"].get<std::string>()
                          : "";
    std::string type = body.contains("type") && body["type"].is_string()
                           ? body["type"].get<std::string>()
                           : "model";
    if (type != "model") return send_error(res, 400, "", "this mirror serves model repos only");
    std::string repo = org.empty() || name.find('/') != std::string::npos ? name : org + "/" + name;
    if (auto p = st::repo_id_problem(repo))
      return send_error(res, 400, "", "invalid repo id '" + repo + "': " + *p);
    std::lock_guard<std::mutex> g(lock_for(repo));
    std::string url = base_url(req) + "/" + repo;
    if (store.read_ref(repo, "main"))
      return send_json(res, {{"error", "You already created this model repo"}, {"url", url}}, 409);
    st::RepoMeta meta;
    meta.is_private = body.value("private", false) ||
                      (body.contains("visibility") && body["visibility"] == "private");
    meta.created_at = meta.last_modified = st::iso8601_now();
    // Optional initial files (base64), as the Hub accepts them on creation.
    std::map<std::string, std::string> files;
    for (const auto& f : body.value("files", json::array())) {
      std::string path = f.value("path", "");
      if (auto p = st::path_problem(path))
        return send_error(res, 400, "", "invalid path '" + path + "': " + *p);
      auto data = st::base64_decode(f.value("content", ""));
      if (!data) return send_error(res, 400, "", "bad content for '" + path + "'");
      std::string oid = st::git_blob_sha1(*data);
      auto w = store.put_blob(repo, *data, st::Digest::git(oid, data->size()));
      if (!w) return send_error(res, 500, "", w.error().message);
      files[path] = oid;
    }
    auto w = store.write_meta(repo, meta);
    if (!w) return send_error(res, 500, "", w.error().message);
    auto c = store.commit_snapshot(repo, "main", files, std::nullopt);
    if (!c) return send_error(res, 500, "", c.error().message);
    spdlog::info("mirror: created repo {}", repo);
    send_json(res, {{"url", url}, {"name", repo}, {"id", repo}});
  }

  void create_branch(const httplib::Request& req, httplib::Response& res, const Target& t) {
    if (!require_write(req, res)) return;
    if (!check_read(req, res, t.repo)) return;
    std::string branch = common::join(t.rest, "/", 1, t.rest.size());
    if (auto p = st::revision_problem(branch))
      return send_error(res, 400, "", "invalid branch name: " + *p);
    json body = json::object();
    if (!req.body.empty()) {
      try {
        body = json::parse(req.body);
      } catch (const std::exception&) {
        return send_error(res, 400, "", "invalid JSON body");
      }
    }
    std::lock_guard<std::mutex> g(lock_for(t.repo));
    if (store.read_ref(t.repo, branch))
      return send_error(res, 409, "", "Reference already exists: " + branch);
    std::optional<std::string> start;
    if (body.contains("startingPoint") && body["startingPoint"].is_string()) {
      start = resolve_name(t.repo, body["startingPoint"].get<std::string>());
      if (!start) return revision_not_found(res, t.repo, body["startingPoint"]);
    } else if (body.value("emptyBranch", false)) {
      auto c = store.commit_snapshot(t.repo, branch, {}, std::nullopt);
      if (!c) return send_error(res, 500, "", c.error().message);
      return send_json(res, json::object());
    } else {
      start = resolve_name(t.repo, "main");
    }
    if (!start) return revision_not_found(res, t.repo, "main");
    auto w = store.write_ref(t.repo, branch, *start);
    if (!w) return send_error(res, 500, "", w.error().message);
    send_json(res, json::object());
  }

  void preupload(const httplib::Request& req, httplib::Response& res, const Target& t) {
    if (!require_write(req, res)) return;
    if (!check_read(req, res, t.repo)) return;
    std::string rev = common::join(t.rest, "/", 1, t.rest.size());
    auto head = resolve_name(t.repo, rev);
    json body;
    try {
      body = json::parse(req.body);
    } catch (const std::exception&) {
      return send_error(res, 400, "", "invalid JSON body");
    }
    std::map<std::string, st::FileEntry> existing;
    if (head) {
      auto files = store.list_snapshot(t.repo, *head);
      if (files)
        for (auto& f : files.value()) existing[f.path] = f;
    }
    json out = json::array();
    for (const auto& f : body.value("files", json::array())) {
      std::string path = f.value("path", "");
      if (auto p = st::path_problem(path))
        return send_error(res, 400, "", "invalid path '" + path + "': " + *p);
      uint64_t size = f.value("size", uint64_t{0});
      auto sample = st::base64_decode(f.value("sample", "")).value_or("");
      bool lfs = lfs_by_name(path) || size >= (uint64_t{10} << 20) ||
                 sample.find('\0') != std::string::npos;
      json e = {{"path", path}, {"uploadMode", lfs ? "lfs" : "regular"}, {"shouldIgnore", false}};
      if (auto it = existing.find(path); it != existing.end()) e["oid"] = it->second.git_oid();
      out.push_back(std::move(e));
    }
    send_json(res, {{"files", out}, {"commitOid", head.value_or("")}});
  }

  // POST /api/models/{repo}/paths-info/{rev} {paths:[...]}: the entries that exist.
  void paths_info(const httplib::Request& req, httplib::Response& res, const Target& t) {
    if (!check_read(req, res, t.repo)) return;
    std::string rev = common::join(t.rest, "/", 1, t.rest.size());
    auto commit = resolve_name(t.repo, rev);
    if (!commit) return revision_not_found(res, t.repo, rev);
    std::vector<std::string> wanted;
    try {
      if (req.get_header_value("Content-Type").find("json") != std::string::npos) {
        auto j = json::parse(req.body);
        for (const auto& p : j.value("paths", json::array()))
          wanted.push_back(p.get<std::string>());
      } else {
        for (auto it = req.params.find("paths"); it != req.params.end() && it->first == "paths";
             ++it)
          wanted.push_back(it->second);
      }
    } catch (const std::exception&) {
      return send_error(res, 400, "", "invalid body");
    }
    auto files = store.list_snapshot(t.repo, *commit);
    if (!files) return send_error(res, 500, "", files.error().message);
    json out = json::array();
    for (const auto& w : wanted) {
      bool dir = false;
      for (const auto& f : files.value()) {
        if (f.path == w) {
          json e = {{"type", "file"}, {"oid", f.git_oid()}, {"size", f.size}, {"path", f.path}};
          if (f.lfs())
            e["lfs"] = {{"oid", f.etag},
                        {"size", f.size},
                        {"pointerSize", st::lfs_pointer(f.etag, f.size).size()}};
          out.push_back(e);
        } else if (!dir && f.path.rfind(w + "/", 0) == 0) {
          dir = true;
        }
      }
      if (dir)
        out.push_back({{"type", "directory"},
                       {"oid", st::sha1_hex("tree " + *commit + " " + w)},
                       {"size", 0},
                       {"path", w}});
    }
    send_json(res, out);
  }

  std::string ticket(const std::string& repo, const std::string& oid, uint64_t size) const {
    return hmac_hex(secret, repo + "\n" + oid + "\n" + std::to_string(size));
  }

  void lfs_batch(const httplib::Request& req, httplib::Response& res, const std::string& repo) {
    if (!require_write(req, res)) return;
    if (!check_read(req, res, repo)) return;
    json body;
    try {
      body = json::parse(req.body);
    } catch (const std::exception&) {
      return send_error(res, 400, "", "invalid JSON body");
    }
    if (body.value("operation", "") != "upload")
      return send_error(res, 400, "", "only the upload operation is supported");
    bool multipart_ok = false;
    for (const auto& tr : body.value("transfers", json::array()))
      if (tr == "multipart") multipart_ok = true;
    std::string base = base_url(req);
    json objs = json::array();
    bool any_multipart = false;
    for (const auto& o : body.value("objects", json::array())) {
      std::string oid = o.value("oid", "");
      uint64_t size = o.value("size", uint64_t{0});
      if (!st::is_sha256_hex(oid)) {
        objs.push_back(
            {{"oid", oid}, {"size", size}, {"error", {{"code", 422}, {"message", "invalid oid"}}}});
        continue;
      }
      json entry = {{"oid", oid}, {"size", size}, {"authenticated", true}};
      std::error_code ec;
      if (store.has_blob(repo, oid) && fs::file_size(store.blob_path(repo, oid), ec) == size) {
        objs.push_back(std::move(entry));  // no actions: already stored
        continue;
      }
      std::string q = "?repo=" + hub::http::escape_segment(repo) + "&size=" + std::to_string(size) +
                      "&ticket=" + ticket(repo, oid, size);
      std::string href = base + "/api/loftqd/lfs/" + oid;
      json actions;
      if (multipart_ok && size >= opt.multipart_threshold && opt.multipart_chunk > 0) {
        any_multipart = true;
        json header = {{"chunk_size", std::to_string(opt.multipart_chunk)}};
        uint64_t parts = (size + opt.multipart_chunk - 1) / opt.multipart_chunk;
        for (uint64_t p = 1; p <= parts; ++p) {
          char num[16];
          std::snprintf(num, sizeof num, "%05llu", static_cast<unsigned long long>(p));
          header[num] = href + "/part/" + std::to_string(p) + q +
                        "&chunk=" + std::to_string(opt.multipart_chunk);
        }
        actions["upload"] = {
            {"href", href + "/complete" + q + "&chunk=" + std::to_string(opt.multipart_chunk)},
            {"header", header}};
      } else {
        actions["upload"] = {{"href", href + q}, {"header", json::object()}};
      }
      actions["verify"] = {{"href", href + "/verify" + q}, {"header", json::object()}};
      entry["actions"] = actions;
      objs.push_back(std::move(entry));
    }
    res.status = 200;
    res.set_content(json{{"transfer", any_multipart ? "multipart" : "basic"},
                         {"objects", objs},
                         {"hash_algo", "sha256"}}
                        .dump(),
                    "application/vnd.git-lfs+json");
  }

  // Upload URLs carry a signed ticket instead of the token (like a presigned URL).
  bool check_ticket(const httplib::Request& req, httplib::Response& res, const std::string& oid,
                    std::string& repo, uint64_t& size) const {
    repo = req.get_param_value("repo");
    try {
      size = std::stoull(req.get_param_value("size"));
    } catch (const std::exception&) {
      send_error(res, 401, "", "missing or invalid upload ticket");
      return false;
    }
    if (!opt.write_token || st::repo_id_problem(repo) || !st::is_sha256_hex(oid) ||
        !(st::secure_equal(req.get_param_value("ticket"), ticket(repo, oid, size)) ||
          has_write_token(req))) {
      send_error(res, 401, "", "missing or invalid upload ticket");
      return false;
    }
    return true;
  }

  // Streams a request body into `fd` at `offset`; returns bytes written or -1.
  static int64_t receive_to(const httplib::ContentReader& reader, int fd, uint64_t offset,
                            uint64_t max_bytes) {
    uint64_t pos = offset, n_total = 0;
    bool ok = reader([&](const char* data, size_t len) {
      if (n_total + len > max_bytes) return false;
      while (len > 0) {
        ssize_t w = ::pwrite(fd, data, len, static_cast<off_t>(pos));
        if (w <= 0) return false;
        data += w;
        len -= static_cast<size_t>(w);
        pos += static_cast<uint64_t>(w);
        n_total += static_cast<uint64_t>(w);
      }
      return true;
    });
    return ok ? static_cast<int64_t>(n_total) : -1;
  }

  void lfs_put(const httplib::Request& req, httplib::Response& res,
               const httplib::ContentReader& reader, const std::vector<std::string>& segs) {
    // segs: api loftqd lfs {oid} [part {n}]
    std::string oid = segs[3], repo;
    uint64_t size = 0;
    if (!check_ticket(req, res, oid, repo, size)) return;
    fs::create_directories(store.repo_dir(repo) / "blobs");
    if (segs.size() == 4) {  // basic
      auto tmp = store.blob_path(repo, oid);
      tmp += ".upload-" + common::random_hex(12);
      int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) return send_error(res, 500, "", "cannot create upload file");
      int64_t n = receive_to(reader, fd, 0, size);
      ::close(fd);
      if (n < 0) {
        fs::remove(tmp);
        return send_error(res, 400, "", "upload body larger than announced or interrupted");
      }
      auto c = store.commit_blob(repo, tmp, st::Digest::lfs(oid, size));
      if (!c) return send_error(res, 400, "", "upload rejected: " + c.error().message);
      res.status = 200;
      return;
    }
    if (segs.size() == 6 && segs[4] == "part") {
      uint64_t part = 0, chunk = 0;
      try {
        part = std::stoull(segs[5]);
        chunk = std::stoull(req.get_param_value("chunk"));
      } catch (const std::exception&) {
        return send_error(res, 400, "", "bad part number");
      }
      if (part == 0 || chunk == 0 || (part - 1) * chunk >= size)
        return send_error(res, 400, "", "part number out of range");
      auto mp = store.blob_path(repo, oid);
      mp += ".multipart";
      int fd = ::open(mp.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0) return send_error(res, 500, "", "cannot create upload file");
      uint64_t expect = std::min(chunk, size - (part - 1) * chunk);
      int64_t n = receive_to(reader, fd, (part - 1) * chunk, expect);
      ::close(fd);
      if (n != static_cast<int64_t>(expect))
        return send_error(res, 400, "", "part " + std::to_string(part) + " has the wrong size");
      res.set_header("ETag", quote_etag(st::sha1_hex(oid + ":" + std::to_string(part))));
      res.status = 200;
      return;
    }
    send_error(res, 404, "", "Not found");
  }

  void lfs_post(const httplib::Request& req, httplib::Response& res,
                const std::vector<std::string>& segs) {
    // segs: api loftqd lfs {oid} complete|verify
    std::string oid = segs[3], repo;
    uint64_t size = 0;
    if (!check_ticket(req, res, oid, repo, size)) return;
    if (segs[4] == "complete") {
      auto mp = store.blob_path(repo, oid);
      mp += ".multipart";
      std::error_code ec;
      if (!fs::exists(mp, ec)) {
        if (store.has_blob(repo, oid)) return send_json(res, json::object());
        return send_error(res, 400, "", "no parts uploaded");
      }
      auto c = store.commit_blob(repo, mp, st::Digest::lfs(oid, size));
      if (!c) return send_error(res, 400, "", "upload rejected: " + c.error().message);
      return send_json(res, json::object());
    }
    if (segs[4] == "verify") {
      std::error_code ec;
      if (!store.has_blob(repo, oid) || fs::file_size(store.blob_path(repo, oid), ec) != size)
        return send_error(res, 404, "", "object " + oid + " not found");
      return send_json(res, {{"message", "ok"}});
    }
    send_error(res, 404, "", "Not found");
  }

  void commit(const httplib::Request& req, httplib::Response& res, const Target& t) {
    if (!require_write(req, res)) return;
    if (!check_read(req, res, t.repo)) return;
    std::string branch = common::join(t.rest, "/", 1, t.rest.size());
    if (req.has_param("create_pr") && req.get_param_value("create_pr") != "0" &&
        req.get_param_value("create_pr") != "false")
      return send_error(res, 400, "", "pull requests are not supported by this mirror");
    json header;
    std::vector<json> ops;
    std::istringstream in(req.body);
    std::string line;
    try {
      while (std::getline(in, line)) {
        if (line.empty() || line == "\r") continue;
        json j = json::parse(line);
        std::string key = j.value("key", "");
        if (key == "header")
          header = j.value("value", json::object());
        else
          ops.push_back(std::move(j));
      }
    } catch (const std::exception&) {
      return send_error(res, 400, "", "invalid NDJSON commit payload");
    }
    if (header.is_null()) return send_error(res, 400, "", "commit payload has no header line");
    std::lock_guard<std::mutex> g(lock_for(t.repo));
    auto head = store.read_ref(t.repo, branch);
    if (!head) return revision_not_found(res, t.repo, branch);
    if (header.contains("parentCommit") && header["parentCommit"].is_string() &&
        header["parentCommit"].get<std::string>() != *head)
      return send_error(res, 412, "", "A commit has happened since. Please refresh and try again.");
    std::map<std::string, std::string> files;
    auto listed = store.list_snapshot(t.repo, *head);
    if (!listed) return send_error(res, 500, "", listed.error().message);
    for (auto& f : listed.value()) files[f.path] = f.etag;
    for (const auto& op : ops) {
      std::string key = op.value("key", "");
      json v = op.value("value", json::object());
      std::string path = v.value("path", "");
      if (auto p = st::path_problem(path))
        return send_error(res, 400, "", "invalid path '" + path + "': " + *p);
      if (key == "file") {
        std::string enc = v.value("encoding", "base64");
        std::optional<std::string> data;
        if (enc == "base64")
          data = st::base64_decode(v.value("content", ""));
        else if (enc == "utf-8" || enc == "utf8")
          data = v.value("content", "");
        if (!data) return send_error(res, 400, "", "bad content for '" + path + "'");
        std::string oid = st::git_blob_sha1(*data);
        auto w = store.put_blob(t.repo, *data, st::Digest::git(oid, data->size()));
        if (!w) return send_error(res, 500, "", w.error().message);
        files[path] = oid;
      } else if (key == "lfsFile") {
        std::string oid = v.value("oid", "");
        uint64_t size = v.value("size", uint64_t{0});
        std::error_code ec;
        if (!st::is_sha256_hex(oid) || !store.has_blob(t.repo, oid) ||
            fs::file_size(store.blob_path(t.repo, oid), ec) != size)
          return send_error(res, 422, "",
                            "Your push was rejected because an LFS pointer (" + path +
                                ") pointed to a file that does not exist");
        files[path] = oid;
      } else if (key == "deletedFile") {
        if (!files.erase(path))
          return send_error(res, 404, "EntryNotFound", "cannot delete " + path + ": no such file");
      } else if (key == "deletedFolder") {
        std::string pre = path.ends_with("/") ? path : path + "/";
        for (auto it = files.begin(); it != files.end();)
          it = it->first.rfind(pre, 0) == 0 ? files.erase(it) : std::next(it);
      } else {
        return send_error(res, 400, "", "unsupported commit operation '" + key + "'");
      }
    }
    auto c = store.commit_snapshot(t.repo, branch, files, *head);
    if (!c) return send_error(res, 500, "", c.error().message);
    auto meta = store.read_meta(t.repo).value_or(st::RepoMeta{});
    meta.last_modified = st::iso8601_now();
    if (meta.created_at.empty()) meta.created_at = meta.last_modified;
    (void)store.write_meta(t.repo, meta);
    spdlog::info("mirror: commit {} on {}@{} ({} operations)", c.value(), t.repo, branch,
                 ops.size());
    send_json(res, {{"success", true},
                    {"commitOid", c.value()},
                    {"commitUrl", base_url(req) + "/" + t.repo + "/commit/" + c.value()},
                    {"commitMessage", header.value("summary", "")},
                    {"hookOutput", ""},
                    {"pullRequestUrl", nullptr}});
  }

  // ---- dispatch ----

  void on_get(const httplib::Request& req, httplib::Response& res) {
    auto segs = common::split(std::string_view(req.path).substr(1), '/');
    if (req.path == "/api/whoami-v2") {
      if (!has_write_token(req)) return send_error(res, 401, "", "Invalid credentials");
      return send_json(res, {{"type", "user"},
                             {"name", "loftqd"},
                             {"auth",
                              {{"type", "access_token"},
                               {"accessToken", {{"displayName", "mirror"}, {"role", "write"}}}}}});
    }
    if (segs.size() >= 3 && segs[0] == "api" && segs[1] == "models") {
      std::vector<std::string> rest(segs.begin() + 2, segs.end());
      auto t = parse_repo(rest, {"revision", "tree", "refs"});
      if (t.rest.empty() || t.rest[0] == "revision") return repo_info(req, res, t);
      if (t.rest[0] == "tree") return tree(req, res, t);
      if (t.rest[0] == "refs") return refs(req, res, t);
      return send_error(res, 404, "", "Not found: " + req.path);
    }
    auto t = parse_repo(segs, {"resolve"});
    if (!t.rest.empty() && t.rest[0] == "resolve") return resolve_file(req, res, t);
    send_error(res, 404, "", "Not found: " + req.path);
  }

  void on_post(const httplib::Request& req, httplib::Response& res) {
    auto segs = common::split(std::string_view(req.path).substr(1), '/');
    if (req.path == "/api/repos/create") return create_repo(req, res);
    if (segs.size() == 5 && segs[0] == "api" && segs[1] == "loftqd" && segs[2] == "lfs")
      return lfs_post(req, res, segs);
    if (segs.size() >= 3 && segs[0] == "api" && segs[1] == "models") {
      std::vector<std::string> rest(segs.begin() + 2, segs.end());
      auto t = parse_repo(rest, {"preupload", "commit", "branch", "paths-info"});
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

  void on_put(const httplib::Request& req, httplib::Response& res,
              const httplib::ContentReader& reader) {
    auto segs = common::split(std::string_view(req.path).substr(1), '/');
    if (segs.size() >= 4 && segs[0] == "api" && segs[1] == "loftqd" && segs[2] == "lfs")
      return lfs_put(req, res, reader, segs);
    if (!require_write(req, res)) return;
    send_error(res, 404, "", "Not found: " + req.path);
  }

  // Runs an extra route when one matches; true when it answered.
  bool extra(const httplib::Request& req, httplib::Response& res) {
    auto it = opt.extra_routes.find(req.method + " " + req.path);
    if (it == opt.extra_routes.end()) return false;
    HttpExchange ex;
    ex.method = req.method;
    ex.path = req.path;
    ex.body = req.body;
    for (const auto& [k, v] : req.headers) {
      std::string lower = k;
      for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      ex.headers[lower] = v;
    }
    it->second(ex);
    res.status = ex.status;
    res.set_content(ex.reply, ex.content_type);
    return true;
  }

  void routes() {
    auto guard = [this](auto&& fn) {
      return [this, fn](const httplib::Request& req, httplib::Response& res) {
        try {
          if (extra(req, res)) return;
          fn(req, res);
        } catch (const std::exception& e) {
          send_error(res, 400, "", e.what());
        }
      };
    };
    svr.Get(".*", guard([this](const auto& req, auto& res) { on_get(req, res); }));
    svr.Post(".*", guard([this](const auto& req, auto& res) { on_post(req, res); }));
    svr.Put(".*", [this](const httplib::Request& req, httplib::Response& res,
                         const httplib::ContentReader& reader) {
      try {
        on_put(req, res, reader);
      } catch (const std::exception& e) {
        send_error(res, 400, "", e.what());
      }
    });
    svr.Delete(".*", [this](const httplib::Request& req, httplib::Response& res) {
      if (!require_write(req, res)) return;
      send_error(res, 405, "", "not supported by this mirror");
    });
    svr.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      if (opt.on_request) opt.on_request(req.method, req.path, res.status);
      spdlog::debug("mirror: {} {} -> {}", req.method, req.path, res.status);
    });
  }
};

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
  if (i.opt.port == 0) {
    i.port = i.svr.bind_to_any_port(i.opt.host);
  } else {
    i.port = i.svr.bind_to_port(i.opt.host, i.opt.port) ? i.opt.port : -1;
  }
  if (i.port < 0)
    throw std::runtime_error("mirror: cannot listen on " + i.opt.host + ":" +
                             std::to_string(i.opt.port));
  return i.port;
}

void Mirror::serve() {
  impl_->svr.listen_after_bind();
}

int Mirror::start() {
  int p = bind();
  impl_->thread = std::thread([this] { serve(); });
  while (!impl_->svr.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return p;
}

void Mirror::stop() {
  if (!impl_) return;
  impl_->svr.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int Mirror::port() const {
  return impl_->port;
}

std::string Mirror::url() const {
  return "http://" + impl_->opt.host + ":" + std::to_string(impl_->port);
}

}  // namespace loftqd::mirror
