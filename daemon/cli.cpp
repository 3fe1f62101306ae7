#include "daemon/cli.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "config/config.h"
#include "convert/convert.h"
#include "convert/verify.h"
#include "daemon/cmd_hub.h"
#include "daemon/progress.h"
#include "daemon/run.h"
#include "daemon/sync.h"
#include "model/safetensors.h"
#include "model/synth.h"
#include "quant/device.h"
#include "storage/state.h"

namespace fs = std::filesystem;
namespace q = loftqd::quant;

namespace loftqd::daemon {

namespace {

struct SynthArgs {
  model::SynthOptions opt;
  std::string dtype = "bf16";
  std::string out;
};

struct QuantizeArgs {
  std::string model, out;
  int rank = 64, iters = 5, block_size = q::kDefaultBlockSize, threads = 0;
  std::optional<int> bits;
  std::string bit_plan;
  std::optional<double> avg_bits;
  std::vector<std::string> overrides;
  std::string quant = "nf", svd = "randomized", repo_id, device = "auto";
  std::vector<std::string> targets;
  std::optional<double> lora_alpha;
  double lora_dropout = 0.0;
  bool force = false;
};

struct VerifyArgs {
  std::string out, original, device = "cpu";
  int threads = 0;
};

model::DType parse_dtype_flag(const std::string& s) {
  if (s == "bf16" || s == "bfloat16") return model::DType::BF16;
  if (s == "f16" || s == "fp16" || s == "float16") return model::DType::F16;
  if (s == "f32" || s == "fp32" || s == "float32") return model::DType::F32;
  throw std::invalid_argument("--dtype must be bf16, f16 or f32 (got '" + s + "')");
}

int cmd_synth(SynthArgs& a) {
  a.opt.dtype = parse_dtype_flag(a.dtype);
  model::synth_checkpoint(a.opt, a.out);
  std::printf("wrote synthetic %s checkpoint to %s\n", a.opt.arch.c_str(), a.out.c_str());
  return kExitOk;
}

// The plan flags: one form (--bits, --bit-plan or --avg-bits; 4 bits when none) plus --override
// module rules on top. Parsed once here; resolved against the model by quantize_model.
q::BitPlan plan_from(const QuantizeArgs& a) {
  if (a.avg_bits) {
    if (auto why = convert::avg_bits_problem(*a.avg_bits); !why.empty())
      throw std::invalid_argument("--avg-bits: " + why);
  }
  q::BitPlan plan = a.avg_bits            ? q::BitPlan::average(*a.avg_bits)
                    : !a.bit_plan.empty() ? q::BitPlan::parse(a.bit_plan)
                                          : q::BitPlan::uniform(a.bits.value_or(4));
  for (const auto& o : a.overrides) {
    if (o.find('@') == std::string::npos)
      throw std::invalid_argument("--override '" + o +
                                  "': expected MODULES@RANGE:BITS, e.g. down_proj@*:4");
    const q::BitPlan extra = q::BitPlan::parse(o);
    for (const auto& r : extra.rules()) plan.add(r);
  }
  return plan;
}

// The flags of `quantize` as typed settings, checked by the same validators as the config.
convert::LoftqSettings settings_from(const QuantizeArgs& a) {
  convert::LoftqSettings s;
  s.rank = a.rank;
  s.iters = a.iters;
  s.quant = q::parse_method(a.quant);
  s.block_size = a.block_size;
  s.plan = plan_from(a);
  s.target_modules = a.targets;
  s.svd = q::parse_svd_mode(a.svd);
  s.lora_alpha = a.lora_alpha;
  s.lora_dropout = a.lora_dropout;
  s.device = q::parse_device(a.device);
  convert::check(s);
  return s;
}

int cmd_quantize(const QuantizeArgs& a) {
  convert::QuantizeOptions opt;
  opt.settings = settings_from(a);
  opt.repo_id = a.repo_id;
  opt.force = a.force;
  std::string chosen;
  auto backends = q::make_backends(opt.settings.device, a.threads, &chosen);
  opt.fallback = backends.fallback();  // a layer that does not fit on the device runs there
  spdlog::info("quantize {} -> {}: rank {}, {} iterations, {} {}, svd {}, device {}", a.model,
               a.out, a.rank, a.iters, a.quant, opt.settings.plan.to_string(), a.svd, chosen);
  std::optional<Progress> bar;
  opt.progress = [&](size_t done, size_t total, const std::string& tensor) {
    if (!bar) bar.emplace("quantize", total);
    bar->update(done, tensor);
  };
  auto report = convert::quantize_model(a.model, a.out, opt, *backends.primary);
  if (bar) bar->finish();
  std::fputs(convert::layer_table(report.layers).c_str(), stdout);
  std::printf("%zu target weights quantized in %.1f s; wrote %s\n", report.layers.size(),
              report.seconds, a.out.c_str());
  return kExitOk;
}

int cmd_verify(const VerifyArgs& a) {
  auto backend = q::make_backend(a.device, a.threads);
  auto rep = convert::verify_layout(a.out, a.original, *backend);
  std::fputs(convert::verify_table(rep).c_str(), stdout);
  for (const auto& p : rep.problems) std::fprintf(stderr, "verify: %s\n", p.c_str());
  if (!rep.ok()) {
    std::fprintf(stderr, "verify: %zu problem(s) in %s\n", rep.problems.size(), a.out.c_str());
    return kExitRuntime;
  }
  std::printf("verify: %s is a valid LoftQ layout of %s (%zu layers)\n", a.out.c_str(),
              a.original.c_str(), rep.layers.size());
  return kExitOk;
}

int cmd_status(const std::string& config_path) {
  auto cfg = config::load_config(config_path);
  config::apply_env(cfg);
  if (!fs::exists(cfg.state_db)) {
    std::printf("no state database at %s yet (the daemon has not run)\n", cfg.state_db.c_str());
    return kExitOk;
  }
  auto db = storage::StateDb::open(cfg.state_db);
  std::printf("%-40s %-10s %-12s %-12s\n", "repo", "revision", "last seen", "last done");
  for (const auto& r : db->repos())
    std::printf("%-40s %-10s %-12.12s %-12.12s\n", r.repo.c_str(), r.revision.c_str(),
                r.last_seen_commit.c_str(), r.last_processed_commit.c_str());
  std::printf("\n%-6s %-32s %-12s %-16s %-12s %-8s %s\n", "job", "repo", "commit", "config",
              "state", "attempts", "last error");
  for (const auto& j : db->jobs(50))
    std::printf("%-6lld %-32s %-12.12s %-16s %-12s %-8d %s\n", static_cast<long long>(j.id),
                j.repo.c_str(), j.upstream_commit.c_str(), j.config_hash.c_str(),
                storage::job_state_name(j.state), j.attempts, j.last_error.c_str());
  std::printf("\n");
  for (const auto& [state, n] : db->count_by_state())
    std::printf("%s=%lld ", storage::job_state_name(state), static_cast<long long>(n));
  std::printf("\n");
  return kExitOk;
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{"loftqd: turns Hugging Face checkpoints into ready-to-fine-tune LoftQ models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("loftqd ") + LOFTQD_VERSION);

  SynthArgs sa;
  auto* synth = app.add_subcommand("synth", "write a deterministic synthetic checkpoint");
  synth->add_option("--arch", sa.opt.arch, "llama | bart | bert")
      ->check(CLI::IsMember({"llama", "bart", "bert"}));
  synth->add_option("--layers", sa.opt.layers, "number of layers (per stack for bart)");
  synth->add_option("--hidden", sa.opt.hidden, "hidden size");
  synth->add_option("--intermediate", sa.opt.intermediate, "MLP size");
  synth->add_option("--heads", sa.opt.heads, "attention heads");
  synth->add_option("--kv-heads", sa.opt.kv_heads, "key/value heads (llama; 0 = heads)");
  synth->add_option("--vocab", sa.opt.vocab, "vocabulary size");
  synth->add_option("--dtype", sa.dtype, "bf16 | f16 | f32");
  synth->add_option("--shards", sa.opt.shards, "number of safetensors shards");
  synth->add_option("--seed", sa.opt.seed, "random seed");
  synth->add_option("OUT_DIR", sa.out, "output directory (must not exist or be empty)")->required();

  QuantizeArgs qa;
  auto* quant =
      app.add_subcommand("quantize", "run LoftQ on a local checkpoint and write the PEFT layout");
  quant->add_option("MODEL_DIR", qa.model, "checkpoint directory (safetensors + config.json)")
      ->required();
  quant->add_option("OUT_DIR", qa.out, "output directory")->required();
  quant->add_option("--rank", qa.rank, "LoRA rank r")->capture_default_str();
  quant->add_option("--iters", qa.iters, "LoftQ alternating iterations T")->capture_default_str();
  auto* o_bits = quant->add_option("--bits", qa.bits, "bits for every layer (default 4)");
  auto* o_plan = quant->add_option("--bit-plan", qa.bit_plan, "per-layer bits, e.g. 0-7:4,8-:2");
  auto* o_avg =
      quant->add_option("--avg-bits", qa.avg_bits, "LoftQ mixed precision: average bits in [2, 4]");
  o_bits->excludes(o_plan)->excludes(o_avg);
  o_plan->excludes(o_avg);
  quant->add_option("--override", qa.overrides,
                    "per-module bits on top of the plan, e.g. down_proj@*:4 (repeatable)");
  quant->add_option("--quant", qa.quant, "nf | uniform")
      ->check(CLI::IsMember({"nf", "uniform"}))
      ->capture_default_str();
  quant->add_option("--block-size", qa.block_size, "quantization block size")
      ->capture_default_str();
  quant->add_option("--target-modules", qa.targets, "modules to quantize (default: by model_type)")
      ->delimiter(',');
  quant->add_option("--svd", qa.svd, "randomized | exact")
      ->check(CLI::IsMember({"randomized", "exact"}))
      ->capture_default_str();
  quant->add_option("--lora-alpha", qa.lora_alpha, "adapter lora_alpha (default: rank)");
  quant->add_option("--lora-dropout", qa.lora_dropout, "adapter lora_dropout")
      ->capture_default_str();
  quant->add_option("--threads", qa.threads, "CPU threads (0 = all cores)")->capture_default_str();
  quant
      ->add_option("--device", qa.device,
                   "auto | cpu | cuda | cuda:N (auto: CUDA when built and present)")
      ->capture_default_str();
  quant->add_option("--repo-id", qa.repo_id,
                    "repo id written as base_model_name_or_path (default: OUT_DIR name)");
  quant->add_flag("--force", qa.force, "replace a non-empty OUT_DIR");

  VerifyArgs va;
  auto* verify =
      app.add_subcommand("verify", "check a LoftQ layout against its original checkpoint");
  verify->add_option("OUT_DIR", va.out, "directory written by loftqd quantize")->required();
  verify->add_option("--original", va.original, "the original checkpoint directory")->required();
  verify->add_option("--threads", va.threads, "CPU threads (0 = all cores)");
  verify->add_option("--device", va.device, "auto | cpu | cuda | cuda:N")->capture_default_str();

  std::string status_config;
  auto* status =
      app.add_subcommand("status", "print the jobs table from the daemon's state database");
  status->add_option("--config", status_config, "daemon configuration file")->required();

  std::string sync_config;
  bool sync_once = false;
  int sync_threads = 0;
  auto* sync = app.add_subcommand(
      "sync", "one pass of the daemon loop: check every watched repo, run its jobs");
  sync->add_option("--config", sync_config, "daemon configuration file")->required();
  sync->add_flag("--once", sync_once, "run one pass and exit (the only mode for now)")->required();
  sync->add_option("--threads", sync_threads, "CPU threads for LoftQ (0 = all cores)");

  RunOptions run_opt;
  std::string run_level;
  auto* run = app.add_subcommand(
      "run", "the daemon: watch, schedule, process, publish, serve the mirror (foreground)");
  run->add_option("--config", run_opt.config_path, "daemon configuration file")->required();
  run->add_option("--threads", run_opt.threads, "CPU threads for LoftQ (0 = all cores)");
  run->add_option("--log-level", run_level,
                  "trace, debug, info, warn, error, critical or off (overrides log_level)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  run->add_option("--stop-grace", run_opt.stop_grace_s,
                  "seconds SIGTERM waits for a download/upload in flight before exiting")
      ->capture_default_str();

  std::string demo_dir = "loftqd-demo";
  int demo_threads = 0;
  auto* demo =
      app.add_subcommand("demo", "the embedded default: synthetic upstream, one sync, verify");
  demo->add_option("--workdir", demo_dir, "where the store, cache and upstream live (kept)")
      ->capture_default_str();
  demo->add_option("--threads", demo_threads, "CPU threads for LoftQ (0 = all cores)");

  auto hub = add_hub_commands(app);  // serve, fetch, publish

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "loftqd: %s\n", e.what());
    std::fprintf(stderr, "Run with --help for more information.\n");
    return kExitUsage;
  }

  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  try {
    if (*synth) return cmd_synth(sa);
    if (*quant) return cmd_quantize(qa);
    if (*verify) return cmd_verify(va);
    if (*status) return cmd_status(status_config);
    if (*sync) return sync_once_command(sync_config, sync_threads);
    if (*run) {
      if (!run_level.empty()) run_opt.log_level = run_level;
      return run_command(run_opt);
    }
    if (*demo) return demo_command(demo_dir, demo_threads);
    if (auto rc = run_hub_commands(*hub)) return *rc;
  } catch (const model::FormatError& e) {
    std::fprintf(stderr, "loftqd: error: %s\n", e.what());
    return kExitRuntime;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "loftqd: error: %s\n", e.what());
    return kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loftqd: error: %s\n", e.what());
    return kExitRuntime;
  }
  return kExitUsage;
}

}  // namespace loftqd::daemon
