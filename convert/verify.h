// `loftqd verify`: re-reads a published layout and checks it against the original checkpoint.
#pragma once

#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "convert/convert.h"
#include "model/dtype.h"
#include "quant/backend.h"

namespace loftqd::convert {

struct VerifyLayer {
  LayerReport report;           // recomputed: qlora_error unused (taken from loftq.json)
  double recorded_error = 0;    // loftq.json loftq_error
  double effective_error = 0;   // ||W - (Q + (alpha/r) B A)|| / ||W||, from the files
  double nf4_reload_error = 0;  // the same after a bitsandbytes NF4 round trip of Q
  bool representable = true;    // every Q block is table[code] * scale (up to the dtype)
};

struct VerifyReport {
  std::vector<VerifyLayer> layers;
  std::vector<std::string> problems;  // empty = the layout is right
  bool ok() const { return problems.empty(); }
};

// Checks the layout the way it will be loaded, re-deriving everything from the original's
// config.json, the architecture registry and PEFT's/transformers'/bitsandbytes' loading rules
// (not from the writer's code): which modules PEFT wraps (target_modules on the task class's
// module names, a base-class save's keys prefixed; embeddings and non-Linear matches refused),
// the adapter keys and shapes PEFT builds (Conv1D: weight (in, out), fan_in_fan_out), the
// effective weight W' = Q + s B A (s = lora_alpha / r; transposed for Conv1D) against the
// original and loftq.json, every Q block against its code table in bitsandbytes' orientation,
// that every weight the loader quantizes is corrected or left out (llm_int8_skip_modules and
// loftq.json), the layer numbering and --avg-bits average, base_model_name_or_path (null or a
// repo id, never a folder name), adapter_config.json's fields, the model card's snippet, and
// non-wrapped tensors and copied files byte for byte.
VerifyReport verify_layout(const std::filesystem::path& out_dir,
                           const std::filesystem::path& original_dir, quant::Backend& backend);

// Formats the per-layer verification table.
std::string verify_table(const VerifyReport& r);

// Is this block of values (already rounded to dtype) table[code_i] * s for one scale s, up to
// the rounding of dtype? absmax_scaled: s is the block's largest magnitude (NF quantizers);
// otherwise any scale (uniform). Exposed for tests.
bool block_representable(const float* q, size_t n, std::span<const float> table, model::DType dtype,
                         bool absmax_scaled);

}  // namespace loftqd::convert
