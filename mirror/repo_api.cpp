// The mirror's repo-level API beyond files: the commit log and its listing, tags, repo deletion,
// the model listing, the commit page commitUrl points at, the root page, the Xet token routes
// (refused with a hint) and the README front matter behind cardData and tags.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "common/fs.h"
#include "common/ids.h"
#include "common/strings.h"
#include "mirror/internal.h"

namespace fs = std::filesystem;
namespace st = loftqd::storage;
using nlohmann::json;

namespace loftqd::mirror {

namespace {

constexpr const char* kTagsFile = "loftqd-tags.json";
constexpr const char* kCommitsDir = "loftqd-commits";
constexpr size_t kMaxReadme = size_t{1} << 20;  // front matter is read from the first MiB

// One YAML scalar: quotes stripped, true/false/null and integers typed, the rest a string.
json yaml_scalar(std::string v) {
  v = common::trim(v);
  if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front())
    return v.substr(1, v.size() - 2);
  if (v == "true" || v == "True") return true;
  if (v == "false" || v == "False") return false;
  if (v.empty() || v == "null" || v == "~") return nullptr;
  if (v.find_first_not_of("0123456789") == std::string::npos && v.size() < 18) return std::stoll(v);
  if (v.front() == '-' && v.size() > 1 && v.size() < 18 &&
      v.find_first_not_of("0123456789", 1) == std::string::npos)
    return std::stoll(v);
  return v;
}

// A scalar or an inline list ([a, b]) of scalars, without a trailing " # comment"; nullopt for
// other flow forms.
std::optional<json> yaml_value(const std::string& raw) {
  std::string v = common::trim(raw);
  if (!v.empty() && (v[0] == '"' || v[0] == '\'')) {
    auto end = v.find(v[0], 1);
    if (end != std::string::npos) {
      std::string after = common::trim(v.substr(end + 1));
      if (after.empty() || after[0] == '#') v = v.substr(0, end + 1);
    }
  } else if (auto hash = v.find(" #"); hash != std::string::npos) {
    v = common::trim(v.substr(0, hash));
  }
  if (v.starts_with("{")) return v == "{}" ? std::optional<json>(json::object()) : std::nullopt;
  if (!v.starts_with("[")) return yaml_scalar(v);
  if (!v.ends_with("]")) return std::nullopt;
  json a = json::array();
  std::string inner = common::trim(v.substr(1, v.size() - 2));
  if (inner.empty()) return a;
  for (const auto& item : common::split(inner, ',')) a.push_back(yaml_scalar(item));
  return a;
}

size_t indent_of(const std::string& line) {
  return line.find_first_not_of(' ');
}

// "key: value" -> {key, value}; nullopt when the line has no "key:" at its start.
std::optional<std::pair<std::string, std::string>> yaml_key(const std::string& line) {
  auto colon = line.find(':');
  if (colon == std::string::npos || colon == 0) return std::nullopt;
  if (colon + 1 < line.size() && line[colon + 1] != ' ') return std::nullopt;
  std::string key = common::trim(line.substr(0, colon));
  if (key.size() >= 2 && (key.front() == '"' || key.front() == '\'') && key.back() == key.front())
    key = key.substr(1, key.size() - 2);
  return std::make_pair(key, line.substr(colon + 1));
}

std::string tag_list_json(const std::set<std::string>& tags) {
  return json(std::vector<std::string>(tags.begin(), tags.end())).dump() + "\n";
}

}  // namespace

std::optional<json> parse_front_matter(const std::string& readme, std::string& problem) {
  std::istringstream in(readme);
  std::string line;
  std::getline(in, line);
  if (common::trim(line) != "---") return json::object();
  json out = json::object();
  auto fail = [&problem](std::string why) -> std::optional<json> {
    problem = std::move(why);
    return std::nullopt;
  };
  std::string open_key;  // a "key:" with no value, waiting for its list items or sub-keys
  for (size_t n = 2; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (common::trim(line) == "---") return out;
    std::string t = common::trim(line);
    if (t.empty() || t.starts_with("#")) continue;
    size_t ind = indent_of(line);
    std::string where = "front matter line " + std::to_string(n) + " ('" + t + "')";
    if (t.starts_with("- ") || t == "-") {
      if (open_key.empty() || (!out[open_key].is_null() && !out[open_key].is_array()))
        return fail(where + ": a list item outside a list");
      std::string item = t == "-" ? "" : t.substr(2);
      if (yaml_key(item)) return fail(where + ": a list of mappings");
      auto v = yaml_value(item);
      if (!v) return fail(where + ": unsupported value");
      out[open_key].push_back(*v);
      continue;
    }
    auto kv = yaml_key(t);
    if (!kv) return fail(where + ": not 'key: value'");
    if (ind > 0) {
      if (open_key.empty() || (!out[open_key].is_null() && !out[open_key].is_object()))
        return fail(where + ": unexpected indentation");
      if (common::trim(kv->second).empty()) return fail(where + ": nesting deeper than one level");
      auto v = yaml_value(kv->second);
      if (!v) return fail(where + ": unsupported value");
      out[open_key][kv->first] = *v;
      continue;
    }
    open_key.clear();
    if (common::trim(kv->second).empty()) {
      open_key = kv->first;
      out[open_key] = nullptr;
      continue;
    }
    auto v = yaml_value(kv->second);
    if (!v) return fail(where + ": unsupported value");
    out[kv->first] = *v;
  }
  return fail("front matter has no closing '---'");
}

std::string json_text(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

json card_tags(const json& card) {
  json tags = json::array();
  if (auto it = card.find("tags"); it != card.end()) {
    if (it->is_array()) {
      for (const auto& t : *it)
        if (t.is_string()) tags.push_back(t);
    } else if (it->is_string()) {
      tags.push_back(*it);
    }
  }
  if (auto it = card.find("license"); it != card.end() && it->is_string())
    tags.push_back("license:" + it->get<std::string>());
  return tags;
}

std::optional<json> Mirror::Impl::card_of(const std::string& repo,
                                          const std::string& commit) const {
  auto path = store.snapshot_dir(repo, commit) / "README.md";
  std::ifstream f(path, std::ios::binary);
  if (!f) return json::object();
  std::string text(kMaxReadme, '\0');
  f.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(f.gcount()));
  std::string problem;
  auto card = parse_front_matter(text, problem);
  if (!card) spdlog::warn("mirror: {}: README.md at {}: {}; no cardData", repo, commit, problem);
  return card;
}

json Mirror::Impl::model_summary(const std::string& repo, const std::string& commit,
                                 const st::RepoMeta& meta) const {
  auto slash = repo.find('/');
  json j = {{"_id", repo},
            {"id", repo},
            {"modelId", repo},
            {"author", slash == std::string::npos ? std::string() : repo.substr(0, slash)},
            {"sha", commit},
            {"lastModified", meta.last_modified.empty() ? st::iso8601_now() : meta.last_modified},
            {"createdAt", meta.created_at.empty() ? st::iso8601_now() : meta.created_at},
            {"private", meta.is_private},
            {"gated", meta.gated ? json("auto") : json(false)},
            {"disabled", false},
            {"downloads", 0},
            {"likes", 0},
            {"tags", json::array()},
            {"library_name", "peft"}};
  if (auto card = card_of(repo, commit); card && !card->empty()) {
    j["cardData"] = *card;
    j["tags"] = card_tags(*card);
    for (const char* k : {"library_name", "pipeline_tag"})
      if (card->contains(k) && (*card)[k].is_string()) j[k] = (*card)[k];
  }
  return j;
}

// ---- the commit log ----

void Mirror::Impl::record_commit(const std::string& repo, const std::string& id,
                                 const std::optional<std::string>& parent, const std::string& title,
                                 const std::string& message) const {
  json j = {{"id", id},
            {"parent", parent.value_or("")},
            {"title", title},
            {"message", message},
            {"date", st::iso8601_now()}};
  auto dir = store.repo_dir(repo) / kCommitsDir;
  try {
    fs::create_directories(dir);
    common::write_file_atomic(dir / (id + ".json"), j.dump() + "\n");
  } catch (const std::exception& e) {
    spdlog::error("mirror: {}: cannot record commit {} in the commit log: {}", repo, id, e.what());
  }
}

std::optional<CommitRecord> Mirror::Impl::read_commit(const std::string& repo,
                                                      const std::string& id) const {
  if (!common::is_sha1_hex(id)) return std::nullopt;
  std::ifstream f(store.repo_dir(repo) / kCommitsDir / (id + ".json"));
  if (!f) return std::nullopt;
  try {
    auto j = json::parse(f);
    return CommitRecord{j.value("id", id), j.value("parent", ""), j.value("title", ""),
                        j.value("message", ""), j.value("date", "")};
  } catch (const std::exception& e) {
    spdlog::warn("mirror: {}: unreadable commit log entry {}: {}", repo, id, e.what());
    return std::nullopt;
  }
}

// GET /api/models/{repo}/commits/{rev}?limit=&p=: newest first, pages linked by Link rel=next.
void Mirror::Impl::list_commits(const Request& req, Response& res, const Target& t) {
  if (!check_read(req, res, t.repo)) return;
  std::string rev = t.rest.size() >= 2 ? common::join(t.rest, "/", 1, t.rest.size()) : "main";
  auto head = resolve_name(t.repo, rev);
  if (!head) return revision_not_found(res, t.repo, rev);
  size_t limit = query_limit(req, 50, 1000);
  size_t page = 0;
  if (req.has_param("p")) {
    const std::string v = req.get_param_value("p");
    if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 9)
      return send_error(res, 400, "",
                        "query parameter 'p' must be a page number (got '" + v + "')");
    page = std::stoul(v);
  }
  std::vector<std::string> ids;  // newest first, along the recorded parents
  std::set<std::string> seen;
  for (std::string id = *head; !id.empty() && seen.insert(id).second;) {
    ids.push_back(id);
    auto rec = read_commit(t.repo, id);
    id = rec ? rec->parent : std::string();
  }
  auto meta = store.read_meta(t.repo).value_or(st::RepoMeta{});
  json out = json::array();
  for (size_t i = page * limit; i < ids.size() && i < (page + 1) * limit; ++i) {
    auto rec = read_commit(t.repo, ids[i]).value_or(CommitRecord{ids[i], "", "", "", ""});
    std::string date = !rec.date.empty()          ? rec.date
                       : !meta.created_at.empty() ? meta.created_at
                                                  : st::iso8601_now();
    out.push_back({{"id", ids[i]},
                   {"title", rec.title},
                   {"message", rec.message},
                   {"authors", json::array({{{"user", "loftqd"}, {"avatar", ""}}})},
                   {"date", date}});
  }
  if ((page + 1) * limit < ids.size())
    res.set_header("Link", "<" + base_url(req) + "/api/models/" + t.repo + "/commits/" +
                               common::escape_segment(rev) + "?p=" + std::to_string(page + 1) +
                               "&limit=" + std::to_string(limit) + ">; rel=\"next\"");
  send_json(res, out);
}

// GET /{repo}/commit/{sha}: what commitUrl points at.
void Mirror::Impl::commit_page(const Request& req, Response& res, const Target& t) {
  if (!check_read(req, res, t.repo)) return;
  const std::string& id = t.rest[1];
  auto c = common::is_sha1_hex(id) ? store.resolve(t.repo, id) : std::nullopt;
  if (!c) return revision_not_found(res, t.repo, id);
  auto rec = read_commit(t.repo, id).value_or(CommitRecord{id, "", "", "", ""});
  auto files = store.list_snapshot(t.repo, id);
  if (!files) return send_error(res, 500, "", files.error().message);
  json paths = json::array();
  for (const auto& f : files.value()) paths.push_back(f.path);
  send_json(res, {{"id", id},
                  {"repo", t.repo},
                  {"title", rec.title},
                  {"message", rec.message},
                  {"date", rec.date},
                  {"parent", rec.parent.empty() ? json(nullptr) : json(rec.parent)},
                  {"files", paths}});
}

// ---- tags ----

std::set<std::string> Mirror::Impl::tags_of(const std::string& repo) const {
  std::set<std::string> out;
  std::ifstream f(store.repo_dir(repo) / kTagsFile);
  if (!f) return out;
  try {
    for (const auto& t : json::parse(f))
      if (t.is_string()) out.insert(t.get<std::string>());
  } catch (const std::exception& e) {
    spdlog::warn("mirror: {}: unreadable {}: {}", repo, kTagsFile, e.what());
  }
  return out;
}

// POST /api/models/{repo}/tag/{rev} {"tag": NAME, "message": ...}
void Mirror::Impl::create_tag(const Request& req, Response& res, const Target& t) {
  if (!require_write(req, res)) return;
  if (!check_read(req, res, t.repo)) return;
  std::string rev = common::join(t.rest, "/", 1, t.rest.size());
  json body;
  if (!parse_json_body(req, res, body)) return;
  std::string tag =
      body.contains("tag") && body["tag"].is_string() ? body["tag"].get<std::string>() : "";
  if (tag.empty()) return send_error(res, 400, "", "the body needs a \"tag\" (string)");
  if (auto p = common::revision_problem(tag))
    return send_error(res, 400, "", "invalid tag name '" + tag + "': " + *p);
  std::lock_guard<std::mutex> g(lock_for(t.repo));
  auto commit = resolve_name(t.repo, rev);
  if (!commit) return revision_not_found(res, t.repo, rev);
  if (common::is_sha1_hex(tag))
    return send_error(res, 400, "", "invalid tag name '" + tag + "': it looks like a commit id");
  if (store.read_ref(t.repo, tag))
    return send_error(res, 409, "", "Reference already exists: " + tag);
  auto tags = tags_of(t.repo);
  tags.insert(tag);
  try {
    common::write_file_atomic(store.repo_dir(t.repo) / kTagsFile, tag_list_json(tags));
  } catch (const std::exception& e) {
    return send_error(res, 500, "", e.what());
  }
  auto w = store.write_ref(t.repo, tag, *commit);
  if (!w) return send_error(res, 500, "", w.error().message);
  spdlog::info("mirror: tag {} -> {} on {}", tag, *commit, t.repo);
  send_json(res, json::object());
}

// DELETE /api/models/{repo}/tag/{tag}
void Mirror::Impl::delete_tag(const Request& req, Response& res, const Target& t) {
  if (!require_write(req, res)) return;
  if (!check_read(req, res, t.repo)) return;
  std::string tag = common::join(t.rest, "/", 1, t.rest.size());
  std::lock_guard<std::mutex> g(lock_for(t.repo));
  auto tags = tags_of(t.repo);
  if (!tags.count(tag) || !store.read_ref(t.repo, tag)) return revision_not_found(res, t.repo, tag);
  std::error_code ec;
  fs::remove(store.ref_path(t.repo, tag), ec);
  if (ec) return send_error(res, 500, "", "cannot remove tag " + tag + ": " + ec.message());
  tags.erase(tag);
  try {
    common::write_file_atomic(store.repo_dir(t.repo) / kTagsFile, tag_list_json(tags));
  } catch (const std::exception& e) {
    return send_error(res, 500, "", e.what());
  }
  send_json(res, json::object());
}

// ---- repos ----

// DELETE /api/repos/delete {"name", "organization", "type"}
void Mirror::Impl::delete_repo(const Request& req, Response& res) {
  if (!require_write(req, res)) return;
  json body;
  if (!parse_json_body(req, res, body)) return;
  const auto named = repo_of_body(body, res);
  if (!named) return;
  const std::string& repo = *named;
  std::lock_guard<std::mutex> g(lock_for(repo));
  if (!store.has_repo(repo))
    return send_error(res, 404, "RepoNotFound", "Repository Not Found: " + repo);
  // Renamed out of the store's namespace first, so no reader sees it half-removed.
  auto dir = store.repo_dir(repo);
  auto gone = store.root() / (".loftqd-deleted-" + common::random_hex(12));
  std::error_code ec;
  fs::rename(dir, gone, ec);
  if (ec) return send_error(res, 500, "", "cannot delete " + repo + ": " + ec.message());
  try {
    common::fsync_dir(store.root());
  } catch (const std::exception& e) {
    spdlog::warn("mirror: {}", e.what());
  }
  fs::remove_all(gone, ec);
  if (ec) spdlog::warn("mirror: deleted {}; leftover {}: {}", repo, gone.string(), ec.message());
  spdlog::info("mirror: deleted repo {}", repo);
  send_json(res, json::object());
}

// GET /api/models?author=&search=&filter=&limit=&cursor=: the repos with a main branch, by id.
void Mirror::Impl::list_models(const Request& req, Response& res) {
  const bool authed = has_write_token(req);
  const std::string author = req.get_param_value("author");
  const std::string search = common::lower(req.get_param_value("search"));
  std::vector<std::string> filters;
  for (auto it = req.params.find("filter"); it != req.params.end() && it->first == "filter"; ++it)
    for (const auto& f : common::split(it->second, ',')) filters.push_back(f);
  size_t limit = query_limit(req, 1000, 1000);
  size_t cursor = 0;
  if (req.has_param("cursor")) {
    auto dec = st::base64_decode(req.get_param_value("cursor"));
    if (!dec || dec->empty() || dec->find_first_not_of("0123456789") != std::string::npos ||
        dec->size() > 9)
      return send_error(res, 400, "", "invalid cursor");
    cursor = std::stoul(*dec);
  }
  json all = json::array();
  for (const auto& repo : store.list_repos()) {
    auto head = store.read_ref(repo, "main");
    if (!head) continue;
    auto slash = repo.find('/');
    if (!author.empty() && (slash == std::string::npos || repo.substr(0, slash) != author))
      continue;
    if (!search.empty() && common::lower(repo).find(search) == std::string::npos) continue;
    auto meta = store.read_meta(repo).value_or(st::RepoMeta{});
    if (meta.is_private && !authed) continue;
    json m = model_summary(repo, *head, meta);
    bool keep = std::all_of(filters.begin(), filters.end(), [&](const std::string& f) {
      return std::find(m["tags"].begin(), m["tags"].end(), f) != m["tags"].end();
    });
    if (keep) all.push_back(std::move(m));
  }
  json page = json::array();
  for (size_t i = cursor; i < all.size() && i < cursor + limit; ++i) page.push_back(all[i]);
  if (cursor + limit < all.size()) {
    Params q = req.params;
    q.erase("cursor");
    q.emplace("cursor", st::base64_encode(std::to_string(cursor + limit)));
    std::string query;
    for (const auto& [k, v] : q)
      query +=
          (query.empty() ? "" : "&") + common::escape_segment(k) + "=" + common::escape_segment(v);
    res.set_header("Link", "<" + base_url(req) + "/api/models?" + query + ">; rel=\"next\"");
  }
  send_json(res, page);
}

// ---- pages and refusals ----

void Mirror::Impl::root_page(const Request& req, Response& res) const {
  const std::string url = base_url(req);
  res.set_content(
      "<!doctype html><html><head><meta charset=\"utf-8\"><title>loftqd mirror</title></head>"
      "<body><h1>loftqd mirror</h1><p>A Hugging Face Hub-compatible mirror of LoftQ models "
      "served by loftqd.</p><p>Use it with the Hub clients: <code>export HF_ENDPOINT=" +
          url +
          " HF_HUB_DISABLE_XET=1</code>, then <code>hf download ORG/NAME</code> or "
          "<code>loftqd fetch ORG/NAME</code>. Writes need the mirror's write token.</p>"
          "<p>Models: <a href=\"/api/models\">/api/models</a></p></body></html>\n",
      "text/html; charset=utf-8");
}

void Mirror::Impl::xet_token(const Request&, Response& res) const {
  send_error(res, 501, "",
             "This mirror (loftqd) does not speak the Xet protocol: set HF_HUB_DISABLE_XET=1 so "
             "the client uses plain HTTP and LFS");
}

}  // namespace loftqd::mirror
