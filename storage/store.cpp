#include "storage/store.h"

#include "common/strings.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>

#include "common/fs.h"

namespace fs = std::filesystem;

namespace loftqd::storage {

const char* errc_name(Errc e) {
  switch (e) {
    case Errc::InvalidPath:
      return "InvalidPath";
    case Errc::HashMismatch:
      return "HashMismatch";
    case Errc::SizeMismatch:
      return "SizeMismatch";
    case Errc::NoSpace:
      return "NoSpace";
    case Errc::NotFound:
      return "NotFound";
    case Errc::Io:
      return "Io";
  }
  return "?";
}

namespace {

Error io_error(std::string what, const fs::path& p, int err) {
  return {Errc::Io, what + " " + p.string() + ": " + std::strerror(err)};
}

}  // namespace

// ---- Hashing ----

Hasher::Hasher(HashAlgo algo) : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_) throw std::bad_alloc();
  const EVP_MD* md = algo == HashAlgo::Sha1 ? EVP_sha1() : EVP_sha256();
  if (EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), md, nullptr) != 1)
    throw std::runtime_error("EVP_DigestInit_ex failed");
}

Hasher::~Hasher() {
  EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_));
}

void Hasher::update(const void* data, size_t n) {
  if (EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, n) != 1)
    throw std::runtime_error("EVP_DigestUpdate failed");
}

std::string Hasher::hex() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), md, &len) != 1)
    throw std::runtime_error("EVP_DigestFinal_ex failed");
  static const char* kHex = "0123456789abcdef";
  std::string s;
  s.reserve(len * 2);
  for (unsigned i = 0; i < len; ++i) {
    s.push_back(kHex[md[i] >> 4]);
    s.push_back(kHex[md[i] & 15]);
  }
  return s;
}

std::string sha256_hex(std::string_view data) {
  Hasher h(HashAlgo::Sha256);
  h.update(data);
  return h.hex();
}

std::string sha1_hex(std::string_view data) {
  Hasher h(HashAlgo::Sha1);
  h.update(data);
  return h.hex();
}

std::string git_blob_sha1(std::string_view data) {
  Hasher h(HashAlgo::Sha1);
  std::string hdr = "blob " + std::to_string(data.size());
  h.update(hdr.data(), hdr.size() + 1);  // with the NUL
  h.update(data);
  return h.hex();
}

Result<std::string> hash_file(const fs::path& p, HashAlgo algo, bool git_blob) {
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return io_error("cannot open", p, errno);
  Hasher h(algo);
  if (git_blob) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int e = errno;
      ::close(fd);
      return io_error("cannot stat", p, e);
    }
    std::string hdr = "blob " + std::to_string(st.st_size);
    h.update(hdr.data(), hdr.size() + 1);
  }
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return io_error("cannot read", p, e);
    }
    if (n == 0) break;
    h.update(buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  return h.hex();
}

Status verify_file(const fs::path& p, const Digest& d) {
  std::error_code ec;
  uint64_t size = fs::file_size(p, ec);
  if (ec) return Error{Errc::Io, "cannot stat " + p.string() + ": " + ec.message()};
  if (d.size && size != *d.size)
    return Error{Errc::SizeMismatch, "size mismatch: expected " + std::to_string(*d.size) +
                                         " bytes, got " + std::to_string(size)};
  auto h = hash_file(p, d.algo, d.algo == HashAlgo::Sha1);
  if (!h) return h.error();
  if (h.value() != d.hex)
    return Error{Errc::HashMismatch,
                 std::string(d.algo == HashAlgo::Sha256 ? "sha256" : "git blob sha1") +
                     " mismatch: expected " + d.hex + ", got " + h.value()};
  return ok_status();
}

std::string lfs_pointer(std::string_view sha256, uint64_t size) {
  return "version https://git-lfs.github.com/spec/v1\noid sha256:" + std::string(sha256) +
         "\nsize " + std::to_string(size) + "\n";
}

// ---- Encodings ----

std::string base64_encode(std::string_view data) {
  static const char* kTab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  auto u = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(data[k])); };
  for (; i + 2 < data.size(); i += 3) {
    uint32_t v = (u(i) << 16) | (u(i + 1) << 8) | u(i + 2);
    out += kTab[(v >> 18) & 63];
    out += kTab[(v >> 12) & 63];
    out += kTab[(v >> 6) & 63];
    out += kTab[v & 63];
  }
  if (i + 1 == data.size()) {
    uint32_t v = u(i) << 16;
    out += kTab[(v >> 18) & 63];
    out += kTab[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == data.size()) {
    uint32_t v = (u(i) << 16) | (u(i + 1) << 8);
    out += kTab[(v >> 18) & 63];
    out += kTab[(v >> 12) & 63];
    out += kTab[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  bool pad = false;
  for (char c : text) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      pad = true;
      continue;
    }
    if (pad) return std::nullopt;
    int v = val(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  if (bits >= 6) return std::nullopt;
  return out;
}

bool secure_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); ++i)
    d |= static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i]);
  return d == 0;
}

// ---- Patterns ----

namespace {

// Python fnmatch.translate semantics, matched directly (no regex): no escapes, '*' spans '/'.
bool fnmatch_at(std::string_view pat, std::string_view s) {
  size_t p = 0, i = 0, star_p = std::string_view::npos, star_i = 0;
  auto match_class = [&](size_t& pp, char c, bool& valid) {
    // pp points at '['. Returns whether c is in the class; advances pp past ']'.
    size_t j = pp + 1;
    bool neg = false;
    if (j < pat.size() && pat[j] == '!') {
      neg = true;
      ++j;
    }
    size_t first = j;
    if (j < pat.size() && pat[j] == ']') ++j;
    while (j < pat.size() && pat[j] != ']') ++j;
    if (j >= pat.size()) {  // no closing bracket: '[' is literal
      valid = false;
      return c == '[';
    }
    valid = true;
    bool in = false;
    for (size_t k = first; k < j; ++k) {
      if (k + 2 < j && pat[k + 1] == '-') {
        if (pat[k] <= c && c <= pat[k + 2]) in = true;
        k += 2;
      } else if (pat[k] == c) {
        in = true;
      }
    }
    pp = j + 1;
    return in != neg;
  };
  while (i < s.size()) {
    if (p < pat.size() && pat[p] == '*') {
      star_p = p++;
      star_i = i;
      continue;
    }
    if (p < pat.size()) {
      if (pat[p] == '?') {
        ++p;
        ++i;
        continue;
      }
      if (pat[p] == '[') {
        size_t pp = p;
        bool valid = true;
        bool m = match_class(pp, s[i], valid);
        if (m) {
          p = valid ? pp : p + 1;
          ++i;
          continue;
        }
      } else if (pat[p] == s[i]) {
        ++p;
        ++i;
        continue;
      }
    }
    if (star_p == std::string_view::npos) return false;
    p = star_p + 1;
    i = ++star_i;
  }
  while (p < pat.size() && pat[p] == '*') ++p;
  return p == pat.size();
}

}  // namespace

bool fnmatch(std::string_view pattern, std::string_view path) {
  if (!pattern.empty() && pattern.back() == '/') {
    std::string p(pattern);
    p += '*';
    return fnmatch_at(p, path);
  }
  return fnmatch_at(pattern, path);
}

bool path_selected(std::string_view path, const std::vector<std::string>& allow,
                   const std::vector<std::string>& ignore) {
  if (!allow.empty() &&
      std::none_of(allow.begin(), allow.end(), [&](const auto& p) { return fnmatch(p, path); }))
    return false;
  return std::none_of(ignore.begin(), ignore.end(),
                      [&](const auto& p) { return fnmatch(p, path); });
}

// ---- Disk space ----

Result<uint64_t> free_bytes(const fs::path& dir) {
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0) return io_error("cannot statvfs", dir, errno);
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

Status check_space(const fs::path& dir, uint64_t needed, uint64_t reserve) {
  auto f = free_bytes(dir);
  if (!f) return f.error();
  if (f.value() < reserve || f.value() - reserve < needed) {
    // Exact bytes (small checkpoints in tests, the numbers an operator compares with df -B1),
    // then GiB for reading.
    auto both = [](uint64_t b) {
      char gib[32];
      std::snprintf(gib, sizeof gib, "%.2f", b / (1024.0 * 1024 * 1024));
      return std::to_string(b) + " bytes (" + gib + " GiB)";
    };
    return Error{Errc::NoSpace, "not enough disk space in " + dir.string() + ": need " +
                                    both(needed) + " plus a reserve of " + both(reserve) + ", " +
                                    both(f.value()) + " free"};
  }
  return ok_status();
}

// ---- Store ----

std::string FileEntry::git_oid() const {
  return lfs() ? git_blob_sha1(lfs_pointer(etag, size)) : etag;
}

std::string repo_folder_name(std::string_view repo_id) {
  std::string r = "models--";
  for (char c : repo_id) {
    if (c == '/')
      r += "--";
    else
      r += c;
  }
  return r;
}

std::string iso8601_now() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[80];
  std::snprintf(out, sizeof out, "%s.%03dZ", buf, static_cast<int>(ms));
  return out;
}

std::string blob_link_target(std::string_view path, std::string_view etag) {
  std::string t = "../../";
  for (char c : path)
    if (c == '/') t += "../";
  t += "blobs/";
  t += etag;
  return t;
}

Store::Store(fs::path root) : root_(std::move(root)) {}

fs::path Store::repo_dir(std::string_view repo_id) const {
  if (auto p = repo_id_problem(repo_id))
    throw std::invalid_argument(common::repo_id_error(repo_id));
  return root_ / repo_folder_name(repo_id);
}

fs::path Store::blob_path(std::string_view repo_id, std::string_view etag) const {
  if (!is_sha1_hex(etag) && !is_sha256_hex(etag))
    throw std::invalid_argument("invalid etag '" + std::string(etag) + "'");
  return repo_dir(repo_id) / "blobs" / std::string(etag);
}

fs::path Store::incomplete_path(std::string_view repo_id, std::string_view etag) const {
  auto p = blob_path(repo_id, etag);
  p += ".incomplete";
  return p;
}

fs::path Store::snapshot_dir(std::string_view repo_id, std::string_view commit) const {
  if (!is_sha1_hex(commit))
    throw std::invalid_argument("invalid commit id '" + std::string(commit) + "'");
  return repo_dir(repo_id) / "snapshots" / std::string(commit);
}

fs::path Store::ref_path(std::string_view repo_id, std::string_view revision) const {
  if (auto p = revision_problem(revision))
    throw std::invalid_argument("invalid revision '" + std::string(revision) + "': " + *p);
  return repo_dir(repo_id) / "refs" / std::string(revision);
}

bool Store::has_repo(std::string_view repo_id) const {
  if (repo_id_problem(repo_id)) return false;
  std::error_code ec;
  return fs::is_directory(repo_dir(repo_id), ec);
}

bool Store::has_blob(std::string_view repo_id, std::string_view etag) const {
  std::error_code ec;
  return fs::is_regular_file(blob_path(repo_id, etag), ec);
}

std::optional<std::string> Store::read_ref(std::string_view repo_id,
                                           std::string_view revision) const {
  if (repo_id_problem(repo_id) || revision_problem(revision)) return std::nullopt;
  std::ifstream f(ref_path(repo_id, revision));
  if (!f) return std::nullopt;
  std::string s;
  std::getline(f, s);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  if (!is_sha1_hex(s)) return std::nullopt;
  return s;
}

std::optional<std::string> Store::resolve(std::string_view repo_id,
                                          std::string_view revision) const {
  if (repo_id_problem(repo_id)) return std::nullopt;
  if (auto r = read_ref(repo_id, revision)) return r;
  if (is_sha1_hex(revision)) {
    std::error_code ec;
    if (fs::is_directory(snapshot_dir(repo_id, revision), ec)) return std::string(revision);
  }
  return std::nullopt;
}

Status Store::write_ref(std::string_view repo_id, std::string_view revision,
                        std::string_view commit) {
  if (!is_sha1_hex(commit)) return Error{Errc::InvalidPath, "invalid commit id"};
  if (auto p = revision_problem(revision))
    return Error{Errc::InvalidPath, "invalid revision '" + std::string(revision) + "': " + *p};
  auto path = ref_path(repo_id, revision);
  try {
    fs::create_directories(path.parent_path());
    // huggingface_hub writes the bare commit hash without a newline.
    common::write_file_atomic(path, commit);
  } catch (const std::exception& e) {
    return Error{Errc::Io, e.what()};
  }
  return ok_status();
}

std::vector<std::string> Store::list_refs(std::string_view repo_id) const {
  std::vector<std::string> out;
  std::error_code ec;
  auto dir = repo_dir(repo_id) / "refs";
  if (!fs::is_directory(dir, ec)) return out;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (!it->is_regular_file()) continue;
    auto rel = it->path().lexically_relative(dir).generic_string();
    if (rel.find(".tmp") != std::string::npos) continue;
    out.push_back(rel);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> Store::list_repos() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::directory_iterator(root_, ec); !ec && it != fs::end(it); it.increment(ec)) {
    auto name = it->path().filename().string();
    if (!name.starts_with("models--") || !it->is_directory()) continue;
    std::string rest = name.substr(8);
    auto pos = rest.find("--");
    std::string id =
        pos == std::string::npos ? rest : rest.substr(0, pos) + "/" + rest.substr(pos + 2);
    if (!repo_id_problem(id)) out.push_back(id);
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

bool all_hex(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  });
}

// .{name}.tmp.{pid}.{hex}: a common::AtomicFile temp.
bool is_atomic_temp(std::string_view name) {
  if (!name.starts_with(".")) return false;
  auto dot = name.rfind('.');
  if (dot == std::string_view::npos || !all_hex(name.substr(dot + 1))) return false;
  auto rest = name.substr(0, dot);
  auto pid_dot = rest.rfind('.');
  if (pid_dot == std::string_view::npos) return false;
  auto pid = rest.substr(pid_dot + 1);
  if (pid.empty() ||
      !std::all_of(pid.begin(), pid.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  return rest.substr(0, pid_dot).ends_with(".tmp") && pid_dot > 5;
}

// A temp in blobs/: {etag}.upload-{hex}, {etag}.multipart or an atomic-write temp.
bool is_blob_temp(std::string_view name) {
  if (is_atomic_temp(name)) return true;
  auto dot = name.find('.');
  if (dot == std::string_view::npos) return false;
  auto etag = name.substr(0, dot), ext = name.substr(dot);
  if (!is_sha1_hex(etag) && !is_sha256_hex(etag)) return false;
  return ext == ".multipart" || (ext.starts_with(".upload-") && all_hex(ext.substr(8)));
}

// snapshots/.tmp-{commit}-{hex}: a snapshot commit_snapshot() was building.
bool is_snapshot_temp(std::string_view name) {
  if (!name.starts_with(".tmp-") || name.size() < 5 + 40 + 2) return false;
  return is_sha1_hex(name.substr(5, 40)) && name[45] == '-' && all_hex(name.substr(46));
}

// True when `p` (not followed if a link) was last modified before `cutoff`.
bool older_than(const fs::path& p, std::time_t cutoff) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0 && st.st_mtime < cutoff;
}

// Removes the entries under `dir` (its whole tree with a recursive Iter) that `is_temp` names, that
// are not symlinks, and that were last modified before `cutoff`; returns how many.
template <class Iter, class Pred>
size_t sweep_temps(const fs::path& dir, std::time_t cutoff, Pred is_temp) {
  size_t removed = 0;
  std::error_code ec;
  std::vector<fs::path> stale;
  for (auto it = Iter(dir, ec); !ec && it != fs::end(it); it.increment(ec)) {
    std::error_code sec;
    if (it->is_symlink(sec) || !is_temp(it->path().filename().string())) continue;
    if (older_than(it->path(), cutoff)) stale.push_back(it->path());
  }
  for (const auto& p : stale) {
    std::error_code rec;
    if (fs::remove_all(p, rec) != static_cast<std::uintmax_t>(-1) && !rec) ++removed;
  }
  return removed;
}

}  // namespace

size_t Store::remove_stale_temps(std::chrono::seconds max_age) const {
  using Flat = fs::directory_iterator;
  const std::time_t cutoff = max_age.count() <= 0
                                 ? std::numeric_limits<std::time_t>::max()
                                 : std::time(nullptr) - static_cast<std::time_t>(max_age.count());
  size_t removed = 0;
  for (const auto& repo : list_repos()) {
    const auto dir = repo_dir(repo);
    removed += sweep_temps<Flat>(dir / "blobs", cutoff, is_blob_temp);
    removed += sweep_temps<Flat>(dir / "snapshots", cutoff, is_snapshot_temp);
    removed += sweep_temps<fs::recursive_directory_iterator>(dir / "refs", cutoff, is_atomic_temp);
    removed += sweep_temps<Flat>(dir, cutoff, is_atomic_temp);
  }
  return removed;
}

Status Store::commit_blob(std::string_view repo_id, const fs::path& partial, const Digest& d) {
  auto v = verify_file(partial, d);
  if (!v) {
    std::error_code ec;
    fs::remove(partial, ec);
    return v;
  }
  return install_blob(repo_id, partial, d.hex);
}

Status Store::install_blob(std::string_view repo_id, const fs::path& partial,
                           std::string_view etag) {
  auto dst = blob_path(repo_id, etag);
  try {
    int fd = ::open(partial.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return io_error("cannot open", partial, errno);
    int rc = ::fsync(fd);
    int e = errno;
    ::close(fd);
    if (rc != 0) return io_error("cannot fsync", partial, e);
    fs::create_directories(dst.parent_path());
    if (::rename(partial.c_str(), dst.c_str()) != 0)
      return io_error("cannot rename to", dst, errno);
    common::fsync_dir(dst.parent_path());
  } catch (const std::exception& ex) {
    return Error{Errc::Io, ex.what()};
  }
  return ok_status();
}

Status Store::put_blob(std::string_view repo_id, std::string_view content, const Digest& d) {
  std::string got = d.algo == HashAlgo::Sha256 ? sha256_hex(content) : git_blob_sha1(content);
  if (got != d.hex) return Error{Errc::HashMismatch, "content hashes to " + got + ", not " + d.hex};
  if (d.size && *d.size != content.size()) return Error{Errc::SizeMismatch, "size mismatch"};
  if (has_blob(repo_id, d.hex)) return ok_status();
  auto dst = blob_path(repo_id, d.hex);
  try {
    fs::create_directories(dst.parent_path());
    common::write_file_atomic(dst, content);
  } catch (const std::exception& e) {
    return Error{Errc::Io, e.what()};
  }
  return ok_status();
}

Status Store::link_file(std::string_view repo_id, std::string_view commit, std::string_view path,
                        std::string_view etag) {
  if (auto p = path_problem(path))
    return Error{Errc::InvalidPath, "unsafe path '" + std::string(path) + "': " + *p};
  auto link = snapshot_dir(repo_id, commit) / std::string(path);
  std::string target = blob_link_target(path, etag);
  std::error_code ec;
  fs::create_directories(link.parent_path(), ec);
  if (ec)
    return Error{Errc::Io, "cannot create " + link.parent_path().string() + ": " + ec.message()};
  if (fs::is_symlink(fs::symlink_status(link, ec))) {
    if (fs::read_symlink(link, ec).string() == target) return ok_status();
  }
  // Hidden while it exists, so that a reader listing the snapshot meanwhile (the quantize step
  // runs while the daemon's shard feed links shards) never takes it for a file of the model.
  const fs::path tmp =
      link.parent_path() / ("." + link.filename().string() + ".tmp-" + common::random_hex(8));
  if (::symlink(target.c_str(), tmp.c_str()) != 0) return io_error("cannot symlink", tmp, errno);
  if (::rename(tmp.c_str(), link.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return io_error("cannot rename to", link, e);
  }
  return ok_status();
}

Result<std::vector<FileEntry>> Store::list_snapshot(std::string_view repo_id,
                                                    std::string_view commit) const {
  std::vector<FileEntry> out;
  auto dir = snapshot_dir(repo_id, commit);
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return Error{Errc::NotFound,
                 "no snapshot " + std::string(commit) + " of " + std::string(repo_id)};
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (!it->is_symlink()) continue;
    auto target = fs::read_symlink(it->path(), ec);
    if (ec) continue;
    auto etag = target.filename().string();
    if (!is_sha1_hex(etag) && !is_sha256_hex(etag)) continue;
    std::error_code ec2;
    auto size = fs::file_size(blob_path(repo_id, etag), ec2);
    if (ec2) continue;
    auto rel = it->path().lexically_relative(dir).generic_string();
    if (path_problem(rel)) continue;
    out.push_back({rel, etag, size});
  }
  if (ec) return Error{Errc::Io, "cannot list " + dir.string() + ": " + ec.message()};
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
  return out;
}

std::string Store::commit_id(const std::map<std::string, std::string>& files,
                             const std::optional<std::string>& parent) {
  Hasher h(HashAlgo::Sha1);
  h.update("loftqd commit v1\n");
  h.update("parent " + parent.value_or("") + "\n");
  for (const auto& [path, etag] : files) {
    h.update(path.data(), path.size() + 1);  // with the NUL terminator
    h.update(etag + "\n");
  }
  return h.hex();
}

Result<std::string> Store::commit_snapshot(std::string_view repo_id, std::string_view branch,
                                           const std::map<std::string, std::string>& files,
                                           std::optional<std::string> parent) {
  for (const auto& [path, etag] : files) {
    if (auto p = path_problem(path))
      return Error{Errc::InvalidPath, "unsafe path '" + path + "': " + *p};
    if (!has_blob(repo_id, etag))
      return Error{Errc::NotFound, "blob " + etag + " of '" + path + "' is not in the store"};
  }
  std::string id = commit_id(files, parent);
  auto final_dir = snapshot_dir(repo_id, id);
  std::error_code ec;
  if (!fs::is_directory(final_dir, ec)) {
    auto snaps = final_dir.parent_path();
    auto tmp = snaps / (".tmp-" + id + "-" + common::random_hex(8));
    fs::create_directories(tmp, ec);
    if (ec) return Error{Errc::Io, "cannot create " + tmp.string() + ": " + ec.message()};
    for (const auto& [path, etag] : files) {
      auto link = tmp / path;
      fs::create_directories(link.parent_path(), ec);
      if (ec || ::symlink(blob_link_target(path, etag).c_str(), link.c_str()) != 0) {
        int e = errno;
        fs::remove_all(tmp, ec);
        return io_error("cannot link", link, e);
      }
    }
    if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      int e = errno;
      fs::remove_all(tmp, ec);
      if (!fs::is_directory(final_dir, ec)) return io_error("cannot rename to", final_dir, e);
    }
    try {
      common::fsync_dir(snaps);
    } catch (const std::exception& ex) {
      return Error{Errc::Io, ex.what()};
    }
  }
  auto st = write_ref(repo_id, branch, id);
  if (!st) return st.error();
  return id;
}

std::optional<RepoMeta> Store::read_meta(std::string_view repo_id) const {
  std::ifstream f(repo_dir(repo_id) / "loftqd-repo.json");
  if (!f) return std::nullopt;
  try {
    auto j = nlohmann::json::parse(f);
    RepoMeta m;
    m.is_private = j.value("private", false);
    m.gated = j.value("gated", false);
    m.created_at = j.value("createdAt", "");
    m.last_modified = j.value("lastModified", "");
    return m;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

Status Store::write_meta(std::string_view repo_id, const RepoMeta& m) {
  nlohmann::json j = {{"private", m.is_private},
                      {"gated", m.gated},
                      {"createdAt", m.created_at},
                      {"lastModified", m.last_modified}};
  try {
    auto dir = repo_dir(repo_id);
    fs::create_directories(dir);
    common::write_file_atomic(dir / "loftqd-repo.json", j.dump(2) + "\n");
  } catch (const std::exception& e) {
    return Error{Errc::Io, e.what()};
  }
  return ok_status();
}

fs::path StoreLock::path_for(const fs::path& store) {
  return store / "loftqd.lock";
}

StoreLock StoreLock::acquire(const fs::path& store) {
  std::error_code ec;
  fs::create_directories(store, ec);
  if (ec) throw std::runtime_error("cannot create store " + store.string() + ": " + ec.message());
  const fs::path p = path_for(store);
  const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot open " + p.string() + ": " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string pid;
    if (err == EWOULDBLOCK) {
      char buf[32] = {};
      const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
      pid = common::trim(std::string(buf, n > 0 ? static_cast<size_t>(n) : 0));
    }
    ::close(fd);
    if (err != EWOULDBLOCK)
      throw std::runtime_error("cannot lock " + p.string() + ": " + std::strerror(err));
    throw StoreBusy("another loftqd (pid " + (pid.empty() ? std::string("unknown") : pid) +
                    ") is using " + store.string());
  }
  // Ours now: record the pid for the message above (the lock, not the content, is what counts).
  const std::string me = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) < 0) {
    const int err = errno;
    ::close(fd);
    throw std::runtime_error("cannot write " + p.string() + ": " + std::strerror(err));
  }
  return StoreLock(fd);
}

bool StoreLock::held(const fs::path& store) {
  const int fd = ::open(path_for(store).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;  // never locked
  const bool busy = ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);
  return busy;
}

StoreLock::~StoreLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the flock
}

}  // namespace loftqd::storage
