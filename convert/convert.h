// The published layout (DESIGN §3.2): quantized backbone + loftq_init/ adapter + loftq.json +
// model card, written to a staging directory and renamed into place.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "convert/settings.h"
#include "quant/backend.h"

namespace loftqd::convert {

struct SourceInfo {
  std::optional<std::string> repo, revision, commit;
  // What the Hub says of the upstream repo (the daemon asks; a local input knows nothing): the
  // card keeps its licence (when the snapshot has no README.md to read it from) and says that
  // the upstream's access conditions apply when it is gated or private.
  std::optional<std::string> license;
  bool gated = false, is_private = false;
};

struct QuantizeOptions {
  LoftqSettings settings;  // validated (convert::check) before any work starts
  // Where the layout is published (the daemon's target repo, --repo-id): the adapter's
  // base_model_name_or_path and the card's snippet. Empty: the source's config.json
  // _name_or_path when that is a repo id (with a warning), else null; never a folder name.
  std::string repo_id;
  SourceInfo source;
  bool force = false;  // replace a non-empty OUT_DIR
  // Called before each tensor of the backbone (done, total, tensor name).
  std::function<void(size_t, size_t, const std::string&)> progress;
  // When the backend runs out of device memory on a layer, that layer is redone on this one
  // (normally the CPU) with a warning on stderr (quant/device.h loftq_with_fallback). Null: the
  // error propagates.
  quant::Backend* fallback = nullptr;
  // Resuming: when set, each target tensor's result (Q in the tensor's dtype, the scaled A and
  // B, its report) is saved durably to one file per tensor in this directory, created if
  // missing, as soon as LoftQ finishes it (a failed write is a runtime_error like any other
  // I/O). A later run with the same directory takes every tensor whose checkpoint is intact and
  // matches its fingerprint (tensor name, shape, dtype, quant spec, rank, iters, SVD mode,
  // lora_alpha, a checksum of the input bytes, the loftqd version) from the checkpoint instead
  // of recomputing it; missing, damaged or mismatched checkpoints are recomputed and
  // overwritten, never an error. The checkpoints are kept after a successful run too: the
  // caller removes the directory when it no longer needs them. The compute backend is not part
  // of the fingerprint, so a resumed run may mix CPU and CUDA results like the OOM fallback does.
  std::filesystem::path checkpoint_dir;
  // Called with the tensor name after a newly computed target tensor is done (and, with
  // checkpoint_dir, after its checkpoint is durable); not for tensors taken from checkpoints.
  std::function<void(const std::string&)> on_tensor_done;
  // Polled before each target tensor; when it returns true quantize_model throws Interrupted.
  std::function<bool()> should_stop;
  // Target tensors computed at once when the backend is the CPU (0 = one per core; fewer when
  // the available memory does not hold that many of the largest target's working set): each on
  // its own thread with a one-thread BLAS, ahead of the writer, which keeps the file order. The
  // files are byte-identical to those of tensor_jobs = 1 on a one-thread CPU backend. With 1, or
  // on another backend, tensors are computed one after the other on `backend`.
  int tensor_jobs = 1;
  // Shards still being downloaded (the daemon quantizes the first shards while the rest
  // arrive): shard file name -> its header block (the file's first 8 + N bytes, fetched ahead).
  // The targets are planned from these headers before the data is there. Before the backbone
  // reads such a shard, wait_for_shard(name) is called: it returns once the file is in
  // model_dir, or throws to abandon the run (what it throws propagates; OUT_DIR is left as it
  // was). A shard whose file then differs from its header is a FormatError.
  std::map<std::string, std::string> pending_shards;
  std::function<void(const std::string& shard)> wait_for_shard;
  // Called as each weights file of the layout is complete and durable in the staging
  // directory (each backbone shard as soon as it is written, then the adapter's
  // loftq_init/adapter_model.safetensors), with its path in the layout and its path there (the
  // daemon uploads it while LoftQ runs on the next shards). The path holds that file only
  // during the call: the staging directory is renamed when the run ends, so a callee that reads
  // the file later opens it in the call. What it throws abandons the run like any other failure.
  std::function<void(const std::string& name, const std::filesystem::path& file)> on_weights_file;
};

struct LayerReport {
  std::string tensor;
  std::optional<int> layer;  // in the bit plan's numbering (stacks one after the other)
  std::string stack;         // the layer stack ("layers", "encoder", "decoder"; "" outside)
  int stack_layer = -1;      // the layer within its stack
  std::string module;        // the module's leaf ("q_proj")
  std::string module_path;   // the module as the task class names it (PEFT's name)
  bool conv1d = false;       // a Conv1D weight (stored (in, out))
  std::string quant;         // "nf4", "uniform2", ...
  int bits = 0;
  int out_features = 0, in_features = 0;
  double qlora_error = 0, loftq_error = 0;
  int best_iter = 0;
  double seconds = 0;    // of the LoftQ run, also when the result was taken from a checkpoint
  bool resumed = false;  // taken from QuantizeOptions::checkpoint_dir
};

struct QuantizeReport {
  std::string model_type;
  std::vector<LayerReport> layers;
  // Things the user should know: weights left out (kept in full precision), a
  // base_model_name_or_path that is not where the layout is published.
  std::vector<std::string> warnings;
  size_t resumed = 0;   // layers taken from checkpoints
  int tensor_jobs = 1;  // target tensors computed at once
  double seconds = 0;
  nlohmann::json loftq_json;
};

// The error thrown when OUT_DIR exists, is not empty and force is off.
class OutputExistsError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// The error thrown when QuantizeOptions::should_stop asks to stop. The staging directory is
// removed, OUT_DIR is left as it was and the checkpoints written so far stay.
class Interrupted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Runs LoftQ over every target weight of the checkpoint in model_dir and writes the layout to
// out_dir. Streams: one target tensor in float32 at a time (plus the adapter factors).
// std::invalid_argument for bad options, FormatError for malformed inputs, runtime_error for
// I/O, Interrupted when should_stop says so; in every failure case out_dir is left as it was.
QuantizeReport quantize_model(const std::filesystem::path& model_dir,
                              const std::filesystem::path& out_dir, const QuantizeOptions& opt,
                              quant::Backend& backend);

// Names of the adapter tensors of a module as the task class names it (PEFT's keys:
// "model.layers.0.self_attn.q_proj" ->
// base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight).
std::string lora_a_key(const std::string& task_module);
std::string lora_b_key(const std::string& task_module);

// The summary table printed by quantize and verify (fixed-width text).
std::string layer_table(const std::vector<LayerReport>& layers);

// Files of a checkpoint directory that are copied to the output unchanged: everything regular at
// the top level except weights (*.safetensors, *.bin, *.pt, *.pth, *.ckpt, *.h5, *.msgpack, the
// safetensors index) and README.md (replaced by the model card).
std::vector<std::string> passthrough_files(const std::filesystem::path& model_dir);

}  // namespace loftqd::convert
