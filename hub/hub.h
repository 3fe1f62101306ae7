// The Hub client (DESIGN §5): repo info, tree listing, resolve/download with resume and
// verification into the store (HF cache layout) or a plain local dir, and the commit API with
// LFS uploads for publishing. libcurl underneath; one curl handle per thread.
// Implemented in api.cpp (token, options, repo info, tree, metadata), download.cpp
// (snapshot_download), publish.cpp (create_repo, create_branch, upload_folder), on top of
// the internal transport.h (errors, retries, redirects) and http.h (one libcurl exchange).
//
// Routine failures come back as Result<T> with a typed Error whose message names the repo,
// revision and file. The token is sent only in the Authorization header to the endpoint's host:
// it never appears in a URL, a log line, an error message or a file.
#pragma once

#include "common/result.h"

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace loftqd::hub {

enum class ErrorKind {
  RepoNotFound,         // X-Error-Code RepoNotFound (or 401 for a repo we cannot see)
  RevisionNotFound,     // X-Error-Code RevisionNotFound
  EntryNotFound,        // X-Error-Code EntryNotFound, or a 404 on a file
  GatedRepo,            // X-Error-Code GatedRepo
  Unauthorized,         // 401: missing or invalid token
  Forbidden,            // 403: the token lacks the rights
  RangeNotSatisfiable,  // 416
  RateLimited,          // 429 after every retry
  Server,               // 5xx after every retry
  Conflict,             // 409/412
  BadRequest,           // another 4xx
  Network,              // connection refused/reset/dropped after every retry
  Timeout,              // connect timeout or a stalled transfer after every retry
  Offline,              // HF_HUB_OFFLINE=1 and the answer is not in the store
  InvalidResponse,      // the server sent something we cannot use
  UnsafePath,           // an upstream file name that must not touch the disk
  HashMismatch,         // a download that does not hash to its etag (after one retry)
  NoSpace,              // the disk-space check failed
  Io,                   // a local file system error
};
const char* kind_name(ErrorKind k);

struct Error {
  ErrorKind kind;
  std::string message;
  int http_status = 0;
};

template <class T>
using Result = common::BasicResult<T, Error>;
using common::Ok;

struct ClientOptions {
  std::string endpoint = "https://huggingface.co";
  std::optional<std::string> token;
  bool offline = false;
  int max_retries = 5;             // for 408/429/5xx and network errors
  double backoff_base_s = 1.0;     // first delay; doubles per attempt, with jitter
  double backoff_cap_s = 30.0;     // cap of one delay
  double max_retry_after_s = 300;  // cap on Retry-After / RateLimit t=
  long connect_timeout_s = 10;
  long stall_timeout_s = 30;  // a transfer with no byte for this long is cut and retried
  long api_timeout_s = 120;   // whole-request limit for API calls (not downloads)
  int parallel = 4;           // files downloaded at once; also ranges per large file
  int parallel_uploads = 4;   // publishing: files hashed, and LFS objects uploaded, at once
  uint64_t range_threshold = uint64_t{256} << 20;  // files at least this large use ranges
  uint64_t disk_reserve = uint64_t{1} << 30;       // keep this much free after a download
  uint64_t max_recv_bytes_per_s = 0;               // per connection; 0: unlimited
  uint64_t max_send_bytes_per_s = 0;  // per upload connection (file bodies); 0: unlimited
  std::string user_agent = "loftqd";
  // When set: once it is true, transfers in flight are aborted within about a second and no
  // request starts (an error that is never retried; a download's partial stays for the next
  // call to resume). The daemon's shard feed stops with it.
  const std::atomic<bool>* cancel = nullptr;
};

// Token lookup order: HF_TOKEN, then $HF_HOME/token (HF_HOME defaults to ~/.cache/huggingface),
// then `config_token`. Empty values count as absent.
std::optional<std::string> find_token(const std::optional<std::string>& config_token = {});
// A token kept in a file (config `hub.token_file`, `--write-token-file`): its content with
// surrounding white space removed; nullopt when that leaves nothing. std::runtime_error naming
// the file when it cannot be read.
std::optional<std::string> read_token_file(const std::filesystem::path& p);
// Options from the environment: HF_ENDPOINT (else `endpoint`, else huggingface.co),
// HF_HUB_OFFLINE, the token as find_token.
ClientOptions options_from_env(const std::optional<std::string>& endpoint = {},
                               const std::optional<std::string>& config_token = {});

struct RepoInfo {
  std::string id, sha, last_modified;
  bool is_private = false, gated = false;
  // The model card's licence (cardData.license: the README front matter's), when it has one.
  std::optional<std::string> license;
  std::vector<std::string> siblings;
};

struct TreeEntry {
  std::string type;  // "file" or "directory"
  std::string path;
  std::string oid;  // git oid (blob sha1; for LFS files the pointer's sha1)
  uint64_t size = 0;
  std::optional<std::string> lfs_sha256;
  // The cache's blob name: sha256 for LFS files, the git sha1 otherwise.
  const std::string& etag() const { return lfs_sha256 ? *lfs_sha256 : oid; }
};

// What HEAD on resolve/{rev}/{path} says.
struct FileMetadata {
  std::string commit;    // X-Repo-Commit
  std::string etag;      // X-Linked-Etag, else ETag (unquoted)
  uint64_t size = 0;     // X-Linked-Size, else Content-Length
  std::string location;  // where GET goes (after a redirect to another host)
};

// Called from download threads: bytes done, bytes total, a file name.
using ProgressFn = std::function<void(uint64_t done, uint64_t total, const std::string& file)>;

struct SnapshotRequest {
  std::string repo;
  std::string revision = "main";
  std::vector<std::string> allow, ignore;          // fnmatch patterns (as snapshot_download)
  std::optional<std::filesystem::path> store;      // HF cache layout
  std::optional<std::filesystem::path> local_dir;  // plain files (snapshot_download local_dir)
  // When not empty, only these paths of the selection are downloaded and linked (the daemon
  // fetches a snapshot's shards one call at a time); one that the selection lacks is
  // EntryNotFound. Offline, the store's snapshot is returned as it is (as for the patterns).
  std::vector<std::string> files;
};

struct SnapshotResult {
  std::string commit;
  std::filesystem::path dir;  // snapshots/{commit} or the local dir
  size_t files = 0;           // files in the selection
  size_t downloaded = 0;      // files fetched over the network (the rest were present)
  // Bytes of file content received over the network by this call (the daemon's "bytes
  // downloaded"): a resumed partial counts only the range fetched now, a file downloaded twice
  // after a hash mismatch counts twice, and files already verified in the store or the local
  // dir count 0 (so a second download of the same snapshot reports 0).
  uint64_t bytes = 0;
  // Adds what a later call for the same snapshot did: files fetched and bytes received add up;
  // the commit, dir and file count become the later call's.
  void add(const SnapshotResult& later) {
    commit = later.commit;
    dir = later.dir;
    files = later.files;
    downloaded += later.downloaded;
    bytes += later.bytes;
  }
};

// A file's sha256 computed earlier (by preupload_lfs, or while the file was written) and what
// identifies the version of the file it was computed from. upload_folder takes it instead of
// hashing the file again only while the file still has this size, inode and modification time.
struct KnownHash {
  std::string sha256;
  uint64_t size = 0, inode = 0;
  int64_t mtime_ns = 0;
};
// `sha256` with `file`'s size, inode and modification time now (symlinks followed); Io when the
// file cannot be stat'ed.
Result<KnownHash> known_hash(const std::filesystem::path& file, std::string sha256);

struct PublishRequest {
  std::filesystem::path dir;
  std::string repo;
  std::string branch = "main";
  bool is_private = false;
  std::string summary;  // commit title; default "Upload with loftqd"
  std::string description;
  bool delete_missing = true;  // remove remote files that the dir lacks (branch == dir)
  // Path in the repo -> its hash as computed before (see KnownHash); the rest are hashed.
  std::map<std::string, KnownHash> hashes;
};

// LFS objects sent ahead of the commit that will name them (huggingface_hub's
// preupload_lfs_files): the daemon uploads each backbone shard as soon as it is written, while
// LoftQ runs on the next ones, and the publish's upload_folder then finds the objects stored.
struct PreuploadRequest {
  std::string repo;
  std::string branch = "main";
  // False: the repo and the branch must exist (RepoNotFound or RevisionNotFound otherwise), so
  // nothing at all appears on the server before the commit.
  bool create = true;
  bool is_private = false;  // applies when the repo is created
  struct File {
    std::string path;            // in the repo
    std::filesystem::path file;  // the local bytes
    std::optional<KnownHash> hash;
  };
  std::vector<File> files;
};

struct PreuploadResult {
  std::map<std::string, KnownHash> hashes;  // every file's, for the upload_folder to come
  std::vector<std::string> lfs;             // paths whose objects the server holds now
  std::vector<std::string> regular;         // paths the server wants inline in the commit: not sent
  size_t lfs_uploaded = 0;                  // objects sent (those the server had are not)
  uint64_t bytes_uploaded = 0;
};

struct CommitInfo {
  std::string commit_oid, commit_url;  // the new commit; when `skipped`, the branch's head
  size_t files = 0, lfs_uploaded = 0, deleted = 0;
  // Bytes of file content sent: LFS objects uploaded (objects the server already had count 0)
  // plus the regular files inlined in the commit. 0 when `skipped`.
  uint64_t bytes_uploaded = 0;
  size_t hashes_reused = 0;  // files whose sha256 came with the request (PublishRequest::hashes)
  // No commit was made: the branch already held every file of the dir with the same content
  // (git blob sha1, or LFS sha256 and size) and there was nothing to delete. Never set when
  // the repo or the branch was created by this call.
  bool skipped = false;
};

class Client {
 public:
  explicit Client(ClientOptions opt);
  const ClientOptions& options() const { return opt_; }

  Result<RepoInfo> repo_info(const std::string& repo, const std::string& revision = "main");
  // The whole tree at a revision (following Link: rel="next"), files and directories.
  Result<std::vector<TreeEntry>> list_tree(const std::string& repo, const std::string& revision,
                                           bool recursive = true, const std::string& path = "");
  // HEAD on resolve (relative redirects followed; an absolute one is returned as `location`).
  Result<FileMetadata> file_metadata(const std::string& repo, const std::string& revision,
                                     const std::string& path);
  // The header block of a safetensors file (its first 8 + N bytes; N, from the first 8, at
  // most 100,000,000 as the format allows), read with Range requests as huggingface_hub's
  // get_safetensors_metadata does: 100,000 bytes first, the rest of a longer header after. No
  // more than asked is ever read: a server that ignores Range is InvalidResponse.
  Result<std::string> safetensors_header(const std::string& repo, const std::string& revision,
                                         const std::string& path);
  // safetensors_header of each of `paths` (in that order), `parallel` at a time: a model's
  // shards cost one round trip's latency, not one per shard. The first error ends it.
  Result<std::vector<std::string>> safetensors_headers(const std::string& repo,
                                                       const std::string& revision,
                                                       const std::vector<std::string>& paths);
  // Downloads the selected files of a revision into the store or a local dir: partials
  // resumed with Range, every file verified before it is moved into place, the snapshot
  // linked and the ref written only when every file is there.
  Result<SnapshotResult> snapshot_download(const SnapshotRequest& req,
                                           const ProgressFn& progress = {});

  // Write side.
  Result<Ok> create_repo(const std::string& repo, bool is_private);  // 409 (exists) is fine
  Result<Ok> create_branch(const std::string& repo, const std::string& branch,
                           const std::string& from = "main");
  // Uploads `dir` as one commit on `branch` (creating the repo and the branch if needed).
  // Like huggingface_hub, it makes no empty commit: when the branch already matches the dir
  // (see CommitInfo::skipped) nothing is uploaded and the head commit is returned.
  Result<CommitInfo> upload_folder(const PublishRequest& req, const ProgressFn& progress = {});
  // Uploads the LFS objects of `req.files` and makes no commit: the repo and the branch are
  // made when missing (as upload_folder would; not with create = false), preupload says which
  // files are LFS, and the LFS batch API takes those (objects the server has are not sent
  // again). Nothing becomes visible in the repo until a commit names the objects; one that
  // never comes leaves only objects no revision references (the daemon's own mirror sweeps
  // them in its retention pass once no job for the target is unfinished).
  Result<PreuploadResult> preupload_lfs(const PreuploadRequest& req,
                                        const ProgressFn& progress = {});

 private:
  ClientOptions opt_;
};

}  // namespace loftqd::hub
