// The write side of the Hub client: create_repo, create_branch and upload_folder (preupload,
// the LFS batch API with basic and multipart uploads and verify, one NDJSON commit; no commit
// when the branch already matches the folder).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <fstream>
#include <map>
#include <mutex>
#include <set>

#include <sys/stat.h>

#include "hub/hub.h"
#include "hub/transport.h"

#include "common/fs.h"
#include "common/ids.h"
#include "common/parallel.h"
#include "common/strings.h"
#include "storage/store.h"

namespace fs = std::filesystem;
namespace st = loftqd::storage;

namespace loftqd::hub {

using detail::Ctx;
using detail::from_storage;
using detail::json;
using detail::Transport;

namespace {

constexpr size_t kBatch = 100;  // files per preupload call, objects per LFS batch call
const std::vector<std::string> kLfsJson = {"Content-Type: application/vnd.git-lfs+json",
                                           "Accept: application/vnd.git-lfs+json"};

// Both return true when they made the repo/branch, false when it was there already (409).
Result<bool> make_repo(const Transport& t, const std::string& repo, bool is_private) {
  Ctx c{repo, "", ""};
  if (auto e = detail::check_repo_id(repo)) return *e;
  http::Request req;
  req.method = "POST";
  req.url = t.opt.endpoint + "/api/repos/create";
  req.headers.push_back("Content-Type: application/json");
  auto slash = repo.find('/');
  json body = {{"name", slash == std::string::npos ? repo : repo.substr(slash + 1)},
               {"private", is_private},
               {"type", "model"}};
  if (slash != std::string::npos) body["organization"] = repo.substr(0, slash);
  req.body = body.dump();
  auto r = t.call(req, c);
  if (!r && r.error().http_status == 409) return false;
  if (!r) return r.error();
  return true;
}

Result<bool> make_branch(const Transport& t, const std::string& repo, const std::string& branch,
                         const std::string& from) {
  Ctx c{repo, branch, ""};
  http::Request req;
  req.method = "POST";
  req.url = t.api(repo) + "/branch/" + common::escape_segment(branch);
  req.headers.push_back("Content-Type: application/json");
  req.body = json{{"startingPoint", from}}.dump();
  auto r = t.call(req, c);
  if (!r && r.error().http_status == 409) return false;
  if (!r) return r.error();
  return true;
}

// Hex digests compared without regard to case.
bool same_hex(const std::string& a, const std::string& b) {
  return common::lower(a) == common::lower(b);
}

// A local file to publish.
struct Local {
  std::string path;  // in the repo
  fs::path file;
  uint64_t size = 0;
  std::string sha256, sample;  // sample: the first 512 bytes, for preupload
  bool lfs = false;            // preupload's answer
  KnownHash id;                // the version hashed: sha256, size, inode, mtime
};

// The file's size, inode and modification time (symlinks followed); nullopt when it cannot be
// stat'ed.
std::optional<KnownHash> identity(const fs::path& file) {
  struct stat sb {};
  if (::stat(file.c_str(), &sb) != 0) return std::nullopt;
  KnownHash k;
  k.size = static_cast<uint64_t>(sb.st_size);
  k.inode = static_cast<uint64_t>(sb.st_ino);
  k.mtime_ns = static_cast<int64_t>(sb.st_mtim.tv_sec) * 1000000000 + sb.st_mtim.tv_nsec;
  return k;
}

bool same_version(const KnownHash& a, const KnownHash& b) {
  return a.size == b.size && a.inode == b.inode && a.mtime_ns == b.mtime_ns;
}

// An LFS upload action: where to PUT, its headers, and for multipart the part URLs.
struct UploadAction {
  std::string href;
  std::vector<std::string> headers;
  std::map<uint64_t, std::string> parts;  // part number -> URL
  std::optional<uint64_t> chunk;          // part size
};

// A whole decimal number (digits only, no sign) or a non-negative JSON integer.
std::optional<uint64_t> reply_count(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (!v.is_string()) return std::nullopt;
  const auto& s = v.get_ref<const std::string&>();
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return n;
}

// The upload action of a batch answer for an object of `size` bytes into `a`, checked: a URL
// `href`; for multipart a chunk_size > 0 and exactly the parts 1..ceil(size / chunk_size), each
// a URL. The problem with it, or nullopt.
std::optional<std::string> read_upload_action(const json& up, uint64_t size, UploadAction& a) {
  if (!up.is_object() || !up.contains("href") || !up["href"].is_string() ||
      up["href"].get_ref<const std::string&>().empty())
    return "the upload action has no URL (href)";
  a.href = up["href"].get<std::string>();
  json header = up.value("header", json::object());
  if (!header.is_object()) return "the upload action's header is not an object";
  for (auto& [k, v] : header.items()) {
    if (k == "chunk_size") {
      a.chunk = reply_count(v);
      if (!a.chunk || *a.chunk == 0)
        return "chunk_size " + v.dump() + " is not a whole number of bytes > 0";
    } else if (!k.empty() && std::all_of(k.begin(), k.end(), ::isdigit)) {
      auto n = reply_count(k);
      if (!n || *n == 0 || !v.is_string() || v.get_ref<const std::string&>().empty())
        return "multipart part '" + k + "' has no URL or a bad number";
      a.parts[*n] = v.get<std::string>();
    } else if (v.is_string()) {
      a.headers.push_back(k + ": " + v.get<std::string>());
    }
  }
  if (a.chunk.has_value() != !a.parts.empty())
    return a.chunk ? "chunk_size given without part URLs" : "part URLs given without chunk_size";
  if (a.chunk) {
    const uint64_t want = size / *a.chunk + (size % *a.chunk != 0);
    if (a.parts.size() != want || a.parts.rbegin()->first != want)
      return "multipart offers " + std::to_string(a.parts.size()) + " part URL(s) numbered up to " +
             std::to_string(a.parts.rbegin()->first) + " for " + std::to_string(size) +
             " bytes in chunks of " + std::to_string(*a.chunk) + " (needs parts 1.." +
             std::to_string(want) + ")";
  }
  return std::nullopt;
}

// One NDJSON line.
std::string line(const json& j) {
  return j.dump() + "\n";
}

// One upload_folder call, as its steps.
class Publish {
 public:
  Publish(Client& client, const PublishRequest& pr, const ProgressFn& progress)
      : client_(client),
        t_(client.options()),
        pr_(pr),
        progress_(progress),
        c_{pr.repo, pr.branch, ""} {}

  // Each step guarded: an exception in one (a reply of an unexpected shape, a local I/O error)
  // is an error naming the repo, the endpoint and the step, never an escaping exception.
  Result<CommitInfo> run() {
    if (auto s = guarded("check", [&] { return check(); }); !s) return s.error();
    // Local files, hashed; then the repo and branch as they are.
    if (auto s = guarded("scan", [&] { return scan_dir(); }); !s) return s.error();
    if (auto s = guarded("hash", [&] { return hash_locals(); }); !s) return s.error();
    out_.hashes_reused = hashes_reused_;
    if (auto s = guarded("repo and branch", [&] { return ensure_branch(); }); !s) return s.error();
    auto unchanged = guarded("compare", [&] { return compare_remote(); });
    if (!unchanged) return unchanged.error();
    if (unchanged.value()) return skipped();
    // Which files go to LFS; the LFS objects; one commit with the rest inlined.
    if (auto s = guarded("preupload", [&] { return preupload(); }); !s) return s.error();
    if (auto s = guarded("LFS upload", [&] { return upload_lfs(); }); !s) return s.error();
    auto nd = guarded("commit body", [&] { return commit_body(); });
    if (!nd) return nd.error();
    return guarded("commit", [&] { return post_commit(std::move(nd.value())); });
  }

  // preupload_lfs: the named files hashed, the repo and branch made when missing (`create`) or
  // required, preupload, the LFS objects; no commit.
  Result<PreuploadResult> run_preupload(const std::vector<PreuploadRequest::File>& files,
                                        bool create) {
    if (auto s = guarded("check", [&] { return check(false); }); !s) return s.error();
    std::set<std::string> seen;
    for (const auto& f : files) {
      if (auto p = common::path_problem(f.path))
        return Error{ErrorKind::UnsafePath, "cannot publish '" + f.path + "': " + *p};
      if (!seen.insert(f.path).second)
        return Error{ErrorKind::BadRequest, c_.describe() + ": '" + f.path + "' named twice"};
      locals_.push_back(Local{f.path, f.file, 0, "", "", false, {}});
    }
    if (auto s = guarded("hash", [&] { return hash_locals(); }); !s) return s.error();
    if (auto s = guarded("repo and branch", [&] { return ensure_branch(create); }); !s)
      return s.error();
    if (auto s = guarded("preupload", [&] { return preupload(); }); !s) return s.error();
    if (auto s = guarded("LFS upload", [&] { return upload_lfs(); }); !s) return s.error();
    PreuploadResult out;
    for (const auto& l : locals_) {
      out.hashes[l.path] = l.id;
      (l.lfs ? out.lfs : out.regular).push_back(l.path);
    }
    out.lfs_uploaded = out_.lfs_uploaded;
    out.bytes_uploaded = out_.bytes_uploaded;
    return out;
  }

 private:
  // A reply we cannot use in `step`: InvalidResponse naming the repo, the endpoint and the step.
  Error bad_reply(const std::string& step, const std::string& what) const {
    return Error{ErrorKind::InvalidResponse,
                 c_.describe() + " at " + t_.opt.endpoint + ", " + step + ": " + what};
  }

  template <class F>
  auto guarded(const char* step, F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const std::exception& e) {
      return bad_reply(step, std::string("unexpected failure: ") + e.what());
    }
  }

  // Not offline, a token, and (for upload_folder) a directory to publish.
  Result<Ok> check(bool needs_dir = true) const {
    if (t_.opt.offline) return Error{ErrorKind::Offline, c_.describe() + ": HF_HUB_OFFLINE is set"};
    if (!t_.opt.token)
      return Error{ErrorKind::Unauthorized,
                   c_.describe() + ": publishing needs a token (HF_TOKEN or $HF_HOME/token)"};
    if (auto e = detail::check_repo_id(pr_.repo)) return *e;
    std::error_code ec;
    if (needs_dir && !fs::is_directory(pr_.dir, ec))
      return Error{ErrorKind::Io, "not a directory: " + pr_.dir.string()};
    return Ok{};
  }

  // Regular files and links to them, sorted by path; .git and .cache are skipped.
  Result<Ok> scan_dir() {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(
             pr_.dir, fs::directory_options::follow_directory_symlink, ec);
         !ec && it != fs::end(it); it.increment(ec)) {
      std::string rel = it->path().lexically_relative(pr_.dir).generic_string();
      if (it->is_directory() && (rel == ".git" || rel == ".cache")) {
        it.disable_recursion_pending();
        continue;
      }
      if (!it->is_regular_file()) continue;
      if (auto p = common::path_problem(rel))
        return Error{ErrorKind::UnsafePath, "cannot publish '" + rel + "': " + *p};
      locals_.push_back(Local{rel, it->path(), it->file_size(), "", "", false, {}});
    }
    if (ec) return Error{ErrorKind::Io, "cannot list " + pr_.dir.string() + ": " + ec.message()};
    std::sort(locals_.begin(), locals_.end(), [](auto& a, auto& b) { return a.path < b.path; });
    return Ok{};
  }

  // The sha256 and the preupload sample of every local file, opt.parallel_uploads files at
  // once; their total size. A hash the request brings (PublishRequest::hashes) is taken while
  // the file is still the version it was computed from.
  Result<Ok> hash_locals() {
    auto hashed =
        common::parallel_each<Error>(locals_.size(), t_.opt.parallel_uploads, [&](size_t i) {
          Local& l = locals_[i];
          auto id = identity(l.file);
          if (!id)
            return Result<Ok>(Error{ErrorKind::Io, Ctx{pr_.repo, pr_.branch, l.path}.describe() +
                                                       ": cannot stat " + l.file.string()});
          l.id = *id;
          l.size = id->size;
          auto known = pr_.hashes.find(l.path);
          if (known != pr_.hashes.end() && same_version(known->second, l.id)) {
            l.sha256 = known->second.sha256;
            ++hashes_reused_;
          } else {
            auto h = st::hash_file(l.file, st::HashAlgo::Sha256);
            if (!h) return Result<Ok>(from_storage(h.error(), c_));
            l.sha256 = h.value();
          }
          l.id.sha256 = l.sha256;
          std::ifstream f(l.file, std::ios::binary);
          l.sample.resize(512);
          f.read(l.sample.data(), 512);
          l.sample.resize(static_cast<size_t>(f.gcount()));
          return Result<Ok>(Ok{});
        });
    // Summed from the sizes stat'ed above: preupload_lfs's files come without one.
    for (const auto& l : locals_) total_ += l.size;
    return hashed;
  }

  // The repo and the branch, made when missing (then the publish is never "unchanged"), and
  // the branch's head, the commit's parent.
  Result<Ok> ensure_branch(bool create = true) {
    if (create) {
      auto made_repo = make_repo(t_, pr_.repo, pr_.is_private);
      if (!made_repo) return made_repo.error();
      fresh_ = made_repo.value();
    }
    auto info = client_.repo_info(pr_.repo, pr_.branch);
    if (create && !info && info.error().kind == ErrorKind::RevisionNotFound) {
      if (auto b = make_branch(t_, pr_.repo, pr_.branch, "main"); !b) return b.error();
      fresh_ = true;
      info = client_.repo_info(pr_.repo, pr_.branch);
    }
    if (!info) return info.error();
    parent_ = info.value().sha;
    return Ok{};
  }

  // The branch as it is: files that the dir lacks are to be deleted; true when every local
  // file is already there with the same content and nothing is to be deleted.
  Result<bool> compare_remote() {
    bool unchanged = !fresh_;
    if (fresh_ && !pr_.delete_missing) return unchanged;
    auto tree = client_.list_tree(pr_.repo, parent_, true);
    if (!tree) return tree.error();
    std::map<std::string, const TreeEntry*> remote;
    for (const auto& e : tree.value())
      if (e.type == "file") remote[e.path] = &e;
    if (pr_.delete_missing) {
      std::set<std::string> have;
      for (const auto& l : locals_) have.insert(l.path);
      for (const auto& [path, e] : remote)
        // .gitattributes (the Hub's LFS rules, made with the repo) is kept unless DIR has one.
        if (!have.count(path) && path != ".gitattributes") deletions_.push_back(path);
    }
    unchanged = unchanged && deletions_.empty();
    for (size_t i = 0; unchanged && i < locals_.size(); ++i) {
      auto same = same_content(locals_[i], remote);
      if (!same) return same.error();
      unchanged = same.value();
    }
    return unchanged;
  }

  // Whether the branch holds `l` as it is: git blob sha1, or LFS sha256 and size.
  Result<bool> same_content(const Local& l,
                            const std::map<std::string, const TreeEntry*>& remote) const {
    auto it = remote.find(l.path);
    if (it == remote.end() || it->second->size != l.size) return false;
    if (it->second->lfs_sha256) return same_hex(*it->second->lfs_sha256, l.sha256);
    auto h = st::hash_file(l.file, st::HashAlgo::Sha1, true);  // git blob sha1
    if (!h) return from_storage(h.error(), c_);
    return same_hex(it->second->oid, h.value());
  }

  // No commit: the branch's head, reported as skipped.
  CommitInfo skipped() const {
    CommitInfo out;
    out.commit_oid = parent_;
    out.commit_url = t_.opt.endpoint + "/" + pr_.repo + "/commit/" + parent_;
    out.files = locals_.size();
    out.hashes_reused = hashes_reused_;
    out.skipped = true;
    spdlog::info("hub: {}: every file is unchanged at commit {}; no commit made", c_.describe(),
                 parent_);
    if (progress_) progress_(total_, total_, "");
    return out;
  }

  // Preupload, kBatch files a call: the server says which files go to LFS.
  Result<Ok> preupload() {
    for (size_t i = 0; i < locals_.size(); i += kBatch) {
      const size_t end = std::min(locals_.size(), i + kBatch);
      json files = json::array();
      for (size_t k = i; k < end; ++k)
        files.push_back({{"path", locals_[k].path},
                         {"sample", st::base64_encode(locals_[k].sample)},
                         {"size", locals_[k].size}});
      http::Request req;
      req.method = "POST";
      req.url = t_.api(pr_.repo) + "/preupload/" + common::escape_segment(pr_.branch);
      req.headers.push_back("Content-Type: application/json");
      req.body = json{{"files", files}}.dump();
      auto j = t_.call_json(req, c_);
      if (!j) return j.error();
      std::map<std::string, bool> mode;
      const json& reply = j.value();
      if (!reply.is_object() || !reply.contains("files") || !reply["files"].is_array())
        return bad_reply("preupload", "the reply has no \"files\" array");
      for (const auto& f : reply["files"]) {
        if (!f.is_object() || !f.contains("path") || !f["path"].is_string() ||
            (f.contains("uploadMode") && !f["uploadMode"].is_string()))
          return bad_reply("preupload", "a \"files\" entry is malformed: " + f.dump());
        mode[f["path"].get<std::string>()] = f.value("uploadMode", "regular") == "lfs";
      }
      for (size_t k = i; k < end; ++k)
        locals_[k].lfs = mode.count(locals_[k].path) ? mode[locals_[k].path] : false;
    }
    return Ok{};
  }

  // The LFS files, kBatch per batch call (identical files are one object).
  Result<Ok> upload_lfs() {
    std::vector<const Local*> lfs;
    for (const auto& l : locals_)
      if (l.lfs) lfs.push_back(&l);
    for (size_t i = 0; i < lfs.size(); i += kBatch) {
      std::map<std::string, const Local*> by_oid;
      json objs = json::array();
      for (size_t k = i; k < std::min(lfs.size(), i + kBatch); ++k) {
        if (by_oid.emplace(lfs[k]->sha256, lfs[k]).second)
          objs.push_back({{"oid", lfs[k]->sha256}, {"size", lfs[k]->size}});
      }
      auto batch = lfs_batch(objs);
      if (!batch) return batch.error();
      const json& reply = batch.value();
      if (!reply.is_object() || !reply.contains("objects") || !reply["objects"].is_array())
        return bad_reply("LFS batch", "the reply has no \"objects\" array");
      // Every object checked before a byte goes up; then the uploads: each basic object and
      // each part of a multipart one is a unit, opt.parallel_uploads units at once
      // (huggingface_hub's upload_folder uploads its LFS files on a thread pool too, and one
      // large file gains from its parts going up side by side); then each multipart object's
      // completion and each verify. The first failure stops the rest, and there is no commit.
      std::set<std::string> answered;
      std::vector<Pending> todo;
      for (const auto& o : reply["objects"]) {
        if (!o.is_object() || !o.contains("oid") || !o["oid"].is_string())
          return bad_reply("LFS batch", "an object without a string oid: " + o.dump());
        if (!answered.insert(o["oid"].get<std::string>()).second)
          return bad_reply("LFS batch",
                           "object " + o["oid"].get<std::string>() + " answered twice");
        auto p = plan_object(o, by_oid);
        if (!p) return p.error();
        if (p.value()) todo.push_back(std::move(*p.value()));
      }
      // Every object asked for is answered: one left out would be missing from the commit.
      for (const auto& [oid, l] : by_oid)
        if (!answered.count(oid))
          return bad_reply("LFS batch", "no answer for '" + l->path + "' (oid " + oid + ")");
      std::vector<std::pair<size_t, uint64_t>> units;  // (object, part number; 0: basic)
      for (size_t k = 0; k < todo.size(); ++k) {
        Pending& p = todo[k];
        if (!p.a.chunk) {
          units.emplace_back(k, 0);
          continue;
        }
        p.etags.resize(p.a.parts.size());
        for (const auto& part : p.a.parts) units.emplace_back(k, part.first);
      }
      auto up = common::parallel_each<Error>(units.size(), t_.opt.parallel_uploads, [&](size_t u) {
        Pending& p = todo[units[u].first];
        return units[u].second ? upload_part(p, units[u].second) : upload_basic(*p.l, p.a, p.fc);
      });
      if (!up) return up.error();
      auto fin = common::parallel_each<Error>(todo.size(), t_.opt.parallel_uploads,
                                              [&](size_t k) { return finish_object(todo[k]); });
      if (!fin) return fin.error();
    }
    return Ok{};
  }

  // POST to the LFS batch API: what to do for each object.
  Result<json> lfs_batch(const json& objs) const {
    http::Request req;
    req.method = "POST";
    req.url = t_.opt.endpoint + "/" + pr_.repo + ".git/info/lfs/objects/batch";
    req.headers = kLfsJson;
    req.body = json{{"operation", "upload"},
                    {"transfers", {"basic", "multipart"}},
                    {"objects", objs},
                    {"hash_algo", "sha256"},
                    {"ref", {{"name", "refs/heads/" + pr_.branch}}}}
                   .dump();
    return t_.call_json(req, c_);
  }

  // An object of a batch answer that is to be uploaded.
  struct Pending {
    const Local* l = nullptr;
    std::string oid;
    Ctx fc;
    UploadAction a;
    const json* verify = nullptr;    // the verify action, when the answer has one
    std::vector<std::string> etags;  // multipart: part n's ETag at n - 1
  };

  // One object of a batch answer, checked: nullopt when the server has it already (counted as
  // done), else what to upload.
  Result<std::optional<Pending>> plan_object(const json& o,
                                             const std::map<std::string, const Local*>& by_oid) {
    std::string oid = o["oid"].get<std::string>();
    auto it = by_oid.find(oid);
    if (it == by_oid.end()) return bad_reply("LFS batch", "answered an unknown oid " + oid);
    const Local& l = *it->second;
    Ctx fc{pr_.repo, pr_.branch, l.path};
    if (o.contains("size") && (reply_count(o["size"]) != l.size || o["size"].is_string()))
      return bad_reply("LFS batch", "object '" + l.path + "' listed with size " + o["size"].dump() +
                                        ", not " + std::to_string(l.size));
    if (o.contains("actions") && !o["actions"].is_object())
      return bad_reply("LFS batch", "the actions of '" + l.path + "' are not an object");
    if (o.contains("error"))
      return Error{ErrorKind::BadRequest, fc.describe() + ": LFS batch refused the object: " +
                                              o["error"].value("message", o["error"].dump())};
    if (!o.contains("actions") || !o["actions"].contains("upload")) {
      std::lock_guard<std::mutex> g(count_mu_);
      done_ += l.size;  // already stored
      if (progress_) progress_(done_, total_, l.path);
      return std::optional<Pending>();
    }
    // Upload URLs are presigned: our token goes there only when it is the endpoint's host.
    Pending p{&l, oid, fc, {}, nullptr, {}};
    if (auto bad = read_upload_action(o["actions"]["upload"], l.size, p.a))
      return bad_reply("LFS upload of '" + l.path + "'", *bad);
    if (o["actions"].contains("verify")) p.verify = &o["actions"]["verify"];
    return std::optional<Pending>(std::move(p));
  }

  // Part `num` of a multipart upload PUT to its URL; its ETag kept for the completion.
  Result<Ok> upload_part(Pending& p, uint64_t num) {
    const Local& l = *p.l;
    const uint64_t off = (num - 1) * *p.a.chunk;
    if (off >= l.size)
      return Error{ErrorKind::InvalidResponse, p.fc.describe() + ": multipart part out of range"};
    http::Request put;
    put.method = "PUT";
    put.url = p.a.parts.at(num);
    put.upload_file = l.file;
    put.upload_offset = off;
    put.upload_length = std::min(*p.a.chunk, l.size - off);
    auto r = t_.call(put, p.fc, false);
    if (!r) return r.error();
    p.etags[num - 1] = detail::unquote_etag(r.value().header("etag"));
    sent(put.upload_length, l.path);
    return Ok{};
  }

  // After its bytes: a multipart object's part ETags POSTed to `href`, then the verify action.
  Result<Ok> finish_object(const Pending& p) {
    if (p.a.chunk) {
      json done_parts = json::array();
      for (size_t k = 0; k < p.etags.size(); ++k)
        done_parts.push_back({{"partNumber", k + 1}, {"etag", p.etags[k]}});
      http::Request fin;
      fin.method = "POST";
      fin.url = p.a.href;
      fin.headers = kLfsJson;
      fin.body = json{{"oid", p.oid}, {"parts", done_parts}}.dump();
      auto r = t_.call(fin, p.fc, false);
      if (!r) return r.error();
    }
    if (p.verify) {
      if (auto v = verify(*p.verify, p.oid, *p.l, p.fc); !v) return v.error();
    }
    std::lock_guard<std::mutex> g(count_mu_);
    ++out_.lfs_uploaded;
    return Ok{};
  }

  // Basic: the whole file PUT to `href` (no overall time limit).
  Result<Ok> upload_basic(const Local& l, const UploadAction& a, const Ctx& fc) {
    http::Request put;
    put.method = "PUT";
    put.url = a.href;
    put.headers = a.headers;
    put.headers.push_back("Content-Type: application/octet-stream");
    put.upload_file = l.file;
    put.upload_length = l.size;
    put.total_timeout_s = -1;
    auto r = t_.call(put, fc, false);
    if (!r) return r.error();
    sent(l.size, l.path);
    return Ok{};
  }

  // The verify action: oid and size POSTed (with the token only to the endpoint's origin).
  Result<Ok> verify(const json& ver, const std::string& oid, const Local& l, const Ctx& fc) const {
    http::Request vr;
    vr.method = "POST";
    if (!ver.is_object() || !ver.contains("href") || !ver["href"].is_string())
      return bad_reply("LFS verify of '" + l.path + "'", "the verify action has no URL (href)");
    vr.url = ver["href"].get<std::string>();
    vr.headers = kLfsJson;
    json ver_header = ver.value("header", json::object());
    for (auto& [k, v] : ver_header.items())
      if (v.is_string()) vr.headers.push_back(k + ": " + v.get<std::string>());
    vr.body = json{{"oid", oid}, {"size", l.size}}.dump();
    auto r = t_.call(vr, fc, http::origin_of(vr.url) == t_.origin);
    if (!r) return r.error();
    return Ok{};
  }

  // Counts uploaded bytes and reports progress (from any upload worker).
  void sent(uint64_t n, const std::string& path) {
    std::lock_guard<std::mutex> g(count_mu_);
    done_ += n;
    out_.bytes_uploaded += n;
    if (progress_) progress_(done_, total_, path);
  }

  // The NDJSON commit: header, LFS pointers, regular files inlined (base64), deletions.
  Result<std::string> commit_body() {
    std::string nd = line({{"key", "header"},
                           {"value",
                            {{"summary", pr_.summary.empty() ? "Upload with loftqd" : pr_.summary},
                             {"description", pr_.description},
                             {"parentCommit", parent_}}}});
    for (const auto& l : locals_) {
      if (l.lfs) {
        nd += line({{"key", "lfsFile"},
                    {"value",
                     {{"path", l.path}, {"algo", "sha256"}, {"oid", l.sha256}, {"size", l.size}}}});
        continue;
      }
      std::string content;
      try {
        content = common::read_file(l.file);
      } catch (const std::exception& e) {
        return Error{ErrorKind::Io, e.what()};
      }
      nd += line(
          {{"key", "file"},
           {"value",
            {{"path", l.path}, {"content", st::base64_encode(content)}, {"encoding", "base64"}}}});
      done_ += l.size;
      out_.bytes_uploaded += l.size;
    }
    for (const auto& d : deletions_) nd += line({{"key", "deletedFile"}, {"value", {{"path", d}}}});
    return nd;
  }

  // POSTs the commit. Not retried on 5xx: the parentCommit guard turns a duplicate into a 412
  // rather than a second commit, but a clear failure is better than a guess.
  Result<CommitInfo> post_commit(std::string nd) {
    http::Request req;
    req.method = "POST";
    req.url = t_.api(pr_.repo) + "/commit/" + common::escape_segment(pr_.branch);
    req.headers.push_back("Content-Type: application/x-ndjson");
    req.body = std::move(nd);
    auto j = t_.call_json(req, c_, false);
    if (!j) return j.error();
    const json& reply = j.value();
    if (!reply.is_object() || !reply.contains("commitOid") || !reply["commitOid"].is_string() ||
        !common::is_sha1_hex(common::lower(reply["commitOid"].get<std::string>())))
      return bad_reply("commit",
                       "the reply has no commit id (commitOid): " + reply.dump().substr(0, 200));
    out_.commit_oid = reply["commitOid"].get<std::string>();
    out_.commit_url = reply.contains("commitUrl") && reply["commitUrl"].is_string()
                          ? reply["commitUrl"].get<std::string>()
                          : std::string();
    out_.files = locals_.size();
    out_.deleted = deletions_.size();
    if (progress_) progress_(total_, total_, "");
    return out_;
  }

  Client& client_;
  const Transport t_;
  const PublishRequest& pr_;
  const ProgressFn& progress_;
  const Ctx c_;
  std::vector<Local> locals_;
  uint64_t total_ = 0;
  bool fresh_ = false;  // the repo or the branch was made by this call
  std::string parent_;
  std::vector<std::string> deletions_;
  std::mutex count_mu_;  // done_, out_'s counters and progress_ calls, from upload workers
  uint64_t done_ = 0;
  std::atomic<size_t> hashes_reused_{0};
  CommitInfo out_;
};

}  // namespace

Result<Ok> Client::create_repo(const std::string& repo, bool is_private) {
  auto r = make_repo(Transport(opt_), repo, is_private);
  if (!r) return r.error();
  return Ok{};
}

Result<Ok> Client::create_branch(const std::string& repo, const std::string& branch,
                                 const std::string& from) {
  auto r = make_branch(Transport(opt_), repo, branch, from);
  if (!r) return r.error();
  return Ok{};
}

Result<CommitInfo> Client::upload_folder(const PublishRequest& pr, const ProgressFn& progress) {
  return Publish(*this, pr, progress).run();
}

Result<PreuploadResult> Client::preupload_lfs(const PreuploadRequest& req,
                                              const ProgressFn& progress) {
  PublishRequest pr;
  pr.repo = req.repo;
  pr.branch = req.branch;
  pr.is_private = req.is_private;
  for (const auto& f : req.files)
    if (f.hash) pr.hashes[f.path] = *f.hash;
  return Publish(*this, pr, progress).run_preupload(req.files, req.create);
}

Result<KnownHash> known_hash(const fs::path& file, std::string sha256) {
  auto id = identity(file);
  if (!id) return Error{ErrorKind::Io, "cannot stat " + file.string()};
  id->sha256 = std::move(sha256);
  return *id;
}

}  // namespace loftqd::hub
