#include "convert/convert.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>

#include "common/fs.h"
#include "common/ids.h"
#include "common/ordered_work.h"
#include "common/stopwatch.h"
#include "common/sysinfo.h"
#include "convert/internal.h"
#include "model/dtype.h"
#include "model/naming.h"
#include "model/safetensors.h"
#include "quant/device.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace loftqd::convert {

using common::copy_file_atomic;
using common::fsync_dir;
using common::write_file_atomic;
using model::FormatError;
using model::OwnedTensor;
using model::SafetensorsFile;
using model::TensorInfo;
using model::TensorSpec;

namespace {

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

// True when `inner` is `outer` or lies below it (both canonical).
bool within(const fs::path& inner, const fs::path& outer) {
  return std::mismatch(outer.begin(), outer.end(), inner.begin(), inner.end()).first == outer.end();
}

// Checks the directories before any work: the input is a directory whose entries are regular
// files or directories (a FIFO, device, socket, symlink loop or dangling link is refused before
// anything opens it), the output is not the input, inside it or a parent of it (compared after
// resolving symlinks, with or without `force`: --force replaces OUT_DIR), and it is empty unless
// `force`. Returns OUT_DIR made absolute.
fs::path check_paths(const fs::path& model_dir, const fs::path& out_dir_in, bool force) {
  std::error_code ec;
  const auto st = fs::status(model_dir, ec);
  if (ec && ec != std::errc::no_such_file_or_directory)
    throw std::invalid_argument(model_dir.string() + ": " +
                                common::regular_file_problem(model_dir).value_or(ec.message()));
  if (!fs::is_directory(st)) throw std::invalid_argument(model_dir.string() + ": not a directory");
  for (auto it = fs::directory_iterator(model_dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    std::error_code dec;
    if (it->is_directory(dec)) continue;
    // An entry gone since the listing (a download's temporary link renamed into place) is no
    // file of the model.
    if (auto why = common::regular_file_problem(it->path()); why && *why != "does not exist")
      throw std::invalid_argument(it->path().string() + ": " + *why);
  }
  if (ec) throw std::invalid_argument(model_dir.string() + ": cannot list: " + ec.message());
  const fs::path out_dir = fs::absolute(out_dir_in).lexically_normal();
  const fs::path in_real = fs::canonical(model_dir);
  const fs::path out_real = fs::weakly_canonical(out_dir);
  if (within(out_real, in_real) || within(in_real, out_real))
    throw std::invalid_argument(out_dir.string() + ": output must not be the model directory " +
                                model_dir.string() + ", inside it or contain it");
  if (dir_nonempty(out_dir) && !force)
    throw OutputExistsError(out_dir.string() +
                            ": exists and is not empty (use --force to replace it)");
  return out_dir;
}

// The backbone, one shard at a time: target weights replaced by LoftQ's Q (computed, or taken
// from a matching checkpoint), every other tensor copied byte for byte; the adapter factors
// collected on the way.
class BackboneWriter {
 public:
  BackboneWriter(const fs::path& model_dir, const QuantizeOptions& opt, quant::Backend& backend,
                 const detail::TargetPlan& tp, QuantizeReport& report)
      : model_dir_(model_dir),
        opt_(opt),
        s_(opt.settings),
        backend_(backend),
        tp_(tp),
        report_(report) {}

  void write(model::Checkpoint& ckpt, const fs::path& stage) {
    for (size_t i = 0; i < ckpt.num_shards(); ++i) total_ += ckpt.shard(i).tensors().size();
    std::unique_ptr<quant::CpuWorkers> workers = make_workers();
    for (size_t i = 0; i < ckpt.num_shards(); ++i) {
      if (ckpt.pending(i)) {  // still downloading: wait for it, then hold it to its header
        opt_.wait_for_shard(ckpt.shard_names()[i]);
        ckpt.load(i);
      }
      write_shard(ckpt.shard(i), stage / ckpt.shard_names()[i], workers.get());
      if (opt_.on_weights_file)
        opt_.on_weights_file(ckpt.shard_names()[i], stage / ckpt.shard_names()[i]);
    }
    if (opt_.progress) opt_.progress(total_, total_, "");
  }
  std::vector<OwnedTensor>& adapter() { return adapter_; }

 private:
  // One target tensor's result, computed or taken from its checkpoint.
  struct Computed {
    LayerReport lr;
    std::vector<std::byte> q;  // in the tensor's dtype
    OwnedTensor a, b;          // lora_A, lora_B
  };
  using Ahead = common::OrderedWork<Computed, quant::Backend>;

  // The CPU workers for tensor_jobs (null: one tensor at a time on backend_). Each holds about
  // kWorkingSetCopies copies of the largest target in float32 (W, the residual, Q and the best Q
  // of the LoftQ loop, the float32 input and result, the exact SVD's buffers on small matrices).
  std::unique_ptr<quant::CpuWorkers> make_workers() {
    report_.tensor_jobs = 1;
    if (opt_.tensor_jobs == 1 || backend_.name() != "cpu") return nullptr;
    size_t largest = 0;
    for (const auto& [name, tg] : tp_.by_tensor)
      largest = std::max(largest, static_cast<size_t>(tg.out_features * tg.in_features));
    constexpr size_t kWorkingSetCopies = 8;
    const int jobs = quant::cpu_jobs(opt_.tensor_jobs, largest * sizeof(float) * kWorkingSetCopies,
                                     common::available_memory_bytes());
    if (jobs <= 1) return nullptr;
    report_.tensor_jobs = jobs;
    return std::make_unique<quant::CpuWorkers>(jobs);
  }

  void write_shard(const SafetensorsFile& in, const fs::path& out_path,
                   quant::CpuWorkers* workers) {
    std::vector<TensorSpec> specs;
    std::vector<const TensorInfo*> targets;
    for (const auto& t : in.tensors()) {
      specs.push_back(TensorSpec{t.name, t.dtype, t.shape});
      if (tp_.by_tensor.count(t.name)) targets.push_back(&t);
    }
    // The targets of this shard, computed on the workers in file order, a few ahead of the
    // writer (reading the next tensors and writing the last one overlap the compute).
    std::optional<Ahead> ahead;
    if (workers) {
      const std::vector<quant::Backend*> backends = workers->backends();
      ahead.emplace(
          backends, targets.size(), 2 * backends.size(), [&](size_t k, quant::Backend& be) {
            return result_of(in, *targets[k], tp_.by_tensor.at(targets[k]->name), be, nullptr);
          });
    }
    model::SafetensorsWriter w(out_path, specs, in.metadata());
    size_t k = 0;
    for (const auto& t : in.tensors()) {
      if (opt_.progress) opt_.progress(done_, total_, t.name);
      auto it = tp_.by_tensor.find(t.name);
      if (it == tp_.by_tensor.end())
        w.write(t.name, in.bytes(t));  // byte-identical
      else
        write_target(in, t, it->second, w, ahead ? &*ahead : nullptr, k++);
      in.release(t);
      ++done_;
    }
    w.commit();
  }

  // One target weight, the k-th of its shard. Unwinding on a stop request removes the staging
  // directory (and the shard's temp file); the checkpoints of the tensors finished so far stay
  // for the next run.
  void write_target(const SafetensorsFile& in, const TensorInfo& t, const detail::Target& tg,
                    model::SafetensorsWriter& w, Ahead* ahead, size_t k) {
    if (opt_.should_stop && opt_.should_stop())
      throw Interrupted(model_dir_.string() + ": interrupted before tensor '" + t.name + "' (" +
                        std::to_string(targets_done_) + " of " +
                        std::to_string(tp_.by_tensor.size()) + " target tensors done)");
    Computed c = ahead ? ahead->take(k) : result_of(in, t, tg, backend_, opt_.fallback);
    if (c.lr.resumed)
      ++report_.resumed;
    else if (opt_.on_tensor_done)
      opt_.on_tensor_done(t.name);
    w.write(t.name, c.q);
    adapter_.push_back(std::move(c.a));
    adapter_.push_back(std::move(c.b));
    report_.layers.push_back(c.lr);
    ++targets_done_;
  }

  // A target's result: from its checkpoint when one matches (the exact bytes the run that
  // computed it wrote), else computed on `be` and, with checkpoint_dir, saved durably first.
  // Safe to run for several tensors at once (each on its own backend).
  Computed result_of(const SafetensorsFile& in, const TensorInfo& t, const detail::Target& tg,
                     quant::Backend& be, quant::Backend* fallback) const {
    const quant::LoftqOptions lo = loftq_options(s_, tg.spec.bits);
    Computed c{
        report_of(t, tg, lo),
        {},
        OwnedTensor{TensorSpec{lora_a_key(tg.module), t.dtype, {s_.rank, tg.in_features}}, {}},
        OwnedTensor{TensorSpec{lora_b_key(tg.module), t.dtype, {tg.out_features, s_.rank}}, {}}};
    const detail::FactorShape factors{s_.rank, tg.out_features, tg.in_features};
    std::string fingerprint;
    fs::path ck_path;
    if (!opt_.checkpoint_dir.empty()) {
      fingerprint =
          detail::tensor_fingerprint(t, lo, s_.alpha(), detail::hash_bytes(in.bytes(t)), tg.conv1d);
      ck_path = detail::checkpoint_path(opt_.checkpoint_dir, t.name);
      if (auto ck = detail::load_checkpoint(ck_path, fingerprint, t, factors, c.lr)) {
        const auto qb = ck->bytes(*ck->find("q")), ab = ck->bytes(*ck->find("a")),
                   bb = ck->bytes(*ck->find("b"));
        c.q.assign(qb.begin(), qb.end());
        c.a.data.assign(ab.begin(), ab.end());
        c.b.data.assign(bb.begin(), bb.end());
        c.lr.resumed = true;
        return c;
      }
    }
    c.q = compute(in, t, tg, lo, be, fallback, c.lr, c.a, c.b);
    if (!ck_path.empty())
      detail::save_checkpoint(ck_path, fingerprint, c.lr, t, factors, c.q, c.a.data, c.b.data);
    return c;
  }

  static LayerReport report_of(const TensorInfo& t, const detail::Target& tg,
                               const quant::LoftqOptions& lo) {
    LayerReport lr;
    lr.tensor = t.name;
    lr.layer = tg.layer;
    lr.stack = tg.stack;
    lr.stack_layer = tg.stack_layer;
    lr.module = model::module_leaf(t.name);
    lr.module_path = tg.module;
    lr.conv1d = tg.conv1d;
    lr.quant = quant::spec_name(lo.quant);
    lr.bits = lo.quant.bits;
    lr.out_features = static_cast<int>(tg.out_features);
    lr.in_features = static_cast<int>(tg.in_features);
    return lr;
  }

  // LoftQ on one weight: Q in the tensor's dtype (converted once, so the backbone and the
  // checkpoint hold the same bytes) and the factors scaled for lora_alpha (DESIGN §3.2). A
  // Conv1D weight is stored (in, out): LoftQ runs on its transpose, the (out, in) matrix that
  // PEFT's factors (A: r x in, B: out x r) and bitsandbytes (which transposes it on loading)
  // see, and Q is stored back as (in, out).
  std::vector<std::byte> compute(const SafetensorsFile& in, const TensorInfo& t,
                                 const detail::Target& tg, const quant::LoftqOptions& lo,
                                 quant::Backend& be, quant::Backend* fallback, LayerReport& lr,
                                 OwnedTensor& a, OwnedTensor& b) const {
    const int m = lr.out_features, n = lr.in_features;
    std::vector<float> wf = in.read_f32(t);
    if (tg.conv1d) wf = quant::transposed(wf, static_cast<size_t>(n), static_cast<size_t>(m));
    quant::LoftqResult r;
    try {
      r = quant::loftq_with_fallback(be, fallback, wf.data(), m, n, lo, t.name);
    } catch (const std::invalid_argument& e) {
      throw FormatError(in.path().string() + ": tensor '" + t.name + "': " + e.what());
    }
    wf = {};
    if (tg.conv1d) r.q = quant::transposed(r.q, static_cast<size_t>(m), static_cast<size_t>(n));
    const size_t es = model::dtype_size(t.dtype);
    std::vector<std::byte> q(r.q.size() * es);
    model::from_f32(t.dtype, r.q.data(), q.data(), r.q.size());
    r.q = {};
    const float factor_scale = static_cast<float>(1.0 / std::sqrt(s_.alpha() / s_.rank));
    for (auto& v : r.a) v *= factor_scale;
    for (auto& v : r.b) v *= factor_scale;
    a.data.resize(r.a.size() * es);
    b.data.resize(r.b.size() * es);
    model::from_f32(t.dtype, r.a.data(), a.data.data(), r.a.size());
    model::from_f32(t.dtype, r.b.data(), b.data.data(), r.b.size());
    lr.qlora_error = r.qlora_error;
    lr.loftq_error = r.loftq_error;
    lr.best_iter = r.best_iter;
    lr.seconds = r.seconds;
    return q;
  }

  const fs::path& model_dir_;
  const QuantizeOptions& opt_;
  const LoftqSettings& s_;
  quant::Backend& backend_;
  const detail::TargetPlan& tp_;
  QuantizeReport& report_;
  std::vector<OwnedTensor> adapter_;
  size_t done_ = 0, total_ = 0, targets_done_ = 0;
};

// OUT_DIR appears complete or not at all: the staging directory is renamed over it (with
// --force, old and new are swapped in one atomic step and the old tree dropped).
void swap_into_place(StagingDir& stage, const fs::path& out_dir) {
  fsync_dir(stage.path() / "loftq_init");
  fsync_dir(stage.path());
  if (fs::exists(out_dir)) {
    if (::renameat2(AT_FDCWD, stage.path().c_str(), AT_FDCWD, out_dir.c_str(), RENAME_EXCHANGE) !=
        0)
      throw std::runtime_error(out_dir.string() + ": cannot replace (" + std::strerror(errno) +
                               ")");
  } else {
    fs::rename(stage.path(), out_dir);
    stage.release();
  }
  fsync_dir(out_dir.parent_path());
}

// config.json's _name_or_path when it is a repo id: not a local path, and not the name of the
// input or output folder (transformers records whatever path the model was loaded from).
std::optional<std::string> source_name(const json& config, const fs::path& model_dir,
                                       const fs::path& out_dir) {
  auto it = config.find("_name_or_path");
  if (it == config.end() || !it->is_string()) return std::nullopt;
  const std::string v = it->get<std::string>();
  if (v.empty() || common::repo_id_problem(v)) return std::nullopt;
  for (const fs::path& d : {model_dir, out_dir})
    if (v == fs::absolute(d).lexically_normal().filename().string()) return std::nullopt;
  return v;
}

// base_model_name_or_path: where the layout is published; else the source's _name_or_path
// (a repo id AutoPeftModel can resolve, but the original weights: warned); else null. Never a
// folder name.
std::optional<std::string> base_model_name(const QuantizeOptions& opt,
                                           const std::optional<std::string>& src,
                                           std::vector<std::string>& warnings) {
  if (!opt.repo_id.empty()) return opt.repo_id;
  if (src) {
    warnings.push_back("base_model_name_or_path is the source's _name_or_path '" + *src +
                       "' (no --repo-id): AutoPeftModel would load that model's original "
                       "weights under the adapter; set it to the repo id this layout is "
                       "published to (--repo-id, or edit loftq_init/adapter_config.json)");
    return src;
  }
  warnings.push_back(
      "base_model_name_or_path is null (no --repo-id, and config.json has no _name_or_path "
      "that is a repo id): set it to the repo id this layout is published to (--repo-id, or "
      "edit loftq_init/adapter_config.json) for AutoPeftModel; PeftModel.from_pretrained "
      "works without it");
  return std::nullopt;
}

}  // namespace

std::string lora_a_key(const std::string& m) {
  return "base_model.model." + m + ".lora_A.weight";
}
std::string lora_b_key(const std::string& m) {
  return "base_model.model." + m + ".lora_B.weight";
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

QuantizeReport quantize_model(const fs::path& model_dir, const fs::path& out_dir_in,
                              const QuantizeOptions& opt, quant::Backend& backend) {
  const common::Stopwatch took;
  // 1. Settings and paths, before anything is read.
  check(opt.settings);
  if (auto e = common::repo_id_error(opt.repo_id); !opt.repo_id.empty() && !e.empty())
    throw std::invalid_argument("--repo-id: " + e);
  const fs::path out_dir = check_paths(model_dir, out_dir_in, opt.force);

  // 2. The checkpoint, its targets and the plan for every one of them, checked up front.
  const json config = detail::read_config(model_dir);
  if (!opt.pending_shards.empty() && !opt.wait_for_shard)
    throw std::invalid_argument("pending_shards without wait_for_shard");
  model::Checkpoint ckpt = model::Checkpoint::open(model_dir, opt.pending_shards);
  const detail::TargetPlan tp = detail::plan_targets(model_dir, config, ckpt, opt.settings);
  QuantizeReport report;
  report.model_type = tp.model_type;
  report.warnings = tp.warnings;
  const std::optional<std::string> source = source_name(tp.config, model_dir, out_dir);
  const std::optional<std::string> base_model = base_model_name(opt, source, report.warnings);

  // 3. A staging directory beside OUT_DIR (stale ones of dead runs removed), checkpoints ready.
  fs::create_directories(out_dir.parent_path());
  remove_stale_staging(out_dir);
  if (!opt.checkpoint_dir.empty()) detail::prepare_checkpoint_dir(opt.checkpoint_dir);
  StagingDir stage(out_dir.parent_path() /
                   ("." + out_dir.filename().string() + ".staging-" + std::to_string(::getpid())));

  // 4. The backbone, streamed tensor by tensor, and the adapter as PEFT saves it.
  BackboneWriter backbone(model_dir, opt, backend, tp, report);
  backbone.write(ckpt, stage.path());
  if (ckpt.sharded())
    copy_file_atomic(ckpt.index_path(), stage.path() / "model.safetensors.index.json");
  model::write_safetensors(stage.path() / "loftq_init" / "adapter_model.safetensors",
                           backbone.adapter());
  if (opt.on_weights_file)
    opt.on_weights_file("loftq_init/adapter_model.safetensors",
                        stage.path() / "loftq_init" / "adapter_model.safetensors");
  const json acfg = detail::adapter_config(opt.settings, tp, base_model);
  write_file_atomic(stage.path() / "loftq_init" / "adapter_config.json", acfg.dump(2) + "\n");

  // 5. Everything else of the checkpoint, the record and the card.
  for (const auto& name : passthrough_files(model_dir))
    copy_file_atomic(model_dir / name, stage.path() / name);
  report.seconds = took.seconds();
  report.loftq_json = detail::loftq_record(opt, tp, acfg, report);
  write_file_atomic(stage.path() / "loftq.json", report.loftq_json.dump(2) + "\n");
  detail::CardInfo card;
  if (!opt.repo_id.empty()) card.repo_id = opt.repo_id;
  card.license = detail::card_license(model_dir / "README.md");
  if (!card.license) card.license = opt.source.license;
  card.gated = opt.source.gated;
  card.is_private = opt.source.is_private;
  card.base_model = opt.source.repo ? opt.source.repo : source;
  write_file_atomic(stage.path() / "README.md", detail::model_card(report.loftq_json, acfg, card));

  // 6. Into place, atomically.
  swap_into_place(stage, out_dir);
  return report;
}

}  // namespace loftqd::convert
