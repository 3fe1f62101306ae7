#include "convert/convert.h"

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
#include <memory>
#include <set>
#include <span>
#include <sstream>

#include "common/fs.h"
#include "model/naming.h"
#include "model/safetensors.h"
#include "quant/device.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace loftqd::convert {

using namespace loftqd::model;  // NOLINT: safetensors, dtypes, naming
using namespace loftqd::quant;  // NOLINT: quantizers, bit plans, LoftQ, backends

using common::AtomicFile;
using common::copy_file_atomic;
using common::fsync_dir;
using common::read_file;
using common::write_file_atomic;

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

// ---------------------------------------------------------------------------------------------
// Per-tensor checkpoints (QuantizeOptions::checkpoint_dir).

// A fast non-cryptographic 64-bit hash (four xxhash64-style lanes, so hashing a multi-GB
// checkpoint stays far below the cost of LoftQ). It guards against changed inputs and damaged
// checkpoint files, not against an adversary.
constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL, kP2 = 0xC2B2AE3D27D4EB4FULL,
                   kP3 = 0x165667B19E3779F9ULL;

uint64_t rotl(uint64_t x, int r) {
  return (x << r) | (x >> (64 - r));
}

uint64_t load64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

uint64_t round64(uint64_t acc, uint64_t in) {
  return rotl(acc + in * kP2, 31) * kP1;
}

uint64_t hash_bytes(std::span<const std::byte> data, uint64_t seed = 0) {
  const std::byte* p = data.data();
  const size_t n = data.size();
  size_t i = 0;
  uint64_t h;
  if (n >= 32) {
    uint64_t v[4] = {seed + kP1 + kP2, seed + kP2, seed, seed - kP1};
    for (; i + 32 <= n; i += 32)
      for (int l = 0; l < 4; ++l) v[l] = round64(v[l], load64(p + i + 8 * l));
    h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18);
    for (int l = 0; l < 4; ++l) h = (h ^ round64(0, v[l])) * kP1 + kP3;
  } else {
    h = seed + kP3;
  }
  h += n;
  for (; i + 8 <= n; i += 8) h = rotl(h ^ round64(0, load64(p + i)), 27) * kP1 + kP3;
  for (; i < n; ++i) h = rotl(h ^ (std::to_integer<uint64_t>(p[i]) * kP3), 11) * kP1;
  // splitmix64's finalizer: every input bit reaches every output bit.
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL;
  return h ^ (h >> 31);
}

uint64_t hash_str(std::string_view s, uint64_t seed = 0) {
  return hash_bytes(std::as_bytes(std::span(s.data(), s.size())), seed);
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

constexpr const char* kCheckpointFormat = "loftqd-tensor-checkpoint/1";

// Named by a hash of the tensor name (tensor names may hold characters a file name cannot); a
// collision only costs a recomputation, since the name is part of the fingerprint.
fs::path checkpoint_path(const fs::path& dir, const std::string& tensor) {
  return dir / (hex64(hash_str(tensor)) + ".safetensors");
}

// Everything that determines a target tensor's result, as canonical JSON text (keys sorted).
// The loftqd version stands in for the algorithm: a new version recomputes.
std::string tensor_fingerprint(const TensorInfo& t, const LoftqOptions& lo, double alpha,
                               uint64_t input_hash) {
  const json fp = {{"tensor", t.name},
                   {"shape", t.shape},
                   {"dtype", std::string(dtype_name(t.dtype))},
                   {"method", method_name(lo.quant.method)},
                   {"bits", lo.quant.bits},
                   {"block_size", lo.quant.block_size},
                   {"rank", lo.rank},
                   {"iters", lo.iters},
                   {"svd", svd_mode_name(lo.svd)},
                   {"oversample", lo.oversample},
                   {"power_iters", lo.power_iters},
                   {"warm_power_iters", lo.warm_power_iters},
                   {"seed", lo.seed},
                   {"lora_alpha", alpha},
                   {"input_hash", hex64(input_hash)},
                   {"loftqd_version", LOFTQD_VERSION}};
  return fp.dump();
}

// Covers the metadata that is not checked otherwise and every byte of the three tensors, so a
// flipped bit anywhere in a checkpoint makes it be recomputed rather than published.
uint64_t checkpoint_checksum(const std::string& fingerprint, const std::string& report,
                             std::span<const std::byte> q, std::span<const std::byte> a,
                             std::span<const std::byte> b) {
  uint64_t h = hash_str(fingerprint);
  h = hash_str(report, h);
  h = hash_bytes(q, h);
  h = hash_bytes(a, h);
  return hash_bytes(b, h);
}

// The computed part of a LayerReport; the rest follows from the tensor and the plan, which the
// fingerprint covers. Doubles round-trip exactly through nlohmann's shortest representation.
std::string report_text(const LayerReport& lr) {
  return json{{"qlora_error", lr.qlora_error},
              {"loftq_error", lr.loftq_error},
              {"best_iter", lr.best_iter},
              {"seconds", lr.seconds}}
      .dump();
}

void save_checkpoint(const fs::path& p, const std::string& fingerprint, const LayerReport& lr,
                     const TensorInfo& t, int rank, std::span<const std::byte> q,
                     std::span<const std::byte> a, std::span<const std::byte> b) {
  const int64_t m = t.shape[0], n = t.shape[1];
  const std::string report = report_text(lr);
  const std::map<std::string, std::string> meta = {
      {"format", kCheckpointFormat},
      {"tensor", t.name},
      {"fingerprint", fingerprint},
      {"report", report},
      {"checksum", hex64(checkpoint_checksum(fingerprint, report, q, a, b))}};
  SafetensorsWriter w(p,
                      {TensorSpec{"q", t.dtype, {m, n}}, TensorSpec{"a", t.dtype, {rank, n}},
                       TensorSpec{"b", t.dtype, {m, rank}}},
                      meta);
  w.write("q", q);
  w.write("a", a);
  w.write("b", b);
  w.commit();  // temp file, fsync, rename, fsync the directory
}

// The checkpoint at p when it is intact and matches `fingerprint` (its report fields go into
// lr), else null: a checkpoint that cannot be used is recomputed, never an error.
std::unique_ptr<SafetensorsFile> load_checkpoint(const fs::path& p, const std::string& fingerprint,
                                                 const TensorInfo& t, int rank, LayerReport& lr) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return nullptr;
  try {
    auto f = SafetensorsFile::open(p);
    const auto& meta = f->metadata();
    auto get = [&](const char* k) -> const std::string* {
      auto it = meta.find(k);
      return it == meta.end() ? nullptr : &it->second;
    };
    const std::string *format = get("format"), *fp = get("fingerprint"), *report = get("report"),
                      *checksum = get("checksum");
    if (!format || *format != kCheckpointFormat || !fp || *fp != fingerprint || !report ||
        !checksum)
      return nullptr;
    const int64_t m = t.shape[0], n = t.shape[1];
    auto tensor = [&](const char* name, std::vector<int64_t> shape) -> const TensorInfo* {
      const TensorInfo* ti = f->find(name);
      return ti && ti->dtype == t.dtype && ti->shape == shape ? ti : nullptr;
    };
    const TensorInfo *q = tensor("q", {m, n}), *a = tensor("a", {rank, n}),
                     *b = tensor("b", {m, rank});
    if (!q || !a || !b || f->tensors().size() != 3) return nullptr;
    if (*checksum !=
        hex64(checkpoint_checksum(*fp, *report, f->bytes(*q), f->bytes(*a), f->bytes(*b))))
      return nullptr;
    const json r = json::parse(*report);
    lr.qlora_error = r.at("qlora_error").get<double>();
    lr.loftq_error = r.at("loftq_error").get<double>();
    lr.best_iter = r.at("best_iter").get<int>();
    lr.seconds = r.at("seconds").get<double>();
    return f;
  } catch (const std::exception&) {
    return nullptr;  // unreadable, truncated or malformed
  }
}

// A run killed while writing a checkpoint leaves AtomicFile's temp file (".NAME.tmp.PID.N")
// behind; remove those of processes that are gone.
void remove_stale_checkpoint_temps(const fs::path& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const size_t tmp = name.find(".tmp.");
    if (!name.starts_with(".") || tmp == std::string::npos) continue;
    const size_t dot = name.find('.', tmp + 5);
    const std::string pid_str =
        name.substr(tmp + 5, dot == std::string::npos ? dot : dot - tmp - 5);
    if (pid_str.empty() || pid_str.size() > 9 ||
        !std::all_of(pid_str.begin(), pid_str.end(), ::isdigit))
      continue;
    const long pid = std::stol(pid_str);
    if (pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)
      fs::remove(e.path(), ec);
  }
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
  const bool checkpointing = !opt.checkpoint_dir.empty();
  if (checkpointing) {
    // Made durable too, or a power loss could take the directory with the checkpoints in it.
    const fs::path ck_dir = fs::absolute(opt.checkpoint_dir);
    if (fs::create_directories(ck_dir)) fsync_dir(ck_dir.parent_path());
    remove_stale_checkpoint_temps(opt.checkpoint_dir);
  }
  StagingDir stage(out_dir.parent_path() /
                   ("." + out_dir.filename().string() + ".staging-" + std::to_string(::getpid())));
  std::vector<OwnedTensor> adapter;
  size_t done = 0, total = 0, targets_done = 0;
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
        // Unwinding removes the staging directory (and the shard's temp file); the checkpoints
        // of the tensors finished so far stay for the next run.
        if (opt.should_stop && opt.should_stop())
          throw Interrupted(model_dir.string() + ": interrupted before tensor '" + t.name + "' (" +
                            std::to_string(targets_done) + " of " + std::to_string(plan_of.size()) +
                            " target tensors done)");
        const int m = static_cast<int>(t.shape[0]), n = static_cast<int>(t.shape[1]);
        lo.quant = it->second.spec;
        LayerReport lr;
        lr.tensor = t.name;
        lr.layer = it->second.layer;
        lr.module = module_leaf(t.name);
        lr.quant = spec_name(lo.quant);
        lr.bits = lo.quant.bits;
        lr.out_features = m;
        lr.in_features = n;
        OwnedTensor a{TensorSpec{lora_a_key(t.name), t.dtype, {opt.rank, n}}, {}};
        OwnedTensor b{TensorSpec{lora_b_key(t.name), t.dtype, {m, opt.rank}}, {}};
        std::string fingerprint;
        fs::path ck_path;
        std::unique_ptr<SafetensorsFile> ck;
        if (checkpointing) {
          fingerprint = tensor_fingerprint(t, lo, alpha, hash_bytes(in.bytes(t)));
          ck_path = checkpoint_path(opt.checkpoint_dir, t.name);
          ck = load_checkpoint(ck_path, fingerprint, t, opt.rank, lr);
        }
        if (ck) {
          // The exact bytes the run that computed this tensor wrote.
          w.write(t.name, ck->bytes(*ck->find("q")));
          const auto ab = ck->bytes(*ck->find("a")), bb = ck->bytes(*ck->find("b"));
          a.data.assign(ab.begin(), ab.end());
          b.data.assign(bb.begin(), bb.end());
          lr.resumed = true;
          ++report.resumed;
        } else {
          std::vector<float> wf = in.read_f32(t);
          LoftqResult r;
          try {
            r = loftq_with_fallback(backend, opt.fallback, wf.data(), m, n, lo, t.name);
          } catch (const std::invalid_argument& e) {
            throw FormatError(in.path().string() + ": tensor '" + t.name + "': " + e.what());
          }
          wf = {};
          // Converted once, so the backbone and the checkpoint hold the same bytes.
          std::vector<std::byte> q(r.q.size() * dtype_size(t.dtype));
          from_f32(t.dtype, r.q.data(), q.data(), r.q.size());
          r.q = {};
          for (auto& v : r.a) v *= factor_scale;
          for (auto& v : r.b) v *= factor_scale;
          a.data.resize(r.a.size() * dtype_size(t.dtype));
          b.data.resize(r.b.size() * dtype_size(t.dtype));
          from_f32(t.dtype, r.a.data(), a.data.data(), r.a.size());
          from_f32(t.dtype, r.b.data(), b.data.data(), r.b.size());
          lr.qlora_error = r.qlora_error;
          lr.loftq_error = r.loftq_error;
          lr.best_iter = r.best_iter;
          lr.seconds = r.seconds;
          if (checkpointing)
            save_checkpoint(ck_path, fingerprint, lr, t, opt.rank, q, a.data, b.data);
          if (opt.on_tensor_done) opt.on_tensor_done(t.name);
          w.write(t.name, q);
        }
        adapter.push_back(std::move(a));
        adapter.push_back(std::move(b));
        report.layers.push_back(lr);
        ++targets_done;
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

}  // namespace loftqd::convert
