// Deterministic synthetic checkpoints with realistic weight statistics (DESIGN §8).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "model/dtype.h"

namespace loftqd::model {

struct SynthOptions {
  std::string arch = "llama";  // a registry model_type (model/registry.h), e.g. phi3, gpt2, t5
  int layers = 2;              // per stack; the encoder's for encoder-decoders
  int decoder_layers = 0;      // encoder-decoders: the decoder's (0 = layers)
  int hidden = 256;
  int intermediate = 688;
  int heads = 4;
  int kv_heads = 0;  // 0 = heads (grouped-query attention when < heads, llama-like only)
  int vocab = 1024;
  DType dtype = DType::BF16;
  int shards = 1;
  uint64_t seed = 0;
  int experts = 4;           // mixtral, qwen2_moe: experts per MoE block
  bool base_class = false;   // save as the base class (LlamaModel...): no prefix, no head
  std::string name_or_path;  // config.json _name_or_path (not written when empty)
};

// Writes config.json (model_type, architectures, sizes, as transformers writes them for that
// architecture), generation_config.json (generative architectures),
// tokenizer stubs (tokenizer.json, tokenizer_config.json, special_tokens_map.json), and
// model.safetensors or model-0000k-of-0000n.safetensors + model.safetensors.index.json.
// The same options always produce byte-identical files. OUT_DIR must not exist or be empty.
void synth_checkpoint(const SynthOptions& opt, const std::filesystem::path& out_dir);

}  // namespace loftqd::model
