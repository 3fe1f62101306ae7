// Helpers shared by the test suites: scratch directories, running the loftqd binary.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace loftqd::testing {

// A fresh directory under the system temp dir, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& s) const { return path_ / s; }

 private:
  std::filesystem::path path_;
};

struct RunResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr, interleaved
};

// The message of the exception f() throws, "" when it throws none.
std::string error_of(const std::function<void()>& f);

// Runs the built loftqd binary with `args` (no shell), capturing its output.
RunResult run_loftqd(const std::vector<std::string>& args);

// The loftqd binary as a background child process, stdout+stderr appended to a log file.
class Child {
 public:
  // `env` entries ("NAME=value") are added to the child's environment. `binary`: the
  // executable to run (default: the loftqd binary; e.g. the failpoint test build loftqd-test).
  Child(const std::vector<std::string>& args, const std::filesystem::path& log,
        const std::vector<std::string>& env = {}, const std::string& binary = {});
  ~Child();  // SIGKILL + reap if still running
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  pid_t pid() const { return pid_; }
  void signal(int sig) const;
  // Waits for the exit; the exit code (128 + signal when killed), nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  bool running();
  std::string log() const;
  // Polls the log until it contains `needle` `count` times; false on timeout or early exit.
  bool wait_for_log(const std::string& needle, std::chrono::milliseconds timeout, size_t count = 1);

 private:
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
  std::filesystem::path log_;
};

// `loftqd serve` over `store` with the write API (bearer token in `token_file`), as a child
// process on a free port; `extra` arguments are appended; the log is work/serve.log.
class ServeProcess {
 public:
  ServeProcess(const std::filesystem::path& store, const std::filesystem::path& token_file,
               const std::filesystem::path& work, const std::vector<std::string>& extra = {});
  ~ServeProcess() { stop(); }
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string log() const { return child_.log(); }
  int stop();  // SIGTERM; the exit code

 private:
  Child child_;
  int port_ = 0;
  std::optional<int> exit_code_;
};

// n pseudo-random bytes (std::mt19937 seeded with `seed`).
std::string random_bytes(size_t n, unsigned seed);

// Occurrences of `needle` in `haystack`.
size_t count_of(const std::string& haystack, const std::string& needle);

std::string slurp(const std::filesystem::path& p);
void spit(const std::filesystem::path& p, const std::string& content);

// safetensors bytes built by hand (not by the writer under test): the 8-byte little-endian
// length of `header`, `header`, then `buffer`.
std::string raw_safetensors(const std::string& header, const std::string& buffer = "");
// The header block of the safetensors file `p` (its first 8 + N bytes), N read by hand from its
// length field: what the daemon fetches ahead of a shard's download.
std::string safetensors_header_block(const std::filesystem::path& p);

}  // namespace loftqd::testing
