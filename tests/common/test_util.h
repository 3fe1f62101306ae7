// Helpers shared by the test suites: scratch directories, running the loftqd binary.
#pragma once

#include <filesystem>
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

// Runs the built loftqd binary with `args` (no shell), capturing its output.
RunResult run_loftqd(const std::vector<std::string>& args);

std::string slurp(const std::filesystem::path& p);
void spit(const std::filesystem::path& p, const std::string& content);

}  // namespace loftqd::testing
