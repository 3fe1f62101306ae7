// Tensor names, shapes and config.json fields of every registry architecture, as transformers
// (4.44) names them in the task class: the same key names, fused and MoE modules, Conv1D
// orientation, encoder-decoder stacks and tied heads as the published checkpoints.
#include <algorithm>

#include "model/synth_internal.h"

namespace loftqd::model::synth_detail {

namespace {

using json = nlohmann::json;

constexpr int kBartPositionOffset = 2;  // Bart/MBart/OPT learned positions keep 2 extra rows
constexpr int kBartMaxPositions = 1024;
constexpr int kBertMaxPositions = 512;
constexpr int kRobertaMaxPositions = 514;
constexpr int kLlamaMaxPositions = 2048;
constexpr int kGpt2Positions = 1024;
constexpr int kOptMaxPositions = 2048;
constexpr int kT5Buckets = 32;
constexpr int kDebertaBuckets = 256;

int kv_heads(const SynthOptions& o) {
  return o.kv_heads == 0 ? o.heads : o.kv_heads;
}
int64_t head_dim(const SynthOptions& o) {
  return o.hidden / o.heads;
}
int decoder_layers(const SynthOptions& o) {
  return o.decoder_layers == 0 ? o.layers : o.decoder_layers;
}
std::string layer(const std::string& stack, int i) {
  return stack + "." + std::to_string(i) + ".";
}

json labels2() {
  return json{{"id2label", {{"0", "LABEL_0"}, {"1", "LABEL_1"}}},
              {"label2id", {{"LABEL_0", 0}, {"LABEL_1", 1}}}};
}

// Fields every config.json carries.
json common_config(const SynthOptions& o, const std::string& cls, const char* type) {
  return json{{"architectures", {cls}},
              {"model_type", type},
              {"torch_dtype", torch_dtype(o.dtype)},
              {"transformers_version", kTransformersVersion},
              {"vocab_size", o.vocab}};
}

// ---------------------------------------------------------------------------------------------
// Decoder-only models named like Llama (model.layers.N, embed_tokens, lm_head).

enum class Mlp { Gated, Mixtral, QwenMoe };
struct Flavor {
  bool qkv_bias = false;   // Qwen2: q/k/v carry a bias, o_proj does not
  bool qk_norm = false;    // Qwen3: RMSNorm of q and k per head
  bool ffw_norms = false;  // Gemma-2: pre/post feed-forward norms
  bool tied = false;       // no lm_head.weight (tied to embed_tokens)
  Mlp mlp = Mlp::Gated;
};

void gated_mlp(Builder& b, const std::string& p, int64_t H, int64_t I) {
  b.linear(p + "gate_proj.weight", I, H);
  b.linear(p + "up_proj.weight", I, H);
  b.linear(p + "down_proj.weight", H, I);
}

void moe_block(Builder& b, const SynthOptions& o, const std::string& p, Mlp mlp) {
  const int64_t H = o.hidden, I = o.intermediate;
  if (mlp == Mlp::Mixtral) {
    b.linear(p + "block_sparse_moe.gate.weight", o.experts, H);
    for (int e = 0; e < o.experts; ++e) {
      const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      b.linear(x + "w1.weight", I, H);
      b.linear(x + "w2.weight", H, I);
      b.linear(x + "w3.weight", I, H);
    }
    return;
  }
  b.linear(p + "mlp.gate.weight", o.experts, H);
  for (int e = 0; e < o.experts; ++e)
    gated_mlp(b, p + "mlp.experts." + std::to_string(e) + ".", H, I);
  gated_mlp(b, p + "mlp.shared_expert.", H, 2 * I);
  b.linear(p + "mlp.shared_expert_gate.weight", 1, H);
}

std::vector<Def> llama_family(const SynthOptions& o, const Flavor& f) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab, hd = head_dim(o);
  const int64_t q = o.heads * hd, kv = kv_heads(o) * hd;
  b.embedding("model.embed_tokens.weight", V, H);
  for (int i = 0; i < o.layers; ++i) {
    const std::string p = layer("model.layers", i);
    b.linear_b(p + "self_attn.q_proj", q, H, f.qkv_bias);
    b.linear_b(p + "self_attn.k_proj", kv, H, f.qkv_bias);
    b.linear_b(p + "self_attn.v_proj", kv, H, f.qkv_bias);
    b.linear(p + "self_attn.o_proj.weight", H, q);
    if (f.qk_norm) {
      b.rms_norm(p + "self_attn.q_norm.weight", hd);
      b.rms_norm(p + "self_attn.k_norm.weight", hd);
    }
    if (f.mlp == Mlp::Gated)
      gated_mlp(b, p + "mlp.", H, I);
    else
      moe_block(b, o, p, f.mlp);
    b.rms_norm(p + "input_layernorm.weight", H);
    b.rms_norm(p + "post_attention_layernorm.weight", H);
    if (f.ffw_norms) {
      b.rms_norm(p + "pre_feedforward_layernorm.weight", H);
      b.rms_norm(p + "post_feedforward_layernorm.weight", H);
    }
  }
  b.rms_norm("model.norm.weight", H);
  if (!f.tied) b.linear("lm_head.weight", V, H);
  return std::move(b.defs);
}

std::vector<Def> llama_defs(const SynthOptions& o) {
  return llama_family(o, {});
}
std::vector<Def> qwen2_defs(const SynthOptions& o) {
  return llama_family(o, {.qkv_bias = true});
}
std::vector<Def> qwen3_defs(const SynthOptions& o) {
  return llama_family(o, {.qk_norm = true});
}
std::vector<Def> gemma_defs(const SynthOptions& o) {
  return llama_family(o, {.tied = true});
}
std::vector<Def> gemma2_defs(const SynthOptions& o) {
  return llama_family(o, {.ffw_norms = true, .tied = true});
}
std::vector<Def> mixtral_defs(const SynthOptions& o) {
  return llama_family(o, {.mlp = Mlp::Mixtral});
}
std::vector<Def> qwen2_moe_defs(const SynthOptions& o) {
  return llama_family(o, {.qkv_bias = true, .mlp = Mlp::QwenMoe});
}

// Phi-2: parallel attention and MLP, one LayerNorm per layer, biases everywhere, dense/fc1/fc2.
std::vector<Def> phi_defs(const SynthOptions& o) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab;
  b.embedding("model.embed_tokens.weight", V, H);
  for (int i = 0; i < o.layers; ++i) {
    const std::string p = layer("model.layers", i);
    for (const char* m : {"q_proj", "k_proj", "v_proj", "dense"})
      b.linear_b(p + "self_attn." + m, H, H);
    b.linear_b(p + "mlp.fc1", I, H);
    b.linear_b(p + "mlp.fc2", H, I);
    b.layer_norm(p + "input_layernorm", H);
  }
  b.layer_norm("model.final_layernorm", H);
  b.linear_b("lm_head", V, H);
  return std::move(b.defs);
}

// Phi-3: fused qkv_proj and gate_up_proj.
std::vector<Def> phi3_defs(const SynthOptions& o) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab, hd = head_dim(o);
  const int64_t q = o.heads * hd, kv = kv_heads(o) * hd;
  b.embedding("model.embed_tokens.weight", V, H);
  for (int i = 0; i < o.layers; ++i) {
    const std::string p = layer("model.layers", i);
    b.linear(p + "self_attn.o_proj.weight", H, q);
    b.linear(p + "self_attn.qkv_proj.weight", q + 2 * kv, H);
    b.linear(p + "mlp.gate_up_proj.weight", 2 * I, H);
    b.linear(p + "mlp.down_proj.weight", H, I);
    b.rms_norm(p + "input_layernorm.weight", H);
    b.rms_norm(p + "post_attention_layernorm.weight", H);
  }
  b.rms_norm("model.norm.weight", H);
  b.linear("lm_head.weight", V, H);
  return std::move(b.defs);
}

// StarCoder2: biased projections, an nn.Linear MLP named c_fc/c_proj, LayerNorms, tied head.
std::vector<Def> starcoder2_defs(const SynthOptions& o) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab, hd = head_dim(o);
  const int64_t kv = kv_heads(o) * hd;
  b.embedding("model.embed_tokens.weight", V, H);
  for (int i = 0; i < o.layers; ++i) {
    const std::string p = layer("model.layers", i);
    b.linear_b(p + "self_attn.q_proj", H, H);
    b.linear_b(p + "self_attn.k_proj", kv, H);
    b.linear_b(p + "self_attn.v_proj", kv, H);
    b.linear_b(p + "self_attn.o_proj", H, H);
    b.linear_b(p + "mlp.c_fc", I, H);
    b.linear_b(p + "mlp.c_proj", H, I);
    b.layer_norm(p + "input_layernorm", H);
    b.layer_norm(p + "post_attention_layernorm", H);
  }
  b.layer_norm("model.norm", H);
  return std::move(b.defs);
}

// Falcon-7B: multi-query fused query_key_value, parallel attention, tied head.
std::vector<Def> falcon_defs(const SynthOptions& o) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab, hd = head_dim(o);
  b.embedding("transformer.word_embeddings.weight", V, H);
  for (int i = 0; i < o.layers; ++i) {
    const std::string p = layer("transformer.h", i);
    b.linear(p + "self_attention.query_key_value.weight", H + 2 * hd, H);
    b.linear(p + "self_attention.dense.weight", H, H);
    b.linear(p + "mlp.dense_h_to_4h.weight", I, H);
    b.linear(p + "mlp.dense_4h_to_h.weight", H, I);
    b.layer_norm(p + "input_layernorm", H);
  }
  b.layer_norm("transformer.ln_f", H);
  return std::move(b.defs);
}

// Pythia / GPT-NeoX: fused query_key_value with bias, untied embed_out.
std::vector<Def> gpt_neox_defs(const SynthOptions& o) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab;
  b.embedding("gpt_neox.embed_in.weight", V, H);
  for (int i = 0; i < o.layers; ++i) {
    const std::string p = layer("gpt_neox.layers", i);
    b.layer_norm(p + "input_layernorm", H);
    b.layer_norm(p + "post_attention_layernorm", H);
    b.linear_b(p + "attention.query_key_value", 3 * H, H);
    b.linear_b(p + "attention.dense", H, H);
    b.linear_b(p + "mlp.dense_h_to_4h", I, H);
    b.linear_b(p + "mlp.dense_4h_to_h", H, I);
  }
  b.layer_norm("gpt_neox.final_layer_norm", H);
  b.linear("embed_out.weight", V, H);
  return std::move(b.defs);
}

// GPT-2: Conv1D everywhere (weights stored (in, out)), learned positions, tied head.
std::vector<Def> gpt2_defs(const SynthOptions& o) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab;
  b.embedding("transformer.wte.weight", V, H);
  b.embedding("transformer.wpe.weight", kGpt2Positions, H);
  for (int i = 0; i < o.layers; ++i) {
    const std::string p = layer("transformer.h", i);
    b.layer_norm(p + "ln_1", H);
    b.conv1d(p + "attn.c_attn", H, 3 * H);
    b.conv1d(p + "attn.c_proj", H, H);
    b.layer_norm(p + "ln_2", H);
    b.conv1d(p + "mlp.c_fc", H, I);
    b.conv1d(p + "mlp.c_proj", I, H);
  }
  b.layer_norm("transformer.ln_f", H);
  return std::move(b.defs);
}

// OPT: decoder under model.decoder, learned positions with the offset, tied head.
std::vector<Def> opt_defs(const SynthOptions& o) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab;
  b.embedding("model.decoder.embed_tokens.weight", V, H);
  b.embedding("model.decoder.embed_positions.weight", kOptMaxPositions + kBartPositionOffset, H);
  b.layer_norm("model.decoder.final_layer_norm", H);
  for (int i = 0; i < o.layers; ++i) {
    const std::string p = layer("model.decoder.layers", i);
    for (const char* m : {"k_proj", "v_proj", "q_proj", "out_proj"})
      b.linear_b(p + "self_attn." + m, H, H);
    b.layer_norm(p + "self_attn_layer_norm", H);
    b.linear_b(p + "fc1", I, H);
    b.linear_b(p + "fc2", H, I);
    b.layer_norm(p + "final_layer_norm", H);
  }
  return std::move(b.defs);
}

// T5 v1.1 / Flan-T5 (gated-gelu: wi_0, wi_1, wo), relative position buckets in block 0.
std::vector<Def> t5_defs(const SynthOptions& o) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab, inner = o.heads * head_dim(o);
  b.embedding("shared.weight", V, H);
  auto attention = [&](const std::string& p, bool rel) {
    for (const char* m : {"q", "k", "v"}) b.linear(p + m + ".weight", inner, H);
    b.linear(p + "o.weight", H, inner);
    if (rel) b.embedding(p + "relative_attention_bias.weight", kT5Buckets, o.heads);
  };
  auto ff = [&](const std::string& p) {
    b.linear(p + "DenseReluDense.wi_0.weight", I, H);
    b.linear(p + "DenseReluDense.wi_1.weight", I, H);
    b.linear(p + "DenseReluDense.wo.weight", H, I);
    b.rms_norm(p + "layer_norm.weight", H);
  };
  for (const char* part : {"encoder", "decoder"}) {
    const bool dec = std::string_view(part) == "decoder";
    const int n = dec ? decoder_layers(o) : o.layers;
    for (int i = 0; i < n; ++i) {
      const std::string p = layer(std::string(part) + ".block", i);
      attention(p + "layer.0.SelfAttention.", i == 0);
      b.rms_norm(p + "layer.0.layer_norm.weight", H);
      if (dec) {
        attention(p + "layer.1.EncDecAttention.", false);
        b.rms_norm(p + "layer.1.layer_norm.weight", H);
      }
      ff(p + (dec ? "layer.2." : "layer.1."));
    }
    b.rms_norm(std::string(part) + ".final_layer_norm.weight", H);
  }
  b.linear("lm_head.weight", V, H);
  return std::move(b.defs);
}

std::vector<Def> bart_family(const SynthOptions& o, bool mbart) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab;
  auto attention = [&](const std::string& p) {
    // BartAttention declares k, v, q, out in this order.
    for (const char* m : {".k_proj", ".v_proj", ".q_proj", ".out_proj"}) b.linear_b(p + m, H, H);
  };
  b.embedding("model.shared.weight", V, H);
  for (const char* part : {"encoder", "decoder"}) {
    const std::string stack = std::string("model.") + part;
    const bool decoder = std::string_view(part) == "decoder";
    b.embedding(stack + ".embed_positions.weight", kBartMaxPositions + kBartPositionOffset, H);
    for (int i = 0; i < (decoder ? decoder_layers(o) : o.layers); ++i) {
      const std::string p = layer(stack + ".layers", i);
      attention(p + "self_attn");
      b.layer_norm(p + "self_attn_layer_norm", H);
      if (decoder) {
        attention(p + "encoder_attn");
        b.layer_norm(p + "encoder_attn_layer_norm", H);
      }
      b.linear_b(p + "fc1", I, H);
      b.linear_b(p + "fc2", H, I);
      b.layer_norm(p + "final_layer_norm", H);
    }
    b.layer_norm(stack + ".layernorm_embedding", H);
    if (mbart) b.layer_norm(stack + ".layer_norm", H);
  }
  b.defs.push_back({"final_logits_bias", o.dtype, {1, V}, Kind::kZeros});
  return std::move(b.defs);
}

std::vector<Def> bart_defs(const SynthOptions& o) {
  return bart_family(o, false);
}
std::vector<Def> mbart_defs(const SynthOptions& o) {
  return bart_family(o, true);
}

// The BERT-style encoder layer (attention.self.*, attention.output, intermediate, output).
void bert_layer(Builder& b, const std::string& p, int64_t H, int64_t I, const char* q,
                const char* k, const char* v) {
  b.linear_b(p + "attention.self." + q, H, H);
  b.linear_b(p + "attention.self." + k, H, H);
  b.linear_b(p + "attention.self." + v, H, H);
  b.linear_b(p + "attention.output.dense", H, H);
  b.layer_norm(p + "attention.output.LayerNorm", H);
  b.linear_b(p + "intermediate.dense", I, H);
  b.linear_b(p + "output.dense", H, I);
  b.layer_norm(p + "output.LayerNorm", H);
}

std::vector<Def> bert_defs(const SynthOptions& o) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab;
  b.embedding("bert.embeddings.word_embeddings.weight", V, H);
  b.embedding("bert.embeddings.position_embeddings.weight", kBertMaxPositions, H);
  b.embedding("bert.embeddings.token_type_embeddings.weight", 2, H);
  b.layer_norm("bert.embeddings.LayerNorm", H);
  b.defs.push_back(
      {"bert.embeddings.position_ids", DType::I64, {1, kBertMaxPositions}, Kind::kPositionIds});
  for (int i = 0; i < o.layers; ++i)
    bert_layer(b, layer("bert.encoder.layer", i), H, I, "query", "key", "value");
  b.linear_b("bert.pooler.dense", H, H);
  b.linear_b("classifier", 2, H);
  return std::move(b.defs);
}

std::vector<Def> roberta_defs(const SynthOptions& o) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab;
  b.embedding("roberta.embeddings.word_embeddings.weight", V, H);
  b.embedding("roberta.embeddings.position_embeddings.weight", kRobertaMaxPositions, H);
  b.embedding("roberta.embeddings.token_type_embeddings.weight", 1, H);
  b.layer_norm("roberta.embeddings.LayerNorm", H);
  for (int i = 0; i < o.layers; ++i)
    bert_layer(b, layer("roberta.encoder.layer", i), H, I, "query", "key", "value");
  b.linear_b("classifier.dense", H, H);
  b.linear_b("classifier.out_proj", 2, H);
  return std::move(b.defs);
}

// DeBERTa-v3: disentangled attention with shared keys (no pos_* projections), relative
// position buckets, the ContextPooler and the classifier of a sequence-classification save.
std::vector<Def> deberta_v2_defs(const SynthOptions& o) {
  Builder b{o.dtype, {}};
  const int64_t H = o.hidden, I = o.intermediate, V = o.vocab;
  b.embedding("deberta.embeddings.word_embeddings.weight", V, H);
  b.layer_norm("deberta.embeddings.LayerNorm", H);
  for (int i = 0; i < o.layers; ++i)
    bert_layer(b, layer("deberta.encoder.layer", i), H, I, "query_proj", "key_proj", "value_proj");
  b.embedding("deberta.encoder.rel_embeddings.weight", 2 * kDebertaBuckets, H);
  b.layer_norm("deberta.encoder.LayerNorm", H);
  b.linear_b("pooler.dense", H, H);
  b.linear_b("classifier", 2, H);
  return std::move(b.defs);
}

// ---------------------------------------------------------------------------------------------
// config.json

json llama_config(const SynthOptions& o) {
  json j = common_config(o, "LlamaForCausalLM", "llama");
  j.update({{"attention_bias", false},
            {"attention_dropout", 0.0},
            {"bos_token_id", 1},
            {"eos_token_id", 2},
            {"head_dim", head_dim(o)},
            {"hidden_act", "silu"},
            {"hidden_size", o.hidden},
            {"initializer_range", 0.02},
            {"intermediate_size", o.intermediate},
            {"max_position_embeddings", kLlamaMaxPositions},
            {"mlp_bias", false},
            {"num_attention_heads", o.heads},
            {"num_hidden_layers", o.layers},
            {"num_key_value_heads", kv_heads(o)},
            {"pretraining_tp", 1},
            {"rms_norm_eps", 1e-05},
            {"rope_scaling", nullptr},
            {"rope_theta", 10000.0},
            {"tie_word_embeddings", false},
            {"use_cache", true}});
  return j;
}

// The fields the Llama-like decoders share, under their own class and type.
json decoder_config(const SynthOptions& o, const char* cls, const char* type) {
  json j = llama_config(o);
  j["architectures"] = {cls};
  j["model_type"] = type;
  for (const char* k : {"attention_bias", "mlp_bias", "pretraining_tp", "head_dim"}) j.erase(k);
  return j;
}

json mistral_config(const SynthOptions& o) {
  json j = decoder_config(o, "MistralForCausalLM", "mistral");
  j.update({{"head_dim", head_dim(o)},
            {"max_position_embeddings", 32768},
            {"rope_theta", 1000000.0},
            {"sliding_window", nullptr}});
  return j;
}

json mixtral_config(const SynthOptions& o) {
  json j = decoder_config(o, "MixtralForCausalLM", "mixtral");
  j.update({{"max_position_embeddings", 32768},
            {"num_experts_per_tok", 2},
            {"num_local_experts", o.experts},
            {"output_router_logits", false},
            {"rope_theta", 1000000.0},
            {"router_aux_loss_coef", 0.02},
            {"router_jitter_noise", 0.0},
            {"sliding_window", nullptr}});
  return j;
}

json qwen2_config(const SynthOptions& o) {
  json j = decoder_config(o, "Qwen2ForCausalLM", "qwen2");
  j.update({{"max_position_embeddings", 32768},
            {"max_window_layers", o.layers},
            {"rms_norm_eps", 1e-06},
            {"rope_theta", 1000000.0},
            {"sliding_window", 32768},
            {"use_sliding_window", false}});
  return j;
}

json qwen3_config(const SynthOptions& o) {
  json j = qwen2_config(o);
  j["architectures"] = {"Qwen3ForCausalLM"};
  j["model_type"] = "qwen3";
  j.update({{"attention_bias", false}, {"head_dim", head_dim(o)}});
  return j;
}

json qwen2_moe_config(const SynthOptions& o) {
  json j = qwen2_config(o);
  j["architectures"] = {"Qwen2MoeForCausalLM"};
  j["model_type"] = "qwen2_moe";
  j.update({{"decoder_sparse_step", 1},
            {"mlp_only_layers", json::array()},
            {"moe_intermediate_size", o.intermediate},
            {"norm_topk_prob", false},
            {"num_experts", o.experts},
            {"num_experts_per_tok", 2},
            {"output_router_logits", false},
            {"router_aux_loss_coef", 0.001},
            {"shared_expert_intermediate_size", 2 * o.intermediate}});
  return j;
}

json gemma_config(const SynthOptions& o) {
  json j = decoder_config(o, "GemmaForCausalLM", "gemma");
  j.erase("hidden_act");
  j.update({{"attention_bias", false},
            {"head_dim", head_dim(o)},
            {"hidden_act", "gelu_pytorch_tanh"},
            {"hidden_activation", "gelu_pytorch_tanh"},
            {"max_position_embeddings", 8192},
            {"pad_token_id", 0},
            {"rms_norm_eps", 1e-06},
            {"tie_word_embeddings", true}});
  return j;
}

json gemma2_config(const SynthOptions& o) {
  json j = gemma_config(o);
  j["architectures"] = {"Gemma2ForCausalLM"};
  j["model_type"] = "gemma2";
  j.update({{"attn_logit_softcapping", 50.0},
            {"cache_implementation", "hybrid"},
            {"final_logit_softcapping", 30.0},
            {"query_pre_attn_scalar", head_dim(o)},
            {"sliding_window", 4096}});
  return j;
}

json phi_config(const SynthOptions& o) {
  json j = decoder_config(o, "PhiForCausalLM", "phi");
  j.erase("rms_norm_eps");
  j.update({{"embd_pdrop", 0.0},
            {"hidden_act", "gelu_new"},
            {"layer_norm_eps", 1e-05},
            {"num_key_value_heads", o.heads},
            {"partial_rotary_factor", 0.4},
            {"qk_layernorm", false},
            {"resid_pdrop", 0.1}});
  return j;
}

json phi3_config(const SynthOptions& o) {
  json j = decoder_config(o, "Phi3ForCausalLM", "phi3");
  j.update({{"attention_bias", false},
            {"embd_pdrop", 0.0},
            {"max_position_embeddings", 4096},
            {"original_max_position_embeddings", 4096},
            {"resid_pdrop", 0.0},
            {"sliding_window", 2047}});
  return j;
}

json starcoder2_config(const SynthOptions& o) {
  json j = decoder_config(o, "Starcoder2ForCausalLM", "starcoder2");
  j.erase("rms_norm_eps");
  j.update({{"bos_token_id", 0},
            {"embedding_dropout", 0.0},
            {"eos_token_id", 0},
            {"hidden_act", "gelu_pytorch_tanh"},
            {"max_position_embeddings", 16384},
            {"mlp_type", "default"},
            {"norm_epsilon", 1e-05},
            {"norm_type", "layer_norm"},
            {"residual_dropout", 0.0},
            {"sliding_window", 4096},
            {"tie_word_embeddings", true},
            {"use_bias", true}});
  return j;
}

json falcon_config(const SynthOptions& o) {
  json j = common_config(o, "FalconForCausalLM", "falcon");
  j.update({{"alibi", false},
            {"apply_residual_connection_post_layernorm", false},
            {"attention_dropout", 0.0},
            {"bias", false},
            {"bos_token_id", 0},
            {"eos_token_id", 0},
            {"ffn_hidden_size", o.intermediate},
            {"hidden_dropout", 0.0},
            {"hidden_size", o.hidden},
            {"initializer_range", 0.02},
            {"layer_norm_epsilon", 1e-05},
            {"multi_query", true},
            {"new_decoder_architecture", false},
            {"num_attention_heads", o.heads},
            {"num_hidden_layers", o.layers},
            {"parallel_attn", true},
            {"tie_word_embeddings", true},
            {"use_cache", true}});
  return j;
}

json gpt_neox_config(const SynthOptions& o) {
  json j = common_config(o, "GPTNeoXForCausalLM", "gpt_neox");
  j.update({{"attention_bias", true},
            {"attention_dropout", 0.0},
            {"bos_token_id", 0},
            {"classifier_dropout", 0.1},
            {"eos_token_id", 0},
            {"hidden_act", "gelu"},
            {"hidden_dropout", 0.0},
            {"hidden_size", o.hidden},
            {"initializer_range", 0.02},
            {"intermediate_size", o.intermediate},
            {"layer_norm_eps", 1e-05},
            {"max_position_embeddings", kLlamaMaxPositions},
            {"num_attention_heads", o.heads},
            {"num_hidden_layers", o.layers},
            {"rope_scaling", nullptr},
            {"rotary_emb_base", 10000},
            {"rotary_pct", 0.25},
            {"tie_word_embeddings", false},
            {"use_cache", true},
            {"use_parallel_residual", true}});
  return j;
}

json gpt2_config(const SynthOptions& o) {
  json j = common_config(o, "GPT2LMHeadModel", "gpt2");
  j.update({{"activation_function", "gelu_new"},
            {"attn_pdrop", 0.1},
            {"bos_token_id", 0},
            {"embd_pdrop", 0.1},
            {"eos_token_id", 0},
            {"initializer_range", 0.02},
            {"layer_norm_epsilon", 1e-05},
            {"n_ctx", kGpt2Positions},
            {"n_embd", o.hidden},
            {"n_head", o.heads},
            {"n_inner", o.intermediate},
            {"n_layer", o.layers},
            {"n_positions", kGpt2Positions},
            {"reorder_and_upcast_attn", false},
            {"resid_pdrop", 0.1},
            {"scale_attn_by_inverse_layer_idx", false},
            {"scale_attn_weights", true},
            {"summary_activation", nullptr},
            {"summary_first_dropout", 0.1},
            {"summary_proj_to_labels", true},
            {"summary_type", "cls_index"},
            {"summary_use_proj", true},
            {"use_cache", true}});
  return j;
}

json opt_config(const SynthOptions& o) {
  json j = common_config(o, "OPTForCausalLM", "opt");
  j.update({{"_remove_final_layer_norm", false},
            {"activation_dropout", 0.0},
            {"activation_function", "relu"},
            {"attention_dropout", 0.0},
            {"bos_token_id", 2},
            {"do_layer_norm_before", true},
            {"dropout", 0.1},
            {"enable_bias", true},
            {"eos_token_id", 2},
            {"ffn_dim", o.intermediate},
            {"hidden_size", o.hidden},
            {"init_std", 0.02},
            {"layer_norm_elementwise_affine", true},
            {"layerdrop", 0.0},
            {"max_position_embeddings", kOptMaxPositions},
            {"num_attention_heads", o.heads},
            {"num_hidden_layers", o.layers},
            {"pad_token_id", 1},
            {"prefix", "</s>"},
            {"use_cache", true},
            {"word_embed_proj_dim", o.hidden}});
  return j;
}

json t5_config(const SynthOptions& o) {
  json j = common_config(o, "T5ForConditionalGeneration", "t5");
  j.update({{"classifier_dropout", 0.0},
            {"d_ff", o.intermediate},
            {"d_kv", head_dim(o)},
            {"d_model", o.hidden},
            {"decoder_start_token_id", 0},
            {"dense_act_fn", "gelu_new"},
            {"dropout_rate", 0.1},
            {"eos_token_id", 1},
            {"feed_forward_proj", "gated-gelu"},
            {"initializer_factor", 1.0},
            {"is_encoder_decoder", true},
            {"is_gated_act", true},
            {"layer_norm_epsilon", 1e-06},
            {"num_decoder_layers", decoder_layers(o)},
            {"num_heads", o.heads},
            {"num_layers", o.layers},
            {"pad_token_id", 0},
            {"relative_attention_max_distance", 128},
            {"relative_attention_num_buckets", kT5Buckets},
            {"tie_word_embeddings", false},
            {"use_cache", true}});
  return j;
}

json mt5_config(const SynthOptions& o) {
  json j = t5_config(o);
  j["architectures"] = {"MT5ForConditionalGeneration"};
  j["model_type"] = "mt5";
  j["tokenizer_class"] = "T5Tokenizer";
  return j;
}

json bart_config(const SynthOptions& o) {
  json j = common_config(o, "BartForConditionalGeneration", "bart");
  j.update({{"activation_dropout", 0.1},
            {"activation_function", "gelu"},
            {"add_bias_logits", false},
            {"add_final_layer_norm", false},
            {"attention_dropout", 0.1},
            {"bos_token_id", 0},
            {"classifier_dropout", 0.0},
            {"d_model", o.hidden},
            {"decoder_attention_heads", o.heads},
            {"decoder_ffn_dim", o.intermediate},
            {"decoder_layerdrop", 0.0},
            {"decoder_layers", decoder_layers(o)},
            {"decoder_start_token_id", 2},
            {"dropout", 0.1},
            {"encoder_attention_heads", o.heads},
            {"encoder_ffn_dim", o.intermediate},
            {"encoder_layerdrop", 0.0},
            {"encoder_layers", o.layers},
            {"eos_token_id", 2},
            {"forced_bos_token_id", 0},
            {"forced_eos_token_id", 2},
            {"init_std", 0.02},
            {"is_encoder_decoder", true},
            {"max_position_embeddings", kBartMaxPositions},
            {"normalize_before", false},
            {"num_hidden_layers", o.layers},
            {"pad_token_id", 1},
            {"scale_embedding", false},
            {"tie_word_embeddings", true},
            {"use_cache", true}});
  return j;
}

json mbart_config(const SynthOptions& o) {
  json j = bart_config(o);
  j["architectures"] = {"MBartForConditionalGeneration"};
  j["model_type"] = "mbart";
  for (const char* k : {"add_bias_logits", "forced_bos_token_id"}) j.erase(k);
  j.update({{"activation_dropout", 0.0},
            {"add_final_layer_norm", true},
            {"attention_dropout", 0.0},
            {"normalize_before", true},
            {"normalize_embedding", true},
            {"scale_embedding", true},
            {"static_position_embeddings", false}});
  return j;
}

json encoder_config(const SynthOptions& o, const char* cls, const char* type) {
  json j = common_config(o, cls, type);
  j.update(labels2());
  j.update({{"attention_probs_dropout_prob", 0.1},
            {"hidden_act", "gelu"},
            {"hidden_dropout_prob", 0.1},
            {"hidden_size", o.hidden},
            {"initializer_range", 0.02},
            {"intermediate_size", o.intermediate},
            {"num_attention_heads", o.heads},
            {"num_hidden_layers", o.layers}});
  return j;
}

json bert_config(const SynthOptions& o) {
  json j = encoder_config(o, "BertForSequenceClassification", "bert");
  j.update({{"classifier_dropout", nullptr},
            {"layer_norm_eps", 1e-12},
            {"max_position_embeddings", kBertMaxPositions},
            {"pad_token_id", 0},
            {"position_embedding_type", "absolute"},
            {"type_vocab_size", 2},
            {"use_cache", true}});
  return j;
}

json roberta_config(const SynthOptions& o) {
  json j = encoder_config(o, "RobertaForSequenceClassification", "roberta");
  j.update({{"bos_token_id", 0},
            {"classifier_dropout", nullptr},
            {"eos_token_id", 2},
            {"layer_norm_eps", 1e-05},
            {"max_position_embeddings", kRobertaMaxPositions},
            {"pad_token_id", 1},
            {"position_embedding_type", "absolute"},
            {"type_vocab_size", 1},
            {"use_cache", true}});
  return j;
}

json deberta_v2_config(const SynthOptions& o) {
  json j = encoder_config(o, "DebertaV2ForSequenceClassification", "deberta-v2");
  j.update({{"layer_norm_eps", 1e-07},
            {"max_position_embeddings", kBertMaxPositions},
            {"max_relative_positions", -1},
            {"norm_rel_ebd", "layer_norm"},
            {"pad_token_id", 0},
            {"pooler_dropout", 0},
            {"pooler_hidden_act", "gelu"},
            {"pooler_hidden_size", o.hidden},
            {"pos_att_type", {"p2c", "c2p"}},
            {"position_biased_input", false},
            {"position_buckets", kDebertaBuckets},
            {"relative_attention", true},
            {"share_att_key", true},
            {"type_vocab_size", 0}});
  return j;
}

}  // namespace

std::string torch_dtype(DType t) {
  switch (t) {
    case DType::F16:
      return "float16";
    case DType::F32:
      return "float32";
    default:
      return "bfloat16";
  }
}

const std::vector<ArchSpec>& arch_specs() {
  static const std::vector<ArchSpec> specs = {
      {"bart", bart_defs, bart_config, Vocab::Bart, false},
      {"bert", bert_defs, bert_config, Vocab::Bert, false},
      {"deberta-v2", deberta_v2_defs, deberta_v2_config, Vocab::Bert, false},
      {"falcon", falcon_defs, falcon_config, Vocab::Gpt2, false},
      {"gemma", gemma_defs, gemma_config, Vocab::Llama, true},
      {"gemma2", gemma2_defs, gemma2_config, Vocab::Llama, true},
      {"gpt2", gpt2_defs, gpt2_config, Vocab::Gpt2, false},
      {"gpt_neox", gpt_neox_defs, gpt_neox_config, Vocab::Gpt2, false},
      {"llama", llama_defs, llama_config, Vocab::Llama, true},
      {"mbart", mbart_defs, mbart_config, Vocab::Bart, false},
      {"mistral", llama_defs, mistral_config, Vocab::Llama, true},
      {"mixtral", mixtral_defs, mixtral_config, Vocab::Llama, true},
      {"mt5", t5_defs, mt5_config, Vocab::T5, false},
      {"opt", opt_defs, opt_config, Vocab::Bart, false},
      {"phi", phi_defs, phi_config, Vocab::Llama, false},
      {"phi3", phi3_defs, phi3_config, Vocab::Llama, true},
      {"qwen2", qwen2_defs, qwen2_config, Vocab::Llama, true},
      {"qwen2_moe", qwen2_moe_defs, qwen2_moe_config, Vocab::Llama, true},
      {"qwen3", qwen3_defs, qwen3_config, Vocab::Llama, true},
      {"roberta", roberta_defs, roberta_config, Vocab::Bart, false},
      {"starcoder2", starcoder2_defs, starcoder2_config, Vocab::Gpt2, true},
      {"t5", t5_defs, t5_config, Vocab::T5, false},
  };
  return specs;
}

const ArchSpec* find_arch_spec(std::string_view type) {
  for (const auto& s : arch_specs())
    if (s.type == type) return &s;
  return nullptr;
}

}  // namespace loftqd::model::synth_detail
