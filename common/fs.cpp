#include "common/fs.h"

#include "common/strings.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace loftqd::common {

namespace {

[[noreturn]] void throw_errno(std::string_view what, const std::filesystem::path& p, int err) {
  throw std::runtime_error(std::string(what) + " " + p.string() + ": " + std::strerror(err));
}

std::filesystem::path parent_dir(const std::filesystem::path& p) {
  auto parent = p.parent_path();
  return parent.empty() ? std::filesystem::path(".") : parent;
}

// Writes all of [data, data+n) at the file offset (or at `offset` when positional), retrying on
// EINTR and short writes.
void write_all(int fd, const void* data, size_t n, const std::filesystem::path& p,
               const off_t* offset) {
  const auto* c = static_cast<const char*>(data);
  off_t pos = offset ? *offset : 0;
  while (n > 0) {
    ssize_t w = offset ? ::pwrite(fd, c, n, pos) : ::write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot write", p, errno);
    }
    if (w == 0) throw_errno("cannot write", p, EIO);
    c += w;
    n -= static_cast<size_t>(w);
    pos += w;
  }
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

int open_read(const std::filesystem::path& p) {
  int fd;
  do {
    fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw_errno("cannot open", p, errno);
  return fd;
}

}  // namespace

AtomicFile::AtomicFile(std::filesystem::path final_path) : final_(std::move(final_path)) {
  if (final_.filename().empty()) {
    throw std::runtime_error("cannot write " + final_.string() + ": not a file name");
  }
  const auto dir = parent_dir(final_);
  const std::string base = "." + final_.filename().string() + ".tmp." + std::to_string(::getpid());
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto candidate = dir / (base + "." + random_hex(16));
    int fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
      fd_ = fd;
      temp_ = std::move(candidate);
      return;
    }
    if (errno == EEXIST || errno == EINTR) continue;
    throw_errno("cannot create a temp file for", final_, errno);
  }
  throw_errno("cannot create a temp file for", final_, EEXIST);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_.empty()) ::unlink(temp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  if (fd_ < 0) throw std::logic_error("write to " + final_.string() + " after commit");
  write_all(fd_, data, n, final_, nullptr);
}

void AtomicFile::pwrite(const void* data, size_t n, size_t offset) {
  if (fd_ < 0) throw std::logic_error("write to " + final_.string() + " after commit");
  const auto off = static_cast<off_t>(offset);
  write_all(fd_, data, n, final_, &off);
}

void AtomicFile::commit() {
  if (committed_ || fd_ < 0) throw std::logic_error(final_.string() + ": committed twice");
  if (::fsync(fd_) != 0) throw_errno("cannot fsync", final_, errno);
  const int fd = std::exchange(fd_, -1);
  // close() after a successful fsync: an error here still means the data may be lost.
  if (::close(fd) != 0 && errno != EINTR) throw_errno("cannot close", final_, errno);
  if (::rename(temp_.c_str(), final_.c_str()) != 0)
    throw_errno("cannot rename into", final_, errno);
  committed_ = true;
  fsync_dir(parent_dir(final_));
}

void write_file_atomic(const std::filesystem::path& p, std::string_view content) {
  AtomicFile f(p);
  f.write(content);
  f.commit();
}

std::string read_file(const std::filesystem::path& p) {
  Fd fd(open_read(p));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("cannot stat", p, errno);
  if (S_ISDIR(st.st_mode)) throw_errno("cannot read", p, EISDIR);
  std::string out;
  if (S_ISREG(st.st_mode) && st.st_size > 0) out.reserve(static_cast<size_t>(st.st_size));
  std::vector<char> buf(1 << 16);
  for (;;) {
    ssize_t r = ::read(fd.get(), buf.data(), buf.size());
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read", p, errno);
    }
    if (r == 0) break;
    out.append(buf.data(), static_cast<size_t>(r));
  }
  return out;
}

void fsync_dir(const std::filesystem::path& dir) {
  int raw;
  do {
    raw = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) throw_errno("cannot open directory", dir, errno);
  Fd fd(raw);
  // Some file systems cannot fsync a directory (EINVAL); there is nothing more to make durable.
  if (::fsync(fd.get()) != 0 && errno != EINVAL) throw_errno("cannot fsync directory", dir, errno);
}

void copy_file_atomic(const std::filesystem::path& src, const std::filesystem::path& dst) {
  Fd in(open_read(src));
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) throw_errno("cannot stat", src, errno);
  if (S_ISDIR(st.st_mode)) throw_errno("cannot read", src, EISDIR);
  AtomicFile out(dst);
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t r = ::read(in.get(), buf.data(), buf.size());
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read", src, errno);
    }
    if (r == 0) break;
    out.write(buf.data(), static_cast<size_t>(r));
  }
  out.commit();
}

std::optional<std::string> regular_file_problem(const std::filesystem::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) {
    const int err = errno;
    struct stat lst {};
    if (err == ENOENT && ::lstat(p.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode))
      return std::string("is a dangling symbolic link");
    if (err == ENOENT) return std::string("does not exist");
    if (err == ELOOP) return std::string("is a symbolic link loop");
    return std::string("cannot stat: ") + std::strerror(err);
  }
  if (S_ISREG(st.st_mode)) return std::nullopt;
  if (S_ISFIFO(st.st_mode)) return std::string("is a FIFO, not a regular file");
  if (S_ISSOCK(st.st_mode)) return std::string("is a socket, not a regular file");
  if (S_ISCHR(st.st_mode)) return std::string("is a character device, not a regular file");
  if (S_ISBLK(st.st_mode)) return std::string("is a block device, not a regular file");
  if (S_ISDIR(st.st_mode)) return std::string("is a directory, not a regular file");
  return std::string("is not a regular file");
}

}  // namespace loftqd::common
