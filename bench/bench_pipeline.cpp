// The daemon's whole job (download, quantize, publish) on a sharded synthetic model served by an
// in-process upstream mirror capped per connection, published to the daemon's own mirror over
// upload connections capped the same way, as a refresh of a target published before. Three
// orders, alternating in one process (docs/performance.md, "Overlapped download" and "Early
// upload"):
//   sequential  the whole snapshot, then LoftQ, then the publish (overlap_download = false,
//               publish.early_upload = false: the order before issue 14's pipeline work);
//   download    the shards downloaded while the first ones are quantized;
//   overlapped  that, and each backbone shard uploaded while LoftQ runs on the next (the
//               default).
//
//   bench_pipeline [--layers 8] [--hidden 2048] [--intermediate 5632] [--shards 4]
//                  [--rate 25M] [--upload-rate 25M] [--multipart 64M]
//                  [--range-threshold 128M] [--rank 64] [--iters 5] [--threads 0]
//                  [--repeat 2] [--dir DIR]
//
// --rate caps each download connection (the mirror's max_bytes_per_s); the client opens
// `parallel` (4) of them per large file. --upload-rate caps each upload connection
// (ClientOptions::max_send_bytes_per_s; 0: none). --multipart is the object size from which the
// publish target offers multipart uploads (in parts of half that size), so that one large file
// also goes up over several connections, as on the Hub. --range-threshold is the size from which a
// file counts as large (fetched in byte ranges, one file at a time): real 7B shards (~5 GB) are
// far above the default 256 MiB, so the default here (128M) keeps a smaller model's shards in
// that regime.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "common/parse.h"
#include "config/config.h"
#include "daemon/hub_options.h"
#include "daemon/pipeline.h"
#include "hub/hub.h"
#include "mirror/mirror.h"
#include "model/synth.h"
#include "quant/blas.h"
#include "storage/state.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kToken = "bench-pipeline-token";

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "bench_pipeline: %s\nusage: bench_pipeline [--layers 8] [--hidden 2048] "
               "[--intermediate 5632] [--shards 4] [--rate 25M] [--upload-rate 25M] "
               "[--multipart 64M] [--range-threshold 128M] "
               "[--rank 64] [--iters 5] [--threads 0] [--repeat 2] [--dir DIR]\n",
               why.c_str());
  std::exit(2);
}

struct Run {
  double wall = 0, download = 0, quantize = 0, waited = 0, publish = 0, early_wait = 0;
};

struct Order {
  const char* name;
  bool overlap_download, early_upload;
};
constexpr Order kOrders[] = {
    {"sequential", false, false}, {"download", true, false}, {"overlapped", true, true}};

// The number after `key=` in the line of `log` that contains `marker`; 0 when none.
double field(const std::string& log, const std::string& marker, const std::string& key) {
  const size_t at = log.find(marker);
  if (at == std::string::npos) return 0;
  const size_t eol = log.find('\n', at);
  const size_t k = log.find(" " + key + "=", at);
  if (k == std::string::npos || k > eol) return 0;
  return std::atof(log.c_str() + k + key.size() + 2);
}

// Uploads `src` as one commit of `repo` on the mirror at `url`; exits when that fails.
void publish(const std::string& url, const fs::path& src, const std::string& repo) {
  loftqd::hub::ClientOptions o;
  o.endpoint = url;
  o.token = kToken;
  loftqd::hub::PublishRequest pr;
  pr.dir = src;
  pr.repo = repo;
  auto c = loftqd::hub::Client(o).upload_folder(pr);
  if (!c) usage("cannot publish " + repo + ": " + c.error().message);
}

}  // namespace

int main(int argc, char** argv) {
  loftqd::model::SynthOptions so;
  so.arch = "llama";
  so.layers = 8;
  so.hidden = 2048;
  so.intermediate = 5632;
  so.heads = 32;
  so.kv_heads = 4;
  so.vocab = 32000;
  so.shards = 4;
  uint64_t rate = 25u << 20, upload_rate = 25u << 20, multipart = 64u << 20,
           range_threshold = 128u << 20;
  int rank = 64, iters = 5, threads = 0, repeat = 2;
  fs::path dir = fs::temp_directory_path() / "loftqd-bench-pipeline";
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(a + " needs a value");
    const std::string v = argv[i + 1];
    auto num = [&](int min) { return loftqd::bench::parse_int(a, v, usage, min); };
    if (a == "--layers")
      so.layers = num(1);
    else if (a == "--hidden")
      so.hidden = num(64);
    else if (a == "--intermediate")
      so.intermediate = num(64);
    else if (a == "--shards")
      so.shards = num(1);
    else if (a == "--rate")
      rate = loftqd::common::parse_size_or_throw("--rate", v);
    else if (a == "--upload-rate")
      upload_rate = loftqd::common::parse_size_or_throw("--upload-rate", v);
    else if (a == "--multipart")
      multipart = loftqd::common::parse_size_or_throw("--multipart", v);
    else if (a == "--range-threshold")
      range_threshold = loftqd::common::parse_size_or_throw("--range-threshold", v);
    else if (a == "--rank")
      rank = num(1);
    else if (a == "--iters")
      iters = num(1);
    else if (a == "--threads")
      threads = num(0);
    else if (a == "--repeat")
      repeat = num(1);
    else if (a == "--dir")
      dir = v;
    else
      usage("unknown option " + a);
  }
  spdlog::set_level(spdlog::level::warn);
  std::printf("blas: %s\n", loftqd::quant::kernels_summary(loftqd::quant::blas_info(),
                                                           loftqd::quant::cpu_features())
                                .c_str());
  fs::remove_all(dir);
  fs::create_directories(dir);

  // The upstream: the synthetic model published into a mirror capped per connection.
  const auto t_synth = loftqd::bench::Clock::now();
  loftqd::model::synth_checkpoint(so, dir / "src");
  loftqd::mirror::MirrorOptions mo;
  mo.store = dir / "upstream";
  mo.port = 0;
  mo.write_token = kToken;
  fs::create_directories(mo.store);
  loftqd::mirror::Mirror upstream(mo);
  upstream.start();
  publish(upstream.url(), dir / "src", "up/model");
  uint64_t bytes = 0;
  for (const auto& e : fs::directory_iterator(dir / "src")) bytes += e.file_size();
  fs::remove_all(dir / "src");
  upstream.stop();
  mo.max_bytes_per_s = rate;  // the cap applies to the downloads only
  loftqd::mirror::Mirror capped(mo);
  capped.start();
  std::printf("model: %d layers, hidden %d, intermediate %d, %d shards, %.0f MB (made in %.1f s)\n",
              so.layers, so.hidden, so.intermediate, so.shards, bytes / 1e6,
              loftqd::bench::since(t_synth));
  std::printf(
      "upstream: %.1f MB/s per connection, range threshold %.0f MB; uploads %.1f MB/s per "
      "connection, multipart from %.0f MB; rank %d, %d iters\n",
      rate / 1e6, range_threshold / 1e6, upload_rate / 1e6, multipart / 1e6, rank, iters);

  auto run = [&](const Order& order, int k) {
    const fs::path root = dir / ("run-" + std::to_string(k));
    fs::remove_all(root);
    fs::create_directories(root / "store");
    const auto cfg = loftqd::config::parse_config(
        json{{"hub", {{"endpoint", capped.url()}}},
             {"store", (root / "store").string()},
             {"state_db", (root / "state.db").string()},
             {"device", "cpu"},
             {"repos",
              {{{"repo", "up/model"},
                {"publish_as", "me/model-loftq"},
                {"loftq", {{"rank", rank}, {"iters", iters}}}}}},
             {"publish", {{"mirror", true}, {"early_upload", order.early_upload}}}});
    loftqd::mirror::MirrorOptions own;
    own.store = root / "store";
    own.port = 0;
    own.write_token = kToken;
    own.multipart_threshold = multipart;
    own.multipart_chunk = std::max<uint64_t>(multipart / 2, 5u << 20);
    loftqd::mirror::Mirror mirror(own);
    mirror.start();
    {  // a refresh: the target holds last night's model (here, a card), so shards go up early
      fs::create_directories(root / "seed");
      std::FILE* f = std::fopen((root / "seed" / "README.md").c_str(), "w");
      if (!f) usage("cannot write " + (root / "seed").string());
      std::fputs("# me/model-loftq\n", f);
      std::fclose(f);
      publish(mirror.url(), root / "seed", "me/model-loftq");
    }
    auto db = loftqd::storage::StateDb::open(cfg.state_db);
    auto po = loftqd::daemon::pipeline_options(cfg, threads, loftqd::daemon::no_env);
    po.upstream.range_threshold = range_threshold;
    po.overlap_download = order.overlap_download;
    po.mirror = loftqd::daemon::PublishEndpoint{mirror.url(), std::string(kToken)};
    po.mirror->max_send_bytes_per_s = upload_rate;
    std::string log;
    po.log = [&](spdlog::level::level_enum, const std::string& line) { log += line + "\n"; };
    loftqd::daemon::Pipeline p(cfg, *db, po);
    const auto t0 = loftqd::bench::Clock::now();
    const auto rep = p.sync_once();
    Run r;
    r.wall = loftqd::bench::since(t0);
    mirror.stop();
    if (!rep.ok() || rep.jobs_done != 1) {
      std::fprintf(stderr, "%s", log.c_str());
      usage("the job failed");
    }
    r.download = field(log, "step=download done", "seconds");
    r.quantize = field(log, "step=quantize done", "seconds");
    r.publish = field(log, "step=publish target=", "seconds");
    r.early_wait = field(log, "step=publish early done", "waited_s");
    for (size_t at = log.find("step=quantize shard="); at != std::string::npos;
         at = log.find("step=quantize shard=", at + 1))
      r.waited += field(log.substr(at), "step=quantize shard=", "waited_s");
    std::printf(
        "%-11s run %d: wall %7.2f s  download %6.2f s  quantize %6.2f s (%.2f s of it waiting "
        "for shards)  publish %6.2f s (after %.2f s for early uploads)\n",
        order.name, k, r.wall, r.download, r.quantize, r.waited, r.publish, r.early_wait);
    std::fflush(stdout);
    fs::remove_all(root);
    return r;
  };
  double best[3] = {1e300, 1e300, 1e300};
  for (int k = 0; k < repeat; ++k)
    for (int o = 0; o < 3; ++o) best[o] = std::min(best[o], run(kOrders[o], 3 * k + o).wall);
  std::printf("best wall: sequential %.2f s, download %.2f s (%.2fx), overlapped %.2f s (%.2fx)\n",
              best[0], best[1], best[0] / best[1], best[2], best[0] / best[2]);
  capped.stop();
  fs::remove_all(dir);
  return 0;
}
