#include "daemon/cmd_hub.h"

#include <signal.h>
#include <unistd.h>

#include <spdlog/spdlog.h>
#include <cerrno>

#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>

#include "common/fs.h"
#include "common/parse.h"
#include "daemon/cli.h"
#include "daemon/progress.h"
#include "hub/hub.h"
#include "mirror/mirror.h"
#include "storage/store.h"

namespace fs = std::filesystem;

namespace loftqd::daemon {

struct HubCommands {
  CLI::App* serve = nullptr;
  CLI::App* fetch = nullptr;
  CLI::App* publish = nullptr;

  // serve
  std::string store, listen = "127.0.0.1:8080", write_token_file, port_file;
  int threads = 8;
  std::string multipart_threshold = "256M", multipart_chunk = "64M";
  size_t page_size = 1000;

  // fetch
  std::string repo, revision = "main", endpoint, local_dir;
  std::vector<std::string> include, exclude;
  int parallel = 4;
  std::string disk_reserve = "1G", range_threshold = "256M", limit_rate = "0";
  int max_retries = 5;
  double backoff = 1.0;
  long stall_timeout = 30, connect_timeout = 10;

  // publish
  std::string dir, message;
  bool is_private = false, keep_remote = false;
};

namespace {

int g_stop_pipe = -1;  // written by the signal handler of `serve`

int cmd_serve(HubCommands& h) {
  mirror::MirrorOptions o;
  o.store = h.store;
  auto [host, port] = mirror::parse_listen(h.listen);
  o.host = host;
  o.port = port;
  o.threads = h.threads;
  o.tree_page_size = h.page_size;
  o.multipart_threshold =
      common::parse_size_or_throw("--multipart-threshold", h.multipart_threshold);
  o.multipart_chunk = common::parse_size_or_throw("--multipart-chunk", h.multipart_chunk);
  if (o.multipart_chunk == 0) throw std::invalid_argument("--multipart-chunk must be > 0");
  if (!h.write_token_file.empty()) {
    o.write_token = hub::read_token_file(h.write_token_file);
    if (!o.write_token)
      throw std::invalid_argument("--write-token-file " + h.write_token_file + " is empty");
  }
  std::error_code ec;
  fs::create_directories(o.store, ec);
  if (ec) throw std::runtime_error("cannot create store " + o.store.string() + ": " + ec.message());

  // SIGINT/SIGTERM stop the server. The handler only writes to a pipe (async-signal-safe, and
  // process-wide, so it works whichever thread the signal lands on, e.g. a BLAS worker); a
  // watcher thread reads it and stops the server.
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  g_stop_pipe = fds[1];
  struct sigaction sa {
  }, old_int{}, old_term{};
  sa.sa_handler = [](int) {
    char c = 1;
    [[maybe_unused]] auto n = ::write(g_stop_pipe, &c, 1);
  };
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  mirror::Mirror mirror(o);
  int bound = mirror.bind();
  std::string url = "http://" + (host.find(':') != std::string::npos ? "[" + host + "]" : host) +
                    ":" + std::to_string(bound);
  if (!h.port_file.empty()) common::write_file_atomic(h.port_file, std::to_string(bound) + "\n");
  spdlog::info("mirror: serving {} on {} (write API {}); HF_ENDPOINT={}", o.store.string(), url,
               o.write_token ? "enabled" : "disabled", url);
  std::thread watcher([&] {
    char c = 0;
    while (::read(fds[0], &c, 1) < 0 && errno == EINTR) {
    }
    if (c == 1) spdlog::info("mirror: stopping on a signal");
    mirror.stop();
  });
  mirror.serve();
  char done = 2;  // serve() returned on its own: release the watcher
  [[maybe_unused]] auto n = ::write(fds[1], &done, 1);
  watcher.join();
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  ::close(fds[0]);
  ::close(fds[1]);
  return kExitOk;
}

hub::Client make_client(HubCommands& h) {
  auto o = hub::options_from_env(h.endpoint.empty() ? std::nullopt
                                                    : std::optional<std::string>(h.endpoint));
  o.parallel = h.parallel;
  o.disk_reserve = common::parse_size_or_throw("--disk-reserve", h.disk_reserve);
  o.range_threshold = common::parse_size_or_throw("--range-threshold", h.range_threshold);
  o.max_recv_bytes_per_s = common::parse_size_or_throw("--limit-rate", h.limit_rate);
  o.max_retries = h.max_retries;
  o.backoff_base_s = h.backoff;
  o.stall_timeout_s = h.stall_timeout;
  o.connect_timeout_s = h.connect_timeout;
  if (h.parallel < 1) throw std::invalid_argument("--parallel must be >= 1");
  return hub::Client(o);
}

// A thread-safe progress bar for byte counts.
struct ByteProgress {
  std::mutex mu;
  std::optional<Progress> bar;
  std::string label;
  explicit ByteProgress(std::string l) : label(std::move(l)) {}
  hub::ProgressFn fn() {
    return [this](uint64_t done, uint64_t total, const std::string& file) {
      std::lock_guard<std::mutex> g(mu);
      if (!bar) bar.emplace(label, total);
      bar->update(done, file);
    };
  }
  void finish() {
    std::lock_guard<std::mutex> g(mu);
    if (bar) bar->finish();
  }
};

int report(const hub::Error& e) {
  std::fprintf(stderr, "loftqd: error: %s [%s]\n", e.message.c_str(), hub::kind_name(e.kind));
  return kExitRuntime;
}

int cmd_fetch(HubCommands& h) {
  hub::Client client = make_client(h);
  hub::SnapshotRequest req;
  req.repo = h.repo;
  req.revision = h.revision;
  req.allow = h.include;
  req.ignore = h.exclude;
  if (!h.store.empty()) req.store = h.store;
  if (!h.local_dir.empty()) req.local_dir = h.local_dir;
  if (auto p = storage::repo_id_problem(h.repo))
    throw std::invalid_argument("invalid repo id '" + h.repo + "': " + *p);
  spdlog::info("fetch {}@{} from {}", h.repo, h.revision, client.options().endpoint);
  ByteProgress bar("fetch " + h.repo);
  auto r = client.snapshot_download(req, bar.fn());
  bar.finish();
  if (!r) return report(r.error());
  const auto& s = r.value();
  std::printf("fetched %s@%s (commit %s): %zu files, %zu downloaded (%llu bytes)\n%s\n",
              h.repo.c_str(), h.revision.c_str(), s.commit.c_str(), s.files, s.downloaded,
              static_cast<unsigned long long>(s.bytes), s.dir.string().c_str());
  return kExitOk;
}

int cmd_publish(HubCommands& h) {
  hub::Client client = make_client(h);
  if (auto p = storage::repo_id_problem(h.repo))
    throw std::invalid_argument("invalid repo id '" + h.repo + "': " + *p);
  if (!fs::is_directory(h.dir)) throw std::invalid_argument("not a directory: " + h.dir);
  hub::PublishRequest req;
  req.dir = h.dir;
  req.repo = h.repo;
  req.branch = h.revision;
  req.is_private = h.is_private;
  req.summary = h.message;
  req.delete_missing = !h.keep_remote;
  spdlog::info("publish {} -> {}@{} on {}", h.dir, h.repo, h.revision, client.options().endpoint);
  ByteProgress bar("publish " + h.repo);
  auto r = client.upload_folder(req, bar.fn());
  bar.finish();
  if (!r) return report(r.error());
  if (r.value().skipped) {
    std::printf("unchanged: %s@%s already holds %s at commit %s (no new commit)\n%s\n",
                h.repo.c_str(), h.revision.c_str(), h.dir.c_str(), r.value().commit_oid.c_str(),
                r.value().commit_url.c_str());
    return kExitOk;
  }
  std::printf("published %s to %s@%s: commit %s (%zu files, %zu LFS uploads, %zu deleted)\n%s\n",
              h.dir.c_str(), h.repo.c_str(), h.revision.c_str(), r.value().commit_oid.c_str(),
              r.value().files, r.value().lfs_uploaded, r.value().deleted,
              r.value().commit_url.c_str());
  return kExitOk;
}

void add_client_flags(CLI::App* c, HubCommands& h) {
  c->add_option("--endpoint", h.endpoint, "Hub URL (default: HF_ENDPOINT, else huggingface.co)");
  c->add_option("--max-retries", h.max_retries, "retries for 408/429/5xx and network errors")
      ->capture_default_str();
  c->add_option("--backoff", h.backoff, "first retry delay in seconds (doubles, capped)")
      ->capture_default_str();
  c->add_option("--stall-timeout", h.stall_timeout, "seconds without a byte before a retry")
      ->capture_default_str();
  c->add_option("--connect-timeout", h.connect_timeout, "connect timeout in seconds")
      ->capture_default_str();
}

}  // namespace

std::unique_ptr<HubCommands> add_hub_commands(CLI::App& app) {
  auto h = std::unique_ptr<HubCommands>(new HubCommands());
  HubCommands& r = *h;

  r.serve = app.add_subcommand("serve", "serve a store as a Hub-compatible mirror");
  r.serve->add_option("--store", r.store, "store directory (Hugging Face cache layout)")
      ->required();
  r.serve->add_option("--listen", r.listen, "HOST:PORT to listen on (port 0: any)")
      ->capture_default_str();
  r.serve->add_option("--write-token-file", r.write_token_file,
                      "file holding the bearer token that enables the write API");
  r.serve->add_option("--threads", r.threads, "worker threads")->capture_default_str();
  r.serve->add_option("--port-file", r.port_file, "write the bound port to this file");
  r.serve->add_option("--page-size", r.page_size, "tree entries per page")->capture_default_str();
  r.serve
      ->add_option("--multipart-threshold", r.multipart_threshold,
                   "LFS objects this large are offered multipart uploads")
      ->capture_default_str();
  r.serve->add_option("--multipart-chunk", r.multipart_chunk, "multipart part size")
      ->capture_default_str();

  r.fetch = app.add_subcommand("fetch", "download a snapshot of a Hub repo");
  r.fetch->add_option("REPO", r.repo, "repo id (org/name)")->required();
  r.fetch->add_option("--revision", r.revision, "branch, tag or commit")->capture_default_str();
  auto* o_store = r.fetch->add_option("--store", r.store, "store directory (HF cache layout)");
  auto* o_local = r.fetch->add_option("--local-dir", r.local_dir, "write plain files here instead");
  o_store->excludes(o_local);
  o_local->excludes(o_store);
  r.fetch->add_option("--include", r.include, "only files matching this glob (repeatable)");
  r.fetch->add_option("--exclude", r.exclude, "skip files matching this glob (repeatable)");
  r.fetch->add_option("--parallel", r.parallel, "files (and byte ranges) at once")
      ->capture_default_str();
  r.fetch->add_option("--disk-reserve", r.disk_reserve, "free space to keep, e.g. 10G")
      ->capture_default_str();
  r.fetch
      ->add_option("--limit-rate", r.limit_rate,
                   "cap on download speed per connection in bytes/s, e.g. 50M (0: none)")
      ->capture_default_str();
  r.fetch
      ->add_option("--range-threshold", r.range_threshold,
                   "files this large download in parallel byte ranges")
      ->capture_default_str();
  add_client_flags(r.fetch, r);

  r.publish = app.add_subcommand("publish", "upload a directory to a Hub repo as one commit");
  r.publish->add_option("DIR", r.dir, "directory to upload (e.g. written by loftqd quantize)")
      ->required();
  r.publish->add_option("REPO", r.repo, "repo id (org/name)")->required();
  r.publish->add_option("--revision", r.revision, "branch (created from main if missing)")
      ->capture_default_str();
  r.publish->add_flag("--private", r.is_private, "create the repo private");
  r.publish->add_option("--message", r.message, "commit title");
  r.publish->add_flag("--keep-remote", r.keep_remote,
                      "keep files on the branch that DIR lacks (default: delete them)");
  add_client_flags(r.publish, r);
  return h;
}

std::optional<int> run_hub_commands(HubCommands& h) {
  if (h.serve && *h.serve) return cmd_serve(h);
  if (h.fetch && *h.fetch) {
    if (h.store.empty() && h.local_dir.empty())
      throw std::invalid_argument("fetch: give --store DIR or --local-dir DIR");
    return cmd_fetch(h);
  }
  if (h.publish && *h.publish) return cmd_publish(h);
  return std::nullopt;
}

}  // namespace loftqd::daemon

void std::default_delete<loftqd::daemon::HubCommands>::operator()(
    loftqd::daemon::HubCommands* p) const {
  delete p;
}
