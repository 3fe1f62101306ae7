// The mirror's read API: whoami, model info, tree listing, refs, paths-info and file resolution
// (GET and HEAD, byte ranges, an optional send-rate cap).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>

#include "common/ids.h"
#include "common/strings.h"
#include "mirror/internal.h"

namespace fs = std::filesystem;
namespace st = loftqd::storage;
using nlohmann::json;

namespace loftqd::mirror {

namespace {

// The tree / paths-info entry of a file (with its LFS object when it has one).
json file_entry(const st::FileEntry& f) {
  json e = {{"type", "file"}, {"oid", f.git_oid()}, {"size", f.size}, {"path", f.path}};
  if (f.lfs())
    e["lfs"] = {
        {"oid", f.etag}, {"size", f.size}, {"pointerSize", st::lfs_pointer(f.etag, f.size).size()}};
  return e;
}

// The tree / paths-info entry of a folder; its oid is made up from the commit and the path.
json dir_entry(const std::string& commit, const std::string& dir) {
  return {{"type", "directory"},
          {"oid", st::sha1_hex("tree " + commit + " " + dir)},
          {"size", 0},
          {"path", dir}};
}

// The entries of a tree listing under `prefix` (sorted by path): its files, and the folders on
// the way (type "directory"); only the first level unless `recursive`. `found_prefix`: whether
// `prefix` is a folder of the snapshot (always, when it is empty).
std::map<std::string, json> tree_entries(const std::vector<st::FileEntry>& files,
                                         const std::string& prefix, const std::string& commit,
                                         bool recursive, bool& found_prefix) {
  std::map<std::string, json> entries;
  found_prefix = prefix.empty();
  for (const auto& f : files) {
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
      if (!entries.count(dir)) entries[dir] = dir_entry(commit, dir);
      base = dir;
      if (!recursive) break;
    }
    if (!recursive && parts.size() > 1) continue;
    entries[f.path] = file_entry(f);
  }
  return entries;
}

// A decimal number of a Range header; false when it is not one, `huge` set when it exceeds
// 2^64 - 1.
bool range_number(std::string_view s, uint64_t& v, bool& huge) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (p != s.data() + s.size() && ec != std::errc::result_out_of_range) return false;
  huge = ec == std::errc::result_out_of_range;
  return !huge || std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

RangePlan plan_range(std::string_view header, uint64_t size) {
  RangePlan whole{RangePlan::Whole, 0, size};
  std::string spec = common::trim(header);
  if (!spec.starts_with("bytes=")) return whole;
  spec = common::trim(spec.substr(6));
  // Several ranges: the whole file, as the Hub answers them.
  if (spec.find(',') != std::string::npos) return whole;
  auto dash = spec.find('-');
  if (dash == std::string::npos) return whole;
  auto first = common::trim(spec.substr(0, dash)), last = common::trim(spec.substr(dash + 1));
  const RangePlan unsatisfiable{RangePlan::Unsatisfiable, 0, 0};
  uint64_t a = 0, b = 0;
  bool a_huge = false, b_huge = false;
  if (first.empty()) {  // suffix: the last N bytes
    if (!range_number(last, b, b_huge)) return whole;
    if (b == 0 && !b_huge) return unsatisfiable;
    if (size == 0) return unsatisfiable;
    uint64_t n = b_huge ? size : std::min(b, size);
    return {RangePlan::Partial, size - n, n};
  }
  if (!range_number(first, a, a_huge)) return whole;
  if (!last.empty()) {
    if (!range_number(last, b, b_huge)) return whole;
    if (!a_huge && !b_huge && b < a) return whole;  // invalid: ignored (RFC 9110 14.2)
  }
  if (a_huge || a >= size) return unsatisfiable;
  uint64_t end = last.empty() || b_huge ? size - 1 : std::min(b, size - 1);
  return {RangePlan::Partial, a, end - a + 1};
}

namespace {

// Answers a GET/HEAD of a `size`-byte blob with its Range plan: 200 whole, 206 with
// Content-Range, or 416 with Content-Range "bytes */SIZE" and no body.
void send_ranged_blob(const Request& req, Response& res, int fd, uint64_t size, uint64_t rate) {
  RangePlan plan = req.has_header("Range") ? plan_range(req.get_header_value("Range"), size)
                                           : RangePlan{RangePlan::Whole, 0, size};
  if (plan.kind == RangePlan::Unsatisfiable) {
    ::close(fd);
    res.status = 416;
    res.set_header("Content-Range", "bytes */" + std::to_string(size));
    return;
  }
  if (plan.kind == RangePlan::Partial) {
    res.status = 206;
    res.set_header("Content-Range", "bytes " + std::to_string(plan.offset) + "-" +
                                        std::to_string(plan.offset + plan.length - 1) + "/" +
                                        std::to_string(size));
  } else {
    res.status = 200;
  }
  // Sent from the file by the server core (sendfile), capped at `rate` when set.
  res.set_file(fd, plan.offset, plan.length, "application/octet-stream", rate);
}

}  // namespace

void Mirror::Impl::whoami(const Request& req, Response& res) const {
  if (!has_write_token(req)) return send_error(res, 401, "", "Invalid credentials");
  send_json(res, {{"type", "user"},
                  {"id", "loftqd"},
                  {"name", "loftqd"},
                  {"fullname", "loftqd mirror"},
                  {"isPro", false},
                  {"orgs", json::array()},
                  {"auth",
                   {{"type", "access_token"},
                    {"accessToken", {{"displayName", "mirror"}, {"role", "write"}}}}}});
}

void Mirror::Impl::repo_info(const Request& req, Response& res, const Target& t) {
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
  bool blobs = query_flag(req, "blobs");
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
  json j = model_summary(t.repo, *commit, meta);
  j["siblings"] = std::move(siblings);
  send_json(res, j);
}

void Mirror::Impl::tree(const Request& req, Response& res, const Target& t) {
  if (!check_read(req, res, t.repo)) return;
  // rest = tree / {rev...} / {path...}
  std::vector<std::string> segs(t.rest.begin() + 1, t.rest.end());
  if (segs.empty()) return send_error(res, 404, "", "Not found: " + req.path);
  auto rev = resolve_rev(t.repo, segs, true);
  if (!rev) return revision_not_found(res, t.repo, segs[0]);
  std::string prefix = common::join(segs, "/", rev->used, segs.size());
  bool recursive = query_flag(req, "recursive");
  auto files = store.list_snapshot(t.repo, rev->commit);
  if (!files) return send_error(res, 500, "", files.error().message);
  bool found_prefix = false;
  auto entries = tree_entries(files.value(), prefix, rev->commit, recursive, found_prefix);
  if (!found_prefix)
    return send_error(res, 404, "EntryNotFound",
                      "Path " + prefix + " not found in " + t.repo + " at " + rev->name);
  size_t limit = query_limit(req, opt.tree_page_size, 10000);
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
                       common::escape_segment(rev->name) +
                       (prefix.empty() ? "" : "/" + common::escape_path(prefix)) +
                       "?cursor=" + st::base64_encode(std::to_string(cursor + limit)) +
                       "&limit=" + std::to_string(limit) + (recursive ? "&recursive=true" : "");
    res.set_header("Link", "<" + next + ">; rel=\"next\"");
  }
  send_json(res, page);
}

void Mirror::Impl::refs(const Request& req, Response& res, const Target& t) {
  if (!check_read(req, res, t.repo)) return;
  json branches = json::array(), tags = json::array();
  const auto tag_names = tags_of(t.repo);
  for (const auto& r : store.list_refs(t.repo)) {
    if (r.rfind("refs/", 0) == 0) continue;
    auto c = store.read_ref(t.repo, r);
    if (!c) continue;
    bool tag = tag_names.count(r) > 0;
    (tag ? tags : branches)
        .push_back(
            {{"name", r}, {"ref", (tag ? "refs/tags/" : "refs/heads/") + r}, {"targetCommit", *c}});
  }
  send_json(res, {{"branches", branches}, {"tags", tags}, {"converts", json::array()}});
}

void Mirror::Impl::resolve_file(const Request& req, Response& res, const Target& t, bool raw) {
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
  if (auto p = common::path_problem(path)) return send_error(res, 400, "", "invalid path: " + *p);
  auto link = store.snapshot_dir(t.repo, rev->commit) / path;
  std::error_code ec;
  auto target = fs::read_symlink(link, ec);
  std::string etag = ec ? "" : target.filename().string();
  if (ec || (!common::is_sha1_hex(etag) && !common::is_sha256_hex(etag)) ||
      !store.has_blob(t.repo, etag))
    return send_error(res, 404, "EntryNotFound",
                      path + " does not exist on \"" + rev->name + "\" of " + t.repo);
  auto blob = store.blob_path(t.repo, etag);
  uint64_t size = fs::file_size(blob, ec);
  if (ec) return send_error(res, 500, "", "cannot stat blob");
  res.set_header("ETag", quote_etag(etag));
  res.set_header("X-Repo-Commit", rev->commit);
  res.set_header("Accept-Ranges", "bytes");
  if (etag.size() == 64 && !raw) {
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
  send_ranged_blob(req, res, fd, size, opt.max_bytes_per_s);
}

// POST /api/models/{repo}/paths-info/{rev} {paths:[...]}: the entries that exist.
void Mirror::Impl::paths_info(const Request& req, Response& res, const Target& t) {
  if (!check_read(req, res, t.repo)) return;
  std::string rev = common::join(t.rest, "/", 1, t.rest.size());
  auto commit = resolve_name(t.repo, rev);
  if (!commit) return revision_not_found(res, t.repo, rev);
  std::vector<std::string> wanted;
  try {
    if (req.get_header_value("Content-Type").find("json") != std::string::npos) {
      auto j = json::parse(req.body);
      for (const auto& p : j.value("paths", json::array())) wanted.push_back(p.get<std::string>());
    } else {
      for (auto it = req.params.find("paths"); it != req.params.end() && it->first == "paths"; ++it)
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
        out.push_back(file_entry(f));
      } else if (!dir && f.path.rfind(w + "/", 0) == 0) {
        dir = true;
      }
    }
    if (dir) out.push_back(dir_entry(*commit, w));
  }
  send_json(res, out);
}

}  // namespace loftqd::mirror
