// The download side of the Hub client: snapshot_download into the store (HF cache layout) or a
// local dir. One file goes partial -> verified -> blob (or local file); a partial is resumed with
// Range, large files come in parallel byte ranges, and the snapshot is linked and the ref written
// only when every selected file is in place.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "hub/hub.h"
#include "hub/transport.h"

#include "common/ids.h"
#include "common/parallel.h"
#include "storage/store.h"

namespace fs = std::filesystem;
namespace st = loftqd::storage;

namespace loftqd::hub {

using detail::Ctx;
using detail::from_storage;
using detail::Transport;

namespace {

// Called with the bytes a download adds (negative when a partial is dropped).
using BytesFn = std::function<void(int64_t)>;
// Moves a verified partial into place (the store's blobs, or the local dir).
using CommitFn = std::function<st::Status(const fs::path&)>;

// Starts writing [offset, offset + len) of fd back to disk without waiting for it, so that the
// store's fsync before its rename finds little left (a no-op where sync_file_range is missing).
void start_writeback(int fd, uint64_t offset, uint64_t len) {
#ifdef __linux__
  ::sync_file_range(fd, static_cast<off_t>(offset), static_cast<off_t>(len), SYNC_FILE_RANGE_WRITE);
#else
  (void)fd, (void)offset, (void)len;
#endif
}

// Hashes a download as it streams in (append mode), so that verification costs no second read.
struct StreamHash {
  st::Digest digest;
  uint64_t size = 0;
  std::unique_ptr<st::Hasher> h;
  void reset() {
    h = std::make_unique<st::Hasher>(digest.algo);
    if (digest.algo == st::HashAlgo::Sha1) {
      std::string hdr = "blob " + std::to_string(size);
      h->update(hdr.data(), hdr.size() + 1);
    }
  }
};

// Downloads `url` into `partial`. append_mode: the file holds [0, done) and is resumed from its
// size with Range (a 200 to a Range request starts over); otherwise the bytes [begin, end) are
// written at their offsets. Cut transfers are resumed where they stopped; `on_bytes` reports
// new bytes; `sh`, when set, hashes the file as it grows.
class RangeDownload {
 public:
  RangeDownload(const Transport& t, const std::string& url, const fs::path& partial, uint64_t begin,
                uint64_t end, bool append_mode, const Ctx& c, const BytesFn& on_bytes,
                StreamHash* sh)
      : t_(t),
        url_(url),
        partial_(partial),
        end_(end),
        append_(append_mode),
        c_(c),
        on_bytes_(on_bytes),
        sh_(sh),
        pos_(begin) {}
  ~RangeDownload() {
    if (fd_ >= 0) ::close(fd_);
  }
  RangeDownload(const RangeDownload&) = delete;
  RangeDownload& operator=(const RangeDownload&) = delete;

  Result<Ok> run() {
    if (auto o = open_partial(); !o) return o;
    if (append_) {
      if (auto p = resume_partial(); !p) return p;
    }
    for (int attempt = 0;; ++attempt) {
      if (pos_ >= end_) return Ok{};
      const uint64_t start_pos = pos_;
      http::Response r = t_.send(request(), true);
      if (auto done = settle(r)) return *done;
      if (r.transport_ok() && r.status == 416 && append_ && !restarted_416_) {
        // Our partial is not a prefix the server knows: drop it and start again once.
        restarted_416_ = true;
        if (auto z = truncate_to_zero(); !z) return z;
        continue;
      }
      if (auto e = wait_for_retry(r, attempt, start_pos)) return *e;
    }
  }

 private:
  // Opens (or creates) the partial for writing.
  Result<Ok> open_partial() {
    fd_ = ::open(partial_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0)
      return Error{ErrorKind::Io, c_.describe() + ": cannot open " + partial_.string() + ": " +
                                      std::strerror(errno)};
    return Ok{};
  }

  // Append mode: start where the partial ends (over-long ones are dropped), hashing what is there.
  Result<Ok> resume_partial() {
    struct stat sb {};
    ::fstat(fd_, &sb);
    pos_ = static_cast<uint64_t>(sb.st_size);
    if (pos_ > end_) {
      if (auto z = truncate_to_zero(); !z) return z;
    }
    if (!sh_) return Ok{};
    sh_->reset();
    return hash_prefix();
  }

  // Feeds the partial's first pos_ bytes to the stream hash.
  Result<Ok> hash_prefix() {
    int rfd = ::open(partial_.c_str(), O_RDONLY | O_CLOEXEC);
    if (rfd < 0) return Error{ErrorKind::Io, c_.describe() + ": cannot read " + partial_.string()};
    std::vector<char> buf(1 << 20);
    uint64_t left = pos_;
    while (left > 0) {
      ssize_t n = ::read(rfd, buf.data(), std::min<uint64_t>(left, buf.size()));
      if (n <= 0) break;
      sh_->h->update(buf.data(), static_cast<size_t>(n));
      left -= static_cast<uint64_t>(n);
    }
    ::close(rfd);
    if (left != 0)
      return Error{ErrorKind::Io, c_.describe() + ": cannot read " + partial_.string()};
    return Ok{};
  }

  // Empties the partial and takes its bytes back from the progress count.
  Result<Ok> truncate_to_zero() {
    if (::ftruncate(fd_, 0) != 0) return Error{ErrorKind::Io, "cannot truncate partial"};
    on_bytes_(-static_cast<int64_t>(pos_));
    pos_ = 0;
    written_back_ = 0;
    if (sh_) sh_->reset();
    return Ok{};
  }

  // GET from pos_ (with Range when not from the start of the whole file), streaming into the fd.
  http::Request request() {
    http::Request req;
    req.url = url_;
    bool ranged = pos_ > 0 || !append_;
    if (ranged)
      req.headers.push_back("Range: bytes=" + std::to_string(pos_) + "-" +
                            (append_ ? "" : std::to_string(end_ - 1)));
    range_mismatch_ = false;
    write_failed_ = false;
    req.on_headers = [this](int status, const std::multimap<std::string, std::string>& headers) {
      on_headers(status, headers);
    };
    req.sink = [this](const char* data, size_t n) { return on_body(data, n); };
    return req;
  }

  // A 200 to a Range request starts over; a 206 must start where we are.
  void on_headers(int status, const std::multimap<std::string, std::string>& headers) {
    if (status == 200 && pos_ > 0) {
      // The server ignored the Range: start over (only possible for the whole file).
      if (!append_ || ::ftruncate(fd_, 0) != 0) {
        range_mismatch_ = true;
        return;
      }
      on_bytes_(-static_cast<int64_t>(pos_));
      pos_ = 0;
      if (sh_) sh_->reset();
    } else if (status == 206) {
      auto it = headers.find("content-range");
      if (it != headers.end()) {
        // "bytes a-b/total": a must be where we are.
        auto sp = it->second.find(' ');
        uint64_t a =
            std::strtoull(it->second.c_str() + (sp == std::string::npos ? 0 : sp + 1), nullptr, 10);
        if (a != pos_) range_mismatch_ = true;
      }
    }
  }

  // Writes body bytes at pos_ (up to end_), hashing them; false stops the transfer.
  bool on_body(const char* data, size_t n) {
    if (range_mismatch_) return false;
    size_t take = static_cast<size_t>(std::min<uint64_t>(n, end_ - pos_));
    const char* p = data;
    size_t left = take;
    while (left > 0) {
      ssize_t w = ::pwrite(fd_, p, left, static_cast<off_t>(pos_));
      if (w <= 0) {
        write_failed_ = true;
        return false;
      }
      if (sh_) sh_->h->update(p, static_cast<size_t>(w));
      p += w;
      left -= static_cast<size_t>(w);
      pos_ += static_cast<uint64_t>(w);
    }
    // A stream that is verified as it arrives also starts its writeback every 32 MiB, so that the
    // fsync before the store's rename finds little left (the ranged path does it per chunk).
    if (sh_ && pos_ >= written_back_ + (uint64_t{32} << 20)) {
      start_writeback(fd_, written_back_, pos_ - written_back_);
      written_back_ = pos_;
    }
    on_bytes_(static_cast<int64_t>(take));
    return take == n;  // more than expected: stop (the hash check decides)
  }

  // The end of the download after this response (done or a fatal error), or nullopt to go on.
  // A body that ended early without a transport error is turned into a cut connection.
  std::optional<Result<Ok>> settle(http::Response& r) {
    if (write_failed_)
      return Error{ErrorKind::Io, c_.describe() + ": cannot write " + partial_.string() + ": " +
                                      std::strerror(errno)};
    if (range_mismatch_)
      return Error{ErrorKind::InvalidResponse,
                   c_.describe() + ": the server answered a Range request with the wrong bytes"};
    bool complete_2xx = r.transport_ok() && (r.status == 200 || r.status == 206);
    if ((complete_2xx || r.aborted_by_sink()) && pos_ >= end_) return Result<Ok>(Ok{});
    if (complete_2xx && end_ == UINT64_MAX) return Result<Ok>(Ok{});
    if (complete_2xx && pos_ < end_) {
      r.curl_code = 18;
      r.curl_error =
          "body ended after " + std::to_string(pos_) + " of " + std::to_string(end_) + " bytes";
    }
    return std::nullopt;
  }

  // Waits before the next attempt (not at all when the last one made progress), or returns the
  // error when the response is final or the attempts are spent.
  std::optional<Error> wait_for_retry(const http::Response& r, int attempt, uint64_t start_pos) {
    bool progressed = pos_ > start_pos;
    no_progress_ = progressed ? 0 : no_progress_ + 1;
    bool again = detail::retryable(r) && no_progress_ <= t_.opt.max_retries &&
                 attempt < t_.opt.max_retries + 100;
    if (!again) return t_.error(r, c_);
    double d = progressed ? 0.0 : t_.backoff(no_progress_ - 1, r.transport_ok() ? &r : nullptr);
    spdlog::warn("hub: download {}: {} at byte {}; resuming{}", c_.describe(),
                 r.transport_ok() ? "HTTP " + std::to_string(r.status) : r.curl_error, pos_,
                 d > 0 ? fmt::format(" in {:.1f}s", d) : std::string());
    t_.sleep_s(d);
    return std::nullopt;
  }

  const Transport& t_;
  const std::string& url_;
  const fs::path& partial_;
  const uint64_t end_;
  const bool append_;
  const Ctx& c_;
  const BytesFn& on_bytes_;
  StreamHash* sh_;
  int fd_ = -1;
  uint64_t pos_;
  uint64_t written_back_ = 0;  // writeback started for [0, written_back_)
  int no_progress_ = 0;
  bool restarted_416_ = false;
  bool range_mismatch_ = false, write_failed_ = false;  // set by the callbacks of one request
};

Result<Ok> download_range(const Transport& t, const std::string& url, const fs::path& partial,
                          uint64_t begin, uint64_t end, bool append_mode, const Ctx& c,
                          const BytesFn& on_bytes, StreamHash* sh = nullptr) {
  return RangeDownload(t, url, partial, begin, end, append_mode, c, on_bytes, sh).run();
}

// Downloads a file of `size` bytes into `partial`.parallel (not resumable across runs; see
// docs/hub.md) in chunks that opt.parallel workers take in file order, while this thread hashes
// the finished chunks in order (read back from the page cache), so that verification overlaps
// the transfer instead of following it: at the end only the last chunks are left to hash. Then
// renames it to `partial`. Returns whether the bytes hash to `sh`'s digest (false: the caller
// verifies the file itself and reports what it finds).
Result<bool> download_parallel(const Transport& t, const std::string& url, const fs::path& partial,
                               uint64_t size, const Ctx& c, const BytesFn& on_bytes,
                               StreamHash& sh) {
  fs::path par = partial;
  par += ".parallel";
  std::error_code ec;
  fs::remove(par, ec);
  {
    int fd = ::open(par.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0) {
      if (fd >= 0) ::close(fd);
      return Error{ErrorKind::Io, c.describe() + ": cannot create " + par.string()};
    }
    ::close(fd);
  }
  const int n = t.opt.parallel;
  // About eight chunks per worker, at least 16 MiB (or a worker's share of a smaller file) and at
  // most 256 MiB each: the hash trails the transfer by about one chunk per worker.
  const uint64_t workers = static_cast<uint64_t>(n);
  const uint64_t chunk = std::min<uint64_t>(
      std::max<uint64_t>((size + 8 * workers - 1) / (8 * workers),
                         std::min<uint64_t>(uint64_t{16} << 20, (size + workers - 1) / workers)),
      uint64_t{256} << 20);
  const size_t chunks = static_cast<size_t>((size + chunk - 1) / chunk);
  auto bounds = [chunk, size](size_t i) {  // [begin, end) of chunk i
    return std::pair<uint64_t, uint64_t>{chunk * i, std::min(size, chunk * (i + 1))};
  };
  std::mutex mu;
  std::condition_variable cv;
  std::vector<char> done(chunks, 0);
  std::optional<Error> failure;
  std::atomic<size_t> next{0};
  BytesFn locked = [&](int64_t k) {
    std::lock_guard<std::mutex> g(mu);
    on_bytes(k);
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < std::min<int>(n, static_cast<int>(chunks)); ++w)
    threads.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < chunks;) {
        const auto [b, e] = bounds(i);
        auto r = download_range(t, url, par, b, e, false, c, locked);
        std::lock_guard<std::mutex> g(mu);
        if (!r && !failure) failure = r.error();
        if (r) done[i] = 1;
        cv.notify_all();
        if (failure) return;
      }
    });
  bool hashed = true;
  {
    int rfd = ::open(par.c_str(), O_RDONLY | O_CLOEXEC);
    hashed = rfd >= 0;
    sh.reset();
    std::vector<char> buf(size_t{1} << 20);
    for (size_t i = 0; i < chunks && hashed; ++i) {
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return done[i] || failure; });
        if (!done[i]) break;
      }
      const auto [begin, end] = bounds(i);
      for (uint64_t o = begin; o < end && hashed;) {
        ssize_t got = ::pread(rfd, buf.data(), std::min<uint64_t>(end - o, buf.size()),
                              static_cast<off_t>(o));
        if (got <= 0) {
          hashed = false;  // the caller's verify_file reads it again and names the problem
          break;
        }
        sh.h->update(buf.data(), static_cast<size_t>(got));
        o += static_cast<uint64_t>(got);
      }
      if (hashed) start_writeback(rfd, begin, end - begin);
    }
    if (rfd >= 0) ::close(rfd);
  }
  for (auto& th : threads) th.join();
  if (failure) {
    fs::remove(par, ec);
    return *failure;
  }
  fs::rename(par, partial, ec);
  if (ec) return Error{ErrorKind::Io, c.describe() + ": cannot rename " + par.string()};
  return hashed && sh.h->hex() == sh.digest.hex;
}

// What one file download is: where from, where to, what it must hash to, where it goes then.
struct FileFetch {
  std::string url;
  fs::path partial;
  st::Digest digest;
  uint64_t size = 0;
  Ctx c;
  CommitFn commit;
};

// Shared progress of a snapshot: bytes done of `total`, reported to `progress`.
struct Progress {
  std::atomic<uint64_t>& done;
  const ProgressFn& progress;
  uint64_t total;
};

// One file: partial -> verified (while streaming, else by reading it back) -> `f.commit`.
// A hash mismatch deletes the partial and retries once. Returns bytes fetched.
Result<uint64_t> fetch_file(const Transport& t, const FileFetch& f, Progress& pg) {
  uint64_t fetched = 0;
  BytesFn on_bytes = [&](int64_t n) {
    fetched += static_cast<uint64_t>(std::max<int64_t>(n, 0));
    uint64_t v = pg.done.fetch_add(static_cast<uint64_t>(n)) + static_cast<uint64_t>(n);
    if (pg.progress) pg.progress(v, pg.total, f.c.file);
  };
  for (int round = 0; round < 2; ++round) {
    if (f.size >= t.opt.range_threshold && t.opt.parallel > 1) {
      StreamHash sh{f.digest, f.size, nullptr};
      auto p = download_parallel(t, f.url, f.partial, f.size, f.c, on_bytes, sh);
      if (!p) return p.error();
      if (p.value()) {
        auto m = f.commit(f.partial);  // verified while the chunks came in
        if (!m) return from_storage(m.error(), f.c);
        return fetched;
      }
    } else {
      StreamHash sh{f.digest, f.size, nullptr};
      auto got = download_range(t, f.url, f.partial, 0, f.size, true, f.c, on_bytes, &sh);
      if (!got) return got.error();
      std::error_code sec;
      uint64_t have = fs::file_size(f.partial, sec);
      if (!sec && have == f.size && sh.h->hex() == f.digest.hex) {
        auto m = f.commit(f.partial);  // verified while streaming
        if (!m) return from_storage(m.error(), f.c);
        return fetched;
      }
    }
    auto v = st::verify_file(f.partial, f.digest);
    if (v) {
      auto m = f.commit(f.partial);
      if (!m) return from_storage(m.error(), f.c);
      return fetched;
    }
    std::error_code ec;
    fs::remove(f.partial, ec);
    if (v.error().code == st::Errc::Io) return from_storage(v.error(), f.c);
    if (round == 0) {
      spdlog::warn("hub: {}: {}; deleted the partial, downloading again", f.c.describe(),
                   v.error().message);
      pg.done.fetch_sub(f.size);
      continue;
    }
    return Error{ErrorKind::HashMismatch,
                 f.c.describe() + ": " + v.error().message + " (twice; the partial was deleted)"};
  }
  return Error{ErrorKind::HashMismatch, f.c.describe() + ": verification failed"};
}

// One snapshot_download call, as its steps.
class SnapshotDownload {
 public:
  SnapshotDownload(Client& client, const SnapshotRequest& sr, const ProgressFn& progress)
      : client_(client),
        t_(client.options()),
        sr_(sr),
        progress_(progress),
        c_{sr.repo, sr.revision, ""} {}

  Result<SnapshotResult> run() {
    if (auto e = detail::check_repo_id(sr_.repo)) return *e;
    if (sr_.store.has_value() == sr_.local_dir.has_value())
      return Error{ErrorKind::BadRequest, "give exactly one of a store and a local dir"};
    if (sr_.store) store_.emplace(*sr_.store);
    if (t_.opt.offline) return offline();
    // 1. revision -> commit; 2. the tree at that commit.
    auto info = client_.repo_info(sr_.repo, sr_.revision);
    if (!info) return info.error();
    commit_ = info.value().sha;
    auto tree = client_.list_tree(sr_.repo, commit_, true);
    if (!tree) return tree.error();
    // 3. Every upstream name is validated before anything touches the disk.
    if (auto s = select(std::move(tree.value())); !s) return s.error();
    init_result();
    // 4. What is missing, and is there room for it?
    plan();
    if (auto s = check_space(); !s) return s.error();
    // 5. Download; 6. link the snapshot and write the ref only once every file is in place.
    if (auto d = download_all(); !d) return d.error();
    if (auto l = link(); !l) return l.error();
    res_.bytes = bytes_;
    res_.downloaded = downloaded_;
    return res_;
  }

 private:
  struct Job {
    const TreeEntry* e;
    fs::path partial;
  };

  // HF_HUB_OFFLINE: the snapshot the store already has, or Offline.
  Result<SnapshotResult> offline() const {
    if (!store_)
      return Error{ErrorKind::Offline, c_.describe() +
                                           ": HF_HUB_OFFLINE is set and a local dir cannot be "
                                           "resolved offline"};
    auto commit = store_->resolve(sr_.repo, sr_.revision);
    if (!commit)
      return Error{ErrorKind::Offline,
                   c_.describe() + ": HF_HUB_OFFLINE is set and the store has no such snapshot"};
    SnapshotResult res;
    res.commit = *commit;
    res.dir = store_->snapshot_dir(sr_.repo, *commit);
    auto files = store_->list_snapshot(sr_.repo, *commit);
    if (files) res.files = files.value().size();
    return res;
  }

  // Refuses the repo on any unsafe name or bad oid; keeps the files the patterns select.
  Result<Ok> select(std::vector<TreeEntry> tree) {
    for (auto& e : tree) {
      if (auto p = common::path_problem(e.path))
        return Error{ErrorKind::UnsafePath, c_.describe() +
                                                ": the repo lists an unsafe file name '" + e.path +
                                                "' (" + *p + "); refusing the repo"};
      if (e.type != "file") continue;
      bool etag_ok =
          e.lfs_sha256 ? common::is_sha256_hex(*e.lfs_sha256) : common::is_sha1_hex(e.oid);
      if (!etag_ok)
        return Error{ErrorKind::InvalidResponse, c_.describe() + ": file '" + e.path +
                                                     "' has no valid oid in the tree listing"};
      if (!st::path_selected(e.path, sr_.allow, sr_.ignore)) continue;
      if (!sr_.files.empty() &&
          std::find(sr_.files.begin(), sr_.files.end(), e.path) == sr_.files.end())
        continue;
      files_.push_back(std::move(e));
    }
    for (const auto& want : sr_.files)
      if (std::none_of(files_.begin(), files_.end(),
                       [&](const TreeEntry& e) { return e.path == want; }))
        return Error{ErrorKind::EntryNotFound,
                     c_.describe() + ": '" + want +
                         "' is not among the files selected (not in the repo at this revision, "
                         "or left out by the allow/ignore patterns)"};
    return Ok{};
  }

  // The result's commit, file count and directory.
  void init_result() {
    res_.commit = commit_;
    res_.files = files_.size();
    if (sr_.local_dir) {
      res_.dir = *sr_.local_dir;
      local_cache_ = *sr_.local_dir / ".cache" / "huggingface" / "download";
    } else {
      res_.dir = store_->snapshot_dir(sr_.repo, commit_);
    }
  }

  // A local-dir file that its metadata says is this etag, with the right size.
  bool local_file_current(const TreeEntry& e) const {
    fs::path dst = *sr_.local_dir / e.path;
    std::ifstream mf(local_cache_ / (e.path + ".metadata"));
    std::string mcommit, metag;
    std::error_code ec;
    return mf && std::getline(mf, mcommit) && std::getline(mf, metag) && metag == e.etag() &&
           fs::is_regular_file(dst, ec) && fs::file_size(dst, ec) == e.size;
  }

  // Jobs for the files not yet in place (one per blob, even when paths share content).
  void plan() {
    std::set<std::string> queued;
    for (const auto& e : files_) {
      if (store_) {
        if (store_->has_blob(sr_.repo, e.etag()) || !queued.insert(e.etag()).second) continue;
        jobs_.push_back({&e, store_->incomplete_path(sr_.repo, e.etag())});
      } else {
        if (local_file_current(e)) continue;
        jobs_.push_back({&e, local_cache_ / (e.path + "." + e.etag() + ".incomplete")});
      }
      need_ += e.size;
    }
  }

  // Room for what is still missing (partials count as had) plus the reserve. A snapshot with
  // nothing left to fetch writes only its links and ref, so it is not held to the reserve (a
  // cached model stays usable on a full disk, and the quantize step checks its own needs).
  Result<Ok> check_space() {
    fs::path space_dir = store_ ? *sr_.store : *sr_.local_dir;
    std::error_code ec;
    fs::create_directories(space_dir, ec);
    if (ec)
      return Error{ErrorKind::Io, "cannot create " + space_dir.string() + ": " + ec.message()};
    for (const auto& j : jobs_) {
      std::error_code sec;
      auto sz = fs::file_size(j.partial, sec);
      if (!sec) have_partial_ += std::min<uint64_t>(sz, j.e->size);
    }
    if (need_ <= have_partial_) return Ok{};
    if (auto s = st::check_space(space_dir, need_ - have_partial_, t_.opt.disk_reserve); !s)
      return from_storage(s.error(), c_);
    return Ok{};
  }

  // Small files on a pool of `parallel` workers, then large files one at a time in `parallel`
  // byte ranges. Stops at the first error.
  Result<Ok> download_all() {
    done_ = have_partial_;
    std::vector<const Job*> small, large;
    for (const auto& j : jobs_)
      (j.e->size >= t_.opt.range_threshold && t_.opt.parallel > 1 ? large : small).push_back(&j);
    auto got = common::parallel_each<Error>(small.size(), t_.opt.parallel,
                                            [&](size_t k) { return run_job(*small[k]); });
    if (!got) return got.error();
    for (const Job* j : large)
      if (auto r = run_job(*j); !r) return r.error();
    return Ok{};
  }

  // Downloads one job's file.
  Result<Ok> run_job(const Job& j) {
    const TreeEntry& e = *j.e;
    FileFetch f;
    f.url = t_.resolve_url(sr_.repo, commit_, e.path);
    f.partial = j.partial;
    f.digest =
        e.lfs_sha256 ? st::Digest::lfs(*e.lfs_sha256, e.size) : st::Digest::git(e.oid, e.size);
    f.size = e.size;
    f.c = Ctx{sr_.repo, sr_.revision, e.path};
    std::error_code ec;
    fs::create_directories(j.partial.parent_path(), ec);
    const std::string hex = f.digest.hex;
    if (store_) {
      // fetch_file calls this only with a verified partial.
      f.commit = [this, hex](const fs::path& p) { return store_->install_blob(sr_.repo, p, hex); };
    } else {
      f.commit = [this, &e](const fs::path& p) { return move_into_local_dir(p, e); };
    }
    Progress pg{done_, progress_, need_};
    auto r = fetch_file(t_, f, pg);
    if (!r) return r.error();
    bytes_ += r.value();
    ++downloaded_;
    return Ok{};
  }

  // Local dir: the verified partial becomes the file, with huggingface_hub's metadata
  // (commit, etag, timestamp) next to it in .cache/huggingface/download.
  st::Status move_into_local_dir(const fs::path& p, const TreeEntry& e) const {
    fs::path dst = *sr_.local_dir / e.path;
    std::error_code ec;
    fs::create_directories(dst.parent_path(), ec);
    if (::rename(p.c_str(), dst.c_str()) != 0)
      return st::Error{st::Errc::Io, "cannot move into " + dst.string()};
    fs::path meta = local_cache_ / (e.path + ".metadata");
    fs::create_directories(meta.parent_path(), ec);
    auto now =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    std::ofstream(meta) << commit_ << "\n" << e.etag() << "\n" << std::fixed << now << "\n";
    return st::ok_status();
  }

  // Store: the snapshot's links, then refs/{revision} (not for a revision that is the commit).
  Result<Ok> link() {
    if (!store_) return Ok{};
    for (const auto& e : files_) {
      auto l = store_->link_file(sr_.repo, commit_, e.path, e.etag());
      if (!l) return from_storage(l.error(), c_);
    }
    std::error_code ec;
    fs::create_directories(res_.dir, ec);  // an empty selection still has a snapshot dir
    if (sr_.revision != commit_) {
      auto w = store_->write_ref(sr_.repo, sr_.revision, commit_);
      if (!w) return from_storage(w.error(), c_);
    }
    return Ok{};
  }

  Client& client_;
  const Transport t_;
  const SnapshotRequest& sr_;
  const ProgressFn& progress_;
  const Ctx c_;
  std::optional<st::Store> store_;
  std::string commit_;
  std::vector<TreeEntry> files_;  // the selection
  fs::path local_cache_;          // local dir: .cache/huggingface/download
  std::vector<Job> jobs_;
  uint64_t need_ = 0, have_partial_ = 0;
  SnapshotResult res_;
  std::atomic<uint64_t> done_{0};
  std::atomic<uint64_t> bytes_{0};
  std::atomic<size_t> downloaded_{0};
};

}  // namespace

Result<SnapshotResult> Client::snapshot_download(const SnapshotRequest& sr,
                                                 const ProgressFn& progress) {
  return SnapshotDownload(*this, sr, progress).run();
}

}  // namespace loftqd::hub
