// Durable file writes: temp file in the same directory, fsync, rename, fsync the directory.
#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace loftqd::common {

// A file that appears at `final_path` complete or not at all.
// Write through write()/fd(); commit() fsyncs, renames over final_path and fsyncs the directory.
// Destroying an uncommitted AtomicFile removes the temp file.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path final_path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);  // appends; throws std::runtime_error naming the file
  void write(std::string_view s) { write(s.data(), s.size()); }
  void pwrite(const void* data, size_t n, size_t offset);  // positional write
  int fd() const { return fd_; }
  const std::filesystem::path& temp_path() const { return temp_; }
  void commit();

 private:
  std::filesystem::path final_;
  std::filesystem::path temp_;
  int fd_ = -1;
  bool committed_ = false;
};

void write_file_atomic(const std::filesystem::path& p, std::string_view content);
std::string read_file(const std::filesystem::path& p);  // throws naming the file
void fsync_dir(const std::filesystem::path& dir);
// Copies src to dst atomically (temp + fsync + rename).
void copy_file_atomic(const std::filesystem::path& src, const std::filesystem::path& dst);

// Why `p` cannot be opened as a regular file without blocking or looping, found with stat()
// before anything opens it: "does not exist", "is a dangling symbolic link", "is a symbolic link
// loop", "is a FIFO", "is a socket", "is a character device", "is a block device", "is a
// directory" (or the OS error); nullopt for a regular file (symlinks followed).
std::optional<std::string> regular_file_problem(const std::filesystem::path& p);

}  // namespace loftqd::common
