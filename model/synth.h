// Deterministic synthetic checkpoints with realistic weight statistics (DESIGN §8).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "model/dtype.h"

namespace loftqd::model {

struct SynthOptions {
  std::string arch = "llama";  // llama | bart | bert
  int layers = 2;
  int hidden = 256;
  int intermediate = 688;
  int heads = 4;
  int kv_heads = 0;  // 0 = heads (llama only: grouped-query attention when < heads)
  int vocab = 1024;
  DType dtype = DType::BF16;
  int shards = 1;
  uint64_t seed = 0;
};

// Writes config.json (model_type, architectures, sizes), generation_config.json (llama/bart),
// tokenizer stubs (tokenizer.json, tokenizer_config.json, special_tokens_map.json), and
// model.safetensors or model-0000k-of-0000n.safetensors + model.safetensors.index.json.
// The same options always produce byte-identical files. OUT_DIR must not exist or be empty.
void synth_checkpoint(const SynthOptions& opt, const std::filesystem::path& out_dir);

}  // namespace loftqd::model
