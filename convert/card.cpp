// The files beside the weights: the PEFT adapter config, loftq.json, the model card and the
// summary table that quantize and verify print.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "common/fs.h"
#include "common/strings.h"
#include "convert/internal.h"
#include "model/naming.h"
#include "model/registry.h"

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

namespace {

// The Python list literal of a JSON array of strings: ["lm_head", "gate"].
std::string py_list(const json& a) {
  std::string s = "[";
  for (size_t i = 0; i < a.size(); ++i) s += (i ? ", " : "") + a[i].dump();
  return s + "]";
}

void front_matter(std::ostringstream& o, const json& lj, const CardInfo& info) {
  const json& arch = lj["architecture"];
  o << "---\n";
  if (info.base_model)
    o << "base_model: " << *info.base_model << "\nbase_model_relation: quantized\n";
  if (info.license) o << "license: " << *info.license << "\n";
  o << "library_name: peft\npipeline_tag: "
    << model::pipeline_tag_for(arch["task_type"].get<std::string>())
    << "\ntags:\n- loftq\n- lora\n- peft\n- quantization\n- " << lj["model_type"].get<std::string>()
    << "\n---\n\n";
}

// A derivative carries its upstream's terms: the licence (front matter) and, for a gated or
// private upstream, who may use it.
void access(std::ostringstream& o, const CardInfo& info) {
  const std::string up = info.base_model ? "`" + *info.base_model + "`" : "the upstream model";
  if (info.license)
    o << "License: `" << *info.license << "`, the license of " << up
      << ", which applies to this derivative as it does to the original weights.\n\n";
  if (info.gated)
    o << "**Access:** " << up
      << " is gated on the Hugging Face Hub: its access conditions and license terms apply to "
         "these weights too. Accept them on the upstream repository before you use or share this "
         "model.\n\n";
  else if (info.is_private)
    o << "**Access:** " << up
      << " is a private repository: these weights are derived from it and are as confidential "
         "as the original. Share them only with those who may read the upstream.\n\n";
}

void loading(std::ostringstream& o, const json& lj, const json& adapter_cfg, const CardInfo& info) {
  const json& arch = lj["architecture"];
  const std::string auto_cls = arch["auto_class"].get<std::string>();
  const json& skip = lj["llm_int8_skip_modules"];
  o << "## Loading\n\n```python\nimport torch\nfrom transformers import " << auto_cls
    << ", BitsAndBytesConfig\nfrom peft import PeftModel\n\n";
  if (info.repo_id)
    o << "repo = \"" << *info.repo_id << "\"\n";
  else
    o << "repo = \"ORG/NAME\"  # the repository (or local folder) holding these files\n";
  o << "base = " << auto_cls
    << ".from_pretrained(\n    repo, torch_dtype=torch.bfloat16,\n    "
       "quantization_config=BitsAndBytesConfig(\n        load_in_4bit=True, "
       "bnb_4bit_quant_type=\"nf4\"";
  if (!skip.empty()) o << ",\n        llm_int8_skip_modules=" << py_list(skip);
  o << "))\nmodel = PeftModel.from_pretrained(base, repo, subfolder=\"loftq_init\", "
       "is_trainable=True)\n```\n\n";
  o << "`" << auto_cls << "` builds `" << arch["task_class"].get<std::string>()
    << "` (PEFT task type `" << adapter_cfg["task_type"].get<std::string>() << "`).";
  if (!skip.empty())
    o << " `llm_int8_skip_modules` keeps the output head and the weights listed under \"Left "
         "out\" in full precision (it replaces the loader's default, so the head is listed "
         "too).";
  if (arch["base_class_save"].get<bool>())
    o << " The checkpoint is a base-class save (keys without the `"
      << arch["base_model_prefix"].get<std::string>()
      << ".` prefix): transformers adds the prefix when it loads it into the task class, and "
         "the adapter's keys carry it, as PEFT expects.";
  if (adapter_cfg["fan_in_fan_out"].get<bool>())
    o << " The Conv1D layers store their weights as (in, out): the adapter says "
         "`fan_in_fan_out: true`, as PEFT requires for them, and each effective weight is "
         "Q + (lora_alpha / r) (B A)^T.";
  o << "\n\n";
  const json& bm = adapter_cfg["base_model_name_or_path"];
  if (bm.is_null())
    o << "`loftq_init/adapter_config.json` has no `base_model_name_or_path`: set it to the "
         "repo id this folder is published to (or quantize with `--repo-id`) before using "
         "`AutoPeftModel`; `PeftModel.from_pretrained` above does not need it.\n\n";
  else if (!info.repo_id)
    o << "`base_model_name_or_path` in `loftq_init/adapter_config.json` is `"
      << bm.get<std::string>()
      << "`, the source model: `AutoPeftModel` would load its original weights under this "
         "adapter. Set it to the repo id this folder is published to (or quantize with "
         "`--repo-id`).\n\n";
}

void left_out(std::ostringstream& o, const json& lj) {
  if (lj["left_out"].empty()) return;
  o << "## Left out\n\nThese weights get no LoftQ correction; the loading snippet keeps them in "
       "full precision (`llm_int8_skip_modules`).\n\n| tensor | module | reason |\n|---|---|---|\n";
  for (const auto& l : lj["left_out"])
    o << "| `" << l["tensor"].get<std::string>() << "` | `" << l["module"].get<std::string>()
      << "` | " << l["reason"].get<std::string>() << " |\n";
  o << "\n";
}

void bit_plan(std::ostringstream& o, const json& lj, const json& adapter_cfg) {
  o << "## Bit plan\n\n`" << lj["bit_plan_spec"].get<std::string>() << "` over " << lj["num_layers"]
    << " layers";
  const json& st = lj["stacks"];
  if (st.size() > 1) {
    o << " (";
    for (size_t i = 0; i < st.size(); ++i) {
      const int first = st[i]["first"].get<int>(), n = st[i]["layers"].get<int>();
      o << (i ? ", " : "") << st[i]["name"].get<std::string>() << " layers " << first << "-"
        << first + n - 1;
    }
    o << ")";
  }
  if (lj.contains("avg_bits"))
    o << "; " << fmt("%.3f", lj["avg_bits"]["achieved"].get<double>())
      << " bits on average, weighted by parameters (asked: "
      << fmt("%g", lj["avg_bits"]["requested"].get<double>()) << ")";
  o << "; target modules: ";
  for (size_t i = 0; i < adapter_cfg["target_modules"].size(); ++i)
    o << (i ? ", " : "") << "`" << adapter_cfg["target_modules"][i].get<std::string>() << "`";
  o << ".\n\n";
}

constexpr const char* kCitation =
    "## Citation\n\nLoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models "
    "([arXiv:2310.08659](https://arxiv.org/abs/2310.08659)).\n\n```bibtex\n"
    "@article{li2023loftq,\n"
    "  title={LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models},\n"
    "  author={Li, Yixiao and Yu, Yifan and Liang, Chen and He, Pengcheng and Karampatziakis, "
    "Nikos and Chen, Weizhu and Zhao, Tuo},\n"
    "  journal={arXiv preprint arXiv:2310.08659},\n  year={2023}\n}\n```\n";

}  // namespace

std::string model_card(const json& lj, const json& adapter_cfg, const CardInfo& info) {
  std::ostringstream o;
  front_matter(o, lj, info);
  o << "# "
    << (info.repo_id      ? *info.repo_id
        : info.base_model ? "LoftQ initialization of " + *info.base_model
                          : std::string("LoftQ initialization"))
    << "\n\n";
  o << "[LoftQ](https://arxiv.org/abs/2310.08659) initialization (rank " << lj["rank"] << ", "
    << lj["iters"] << " alternating iterations, " << lj["quant"].get<std::string>()
    << " quantization, block size " << lj["block_size"] << ") made by loftqd "
    << lj["loftqd_version"].get<std::string>() << ".\n\n";
  o << "The repository root holds the backbone with every target weight replaced by its quantized "
       "value Q (stored in the checkpoint's dtype); `loftq_init/` holds the LoRA adapter (A, B) "
       "such that Q + (lora_alpha / r) * B A approximates the original weight as LoftQ found "
       "it.\n\n";
  if (lj["source"]["repo"].is_string())
    o << "Source: `" << lj["source"]["repo"].get<std::string>() << "` at commit `"
      << (lj["source"]["commit"].is_string() ? lj["source"]["commit"].get<std::string>()
                                             : std::string("?"))
      << "`.\n\n";
  access(o, info);
  loading(o, lj, adapter_cfg, info);
  if (lj["bnb_nf4_reload_exact"].get<bool>()) {
    o << "Every layer uses NF4 or NF2 codes in blocks of 64, all of which are NF4 codes, so "
         "loading the backbone with bitsandbytes NF4 reproduces Q exactly (up to the dtype's "
         "rounding).\n\n";
  } else {
    o << "**Note:** some layers use codes that are not NF4 codes (NF3 or uniform quantization, or "
         "a block size other than 64). Their LoftQ initialization is exact only when the "
         "backbone is loaded unquantized (or re-quantized with the same quantizer); `loftqd "
         "verify` reports the error after an NF4 round trip for each layer.\n\n";
  }
  left_out(o, lj);
  bit_plan(o, lj, adapter_cfg);
  o << "## Per-layer errors\n\nRelative Frobenius errors ||W - Q - B A|| / ||W|| (LoftQ) "
       "against the QLoRA baseline ||W - Q0|| / ||W||.\n\n";
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
    << ".\n\n"
    << kCitation;
  return o.str();
}

std::optional<std::string> card_license(const std::filesystem::path& readme) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(readme, ec)) return std::nullopt;
  const std::string text = common::read_file(readme);
  if (!text.starts_with("---\n")) return std::nullopt;
  const size_t end = text.find("\n---", 3);
  std::istringstream in(text.substr(4, end == std::string::npos ? 0 : end - 3));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.starts_with("license:")) continue;
    std::string v = common::trim(line.substr(8));
    if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front())
      v = v.substr(1, v.size() - 2);
    if (!v.empty()) return v;
  }
  return std::nullopt;
}

json adapter_config(const LoftqSettings& s, const TargetPlan& tp,
                    const std::optional<std::string>& base_model) {
  const double alpha = s.alpha();
  return {
      {"peft_type", "LORA"},
      {"task_type", tp.arch.task_type},
      {"base_model_name_or_path", base_model ? json(*base_model) : json(nullptr)},
      {"revision", nullptr},
      {"r", s.rank},
      {"lora_alpha", alpha == std::floor(alpha) ? json(static_cast<int64_t>(alpha)) : json(alpha)},
      {"lora_dropout", s.lora_dropout},
      {"target_modules", tp.adapter_targets},
      {"init_lora_weights", true},
      {"bias", "none"},
      {"fan_in_fan_out", tp.fan_in_fan_out},
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
                      {"module_path", l.module_path},
                      {"layer", l.layer ? json(*l.layer) : json(nullptr)},
                      {"stack", l.stack.empty() ? json(nullptr) : json(l.stack)},
                      {"stack_layer", l.stack_layer >= 0 ? json(l.stack_layer) : json(nullptr)},
                      {"module", l.module},
                      {"conv1d", l.conv1d},
                      {"bits", l.bits},
                      {"quant", l.quant},
                      {"shape", {l.out_features, l.in_features}},
                      {"qlora_error", l.qlora_error},
                      {"loftq_error", l.loftq_error},
                      {"best_iter", l.best_iter},
                      {"seconds", l.seconds}});
  }
  json stacks = json::array();
  for (const auto& st : tp.stacks)
    stacks.push_back(
        {{"name", st.name},
         {"path", st.path},
         {"layers", st.layers},
         {"first", st.first},
         {"config_field", st.config_field.empty() ? json(nullptr) : json(st.config_field)}});
  json left = json::array();
  for (const auto& l : tp.left_out)
    left.push_back({{"tensor", l.tensor}, {"module", l.module}, {"reason", l.reason}});
  json j = {{"format_version", 2},
            {"source",
             {{"repo", opt_str(opt.source.repo)},
              {"revision", opt_str(opt.source.revision)},
              {"commit", opt_str(opt.source.commit)}}},
            {"model_type", tp.model_type},
            {"architecture",
             {{"registered", tp.registered},
              {"task_type", tp.arch.task_type},
              {"task_class", tp.arch.task_class},
              {"auto_class", model::auto_class_for(tp.arch.task_type)},
              {"base_model_prefix", tp.arch.base_model_prefix},
              {"base_class_save", tp.base_class_save}}},
            {"rank", s.rank},
            {"iters", s.iters},
            {"lora_alpha", adapter_cfg["lora_alpha"]},
            {"quant", quant::method_name(s.quant)},
            {"block_size", s.block_size},
            {"svd", quant::svd_mode_name(s.svd)},
            {"bit_plan", tp.plan.to_json()},
            {"bit_plan_spec", tp.plan.to_string()},
            {"num_layers", tp.num_layers},
            {"stacks", stacks},
            {"target_modules", tp.adapter_targets},
            {"left_out", left},
            {"llm_int8_skip_modules", tp.skip_modules},
            {"bnb_nf4_reload_exact", reload_exact},
            {"layers", layers},
            {"seconds", report.seconds},
            {"loftqd_version", LOFTQD_VERSION}};
  if (tp.avg_bits_requested)
    j["avg_bits"] = {{"requested", *tp.avg_bits_requested},
                     {"achieved", tp.avg_bits_achieved.value_or(0.0)},
                     {"overrides", tp.avg_overrides}};
  return j;
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
