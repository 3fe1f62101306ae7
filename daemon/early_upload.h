// Weights files uploaded while LoftQ runs on the next ones (issue 14): the quantize step hands
// each backbone shard over as soon as it is written (and the adapter when LoftQ is done), and a
// thread of its own hashes it once and sends it to every publish target as an LFS object
// (hub::Client::preupload_lfs), with no commit. The publish step's upload_folder then takes the
// hashes from here instead of reading the files again, and the LFS batch API answers that the
// objects are stored, so the commit comes right after LoftQ's last shard instead of after a whole
// upload.
//
// It never decides the job: nothing is visible in a repo until the publish step's commit names
// the objects, and a target whose early upload fails (the first failure is logged at warn) gets
// no more early files; the publish step uploads whatever is missing there, as it always did.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "hub/hub.h"

namespace loftqd::daemon {

class EarlyUpload {
 public:
  struct Target {
    std::string where;  // "mirror/org/name", "hub/org/name": the log's name for it
    hub::ClientOptions options;
  };
  using LogFn = std::function<void(spdlog::level::level_enum, const std::string&)>;

  // Starts its threads. `repo` is the target repo on every target. It is never created here: a
  // target where it (or its main branch) does not exist yet gets no early upload, so a job that
  // fails leaves nothing on a server where it published nothing before (the publish step makes
  // the repo; the nightly refreshes after it overlap). `log` gets the lines (prefixed with
  // `tag`); `failpoint` (a test seam, may be null) is called with "early_upload" before each
  // file's upload to a target, and what it throws counts as that upload's failure.
  // `jobs` files go up at once (limits.concurrent_uploads: a real Hub's throughput is per
  // connection, and shards below its multipart size go up in one).
  // `heartbeat` (may be null) is called from the upload threads as files and parts go up.
  EarlyUpload(std::vector<Target> targets, std::string repo, std::string tag, LogFn log,
              std::function<void(const std::string&)> failpoint = {}, int jobs = 1,
              std::function<void()> heartbeat = {});
  // Cancels the transfers in flight (ClientOptions::cancel), drops what is queued, joins.
  ~EarlyUpload();
  EarlyUpload(const EarlyUpload&) = delete;
  EarlyUpload& operator=(const EarlyUpload&) = delete;

  // Queues a finished file under `path` (its name in the repo). The file is opened now, so the
  // caller may rename or replace `file` afterwards: what goes up is the file as it is now. One
  // that cannot be opened is logged and left to the publish step.
  void add(const std::string& path, const std::filesystem::path& file);

  struct Done {
    // The files' sha256, each with the identity of the file it came from (KnownHash): for
    // PublishRequest::hashes.
    std::map<std::string, hub::KnownHash> hashes;
    size_t files = 0;         // files handed over
    uint64_t bytes_sent = 0;  // over every target (objects a target had count 0)
    double waited_s = 0;      // how long finish() waited for the queue
  };
  // Waits for everything queued to be uploaded (or to have failed). Like the publish step it
  // precedes, it is not cut short by a stop request.
  Done finish();

 private:
  struct Item {
    std::string path;
    int fd = -1;
  };
  void run();
  void upload(const Item& item);
  void check_repos();
  bool target_off(size_t t);
  void turn_off(size_t t);
  void say(spdlog::level::level_enum level, const std::string& line) const;

  std::atomic<bool> cancel_{false};
  std::vector<Target> targets_;  // each target's options.cancel points at cancel_
  const std::string repo_, tag_;
  const LogFn log_;
  const std::function<void(const std::string&)> failpoint_;
  const std::function<void()> heartbeat_;
  std::mutex target_mu_;
  std::vector<bool> off_;   // per target (under target_mu_): no repo yet, or an upload failed
  std::once_flag checked_;  // every target's repo asked for once, before the first upload
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  int busy_ = 0;          // items being uploaded
  bool closing_ = false;  // the destructor: the threads end
  Done done_;
  std::vector<std::thread> threads_;  // last: started once every member above exists
};

}  // namespace loftqd::daemon
