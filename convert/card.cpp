// The files beside the weights: the PEFT adapter config, loftq.json, the model card and the
// summary table that quantize and verify print.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "convert/internal.h"
#include "model/naming.h"

using nlohmann::json;

namespace loftqd::convert {

namespace detail {

namespace {

json opt_str(const std::optional<std::string>& s) {
  return s ? json(*s) : json(nullptr);
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

std::string model_card(const json& lj, const json& adapter_cfg, const std::string& repo_id) {
  std::ostringstream o;
  o << "---\nlibrary_name: peft\ntags:\n- loftq\n- quantization\n- lora\n";
  if (lj["source"]["repo"].is_string())
    o << "base_model: " << lj["source"]["repo"].get<std::string>() << "\n";
  o << "---\n\n# " << repo_id << "\n\n";
  o << "LoftQ initialization (rank " << lj["rank"] << ", " << lj["iters"]
    << " alternating iterations, " << lj["quant"].get<std::string>() << " quantization, block size "
    << lj["block_size"] << ") made by loftqd " << lj["loftqd_version"].get<std::string>()
    << ".\n\n";
  o << "The repository root holds the backbone with every target weight replaced by its quantized "
       "value Q (stored in the checkpoint's dtype); `loftq_init/` holds the LoRA adapter (A, B) "
       "such "
       "that Q + (lora_alpha / r) * B A approximates the original weight as LoftQ found it.\n\n";
  if (lj["source"]["repo"].is_string())
    o << "Source: `" << lj["source"]["repo"].get<std::string>() << "` at commit `"
      << (lj["source"]["commit"].is_string() ? lj["source"]["commit"].get<std::string>()
                                             : std::string("?"))
      << "`.\n\n";
  o << "## Loading\n\n```python\nimport torch\nfrom transformers import AutoModelForCausalLM, "
       "BitsAndBytesConfig\n"
       "from peft import PeftModel\n\n"
    << "base = AutoModelForCausalLM.from_pretrained(\n    \"" << repo_id
    << "\", torch_dtype=torch.bfloat16,\n    "
       "quantization_config=BitsAndBytesConfig(load_in_4bit=True, "
       "bnb_4bit_quant_type=\"nf4\"))\n"
    << "model = PeftModel.from_pretrained(base, \"" << repo_id
    << "\", subfolder=\"loftq_init\", is_trainable=True)\n```\n\n"
    << "(Use the `AutoModel` class that matches the task type `"
    << adapter_cfg["task_type"].get<std::string>() << "`.)\n\n";
  if (lj["bnb_nf4_reload_exact"].get<bool>()) {
    o << "Every layer uses NF4 or NF2 codes in blocks of 64, all of which are NF4 codes, so "
         "loading the "
         "backbone with bitsandbytes NF4 reproduces Q exactly (up to the dtype's rounding).\n\n";
  } else {
    o << "**Note:** some layers use codes that are not NF4 codes (NF3 or uniform quantization, or "
         "a block "
         "size other than 64). Their LoftQ initialization is exact only when the backbone is "
         "loaded "
         "unquantized (or re-quantized with the same quantizer); `loftqd verify` reports the error "
         "after "
         "an NF4 round trip for each layer.\n\n";
  }
  o << "## Bit plan\n\n`" << lj["bit_plan_spec"].get<std::string>() << "` over " << lj["num_layers"]
    << " layers; target modules: ";
  for (size_t i = 0; i < adapter_cfg["target_modules"].size(); ++i)
    o << (i ? ", " : "") << "`" << adapter_cfg["target_modules"][i].get<std::string>() << "`";
  o << ".\n\n## Per-layer errors\n\nRelative Frobenius errors ||W - Q - B A|| / ||W|| (LoftQ) "
       "against the "
       "QLoRA baseline ||W - Q0|| / ||W||.\n\n";
  o << "| tensor | layer | quant | QLoRA error | LoftQ error | best iter "
       "|\n|---|---|---|---|---|---|\n";
  double sq = 0, sl = 0;
  for (const auto& l : lj["layers"]) {
    o << "| `" << l["tensor"].get<std::string>() << "` | "
      << (l["layer"].is_null() ? std::string("-") : l["layer"].dump()) << " | "
      << l["quant"].get<std::string>() << " | " << fmt("%.5f", l["qlora_error"].get<double>())
      << " | " << fmt("%.5f", l["loftq_error"].get<double>()) << " | " << l["best_iter"] << " |\n";
    sq += l["qlora_error"].get<double>();
    sl += l["loftq_error"].get<double>();
  }
  const double n = std::max<double>(1.0, static_cast<double>(lj["layers"].size()));
  o << "\nMean QLoRA error " << fmt("%.5f", sq / n) << ", mean LoftQ error " << fmt("%.5f", sl / n)
    << ".\n";
  return o.str();
}

json adapter_config(const LoftqSettings& s, const TargetPlan& tp, const std::string& repo_id) {
  const double alpha = s.alpha();
  return {
      {"peft_type", "LORA"},
      {"task_type", model::default_task_type(tp.model_type)},
      {"base_model_name_or_path", repo_id},
      {"revision", nullptr},
      {"r", s.rank},
      {"lora_alpha", alpha == std::floor(alpha) ? json(static_cast<int64_t>(alpha)) : json(alpha)},
      {"lora_dropout", s.lora_dropout},
      {"target_modules", tp.adapter_targets},
      {"init_lora_weights", true},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"inference_mode", false},
      {"modules_to_save", nullptr},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"rank_pattern", json::object()},
      {"alpha_pattern", json::object()},
      {"use_rslora", false},
      {"use_dora", false},
      {"loftq_config", json::object()}};
}

json loftq_record(const QuantizeOptions& opt, const TargetPlan& tp, const json& adapter_cfg,
                  const QuantizeReport& report) {
  const LoftqSettings& s = opt.settings;
  bool reload_exact = s.block_size == 64;
  json layers = json::array();
  for (const auto& l : report.layers) {
    reload_exact &= l.quant == "nf4" || l.quant == "nf2";
    layers.push_back({{"tensor", l.tensor},
                      {"layer", l.layer ? json(*l.layer) : json(nullptr)},
                      {"module", l.module},
                      {"bits", l.bits},
                      {"quant", l.quant},
                      {"shape", {l.out_features, l.in_features}},
                      {"qlora_error", l.qlora_error},
                      {"loftq_error", l.loftq_error},
                      {"best_iter", l.best_iter},
                      {"seconds", l.seconds}});
  }
  return {{"format_version", 1},
          {"source",
           {{"repo", opt_str(opt.source.repo)},
            {"revision", opt_str(opt.source.revision)},
            {"commit", opt_str(opt.source.commit)}}},
          {"model_type", tp.model_type},
          {"rank", s.rank},
          {"iters", s.iters},
          {"lora_alpha", adapter_cfg["lora_alpha"]},
          {"quant", quant::method_name(s.quant)},
          {"block_size", s.block_size},
          {"svd", quant::svd_mode_name(s.svd)},
          {"bit_plan", tp.plan.to_json()},
          {"bit_plan_spec", tp.plan.to_string()},
          {"num_layers", tp.num_layers},
          {"target_modules", tp.adapter_targets},
          {"bnb_nf4_reload_exact", reload_exact},
          {"layers", layers},
          {"seconds", report.seconds},
          {"loftqd_version", LOFTQD_VERSION}};
}

}  // namespace detail

std::string layer_table(const std::vector<LayerReport>& layers) {
  std::ostringstream o;
  size_t w = 6;
  for (const auto& l : layers) w = std::max(w, l.tensor.size());
  char buf[512];
  std::snprintf(buf, sizeof buf, "%-*s %5s %-9s %11s %11s %6s %5s %8s\n", int(w), "tensor", "layer",
                "quant", "qlora_err", "loftq_err", "gain%", "iter", "seconds");
  o << buf;
  double sq = 0, sl = 0, ss = 0;
  for (const auto& l : layers) {
    const std::string layer = l.layer ? std::to_string(*l.layer) : "-";
    const double gain = l.qlora_error > 0 ? 100.0 * (1.0 - l.loftq_error / l.qlora_error) : 0.0;
    std::snprintf(buf, sizeof buf, "%-*s %5s %-9s %11.6f %11.6f %6.2f %5d %8.2f\n", int(w),
                  l.tensor.c_str(), layer.c_str(), l.quant.c_str(), l.qlora_error, l.loftq_error,
                  gain, l.best_iter, l.seconds);
    o << buf;
    sq += l.qlora_error;
    sl += l.loftq_error;
    ss += l.seconds;
  }
  if (!layers.empty()) {
    const double n = static_cast<double>(layers.size());
    std::snprintf(buf, sizeof buf, "%-*s %5s %-9s %11.6f %11.6f %6.2f %5s %8.2f\n", int(w),
                  "mean / total", "", "", sq / n, sl / n, sq > 0 ? 100.0 * (1.0 - sl / sq) : 0.0,
                  "", ss);
    o << buf;
  }
  return o.str();
}

}  // namespace loftqd::convert
