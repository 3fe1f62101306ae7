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
#include "model/safetensors.h"
#include "quant/bitplan.h"
#include "quant/quantizer.h"

namespace loftqd::convert::detail {

// ---- Which weights get LoftQ, and with which bits (targets.cpp) ----

struct Target {
  std::optional<int> layer;
  quant::QuantSpec spec;
};

struct TargetPlan {
  std::string model_type;
  std::map<std::string, Target> by_tensor;   // target weight name -> its layer and spec
  std::vector<std::string> adapter_targets;  // target_modules that matched a weight, in order
  quant::BitPlan plan;                       // resolved against the model
  int num_layers = 0;
};

// config.json's model_type (FormatError naming the file when it is missing or malformed).
std::string read_model_type(const std::filesystem::path& model_dir);
// Picks the target weights, resolves the bit plan once against the model and checks every
// target (2-D, float dtype, block size divides). FormatError for a malformed checkpoint,
// std::invalid_argument for settings that do not fit it.
TargetPlan plan_targets(const std::filesystem::path& model_dir, const std::string& model_type,
                        const model::Checkpoint& ckpt, const LoftqSettings& s);

// ---- Per-tensor checkpoints for resuming (resume.cpp) ----

// A fast non-cryptographic 64-bit hash of bytes (guards against changed inputs and damaged
// checkpoint files, not against an adversary).
uint64_t hash_bytes(std::span<const std::byte> data, uint64_t seed = 0);

// The checkpoint file of `tensor` in `dir`.
std::filesystem::path checkpoint_path(const std::filesystem::path& dir, const std::string& tensor);
// Everything that determines a target tensor's result, as canonical JSON text.
std::string tensor_fingerprint(const model::TensorInfo& t, const quant::LoftqOptions& lo,
                               double alpha, uint64_t input_hash);
// Saves Q, A, B (in the tensor's dtype) and the report durably.
void save_checkpoint(const std::filesystem::path& p, const std::string& fingerprint,
                     const LayerReport& lr, const model::TensorInfo& t, int rank,
                     std::span<const std::byte> q, std::span<const std::byte> a,
                     std::span<const std::byte> b);
// The checkpoint at p when it is intact and matches `fingerprint` (its report fields go into
// lr), else null: a checkpoint that cannot be used is recomputed, never an error.
std::unique_ptr<model::SafetensorsFile> load_checkpoint(const std::filesystem::path& p,
                                                        const std::string& fingerprint,
                                                        const model::TensorInfo& t, int rank,
                                                        LayerReport& lr);
// Creates the checkpoint directory durably and removes temp files of dead processes.
void prepare_checkpoint_dir(const std::filesystem::path& dir);

// ---- The files beside the weights (card.cpp) ----

// loftq_init/adapter_config.json as PEFT saves it.
nlohmann::json adapter_config(const LoftqSettings& s, const TargetPlan& tp,
                              const std::string& repo_id);
// loftq.json (DESIGN §3.2).
nlohmann::json loftq_record(const QuantizeOptions& opt, const TargetPlan& tp,
                            const nlohmann::json& adapter_cfg, const QuantizeReport& report);
// README.md: how to load, the plan, the per-layer error table.
std::string model_card(const nlohmann::json& loftq_json, const nlohmann::json& adapter_cfg,
                       const std::string& repo_id);

}  // namespace loftqd::convert::detail
