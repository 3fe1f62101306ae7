// `loftqd demo`: the embedded default. A synthetic upstream repo in a mirror under --workdir,
// one sync that downloads it over HTTP, LoftQ with the mixed 4/2-bit plan, publish back,
// verify, print how to load the result.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "common/strings.h"
#include "config/config.h"
#include "convert/verify.h"
#include "daemon/blas_kernels.h"
#include "daemon/commands.h"
#include "daemon/hub_options.h"
#include "daemon/pipeline.h"
#include "hub/hub.h"
#include "mirror/mirror.h"
#include "model/synth.h"
#include "quant/device.h"
#include "storage/state.h"

namespace fs = std::filesystem;

namespace loftqd::daemon {

namespace {

constexpr const char* kUpstreamRepo = "demo/tiny-llama";
constexpr const char* kResultRepo = "demo/tiny-llama-loftq";

struct DemoArgs {
  std::string workdir = "loftqd-demo";
  int threads = 0;
};

// A synthetic llama-shaped checkpoint in workdir/upstream-src (kept between runs), published
// into the mirror as demo/tiny-llama.
void publish_upstream(const fs::path& workdir, const PublishEndpoint& mirror) {
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
  hub::Client writer(publish_client_options(mirror));
  hub::PublishRequest up;
  up.dir = src;
  up.repo = kUpstreamRepo;
  up.summary = "Synthetic tiny llama (loftqd demo)";
  auto upc = writer.upload_folder(up);
  if (!upc) throw std::runtime_error("demo: publishing the upstream repo: " + upc.error().message);
  spdlog::info("demo: upstream demo/tiny-llama at commit {} on {}", upc.value().commit_oid,
               mirror.endpoint);
}

// The demo's daemon configuration: the mirror as upstream and publish target, the cache as
// store, LoftQ with the mixed 4/2-bit plan.
config::Config demo_config(const std::string& endpoint, const fs::path& cache) {
  return config::parse_config(
      nlohmann::json{{"hub", {{"endpoint", endpoint}}},
                     {"store", cache.string()},
                     {"repos",
                      {{{"repo", kUpstreamRepo},
                        {"publish_as", kResultRepo},
                        {"loftq", {{"rank", 16}, {"iters", 5}, {"avg_bits", 3}}}}}},
                     {"publish", {{"mirror", true}}}});
}

// One sync pass: download over HTTP, LoftQ, publish. Its upstream is the in-process mirror, so
// the environment (HF_TOKEN, HF_HUB_OFFLINE) does not apply.
bool sync_pass(const config::Config& cfg, const PublishEndpoint& mirror, storage::StateDb& db,
               int threads, const CliHooks& hooks) {
  PipelineOptions po = pipeline_options(cfg, threads, no_env);
  po.mirror = mirror;
  po.failpoint = hooks.failpoint;
  Pipeline pipeline(cfg, db, po);
  const auto report = pipeline.sync_once();
  for (const auto& e : report.errors) spdlog::error("{}", e);
  return report.ok();
}

// What a user downloads from the mirror, verified against the upstream snapshot.
bool verify_result(const fs::path& cache, const PublishEndpoint& mirror, int threads) {
  hub::Client reader(publish_client_options({mirror.endpoint, std::nullopt}));
  hub::SnapshotRequest got;
  got.repo = kResultRepo;
  got.store = cache;
  auto res = reader.snapshot_download(got);
  hub::SnapshotRequest orig;
  orig.repo = kUpstreamRepo;
  orig.store = cache;
  auto ups = reader.snapshot_download(orig);
  if (!res || !ups) throw std::runtime_error("demo: downloading for verification failed");
  auto backend = quant::make_cpu_backend(threads);
  const auto vr = convert::verify_layout(res.value().dir, ups.value().dir, *backend);
  std::fputs(convert::verify_table(vr).c_str(), stdout);
  for (const auto& p : vr.problems) std::fprintf(stderr, "verify: %s\n", p.c_str());
  return vr.ok();
}

void print_next_steps(const std::string& commit, const fs::path& store) {
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
      commit.c_str(), store.c_str(), store.c_str());
}

int demo(const DemoArgs& a, const CliHooks& hooks) {
  const fs::path workdir = fs::absolute(a.workdir);
  const fs::path store = workdir / "store", cache = workdir / "cache";
  fs::create_directories(store);
  fs::create_directories(cache);
  spdlog::info("demo: working in {}", workdir.string());
  log_blas_kernels("demo");

  mirror::MirrorOptions
      mo;  // the built-in mirror over the demo store, with a write token for this run
  mo.store = store;
  mo.port = 0;
  mo.write_token = common::random_hex(32);
  mirror::Mirror mirror(mo);  // stopped by its destructor on every way out
  mirror.start();
  const PublishEndpoint ep{mirror.url(), mo.write_token};
  const config::Config cfg = demo_config(ep.endpoint, cache);
  auto db = storage::StateDb::open(cfg.state_db);

  publish_upstream(workdir, ep);                                        // 1. the upstream repo
  if (!sync_pass(cfg, ep, *db, a.threads, hooks)) return kExitRuntime;  // 2. LoftQ, publish
  const bool ok = verify_result(cache, ep, a.threads);                  // 3. what users get
  mirror.stop();
  if (!ok) return kExitRuntime;
  print_next_steps(db->jobs(1).front().published_commit, store);  // 4. how to use it
  return kExitOk;
}

}  // namespace

Command add_demo_command(CLI::App& app, const CliHooks& hooks) {
  auto a = std::make_shared<DemoArgs>();
  auto* c =
      app.add_subcommand("demo", "the embedded default: synthetic upstream, one sync, verify");
  c->add_option("--workdir", a->workdir, "where the store, cache and upstream live (kept)")
      ->capture_default_str();
  c->add_option("--threads", a->threads, "CPU threads for LoftQ (0 = all cores)");
  return {c, [a, hooks] { return demo(*a, hooks); }};
}

}  // namespace loftqd::daemon
