#include "daemon/sync.h"

#include <spdlog/spdlog.h>

#include <cstdio>
#include <fstream>
#include <random>

#include "common/fs.h"
#include "common/strings.h"
#include "config/config.h"
#include "convert/verify.h"
#include "daemon/pipeline.h"
#include "hub/hub.h"
#include "mirror/mirror.h"
#include "model/synth.h"
#include "quant/device.h"
#include "storage/state.h"

namespace fs = std::filesystem;

namespace loftqd::daemon {

namespace {

void log_line(const std::string& s) {
  spdlog::info("{}", s);
}

}  // namespace

int sync_once_command(const std::string& config_path, int threads) {
  // 1. Configuration (a bad one is a usage error: ConfigError is an invalid_argument).
  auto cfg = config::load_config(config_path);
  config::apply_env(cfg);
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  // 2. State.
  fs::create_directories(cfg.store);
  auto db = storage::StateDb::open(cfg.state_db);
  // 3. Publish targets: the store's mirror, started here on a free port, and/or the Hub.
  PipelineOptions po = pipeline_options(cfg, threads);
  std::unique_ptr<mirror::Mirror> mirror;
  if (cfg.publish.mirror) {
    mirror::MirrorOptions mo;
    mo.store = cfg.store;
    mo.port = 0;
    mo.write_token = common::random_hex(32);
    mirror = std::make_unique<mirror::Mirror>(mo);
    mirror->start();
    po.mirror = PublishEndpoint{mirror->url(), mo.write_token};
  }
  // 4. One pass.
  Pipeline p(cfg, *db, po);
  const auto report = p.sync_once();
  if (mirror) mirror->stop();
  spdlog::info("sync: {} repos checked, {} jobs queued, {} done, {} failed", report.repos_checked,
               report.jobs_enqueued, report.jobs_done, report.jobs_failed);
  for (const auto& e : report.errors) spdlog::error("{}", e);
  return report.ok() ? 0 : 1;
}

int demo_command(const fs::path& workdir_in, int threads) {
  const fs::path workdir = fs::absolute(workdir_in);
  const fs::path store = workdir / "store", cache = workdir / "cache";
  fs::create_directories(store);
  fs::create_directories(cache);
  spdlog::info("demo: working in {}", workdir.string());

  // 1. The built-in mirror over the demo store, with a write token for this run.
  mirror::MirrorOptions mo;
  mo.store = store;
  mo.port = 0;
  mo.write_token = common::random_hex(32);
  mirror::Mirror mirror(mo);
  mirror.start();
  const std::string url = mirror.url();

  // 2. A synthetic llama-shaped upstream repo, published into the mirror as demo/tiny-llama.
  const fs::path src = workdir / "upstream-src";
  if (!fs::exists(src / "config.json")) {
    fs::remove_all(src);
    model::SynthOptions so;
    so.arch = "llama";
    so.layers = 4;
    so.hidden = 512;
    so.intermediate = 1376;
    so.heads = 8;
    so.kv_heads = 4;
    so.vocab = 2048;
    so.seed = 1;
    model::synth_checkpoint(so, src);
  }
  hub::ClientOptions wo;
  wo.endpoint = url;
  wo.token = mo.write_token;
  hub::Client writer(wo);
  hub::PublishRequest up;
  up.dir = src;
  up.repo = "demo/tiny-llama";
  up.summary = "Synthetic tiny llama (loftqd demo)";
  auto upc = writer.upload_folder(up);
  if (!upc) throw std::runtime_error("demo: publishing the upstream repo: " + upc.error().message);
  spdlog::info("demo: upstream demo/tiny-llama at commit {} on {}", upc.value().commit_oid, url);

  // 3. One sync pass: download over HTTP, LoftQ with the mixed 4/2-bit plan, publish.
  config::Config cfg = config::parse_config(
      nlohmann::json{{"hub", {{"endpoint", url}}},
                     {"store", cache.string()},
                     {"repos",
                      {{{"repo", "demo/tiny-llama"},
                        {"publish_as", "demo/tiny-llama-loftq"},
                        {"loftq", {{"rank", 16}, {"iters", 5}, {"avg_bits", 3}}}}}},
                     {"publish", {{"mirror", true}}}});
  auto db = storage::StateDb::open(cfg.state_db);
  PipelineOptions po;
  po.threads = threads;
  po.log = log_line;
  po.mirror = PublishEndpoint{url, mo.write_token};
  Pipeline pipeline(cfg, *db, po);
  const auto report = pipeline.sync_once();
  if (!report.ok()) {
    for (const auto& e : report.errors) spdlog::error("{}", e);
    mirror.stop();
    return 1;
  }

  // 4. Verify what a user downloads from the mirror against the upstream snapshot.
  hub::ClientOptions ro;
  ro.endpoint = url;
  hub::Client reader(ro);
  hub::SnapshotRequest got;
  got.repo = "demo/tiny-llama-loftq";
  got.store = cache;
  auto res = reader.snapshot_download(got);
  hub::SnapshotRequest orig;
  orig.repo = "demo/tiny-llama";
  orig.store = cache;
  auto ups = reader.snapshot_download(orig);
  mirror.stop();
  if (!res || !ups) throw std::runtime_error("demo: downloading for verification failed");
  auto backend = quant::make_cpu_backend(threads);
  const auto vr = convert::verify_layout(res.value().dir, ups.value().dir, *backend);
  std::fputs(convert::verify_table(vr).c_str(), stdout);
  for (const auto& p : vr.problems) std::fprintf(stderr, "verify: %s\n", p.c_str());
  if (!vr.ok()) return 1;

  std::printf(
      "\nPublished demo/tiny-llama-loftq (commit %s) into the mirror store %s and verified it.\n"
      "Serve it again and load it with PEFT:\n\n"
      "  loftqd serve --store %s --listen 127.0.0.1:8080 &\n"
      "  HF_ENDPOINT=http://127.0.0.1:8080 python3 -c '\n"
      "import torch; from transformers import AutoModelForCausalLM, BitsAndBytesConfig\n"
      "from peft import PeftModel\n"
      "base = AutoModelForCausalLM.from_pretrained(\"demo/tiny-llama-loftq\", "
      "torch_dtype=torch.bfloat16,\n"
      "    quantization_config=BitsAndBytesConfig(load_in_4bit=True, "
      "bnb_4bit_quant_type=\"nf4\"))\n"
      "model = PeftModel.from_pretrained(base, \"demo/tiny-llama-loftq\", "
      "subfolder=\"loftq_init\", "
      "is_trainable=True)'\n",
      db->jobs(1).front().published_commit.c_str(), store.c_str(), store.c_str());
  return 0;
}

}  // namespace loftqd::daemon
