// The mirror's write API (write token only): repo creation, branches, preupload (LFS or
// regular) and the NDJSON commit.
#include <spdlog/spdlog.h>

#include <fstream>
#include <functional>
#include <sstream>

#include "common/ids.h"
#include "common/strings.h"
#include "mirror/internal.h"

namespace fs = std::filesystem;
namespace st = loftqd::storage;
using nlohmann::json;

namespace loftqd::mirror {

namespace {

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

// send_error(), then false: for the steps that answer a refused request.
bool refuse(Response& res, int status, const std::string& code, const std::string& message) {
  send_error(res, status, code, message);
  return false;
}

// A JSON member that, when present, must have the given type; its problem otherwise.
std::optional<std::string> member_problem(const json& obj, const char* key, json::value_t type,
                                          const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) return std::nullopt;
  bool ok = type == json::value_t::number_unsigned ? it->is_number_unsigned() : it->type() == type;
  if (ok) return std::nullopt;
  const char* want = type == json::value_t::string            ? "a string"
                     : type == json::value_t::number_unsigned ? "a non-negative integer"
                     : type == json::value_t::boolean         ? "a boolean"
                                                              : "an object";
  return where + ": \"" + key + "\" must be " + want + ", not " + it->type_name();
}

// The header line's value: an object whose summary, description and parentCommit are strings.
std::optional<std::string> header_problem(const json& v) {
  if (!v.is_object()) return std::string("header: \"value\" must be an object");
  for (const char* k : {"summary", "description", "parentCommit"})
    if (auto p = member_problem(v, k, json::value_t::string, "header")) return p;
  return std::nullopt;
}

// One operation line: {"key": file|lfsFile|deletedFile|deletedFolder, "value": {...}} with the
// members each kind uses typed as the Hub documents them.
std::optional<std::string> operation_problem(const json& op, size_t line) {
  const std::string where = "line " + std::to_string(line);
  const std::string key = op["key"].get<std::string>();
  if (key != "file" && key != "lfsFile" && key != "deletedFile" && key != "deletedFolder")
    return "unsupported commit operation '" + key + "' (" + where + ")";
  auto vit = op.find("value");
  if (vit == op.end() || !vit->is_object()) return where + ": \"value\" must be an object";
  const json& v = *vit;
  if (!v.contains("path")) return where + ": \"path\" is missing";
  if (auto p = member_problem(v, "path", json::value_t::string, where)) return p;
  std::vector<std::pair<const char*, json::value_t>> typed;
  if (key == "file")
    typed = {{"content", json::value_t::string}, {"encoding", json::value_t::string}};
  else if (key == "lfsFile")
    typed = {{"oid", json::value_t::string},
             {"size", json::value_t::number_unsigned},
             {"algo", json::value_t::string}};
  for (auto& [k, type] : typed)
    if (auto p = member_problem(v, k, type, where)) return p;
  return std::nullopt;
}

}  // namespace

std::optional<std::string> parse_commit_payload(const std::string& body, json& header,
                                                std::vector<json>& ops) {
  std::istringstream in(body);
  return parse_commit_payload(in, header, ops);
}

std::optional<std::string> parse_commit_payload(std::istream& in, json& header,
                                                std::vector<json>& ops) {
  return scan_commit_payload(in, header, [&ops](json& op) {
    ops.push_back(std::move(op));
    return true;
  });
}

std::optional<std::string> scan_commit_payload(std::istream& in, json& header,
                                               const std::function<bool(json&)>& on_op) {
  std::string line;
  bool have_header = false;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.empty() || line == "\r") continue;
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return "line " + std::to_string(n) + " is not valid JSON";
    if (!j.is_object() || !j.contains("key") || !j["key"].is_string())
      return "line " + std::to_string(n) + " must be an object with a string \"key\"";
    if (j["key"] == "header") {
      if (have_header) return "line " + std::to_string(n) + ": a second header line";
      have_header = true;
      header = j.contains("value") ? j["value"] : json();
      if (auto p = header_problem(header)) return p;
      continue;
    }
    if (auto p = operation_problem(j, n)) return p;
    if (!on_op(j)) return std::nullopt;
  }
  if (!have_header) return std::string("commit payload has no header line");
  return std::nullopt;
}

void Mirror::Impl::create_repo(const Request& req, Response& res) {
  if (!require_write(req, res)) return;
  json body;
  if (!parse_json_body(req, res, body)) return;
  const auto named = repo_of_body(body, res);
  if (!named) return;
  const std::string& repo = *named;
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
    if (auto p = common::path_problem(path))
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
  record_commit(repo, c.value(), std::nullopt, "initial commit", "");
  spdlog::info("mirror: created repo {}", repo);
  send_json(res, {{"url", url}, {"name", repo}, {"id", repo}});
}

void Mirror::Impl::create_branch(const Request& req, Response& res, const Target& t) {
  if (!require_write(req, res)) return;
  if (!check_read(req, res, t.repo)) return;
  std::string branch = common::join(t.rest, "/", 1, t.rest.size());
  if (auto p = common::revision_problem(branch))
    return send_error(res, 400, "", "invalid branch name: " + *p);
  json body;
  if (!parse_json_body(req, res, body, /*empty_is_object=*/true)) return;
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

void Mirror::Impl::preupload(const Request& req, Response& res, const Target& t) {
  if (!require_write(req, res)) return;
  if (!check_read(req, res, t.repo)) return;
  std::string rev = common::join(t.rest, "/", 1, t.rest.size());
  auto head = resolve_name(t.repo, rev);
  json body;
  if (!parse_json_body(req, res, body)) return;
  std::map<std::string, st::FileEntry> existing;
  if (head) {
    auto files = store.list_snapshot(t.repo, *head);
    if (files)
      for (auto& f : files.value()) existing[f.path] = f;
  }
  json out = json::array();
  for (const auto& f : body.value("files", json::array())) {
    std::string path = f.value("path", "");
    if (auto p = common::path_problem(path))
      return send_error(res, 400, "", "invalid path '" + path + "': " + *p);
    uint64_t size = f.value("size", uint64_t{0});
    auto sample = st::base64_decode(f.value("sample", "")).value_or("");
    bool lfs =
        lfs_by_name(path) || size >= (uint64_t{10} << 20) || sample.find('\0') != std::string::npos;
    json e = {{"path", path}, {"uploadMode", lfs ? "lfs" : "regular"}, {"shouldIgnore", false}};
    if (auto it = existing.find(path); it != existing.end()) e["oid"] = it->second.git_oid();
    out.push_back(std::move(e));
  }
  send_json(res, {{"files", out}, {"commitOid", head.value_or("")}});
}

bool Mirror::Impl::apply_commit_op(Response& res, const std::string& repo, const json& op,
                                   std::map<std::string, std::string>& files) {
  std::string key = op.value("key", "");
  json v = op.value("value", json::object());
  std::string path = v.value("path", "");
  if (key == "deletedFile" || key == "deletedFolder") {
    bool folder = key == "deletedFolder" || path.ends_with("/");
    if (path.ends_with("/")) path.pop_back();
    if (auto p = common::path_problem(path))
      return refuse(res, 400, "", "invalid path '" + v.value("path", "") + "': " + *p);
    if (delete_paths(files, path, folder) == 0)
      return refuse(
          res, 404, "EntryNotFound",
          "cannot delete " + v.value("path", "") + ": no such " + (folder ? "folder" : "file"));
    return true;
  }
  if (auto p = common::path_problem(path))
    return refuse(res, 400, "", "invalid path '" + path + "': " + *p);
  if (key == "file") {
    std::string enc = v.value("encoding", "base64");
    std::optional<std::string> data;
    if (enc == "base64")
      data = st::base64_decode(v.value("content", ""));
    else if (enc == "utf-8" || enc == "utf8")
      data = v.value("content", "");
    if (!data) return refuse(res, 400, "", "bad content for '" + path + "'");
    std::string oid = st::git_blob_sha1(*data);
    auto w = store.put_blob(repo, *data, st::Digest::git(oid, data->size()));
    if (!w) return refuse(res, 500, "", w.error().message);
    files[path] = oid;
  } else if (key == "lfsFile") {
    std::string oid = v.value("oid", "");
    uint64_t size = v.value("size", uint64_t{0});
    std::error_code ec;
    if (!common::is_sha256_hex(oid) || !store.has_blob(repo, oid) ||
        fs::file_size(store.blob_path(repo, oid), ec) != size)
      return refuse(res, 422, "",
                    "Your push was rejected because an LFS pointer (" + path +
                        ") pointed to a file that does not exist");
    files[path] = oid;
  } else {
    return refuse(res, 400, "", "unsupported commit operation '" + key + "'");
  }
  return true;
}

size_t Mirror::Impl::delete_paths(std::map<std::string, std::string>& files,
                                  const std::string& path, bool folder) {
  if (!folder) return files.erase(path);
  const std::string pre = path + "/";
  size_t n = 0;
  for (auto it = files.begin(); it != files.end();) {
    if (it->first.rfind(pre, 0) == 0) {
      it = files.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

void Mirror::Impl::commit(const Request& req, Response& res, const Target& t) {
  if (!require_write(req, res)) return;
  if (!check_read(req, res, t.repo)) return;
  std::string branch = common::join(t.rest, "/", 1, t.rest.size());
  if (query_flag(req, "create_pr"))
    return send_error(res, 400, "", "pull requests are not supported by this mirror");
  // The body was streamed to a temp file (commit_plan) and is read from there twice, a line at
  // a time: every line is validated first, so a refused payload commits nothing; then applied.
  // Only one line is in memory at a time.
  auto scan = [&req](json& header, const std::function<bool(json&)>& on_op) {
    if (req.body_file.empty()) {
      std::istringstream in(req.body);
      return scan_commit_payload(in, header, on_op);
    }
    std::ifstream in(req.body_file, std::ios::binary);
    if (!in) return std::optional<std::string>("cannot read the received commit body");
    return scan_commit_payload(in, header, on_op);
  };
  json header;
  size_t n_ops = 0;
  if (auto problem = scan(header, [&n_ops](json&) { return ++n_ops > 0; }))
    return send_error(res, 400, "", "invalid commit payload: " + *problem);
  std::lock_guard<std::mutex> g(lock_for(t.repo));
  auto head = store.read_ref(t.repo, branch);
  if (!head) return revision_not_found(res, t.repo, branch);
  if (tags_of(t.repo).count(branch))
    return send_error(res, 400, "", "cannot commit to " + branch + ": it is a tag, not a branch");
  if (header.contains("parentCommit") && header["parentCommit"].is_string() &&
      header["parentCommit"].get<std::string>() != *head)
    return send_error(res, 412, "", "A commit has happened since. Please refresh and try again.");
  std::map<std::string, std::string> files;
  auto listed = store.list_snapshot(t.repo, *head);
  if (!listed) return send_error(res, 500, "", listed.error().message);
  for (auto& f : listed.value()) files[f.path] = f.etag;
  bool refused = false;
  json again;
  auto applied = scan(again, [&](json& op) {
    refused = !apply_commit_op(res, t.repo, op, files);
    return !refused;
  });
  if (refused) return;
  if (applied) return send_error(res, 500, "", "commit body changed while read: " + *applied);
  auto c = store.commit_snapshot(t.repo, branch, files, *head);
  if (!c) return send_error(res, 500, "", c.error().message);
  record_commit(t.repo, c.value(), *head, json_text(header, "summary"),
                json_text(header, "description"));
  auto meta = store.read_meta(t.repo).value_or(st::RepoMeta{});
  meta.last_modified = st::iso8601_now();
  if (meta.created_at.empty()) meta.created_at = meta.last_modified;
  (void)store.write_meta(t.repo, meta);
  spdlog::info("mirror: commit {} on {}@{} ({} operations)", c.value(), t.repo, branch, n_ops);
  send_json(res, {{"success", true},
                  {"commitOid", c.value()},
                  {"commitUrl", base_url(req) + "/" + t.repo + "/commit/" + c.value()},
                  {"commitMessage", json_text(header, "summary")},
                  {"hookOutput", ""},
                  {"pullRequestUrl", nullptr}});
}

}  // namespace loftqd::mirror
