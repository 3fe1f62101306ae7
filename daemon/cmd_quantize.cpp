// `loftqd quantize MODEL_DIR OUT_DIR`: LoftQ of a local checkpoint into the PEFT layout.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/sysinfo.h"
#include "convert/convert.h"
#include "daemon/blas_kernels.h"
#include "daemon/commands.h"
#include "daemon/progress.h"
#include "quant/device.h"

namespace q = loftqd::quant;

namespace loftqd::daemon {

namespace {

struct QuantizeArgs {
  std::string model, out;
  int rank = 64, iters = 5, block_size = q::kDefaultBlockSize, threads = 0;
  std::optional<int> tensor_jobs;
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

// The flags as typed settings, checked by the same validators as the config file's keys.
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

int quantize(const QuantizeArgs& a) {
  convert::QuantizeOptions opt;
  opt.settings = settings_from(a);
  opt.repo_id = a.repo_id;
  opt.force = a.force;
  std::string chosen;
  auto backends = q::make_backends(opt.settings.device, a.threads, &chosen);
  opt.fallback = backends.fallback();  // a layer that does not fit on the device runs there
  opt.tensor_jobs = a.tensor_jobs.value_or(a.threads);  // 0: one per core
  log_blas_kernels("quantize");  // after the backends: the BLAS thread count is set
  spdlog::info("quantize {} -> {}: rank {}, {} iterations, {} {}, svd {}, device {}", a.model,
               a.out, a.rank, a.iters, a.quant, opt.settings.plan.to_string(), a.svd, chosen);
  std::optional<Progress> bar;
  opt.progress = [&](size_t done, size_t total, const std::string& tensor) {
    if (!bar) bar.emplace("quantize", total);
    bar->update(done, tensor);
  };
  auto report = convert::quantize_model(a.model, a.out, opt, *backends.primary);
  if (bar) bar->finish();
  for (const auto& w : report.warnings) spdlog::warn("{}", w);
  std::fputs(convert::layer_table(report.layers).c_str(), stdout);
  std::printf("%zu target weights quantized in %.1f s (%d at a time, peak RSS %s); wrote %s\n",
              report.layers.size(), report.seconds, report.tensor_jobs,
              common::human_bytes(common::peak_rss_bytes()).c_str(), a.out.c_str());
  return kExitOk;
}

}  // namespace

Command add_quantize_command(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  QuantizeArgs& qa = *a;
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
  quant
      ->add_option("--target-modules", qa.targets,
                   "Linear/Conv1D modules to quantize (default: the registry's, by model_type)")
      ->delimiter(',');
  quant->add_option("--svd", qa.svd, "randomized | exact")
      ->check(CLI::IsMember({"randomized", "exact"}))
      ->capture_default_str();
  quant->add_option("--lora-alpha", qa.lora_alpha, "adapter lora_alpha (default: rank)");
  quant->add_option("--lora-dropout", qa.lora_dropout, "adapter lora_dropout")
      ->capture_default_str();
  quant->add_option("--threads", qa.threads, "CPU threads (0 = all cores)")->capture_default_str();
  quant
      ->add_option("--tensor-jobs", qa.tensor_jobs,
                   "CPU: target tensors computed at once, one BLAS thread each (default: "
                   "--threads, fewer when memory is short; 1: one at a time on --threads)")
      ->check(CLI::NonNegativeNumber);
  quant
      ->add_option("--device", qa.device,
                   "auto | cpu | cuda | cuda:N (auto: CUDA when built and present)")
      ->capture_default_str();
  quant->add_option("--repo-id", qa.repo_id,
                    "the repo id this layout is published to: base_model_name_or_path and the "
                    "card's snippet (default: config.json _name_or_path when a repo id, else "
                    "null)");
  quant->add_flag("--force", qa.force, "replace a non-empty OUT_DIR");
  return {quant, [a] { return quantize(*a); }};
}

}  // namespace loftqd::daemon
