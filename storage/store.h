// The blob store: a Hugging Face cache-compatible tree (DESIGN §6).
//
//   <root>/models--{org}--{name}/blobs/{etag}                 file contents, named by hash
//   <root>/models--{org}--{name}/blobs/{etag}.incomplete      a partial download (resumed by size)
//   <root>/models--{org}--{name}/snapshots/{commit}/{path}    relative symlinks into blobs/
//   <root>/models--{org}--{name}/refs/{revision}              the commit a branch or tag points at
//   <root>/models--{org}--{name}/loftqd-repo.json             mirror metadata (private, gated, ...)
//
// An etag is the sha256 of an LFS file (64 hex) or the git blob sha1 of a regular file (40 hex),
// as the Hub reports them. Routine failures (bad path, hash mismatch, no space) are returned as
// Status/Result values; programming errors throw.
#pragma once

#include "common/ids.h"
#include "common/result.h"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace loftqd::storage {

using common::BasicResult;
using common::Ok;

enum class Errc {
  InvalidPath,   // an unsafe or malformed repo path, repo id or revision
  HashMismatch,  // the content does not hash to the expected etag
  SizeMismatch,  // the content does not have the expected size
  NoSpace,       // not enough free disk space (after the reserve)
  NotFound,      // no such repo, revision or file in the store
  Io,            // an operating system error
};
const char* errc_name(Errc e);

struct Error {
  Errc code;
  std::string message;
};

template <class T>
using Result = BasicResult<T, Error>;
using Status = Result<Ok>;
inline Status ok_status() {
  return Ok{};
}

// ---- Validation (common/ids.h) ----
using common::is_sha1_hex;
using common::is_sha256_hex;
using common::path_problem;
using common::repo_id_problem;
using common::revision_problem;

// ---- Hashing (OpenSSL EVP) ----

enum class HashAlgo { Sha1, Sha256 };

class Hasher {
 public:
  explicit Hasher(HashAlgo algo);
  ~Hasher();
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  void update(const void* data, size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  std::string hex();  // finishes; call once

 private:
  void* ctx_;
};

std::string sha256_hex(std::string_view data);
std::string sha1_hex(std::string_view data);
// git's blob id: sha1("blob {len}\0" + data).
std::string git_blob_sha1(std::string_view data);
// Hashes a file (streaming). With `git_blob`, prefixes the git blob header (sha1 only).
Result<std::string> hash_file(const std::filesystem::path& p, HashAlgo algo, bool git_blob = false);

// What a downloaded or uploaded file must hash to.
struct Digest {
  HashAlgo algo = HashAlgo::Sha256;  // Sha256: LFS file; Sha1: git blob sha1 of a regular file
  std::string hex;                   // also the blob's name in blobs/
  std::optional<uint64_t> size;
  static Digest lfs(std::string sha256, std::optional<uint64_t> size) {
    return {HashAlgo::Sha256, std::move(sha256), size};
  }
  static Digest git(std::string sha1, std::optional<uint64_t> size) {
    return {HashAlgo::Sha1, std::move(sha1), size};
  }
};
// Checks `p` against `d`: size first, then the hash.
Status verify_file(const std::filesystem::path& p, const Digest& d);

// The git-lfs pointer file of an LFS object, and its git blob sha1 (the tree's `oid`).
std::string lfs_pointer(std::string_view sha256, uint64_t size);

// ---- Encodings shared by the client and the mirror ----

std::string base64_encode(std::string_view data);
// nullopt for malformed input (whitespace is skipped; padding optional).
std::optional<std::string> base64_decode(std::string_view text);
// Constant-time comparison (tokens).
bool secure_equal(std::string_view a, std::string_view b);

// ---- Patterns (as huggingface_hub's snapshot_download filters files) ----

// fnmatch semantics of Python: '*' also matches '/', '?', '[seq]', '[!seq]'; a pattern ending
// with '/' matches everything under that folder.
bool fnmatch(std::string_view pattern, std::string_view path);
// Kept when `allow` is empty or some allow pattern matches, and no ignore pattern matches.
bool path_selected(std::string_view path, const std::vector<std::string>& allow,
                   const std::vector<std::string>& ignore);

// ---- Disk space ----

Result<uint64_t> free_bytes(const std::filesystem::path& dir);
// NoSpace when writing `needed` more bytes under `dir` would leave less than `reserve` free.
Status check_space(const std::filesystem::path& dir, uint64_t needed, uint64_t reserve);

// ---- The store ----

// One file of a snapshot as the store knows it (from the symlink into blobs/).
struct FileEntry {
  std::string path;   // repo path
  std::string etag;   // blob name: sha256 (LFS) or git sha1 (regular)
  uint64_t size = 0;  // file size
  bool lfs() const { return etag.size() == 64; }
  std::string git_oid() const;  // the tree `oid`: etag, or the sha1 of the LFS pointer
};

// Per-repo metadata written by the mirror (loftqd-repo.json).
struct RepoMeta {
  bool is_private = false;
  bool gated = false;
  std::string created_at;     // ISO 8601 UTC
  std::string last_modified;  // ISO 8601 UTC
};

std::string repo_folder_name(std::string_view repo_id);  // "models--org--name"
std::string iso8601_now();

// Relative symlink target from snapshots/{commit}/{path} to blobs/{etag}.
std::string blob_link_target(std::string_view path, std::string_view etag);

// How old a temp or multipart file must be before remove_stale_temps() takes it for abandoned:
// longer than any upload or write in progress keeps one untouched (parts refresh the mtime).
inline constexpr std::chrono::seconds kStaleTempAge = std::chrono::hours(6);

class Store {
 public:
  explicit Store(std::filesystem::path root);
  const std::filesystem::path& root() const { return root_; }

  // All path helpers throw std::invalid_argument for an invalid repo id, revision or path.
  std::filesystem::path repo_dir(std::string_view repo_id) const;
  std::filesystem::path blob_path(std::string_view repo_id, std::string_view etag) const;
  std::filesystem::path incomplete_path(std::string_view repo_id, std::string_view etag) const;
  std::filesystem::path snapshot_dir(std::string_view repo_id, std::string_view commit) const;
  std::filesystem::path ref_path(std::string_view repo_id, std::string_view revision) const;

  bool has_repo(std::string_view repo_id) const;
  bool has_blob(std::string_view repo_id, std::string_view etag) const;
  // The commit `revision` names: a ref, or a commit sha with a snapshot dir.
  std::optional<std::string> resolve(std::string_view repo_id, std::string_view revision) const;
  std::optional<std::string> read_ref(std::string_view repo_id, std::string_view revision) const;
  Status write_ref(std::string_view repo_id, std::string_view revision, std::string_view commit);
  std::vector<std::string> list_refs(std::string_view repo_id) const;
  std::vector<std::string> list_repos() const;  // repo ids with a folder in the store

  // Removes the store's own temp files older than `max_age` (by mtime), left by a crash or an
  // abandoned upload, in every repo: blobs/{etag}.upload-{hex} and blobs/{etag}.multipart (the
  // mirror's LFS uploads), the atomic-write temps .{name}.tmp.{pid}.{hex} in blobs/, refs/ and
  // the repo folder, and snapshots/.tmp-{commit}-{hex} (a snapshot being built). Nothing else is
  // touched: not blobs, not .incomplete download partials (they resume), not snapshot files.
  // Returns how many entries it removed. `max_age` <= 0 takes every such temp whatever its age:
  // only for a caller that holds the StoreLock and has not started writing (nothing else can
  // be writing them, so all are abandoned).
  size_t remove_stale_temps(std::chrono::seconds max_age = kStaleTempAge) const;

  // Verifies `partial` against `d` and moves it to blobs/{d.hex} (fsync, rename, fsync dir).
  // On a mismatch the partial is deleted and the error says what differed.
  Status commit_blob(std::string_view repo_id, const std::filesystem::path& partial,
                     const Digest& d);
  // Moves a partial the caller has verified (e.g. hashed while downloading) to blobs/{etag}.
  Status install_blob(std::string_view repo_id, const std::filesystem::path& partial,
                      std::string_view etag);
  // Stores `content` as a blob named by `d.hex` (written atomically, verified first).
  Status put_blob(std::string_view repo_id, std::string_view content, const Digest& d);

  // Creates snapshots/{commit}/{path} -> ../../blobs/{etag} (replacing a different link).
  Status link_file(std::string_view repo_id, std::string_view commit, std::string_view path,
                   std::string_view etag);
  // The files of a snapshot, sorted by path (symlinks whose blob is missing are skipped).
  Result<std::vector<FileEntry>> list_snapshot(std::string_view repo_id,
                                               std::string_view commit) const;

  // Writes a whole new snapshot atomically: the snapshot dir is built under a temp name and
  // renamed into place, then refs/{branch} is replaced (temp + fsync + rename). Every etag must
  // be in blobs/ already. Returns the commit id: sha1 over the sorted (path, etag) listing and
  // the parent commit, so equal content on equal history gets the same id.
  Result<std::string> commit_snapshot(std::string_view repo_id, std::string_view branch,
                                      const std::map<std::string, std::string>& files,
                                      std::optional<std::string> parent);
  static std::string commit_id(const std::map<std::string, std::string>& files,
                               const std::optional<std::string>& parent);

  std::optional<RepoMeta> read_meta(std::string_view repo_id) const;
  Status write_meta(std::string_view repo_id, const RepoMeta& meta);

 private:
  std::filesystem::path root_;
};

// One loftqd process per store: `run`, `sync` and `serve` hold an exclusive flock(2) on
// <store>/loftqd.lock (which holds the holder's pid) for as long as they use the store. The
// kernel drops the lock when the process ends, however it ends, so a stale file never blocks.
class StoreLock {
 public:
  // Creates the store directory if needed. Throws StoreBusy when another process holds the
  // lock ("another loftqd (pid N) is using STORE"), std::runtime_error for an I/O error.
  static StoreLock acquire(const std::filesystem::path& store);
  StoreLock(StoreLock&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  StoreLock& operator=(StoreLock&&) = delete;
  StoreLock(const StoreLock&) = delete;
  ~StoreLock();
  static std::filesystem::path path_for(const std::filesystem::path& store);
  // Whether some process holds the store's lock now (a probe with a shared lock that is let go
  // at once; for `status`, which must not keep a daemon from starting).
  static bool held(const std::filesystem::path& store);

 private:
  explicit StoreLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

class StoreBusy : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace loftqd::storage
