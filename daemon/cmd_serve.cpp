// `loftqd serve --store DIR`: the store as a Hub-compatible mirror, until SIGINT/SIGTERM.
#include <signal.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "common/fs.h"
#include "common/parse.h"
#include "common/signals.h"
#include "daemon/commands.h"
#include "daemon/hub_options.h"
#include "mirror/mirror.h"
#include "storage/store.h"

namespace fs = std::filesystem;

namespace loftqd::daemon {

namespace {

struct ServeArgs {
  std::string store, listen = "127.0.0.1:8080", write_token_file, port_file;
  int threads = 8;
  std::string multipart_threshold = "256M", multipart_chunk = "64M";
  size_t page_size = 1000;
};

mirror::MirrorOptions mirror_options(const ServeArgs& a) {
  mirror::MirrorOptions o;
  o.store = a.store;
  std::tie(o.host, o.port) = mirror::parse_listen(a.listen);
  o.threads = a.threads;
  o.tree_page_size = a.page_size;
  o.multipart_threshold =
      common::parse_size_or_throw("--multipart-threshold", a.multipart_threshold);
  o.multipart_chunk = common::parse_size_or_throw("--multipart-chunk", a.multipart_chunk);
  if (o.multipart_chunk == 0) throw std::invalid_argument("--multipart-chunk must be > 0");
  if (!a.write_token_file.empty())
    o.write_token = read_secret(a.write_token_file, "--write-token-file");
  return o;
}

int serve(const ServeArgs& a) {
  mirror::MirrorOptions o = mirror_options(a);
  const auto lock = storage::StoreLock::acquire(o.store);  // one loftqd per store
  o.store_locked = true;  // so every upload temp left by a killed predecessor goes at start

  // SIGINT/SIGTERM stop the server: the signal pipe's handler works whichever thread the signal
  // lands on (e.g. a BLAS worker); a watcher thread waits on it and stops the server.
  common::SignalPipe signals({SIGINT, SIGTERM});
  mirror::Mirror mirror(o);
  const int bound = mirror.bind();
  const std::string url = "http://" +
                          (o.host.find(':') != std::string::npos ? "[" + o.host + "]" : o.host) +
                          ":" + std::to_string(bound);
  if (!a.port_file.empty()) common::write_file_atomic(a.port_file, std::to_string(bound) + "\n");
  spdlog::info("mirror: serving {} on {} (write API {}); HF_ENDPOINT={}", o.store.string(), url,
               o.write_token ? "enabled" : "disabled", url);
  std::thread watcher([&] {
    if (signals.next()) spdlog::info("mirror: stopping on a signal");
    mirror.stop();
  });
  mirror.serve();
  signals.wake();  // serve() returned on its own: release the watcher
  watcher.join();
  return kExitOk;
}

}  // namespace

Command add_serve_command(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  auto* c = app.add_subcommand("serve", "serve a store as a Hub-compatible mirror");
  c->add_option("--store", a->store, "store directory (Hugging Face cache layout)")->required();
  c->add_option("--listen", a->listen, "HOST:PORT to listen on (port 0: any)")
      ->capture_default_str();
  c->add_option("--write-token-file", a->write_token_file,
                "file holding the bearer token that enables the write API");
  c->add_option("--threads", a->threads, "worker threads")->capture_default_str();
  c->add_option("--port-file", a->port_file, "write the bound port to this file");
  c->add_option("--page-size", a->page_size, "tree entries per page")->capture_default_str();
  c->add_option("--multipart-threshold", a->multipart_threshold,
                "LFS objects this large are offered multipart uploads")
      ->capture_default_str();
  c->add_option("--multipart-chunk", a->multipart_chunk, "multipart part size")
      ->capture_default_str();
  return {c, [a] { return serve(*a); }};
}

}  // namespace loftqd::daemon
