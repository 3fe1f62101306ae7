// A test-only Hub on 127.0.0.1 that serves one repo from memory and injects faults: error
// statuses (429 + Retry-After, 5xx, typed X-Error-Codes), dropped connections mid-body,
// truncated bodies, wrong bytes, stalls, redirects to another host, unsafe tree entries.
// It records every request (method, path, Authorization, Range) for the tests to inspect.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace loftqd::testing {

struct SeenRequest {
  std::string method, path, authorization, range;
};

class FaultServer {
 public:
  // Serves repo `repo` at commit `commit` (branch "main"); tree pages of `page_size` entries.
  explicit FaultServer(std::string repo = "org/model", size_t page_size = 2);
  ~FaultServer();
  FaultServer(const FaultServer&) = delete;
  FaultServer& operator=(const FaultServer&) = delete;

  std::string url() const;
  const std::string& repo() const { return repo_; }
  const std::string& commit() const { return commit_; }

  void add_file(const std::string& path, const std::string& content, bool lfs);
  const std::string& content(const std::string& path) const { return files_.at(path).content; }
  // An extra raw entry in the tree listing (e.g. a path-traversal name).
  void add_tree_entry(const std::string& path);

  // Faults apply to the next `times` requests whose path contains `path_part`.
  void fail(const std::string& path_part, int status, int times,
            std::map<std::string, std::string> headers = {});
  void drop_after(const std::string& path_part, size_t bytes, int times);  // cut the connection
  void truncate(const std::string& path_part, size_t bytes, int times);    // short body, then close
  void corrupt(const std::string& path_part, int times);                   // flip bytes
  void stall(const std::string& path_part, size_t bytes, int seconds, int times);
  void ignore_range(const std::string& path_part, int times);  // 200 with the whole file, chunked
  // resolve requests answer 302 to `base` + "/cdn/" + path (absolute URL on another host).
  void redirect_resolve_to(const std::string& base);
  // resolve requests answer a relative 307 to /alias/... first (same host).
  void relative_redirects(bool on);
  // This server also answers /cdn/{path} with the file (the "CDN" role).
  std::vector<SeenRequest> requests() const;
  size_t count(const std::string& method, const std::string& path_part) const;

  struct Impl;

 private:
  struct File {
    std::string content;
    bool lfs = false;
  };
  std::string repo_, commit_;
  std::map<std::string, File> files_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace loftqd::testing
