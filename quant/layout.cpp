#include "quant/layout.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include "quant/device.h"
#include "quant/fsutil.h"
#include "quant/safetensors.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace loftqd::quant {

namespace {

json opt_str(const std::optional<std::string>& s) {
  return s ? json(*s) : json(nullptr);
}

json read_json_file(const fs::path& p) {
  try {
    return json::parse(read_file(p));
  } catch (const json::exception& e) {
    throw FormatError(p.string() + ": not valid JSON (" + e.what() + ")");
  }
}

bool is_weight_file(const std::string& name) {
  static const char* kExt[] = {".safetensors", ".bin", ".pt",      ".pth",
                               ".ckpt",        ".h5",  ".msgpack", ".gguf"};
  for (const char* e : kExt) {
    const std::string ext(e);
    if (name.size() >= ext.size() && name.compare(name.size() - ext.size(), ext.size(), ext) == 0)
      return true;
  }
  return name == "model.safetensors.index.json" || name == "pytorch_model.bin.index.json";
}

// Removes a staging directory unless released.
class StagingDir {
 public:
  explicit StagingDir(fs::path p) : path_(std::move(p)) {
    std::error_code ec;
    fs::remove_all(path_, ec);
    fs::create_directories(path_ / "loftq_init");
  }
  ~StagingDir() {
    if (!released_) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  const fs::path& path() const { return path_; }
  void release() { released_ = true; }

 private:
  fs::path path_;
  bool released_ = false;
};

// A killed run (SIGKILL, power loss) leaves its staging directory behind; remove those whose
// process is gone so they do not pile up next to OUT_DIR.
void remove_stale_staging(const fs::path& out_dir) {
  const std::string prefix = "." + out_dir.filename().string() + ".staging-";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(out_dir.parent_path(), ec)) {
    const std::string name = e.path().filename().string();
    if (!name.starts_with(prefix)) continue;
    const std::string pid_str = name.substr(prefix.size());
    if (pid_str.empty() || !std::all_of(pid_str.begin(), pid_str.end(), ::isdigit)) continue;
    const long pid = std::stol(pid_str);
    if (pid == ::getpid() || (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH))
      fs::remove_all(e.path(), ec);
  }
}

bool dir_nonempty(const fs::path& p) {
  std::error_code ec;
  if (!fs::exists(p, ec)) return false;
  if (!fs::is_directory(p, ec)) return true;
  return fs::directory_iterator(p, ec) != fs::directory_iterator();
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

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

}  // namespace

std::string lora_a_key(const std::string& w) {
  return "base_model.model." + module_path(w) + ".lora_A.weight";
}
std::string lora_b_key(const std::string& w) {
  return "base_model.model." + module_path(w) + ".lora_B.weight";
}

std::vector<std::string> passthrough_files(const fs::path& model_dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(model_dir)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (is_weight_file(name) || name == "README.md" || name == "loftq.json" ||
        name.starts_with("."))
      continue;
    out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

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

QuantizeReport quantize_model(const fs::path& model_dir, const fs::path& out_dir_in,
                              const QuantizeOptions& opt, Backend& backend) {
  const auto t0 = std::chrono::steady_clock::now();
  if (opt.rank <= 0) throw std::invalid_argument("--rank must be > 0");
  if (opt.iters < 1) throw std::invalid_argument("--iters must be >= 1");
  if (opt.block_size <= 0) throw std::invalid_argument("--block-size must be > 0");
  if (opt.lora_alpha && !(*opt.lora_alpha > 0))
    throw std::invalid_argument("--lora-alpha must be > 0");
  if (!fs::is_directory(model_dir))
    throw std::invalid_argument(model_dir.string() + ": not a directory");
  const fs::path out_dir = fs::absolute(out_dir_in).lexically_normal();
  if (fs::equivalent(model_dir, out_dir.parent_path()) ||
      (fs::exists(out_dir) && fs::equivalent(model_dir, out_dir)))
    throw std::invalid_argument(out_dir.string() + ": output must not be the model directory");
  if (dir_nonempty(out_dir) && !opt.force)
    throw OutputExistsError(out_dir.string() +
                            ": exists and is not empty (use --force to replace it)");

  // 1. The checkpoint and its config.
  const fs::path cfg_path = model_dir / "config.json";
  if (!fs::exists(cfg_path))
    throw FormatError(cfg_path.string() + ": missing (needed for model_type)");
  const json cfg = read_json_file(cfg_path);
  if (!cfg.is_object() || !cfg.contains("model_type") || !cfg["model_type"].is_string())
    throw FormatError(cfg_path.string() + ": field 'model_type' is missing or not a string");
  QuantizeReport report;
  report.model_type = cfg["model_type"].get<std::string>();
  std::vector<std::string> targets =
      opt.target_modules.empty() ? default_target_modules(report.model_type) : opt.target_modules;
  if (targets.empty())
    throw std::invalid_argument(cfg_path.string() + ": model_type '" + report.model_type +
                                "' has no default target modules; pass --target-modules");
  Checkpoint ckpt = Checkpoint::open(model_dir);

  // 2. The plan for every target weight, checked before any work starts.
  struct Target {
    std::optional<int> layer;
    QuantSpec spec;
  };
  std::map<std::string, Target> plan_of;
  std::set<std::string> used_targets;
  int num_layers = 0;
  for (const auto& [shard, t] : ckpt.all_tensors())
    if (auto li = layer_index(t->name)) num_layers = std::max(num_layers, *li + 1);
  BitPlan plan = opt.plan;
  std::set<int> allowed;
  for (int b : {2, 3, 4, 8})
    if (supports(opt.method, b)) allowed.insert(b);
  plan.resolve(num_layers, allowed);
  for (const auto& [shard, t] : ckpt.all_tensors()) {
    if (!is_target_weight(t->name, targets)) continue;
    const std::string where = ckpt.shard(shard).path().string() + ": tensor '" + t->name + "'";
    if (t->shape.size() != 2) throw FormatError(where + ": target weight is not 2-D");
    if (!is_float_dtype(t->dtype))
      throw FormatError(where + ": target weight has dtype " + std::string(dtype_name(t->dtype)) +
                        " (F32, F16 or BF16 expected)");
    const std::string leaf = module_leaf(t->name);
    Target tg;
    tg.layer = layer_index(t->name);
    auto bits = plan.bits_for(tg.layer, leaf);
    if (!bits)
      throw std::invalid_argument("bit plan '" + plan.to_string() + "' gives no bits for layer " +
                                  std::to_string(tg.layer.value_or(-1)) + " (" + t->name + ")");
    tg.spec = QuantSpec{opt.method, *bits, opt.block_size};
    try {
      check_spec(tg.spec, t->numel());
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(where + ": " + e.what());
    }
    for (const auto& tm : targets)
      if (is_target_weight(t->name, {tm})) used_targets.insert(tm);
    plan_of[t->name] = tg;
  }
  if (plan_of.empty())
    throw std::invalid_argument(model_dir.string() + ": no tensor matches the target modules");
  for (const auto& tm : targets)
    if (!opt.target_modules.empty() && !used_targets.count(tm))
      throw std::invalid_argument("target module '" + tm + "' matches no weight in " +
                                  model_dir.string());
  std::vector<std::string> adapter_targets;
  for (const auto& tm : targets)
    if (used_targets.count(tm)) adapter_targets.push_back(tm);

  const double alpha = opt.lora_alpha.value_or(static_cast<double>(opt.rank));
  const float factor_scale = static_cast<float>(1.0 / std::sqrt(alpha / opt.rank));
  const std::string repo_id = opt.repo_id.empty() ? out_dir.filename().string() : opt.repo_id;

  // 3. Stream the backbone into a staging directory beside OUT_DIR.
  fs::create_directories(out_dir.parent_path());
  remove_stale_staging(out_dir);
  StagingDir stage(out_dir.parent_path() /
                   ("." + out_dir.filename().string() + ".staging-" + std::to_string(::getpid())));
  std::vector<OwnedTensor> adapter;
  size_t done = 0, total = 0;
  for (size_t s = 0; s < ckpt.num_shards(); ++s) total += ckpt.shard(s).tensors().size();
  LoftqOptions lo;
  lo.rank = opt.rank;
  lo.iters = opt.iters;
  lo.svd = opt.svd;
  for (size_t s = 0; s < ckpt.num_shards(); ++s) {
    const SafetensorsFile& in = ckpt.shard(s);
    std::vector<TensorSpec> specs;
    for (const auto& t : in.tensors()) specs.push_back(TensorSpec{t.name, t.dtype, t.shape});
    SafetensorsWriter w(stage.path() / ckpt.shard_names()[s], specs, in.metadata());
    for (const auto& t : in.tensors()) {
      if (opt.progress) opt.progress(done, total, t.name);
      auto it = plan_of.find(t.name);
      if (it == plan_of.end()) {
        w.write(t.name, in.bytes(t));  // byte-identical
      } else {
        const int m = static_cast<int>(t.shape[0]), n = static_cast<int>(t.shape[1]);
        std::vector<float> wf = in.read_f32(t);
        lo.quant = it->second.spec;
        LoftqResult r;
        try {
          r = loftq_with_fallback(backend, opt.fallback, wf.data(), m, n, lo, t.name);
        } catch (const std::invalid_argument& e) {
          throw FormatError(in.path().string() + ": tensor '" + t.name + "': " + e.what());
        }
        w.write_f32(t.name, r.q.data(), r.q.size());
        for (auto& v : r.a) v *= factor_scale;
        for (auto& v : r.b) v *= factor_scale;
        OwnedTensor a{TensorSpec{lora_a_key(t.name), t.dtype, {opt.rank, n}}, {}};
        OwnedTensor b{TensorSpec{lora_b_key(t.name), t.dtype, {m, opt.rank}}, {}};
        a.data.resize(r.a.size() * dtype_size(t.dtype));
        b.data.resize(r.b.size() * dtype_size(t.dtype));
        from_f32(t.dtype, r.a.data(), a.data.data(), r.a.size());
        from_f32(t.dtype, r.b.data(), b.data.data(), r.b.size());
        adapter.push_back(std::move(a));
        adapter.push_back(std::move(b));
        LayerReport lr;
        lr.tensor = t.name;
        lr.layer = it->second.layer;
        lr.module = module_leaf(t.name);
        lr.quant = spec_name(lo.quant);
        lr.bits = lo.quant.bits;
        lr.out_features = m;
        lr.in_features = n;
        lr.qlora_error = r.qlora_error;
        lr.loftq_error = r.loftq_error;
        lr.best_iter = r.best_iter;
        lr.seconds = r.seconds;
        report.layers.push_back(lr);
      }
      in.release(t);
      ++done;
    }
    w.commit();
  }
  if (ckpt.sharded())
    copy_file_atomic(ckpt.index_path(), stage.path() / "model.safetensors.index.json");

  // 4. The adapter, as PEFT saves it.
  write_safetensors(stage.path() / "loftq_init" / "adapter_model.safetensors", adapter);
  json acfg = {
      {"peft_type", "LORA"},
      {"task_type", default_task_type(report.model_type)},
      {"base_model_name_or_path", repo_id},
      {"revision", nullptr},
      {"r", opt.rank},
      {"lora_alpha", alpha == std::floor(alpha) ? json(static_cast<int64_t>(alpha)) : json(alpha)},
      {"lora_dropout", opt.lora_dropout},
      {"target_modules", adapter_targets},
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
  write_file_atomic(stage.path() / "loftq_init" / "adapter_config.json", acfg.dump(2) + "\n");

  // 5. Everything else of the checkpoint, the record and the card.
  for (const auto& name : passthrough_files(model_dir))
    copy_file_atomic(model_dir / name, stage.path() / name);
  bool reload_exact = opt.block_size == 64;
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
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  json lj = {{"format_version", 1},
             {"source",
              {{"repo", opt_str(opt.source.repo)},
               {"revision", opt_str(opt.source.revision)},
               {"commit", opt_str(opt.source.commit)}}},
             {"model_type", report.model_type},
             {"rank", opt.rank},
             {"iters", opt.iters},
             {"lora_alpha", acfg["lora_alpha"]},
             {"quant", method_name(opt.method)},
             {"block_size", opt.block_size},
             {"svd", svd_mode_name(opt.svd)},
             {"bit_plan", plan.to_json()},
             {"bit_plan_spec", plan.to_string()},
             {"num_layers", num_layers},
             {"target_modules", adapter_targets},
             {"bnb_nf4_reload_exact", reload_exact},
             {"layers", layers},
             {"seconds", report.seconds},
             {"loftqd_version", LOFTQD_VERSION}};
  write_file_atomic(stage.path() / "loftq.json", lj.dump(2) + "\n");
  write_file_atomic(stage.path() / "README.md", model_card(lj, acfg, repo_id));
  report.loftq_json = lj;

  // 6. Swap the staging directory into place: OUT_DIR appears complete or not at all.
  fsync_dir(stage.path() / "loftq_init");
  fsync_dir(stage.path());
  if (fs::exists(out_dir)) {
    // --force: swap old and new in one atomic step, then drop the old tree.
    if (::renameat2(AT_FDCWD, stage.path().c_str(), AT_FDCWD, out_dir.c_str(), RENAME_EXCHANGE) !=
        0)
      throw std::runtime_error(out_dir.string() + ": cannot replace (" + std::strerror(errno) +
                               ")");
  } else {
    fs::rename(stage.path(), out_dir);
    stage.release();
  }
  fsync_dir(out_dir.parent_path());
  if (opt.progress) opt.progress(total, total, "");
  return report;
}

}  // namespace loftqd::quant
