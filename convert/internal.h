// Internal to convert/: the pieces quantize_model() is made of. Not a public header.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "convert/convert.h"
#include "model/registry.h"
#include "model/safetensors.h"
#include "quant/bitplan.h"
#include "quant/quantizer.h"

namespace loftqd::convert::detail {

// ---- Which weights get LoftQ, and with which bits (targets.cpp) ----

struct Target {
  std::optional<int> layer;  // in the bit plan's numbering (stacks one after the other)
  std::string stack;         // the stack's name ("decoder"); "" outside the stacks
  int stack_layer = -1;      // the layer within its stack
  std::string module;        // the module as the task class names it (PEFT's name for it)
  bool conv1d = false;       // transformers Conv1D: the weight is stored (in, out)
  int64_t out_features = 0, in_features = 0;
  quant::QuantSpec spec;
};

// A 2-D weight the loader would quantize that gets no LoftQ correction: kept in full precision
// through llm_int8_skip_modules, and recorded.
struct LeftOut {
  std::string tensor;  // checkpoint key
  std::string module;  // task-class module path
  std::string reason;
  std::string skip_name;  // its entry in llm_int8_skip_modules (a leaf or a registry module)
  bool in_blocks = false;
};

struct StackInfo {
  std::string name, path;
  std::string config_field;  // the config.json field its depth came from ("" = from the tensors)
  int layers = 0;
  int first = 0;  // its first layer in the bit plan's numbering
};

struct TargetPlan {
  std::string model_type;
  model::Architecture arch;  // the registry entry (or the generic one, with --target-modules)
  bool registered = true;    // arch comes from the registry
  bool base_class_save = false;
  std::map<std::string, Target> by_tensor;   // target weight name -> its plan
  std::vector<std::string> adapter_targets;  // target_modules that matched a weight, in order
  quant::BitPlan plan;                       // resolved against the model
  int num_layers = 0;
  std::vector<StackInfo> stacks;
  std::vector<LeftOut> left_out;
  // llm_int8_skip_modules for the loading snippet: empty when the loader's default (every linear
  // but the head) is right; else the heads, the task heads and every left-out module (leaves).
  std::vector<std::string> skip_modules;
  bool fan_in_fan_out = false;                                  // a target is a Conv1D
  std::optional<double> avg_bits_requested, avg_bits_achieved;  // parameter-weighted
  bool avg_overrides = false;  // --override rules on top of --avg-bits (not in the balance)
  std::vector<std::string> warnings;
  nlohmann::json config;  // the checkpoint's config.json
};

// config.json, parsed (FormatError naming the file when it is missing or malformed).
nlohmann::json read_config(const std::filesystem::path& model_dir);
// config.json's model_type (FormatError naming the file when it is missing or malformed).
std::string read_model_type(const std::filesystem::path& model_dir);
// Picks the target weights from the registry (or --target-modules), checks the layer stacks
// against config.json, resolves the bit plan once against the model and checks every target
// (2-D, float dtype, block size divides). FormatError for a malformed checkpoint,
// std::invalid_argument for settings that do not fit it (and for an unregistered model_type
// without --target-modules: the message lists the candidate linear weights).
TargetPlan plan_targets(const std::filesystem::path& model_dir, const nlohmann::json& config,
                        const model::Checkpoint& ckpt, const LoftqSettings& s);

// ---- Per-tensor checkpoints for resuming (resume.cpp) ----

// A fast non-cryptographic 64-bit hash of bytes (guards against changed inputs and damaged
// checkpoint files, not against an adversary).
uint64_t hash_bytes(std::span<const std::byte> data, uint64_t seed = 0);

// The checkpoint file of `tensor` in `dir`.
std::filesystem::path checkpoint_path(const std::filesystem::path& dir, const std::string& tensor);
// Everything that determines a target tensor's result, as canonical JSON text (a Conv1D weight,
// which LoftQ sees transposed, says so).
std::string tensor_fingerprint(const model::TensorInfo& t, const quant::LoftqOptions& lo,
                               double alpha, uint64_t input_hash, bool conv1d = false);
// The adapter shapes of one target: A (rank, in), B (out, rank); Q has the tensor's shape.
struct FactorShape {
  int rank = 0;
  int64_t out_features = 0, in_features = 0;
};
// Saves Q, A, B (in the tensor's dtype) and the report durably.
void save_checkpoint(const std::filesystem::path& p, const std::string& fingerprint,
                     const LayerReport& lr, const model::TensorInfo& t, const FactorShape& fs,
                     std::span<const std::byte> q, std::span<const std::byte> a,
                     std::span<const std::byte> b);
// The checkpoint at p when it is intact and matches `fingerprint` (its report fields go into
// lr), else null: a checkpoint that cannot be used is recomputed, never an error.
std::unique_ptr<model::SafetensorsFile> load_checkpoint(const std::filesystem::path& p,
                                                        const std::string& fingerprint,
                                                        const model::TensorInfo& t,
                                                        const FactorShape& fs, LayerReport& lr);
// Creates the checkpoint directory durably and removes temp files of dead processes.
void prepare_checkpoint_dir(const std::filesystem::path& dir);

// ---- The files beside the weights (card.cpp) ----

// loftq_init/adapter_config.json as PEFT saves it (base_model: the repo id, or null).
nlohmann::json adapter_config(const LoftqSettings& s, const TargetPlan& tp,
                              const std::optional<std::string>& base_model);
// loftq.json (DESIGN §3.2).
nlohmann::json loftq_record(const QuantizeOptions& opt, const TargetPlan& tp,
                            const nlohmann::json& adapter_cfg, const QuantizeReport& report);
// What the model card needs beyond loftq.json and adapter_config.json.
struct CardInfo {
  std::optional<std::string> repo_id;      // where this layout is published (--repo-id, the job)
  std::optional<std::string> license;      // the upstream model card's license
  std::optional<std::string> base_model;   // the upstream model on the Hub
  bool gated = false, is_private = false;  // the upstream's access conditions
};
// README.md: front matter, how to load (the task's class, llm_int8_skip_modules), the plan,
// what was left out, the per-layer error table and the citation.
std::string model_card(const nlohmann::json& loftq_json, const nlohmann::json& adapter_cfg,
                       const CardInfo& info);
// The license in the front matter of a model card (README.md), if any.
std::optional<std::string> card_license(const std::filesystem::path& readme);

}  // namespace loftqd::convert::detail
