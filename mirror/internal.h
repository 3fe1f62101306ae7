// Internal to loftqd_mirror: the server state (Mirror::Impl) and what its parts share. The
// handlers are methods of Impl, defined by concern:
//   server.cpp     lifecycle, route table and dispatch, extra routes, auth, error responses
//   read_api.cpp   model info, tree, refs, resolve (GET/HEAD with ranges), paths-info, whoami
//   write_api.cpp  repo create, branches, preupload, NDJSON commit
//   lfs.cpp        LFS batch, basic and multipart upload, completion, verify
//   repo_api.cpp   commit log and listing, tags, repo delete, model listing, commit page, root
//                  page, Xet token routes, README front matter (cardData)
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <istream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "mirror/http.h"
#include "mirror/mirror.h"
#include "storage/store.h"

namespace loftqd::mirror {

inline constexpr const char* kJson = "application/json";

// An error as the Hub sends it: X-Error-Code (when `code` is set), X-Error-Message and a JSON
// body {"error": message}.
void send_error(Response& res, int status, const std::string& code, const std::string& message);
void send_json(Response& res, const nlohmann::json& j, int status = 200);
std::string quote_etag(const std::string& e);  // "\"" + e + "\""
// The request's JSON body into `out`; false after answering 400 "invalid JSON body". With
// `empty_is_object`, an empty body reads as {}.
bool parse_json_body(const Request& req, Response& res, nlohmann::json& out,
                     bool empty_is_object = false);
// The repo a repo-create/-delete body names ({"name", "organization", "type"}), as the Hub reads
// it; nullopt after answering 400 (not a model repo, or not a valid repo id).
std::optional<std::string> repo_of_body(const nlohmann::json& body, Response& res);

// A boolean query parameter as the Hub reads it: true/True/1 and false/False/0 (any case);
// absent or empty: `dflt`. Anything else throws std::invalid_argument naming the parameter (the
// dispatch answers 400 with that message).
bool query_flag(const Request& req, const std::string& name, bool dflt = false);
// The page size of a paginated listing: `limit` clamped to [1, max], else `dflt`.
size_t query_limit(const Request& req, size_t dflt, size_t max);

// The README front matter (between the leading "---" lines) as JSON, for a subset of YAML:
// `key: scalar`, `key: [a, b]`, `key:` followed by `- item` lines or by indented `sub: value`
// lines. Empty object when there is no front matter; nullopt (with `problem` set) when a line is
// outside that subset.
std::optional<nlohmann::json> parse_front_matter(const std::string& readme, std::string& problem);
// j[key] when it is a string, else "" (for optional fields that may be null or absent).
std::string json_text(const nlohmann::json& j, const char* key);
// The Hub's tags for a card: its `tags` (a list or one string), then "license:X" for `license`.
nlohmann::json card_tags(const nlohmann::json& card);

// A commit as the mirror's log records it ({repo}/loftqd-commits/{sha}.json).
struct CommitRecord {
  std::string id, parent, title, message, date;
};

// A repo reference parsed out of a request path.
struct Target {
  std::string repo;
  std::vector<std::string> rest;  // path segments after the repo id
};

// A revision resolved from the front of a path: its name, commit and the segments it used.
struct Rev {
  std::string name, commit;
  size_t used = 0;
};

// How a GET/HEAD of a `size`-byte file answers a Range header, as the Hub does: Whole (200) for
// an unparsable header, an invalid range or several ranges; Partial (206, [offset, offset+length),
// the end clamped to the file); Unsatisfiable (416) for a start at or past the end or an empty
// suffix.
struct RangePlan {
  enum Kind { Whole, Partial, Unsatisfiable } kind = Whole;
  uint64_t offset = 0, length = 0;
};
RangePlan plan_range(std::string_view header, uint64_t size);

// Parses an NDJSON commit body into its header value and operation lines, validating every line
// (types of header and operation members, known operation kinds, exactly one header) before any
// is applied; the first problem found, naming its line, or nullopt.
std::optional<std::string> parse_commit_payload(std::istream& body, nlohmann::json& header,
                                                std::vector<nlohmann::json>& ops);
// The same, handing each validated operation to `on_op` as it is read (nothing is kept); a false
// from on_op stops the scan (nullopt).
std::optional<std::string> scan_commit_payload(std::istream& body, nlohmann::json& header,
                                               const std::function<bool(nlohmann::json&)>& on_op);
std::optional<std::string> parse_commit_payload(const std::string& body, nlohmann::json& header,
                                                std::vector<nlohmann::json>& ops);

// Body caps (docs/hub.md, "Limits"): JSON bodies and the extra routes' bodies, NDJSON commit
// bodies (streamed to a temp file, never held whole in memory).
inline constexpr uint64_t kJsonBodyCap = uint64_t{1} << 20;
inline constexpr uint64_t kCommitBodyCap = uint64_t{512} << 20;

struct Mirror::Impl {
  MirrorOptions opt;
  storage::Store store;
  std::unique_ptr<HttpServer> http;
  std::string secret;  // signs LFS upload URLs (never the write token)
  int port = -1;
  // serve() waits here until stop().
  std::mutex serve_mu;
  std::condition_variable serve_cv;
  bool serving = false, served = false, stop_requested = false;
  std::thread thread;
  // Removes the store's stale temps (storage::kStaleTempAge) at start-up and every
  // kTempSweepInterval until stop.
  static constexpr std::chrono::minutes kTempSweepInterval{30};
  std::thread sweeper;
  std::mutex sweep_mu;
  std::condition_variable sweep_cv;
  bool sweep_stop = false;
  void start_temp_sweeper();
  void stop_temp_sweeper();
  std::mutex repos_mu;
  std::map<std::string, std::unique_ptr<std::mutex>> repo_mu;

  explicit Impl(MirrorOptions o);

  // ---- shared (server.cpp) ----

  // A revision name to a commit; "HEAD" is the default branch (main).
  std::optional<std::string> resolve_name(const std::string& repo, const std::string& rev) const;
  // Serializes the writes to one repo.
  std::mutex& lock_for(const std::string& repo);
  std::string base_url(const Request& req) const;  // http://{Host}
  bool has_write_token(const Request& req) const;
  // Write endpoints: 401 unless the write token is configured and presented.
  bool require_write(const Request& req, Response& res) const;
  // Splits "org/name/rest..." (or "name/rest...") into a repo id and the rest, knowing which
  // keywords follow a repo id in the API.
  Target parse_repo(const std::vector<std::string>& segs,
                    const std::set<std::string>& keywords) const;
  // Read access: 401 (anonymous) / 404 (with the token) RepoNotFound for a missing repo; private
  // and gated repos need the token.
  bool check_read(const Request& req, Response& res, const std::string& repo,
                  storage::RepoMeta* meta_out = nullptr) const;
  // Resolves the revision at the front of `segs` (one segment, or three for refs/pr/N and
  // refs/convert/X; a branch with slashes is matched shortest-first).
  std::optional<Rev> resolve_rev(const std::string& repo, const std::vector<std::string>& segs,
                                 bool greedy_path) const;
  void revision_not_found(Response& res, const std::string& repo, const std::string& rev) const;

  // ---- dispatch (server.cpp) ----

  // Decides, from a request's head on the server's event loop, what happens to its body: the
  // write routes check the token (or the LFS ticket) here and refuse before a byte is read;
  // commits and LFS uploads stream to a file; everything else is read into memory up to
  // kJsonBodyCap.
  BodyPlan admit(const Request& head);
  BodyPlan commit_plan(const Request& head, const std::string& repo);
  // Answers a complete request (on a worker): extra routes, then the Hub API.
  void handle(Request& req, Response& res);
  void on_get(const Request& req, Response& res);
  void on_post(const Request& req, Response& res);
  void on_put(const Request& req, Response& res);
  void on_delete(const Request& req, Response& res);
  // Runs an extra route when one matches; true when it answered.
  bool extra(const Request& req, Response& res);

  // ---- read API (read_api.cpp) ----

  void whoami(const Request& req, Response& res) const;
  void repo_info(const Request& req, Response& res, const Target& t);
  void tree(const Request& req, Response& res, const Target& t);
  void refs(const Request& req, Response& res, const Target& t);
  // GET/HEAD /{repo}/resolve/{rev}/{path}; `raw` (/{repo}/raw/...): the same bytes without the
  // X-Linked-* headers of an LFS file.
  void resolve_file(const Request& req, Response& res, const Target& t, bool raw = false);
  void paths_info(const Request& req, Response& res, const Target& t);
  // The card (README front matter) of a snapshot; empty when it has no README or no front
  // matter, nullopt when the front matter cannot be read (logged).
  std::optional<nlohmann::json> card_of(const std::string& repo, const std::string& commit) const;

  // ---- write API (write_api.cpp) ----

  void create_repo(const Request& req, Response& res);
  void create_branch(const Request& req, Response& res, const Target& t);
  void preupload(const Request& req, Response& res, const Target& t);
  void commit(const Request& req, Response& res, const Target& t);
  // Applies one NDJSON operation (file, lfsFile, deletedFile, deletedFolder) to `files` (path ->
  // etag); answers the request and returns false when it is refused.
  bool apply_commit_op(Response& res, const std::string& repo, const nlohmann::json& op,
                       std::map<std::string, std::string>& files);

  // A deleted path as the clients send it: "dir/" (trailing slash, from deletedFile or
  // deletedFolder) and deletedFolder "dir" delete everything under dir/; else the one file.
  // Returns the number of files removed from `files`.
  static size_t delete_paths(std::map<std::string, std::string>& files, const std::string& path,
                             bool folder);

  // ---- repos, commits, tags (repo_api.cpp) ----

  // Records a commit in the repo's commit log (atomic write); a failure is logged, the commit
  // itself stands (the listing then shows it without title).
  void record_commit(const std::string& repo, const std::string& id,
                     const std::optional<std::string>& parent, const std::string& title,
                     const std::string& message) const;
  std::optional<CommitRecord> read_commit(const std::string& repo, const std::string& id) const;
  std::set<std::string> tags_of(const std::string& repo) const;
  // The fields model info and the model listing share (id, sha, dates, private, gated, tags,
  // cardData from the README, ...).
  nlohmann::json model_summary(const std::string& repo, const std::string& commit,
                               const storage::RepoMeta& meta) const;
  void list_commits(const Request& req, Response& res, const Target& t);
  void create_tag(const Request& req, Response& res, const Target& t);
  void delete_tag(const Request& req, Response& res, const Target& t);
  void delete_repo(const Request& req, Response& res);
  void list_models(const Request& req, Response& res);
  void commit_page(const Request& req, Response& res, const Target& t);
  void root_page(const Request& req, Response& res) const;
  void xet_token(const Request& req, Response& res) const;

  // ---- LFS (lfs.cpp) ----

  std::string ticket(const std::string& repo, const std::string& oid, uint64_t size) const;
  void lfs_batch(const Request& req, Response& res, const std::string& repo);
  // Upload URLs carry a signed ticket instead of the token (like a presigned URL).
  bool check_ticket(const Request& req, Response& res, const std::string& oid, std::string& repo,
                    uint64_t& size) const;
  // The body plan of an LFS PUT (basic: a fresh upload temp hashed on the way; part: its range
  // of {oid}.multipart), or its refusal (bad ticket, bad part).
  BodyPlan lfs_put_plan(const Request& req, const std::vector<std::string>& segs);
  void lfs_put(const Request& req, Response& res, const std::vector<std::string>& segs);
  void lfs_post(const Request& req, Response& res, const std::vector<std::string>& segs);
};

}  // namespace loftqd::mirror
