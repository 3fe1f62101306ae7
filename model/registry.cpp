#include "model/registry.h"

#include <algorithm>
#include <map>
#include <set>

#include "common/strings.h"

namespace loftqd::model {

namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// The reasons, once each.

constexpr const char* kEmbeddingWhy =
    "nn.Embedding: bitsandbytes does not quantize it, and PEFT's LoRA for embeddings has other "
    "keys and shapes (lora_embedding_A/B)";
constexpr const char* kHeadWhy =
    "the output head: the loader keeps it in full precision, so there is nothing to correct";
constexpr const char* kRouterWhy =
    "an MoE router: a low-rank change of it changes which experts run, so it is kept in full "
    "precision (llm_int8_skip_modules) and never quantized";
constexpr const char* kPoolerWhy =
    "ContextPooler, part of the classification head (new in a fine-tuning run): kept in full "
    "precision (llm_int8_skip_modules)";
constexpr const char* kClassifierWhy =
    "the classification head (RobertaClassificationHead): kept in full precision "
    "(llm_int8_skip_modules; the loader alone would keep only classifier.out_proj)";
constexpr const char* kPretrainWhy =
    "a pretraining head that the task class does not have: not loaded";

NeverTarget emb(const char* leaf) {
  return {NeverKind::Embedding, leaf, kEmbeddingWhy};
}
NeverTarget head(const char* path) {
  return {NeverKind::Head, path, kHeadWhy};
}
NeverTarget router(const char* leaf) {
  return {NeverKind::Router, leaf, kRouterWhy};
}
NeverTarget unused(const char* path) {
  return {NeverKind::Unused, path, kPretrainWhy};
}

const std::vector<std::string> kLlamaTargets = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                "gate_proj", "up_proj", "down_proj"};
const std::vector<std::string> kBartTargets = {"q_proj",   "k_proj", "v_proj",
                                               "out_proj", "fc1",    "fc2"};
const std::vector<std::string> kT5Targets = {"q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1"};

std::vector<LayerStack> decoder_only(std::string path,
                                     std::vector<std::string> fields = {"num_hidden_layers"}) {
  return {LayerStack{"layers", std::move(path), std::move(fields)}};
}

// What every entry starts with: its names, the task and its class (`cls` + `task_suffix`),
// the base class and the prefix the task class nests it under.
Architecture named(const char* type, const char* cls, const char* models, const char* task_type,
                   const char* task_suffix, std::string prefix) {
  Architecture a;
  a.model_type = type;
  a.models = models;
  a.task_type = task_type;
  a.task_class = std::string(cls) + task_suffix;
  a.base_class = std::string(cls) + "Model";
  a.base_model_prefix = std::move(prefix);
  return a;
}

// A causal LM named like Llama: model.layers.N, embed_tokens, lm_head.
Architecture llama_like(const char* type, const char* cls, const char* models,
                        std::vector<std::string> targets = kLlamaTargets) {
  Architecture a = named(type, cls, models, "CAUSAL_LM", "ForCausalLM", "model");
  a.stacks = decoder_only("model.layers");
  a.targets = std::move(targets);
  a.never = {emb("embed_tokens"), head("lm_head")};
  return a;
}

Architecture seq2seq_bart(const char* type, const char* cls, const char* models) {
  Architecture a = named(type, cls, models, "SEQ_2_SEQ_LM", "ForConditionalGeneration", "model");
  a.stacks = {LayerStack{"encoder", "model.encoder.layers", {"encoder_layers"}},
              LayerStack{"decoder", "model.decoder.layers", {"decoder_layers"}}};
  a.targets = kBartTargets;
  a.never = {emb("shared"), emb("embed_tokens"), emb("embed_positions"), head("lm_head")};
  return a;
}

Architecture t5_like(const char* type, const char* cls, const char* models) {
  Architecture a =
      named(type, cls, models, "SEQ_2_SEQ_LM", "ForConditionalGeneration", "transformer");
  a.task_nests_base = false;
  a.stacks = {LayerStack{"encoder", "encoder.block", {"num_layers"}},
              LayerStack{"decoder", "decoder.block", {"num_decoder_layers", "num_layers"}}};
  a.targets = kT5Targets;
  a.never = {emb("shared"), emb("embed_tokens"), emb("relative_attention_bias"), head("lm_head")};
  a.keep_fp32 = {"wo"};
  return a;
}

Architecture encoder_cls(const char* type, const char* cls, const char* prefix, const char* models,
                         std::vector<std::string> targets) {
  Architecture a = named(type, cls, models, "SEQ_CLS", "ForSequenceClassification", prefix);
  a.stacks = decoder_only(std::string(prefix) + ".encoder.layer");
  a.targets = std::move(targets);
  a.never = {emb("word_embeddings"), emb("position_embeddings"), emb("token_type_embeddings")};
  return a;
}

std::vector<Architecture> build_table() {
  std::vector<Architecture> t;
  t.push_back(llama_like("llama", "Llama", "Llama-2, Llama-3, CodeLlama"));
  t.push_back(llama_like("mistral", "Mistral", "Mistral-7B"));
  t.push_back(llama_like("qwen2", "Qwen2", "Qwen2, Qwen2.5"));
  t.push_back(llama_like("qwen3", "Qwen3", "Qwen3"));
  t.push_back(llama_like("gemma", "Gemma", "Gemma"));
  t.push_back(llama_like("gemma2", "Gemma2", "Gemma-2"));

  Architecture mixtral = llama_like("mixtral", "Mixtral", "Mixtral-8x7B",
                                    {"q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"});
  mixtral.never.push_back(router("gate"));
  t.push_back(mixtral);

  Architecture qmoe = llama_like("qwen2_moe", "Qwen2Moe", "Qwen1.5-MoE, Qwen2-57B-A14B");
  qmoe.never.push_back(router("gate"));
  qmoe.never.push_back(router("shared_expert_gate"));
  t.push_back(qmoe);

  t.push_back(llama_like("phi", "Phi", "Phi-1.5, Phi-2",
                         {"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"}));
  t.push_back(llama_like("phi3", "Phi3", "Phi-3, Phi-3.5",
                         {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}));
  t.push_back(llama_like("starcoder2", "Starcoder2", "StarCoder2",
                         {"q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"}));

  Architecture falcon = llama_like("falcon", "Falcon", "Falcon-7B, Falcon-40B",
                                   {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"});
  falcon.base_model_prefix = "transformer";
  falcon.stacks = decoder_only("transformer.h", {"num_hidden_layers", "n_layer"});
  falcon.never = {emb("word_embeddings"), head("lm_head")};
  t.push_back(falcon);

  Architecture neox = llama_like("gpt_neox", "GPTNeoX", "Pythia, GPT-NeoX-20B",
                                 {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"});
  neox.base_model_prefix = "gpt_neox";
  neox.stacks = decoder_only("gpt_neox.layers");
  neox.never = {emb("embed_in"), head("embed_out")};
  t.push_back(neox);

  Architecture gpt2 = llama_like("gpt2", "GPT2", "GPT-2", {"c_attn", "c_proj", "c_fc"});
  gpt2.task_class = "GPT2LMHeadModel";
  gpt2.base_model_prefix = "transformer";
  gpt2.stacks = decoder_only("transformer.h", {"n_layer", "num_hidden_layers"});
  gpt2.conv1d = {"c_attn", "q_attn", "c_proj", "c_fc"};
  gpt2.never = {emb("wte"), emb("wpe"), head("lm_head")};
  t.push_back(gpt2);

  Architecture opt = llama_like("opt", "OPT", "OPT-125M ... OPT-66B",
                                {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"});
  opt.stacks = decoder_only("model.decoder.layers");
  opt.never = {emb("embed_tokens"), emb("embed_positions"), head("lm_head")};
  t.push_back(opt);

  t.push_back(t5_like("t5", "T5", "T5, Flan-T5"));
  t.push_back(t5_like("mt5", "MT5", "mT5"));
  t.push_back(seq2seq_bart("bart", "Bart", "BART, distilBART"));
  t.push_back(seq2seq_bart("mbart", "MBart", "mBART-50"));

  Architecture deberta = encoder_cls("deberta-v2", "DebertaV2", "deberta", "DeBERTa-v2, DeBERTa-v3",
                                     {"query_proj", "key_proj", "value_proj", "pos_key_proj",
                                      "pos_query_proj", "intermediate.dense", "output.dense"});
  deberta.never.push_back(emb("rel_embeddings"));
  deberta.never.push_back(head("classifier"));
  deberta.never.push_back({NeverKind::TaskExtra, "pooler", kPoolerWhy});
  deberta.never.push_back(unused("lm_predictions"));
  deberta.never.push_back(unused("mask_predictions"));
  t.push_back(deberta);

  // BERT's pooler (bert.pooler.dense) is part of BertModel and pretrained: "dense" targets it.
  Architecture bert =
      encoder_cls("bert", "Bert", "bert", "BERT", {"query", "key", "value", "dense"});
  bert.never.push_back(head("classifier"));
  bert.never.push_back(unused("cls"));
  t.push_back(bert);

  // "intermediate.dense" and "output.dense" (not "dense"), so that classifier.dense of a
  // fine-tuned checkpoint is not wrapped; RobertaForSequenceClassification has no pooler.
  Architecture roberta =
      encoder_cls("roberta", "Roberta", "roberta", "RoBERTa",
                  {"query", "key", "value", "intermediate.dense", "output.dense"});
  roberta.never.push_back({NeverKind::TaskExtra, "classifier", kClassifierWhy});
  roberta.never.push_back(unused("lm_head"));
  roberta.never.push_back(unused("roberta.pooler"));
  t.push_back(roberta);

  std::sort(t.begin(), t.end(), [](const Architecture& x, const Architecture& y) {
    return x.model_type < y.model_type;
  });
  return t;
}

// A layer index: digits, short enough for an int.
bool layer_digits(std::string_view s) {
  return s.size() < 9 && common::all_digits(s);
}

bool covers(std::string_view path, std::string_view module) {
  return module == path ||
         (module.size() > path.size() && module.starts_with(path) && module[path.size()] == '.');
}

std::string_view leaf_of(std::string_view module) {
  const size_t dot = module.rfind('.');
  return dot == std::string_view::npos ? module : module.substr(dot + 1);
}

// config.json "architectures"[0], or "".
std::string first_architecture(const json& config) {
  if (config.is_object() && config.contains("architectures") &&
      config["architectures"].is_array() && !config["architectures"].empty() &&
      config["architectures"][0].is_string())
    return config["architectures"][0].get<std::string>();
  return "";
}

}  // namespace

std::string_view never_kind_name(NeverKind k) {
  switch (k) {
    case NeverKind::Embedding:
      return "embedding";
    case NeverKind::Head:
      return "head";
    case NeverKind::Router:
      return "router";
    case NeverKind::TaskExtra:
      return "task head";
    case NeverKind::Unused:
      return "unused";
  }
  return "?";
}

const std::vector<Architecture>& architectures() {
  static const std::vector<Architecture> table = build_table();
  return table;
}

const Architecture* find_architecture(std::string_view model_type) {
  for (const auto& a : architectures())
    if (a.model_type == model_type) return &a;
  return nullptr;
}

std::string known_model_types() {
  std::string s;
  for (const auto& a : architectures()) s += (s.empty() ? "" : ", ") + a.model_type;
  return s;
}

std::string auto_class_for(std::string_view task_type) {
  if (task_type == "SEQ_2_SEQ_LM") return "AutoModelForSeq2SeqLM";
  if (task_type == "SEQ_CLS") return "AutoModelForSequenceClassification";
  if (task_type == "TOKEN_CLS") return "AutoModelForTokenClassification";
  if (task_type == "QUESTION_ANS") return "AutoModelForQuestionAnswering";
  if (task_type == "FEATURE_EXTRACTION") return "AutoModel";
  return "AutoModelForCausalLM";
}

std::string pipeline_tag_for(std::string_view task_type) {
  if (task_type == "SEQ_2_SEQ_LM") return "text2text-generation";
  if (task_type == "SEQ_CLS") return "text-classification";
  if (task_type == "TOKEN_CLS") return "token-classification";
  if (task_type == "QUESTION_ANS") return "question-answering";
  if (task_type == "FEATURE_EXTRACTION") return "feature-extraction";
  return "text-generation";
}

Architecture generic_architecture(const std::string& model_type, const json& config,
                                  const std::vector<std::string>& tensor_names) {
  Architecture a;
  a.model_type = model_type;
  a.task_class = first_architecture(config);
  const auto ends = [&](const char* s) { return a.task_class.ends_with(s); };
  a.task_type = ends("ForSequenceClassification")                          ? "SEQ_CLS"
                : ends("ForConditionalGeneration") || ends("ForSeq2SeqLM") ? "SEQ_2_SEQ_LM"
                                                                           : "CAUSAL_LM";
  if (a.task_class.empty()) a.task_class = "(unknown)";
  a.never = {head("lm_head")};
  std::vector<std::string> paths;
  for (const auto& name : tensor_names) {
    const auto parts = common::split(name, '.');
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      const auto& p = parts[i];
      if ((p == "layers" || p == "layer" || p == "h" || p == "block" || p == "blocks") &&
          layer_digits(parts[i + 1])) {
        std::string path;
        for (size_t k = 0; k <= i; ++k) path += (k ? "." : "") + parts[k];
        if (std::find(paths.begin(), paths.end(), path) == paths.end()) paths.push_back(path);
        break;
      }
    }
  }
  for (const auto& p : paths)
    a.stacks.push_back(LayerStack{p, p,
                                  paths.size() == 1 ? std::vector<std::string>{"num_hidden_layers"}
                                                    : std::vector<std::string>{}});
  return a;
}

std::string task_prefix(const Architecture& a) {
  return a.task_nests_base ? a.base_model_prefix : std::string();
}

bool is_base_class_save(const Architecture& a, const std::vector<std::string>& tensor_names) {
  const std::string prefix = task_prefix(a);
  if (prefix.empty() || tensor_names.empty()) return false;
  // modeling_utils: has_prefix_module = any(key.startswith(prefix) for key in loaded_keys).
  return std::none_of(tensor_names.begin(), tensor_names.end(),
                      [&](const std::string& k) { return k.starts_with(prefix); });
}

std::string task_name(const Architecture& a, bool base_class_save, std::string_view key) {
  if (!base_class_save) return std::string(key);
  return task_prefix(a) + "." + std::string(key);
}

std::optional<LayerPos> locate_layer(const Architecture& a, std::string_view m) {
  for (size_t s = 0; s < a.stacks.size(); ++s) {
    const std::string& p = a.stacks[s].path;
    if (m.size() <= p.size() + 1 || !m.starts_with(p) || m[p.size()] != '.') continue;
    std::string_view rest = m.substr(p.size() + 1);
    const size_t dot = rest.find('.');
    const std::string_view idx = rest.substr(0, dot);
    if (layer_digits(idx)) return LayerPos{s, std::stoi(std::string(idx))};
  }
  return std::nullopt;
}

std::optional<int> config_depth(const LayerStack& s, const json& config, std::string* field) {
  if (!config.is_object()) return std::nullopt;
  for (const auto& f : s.count_fields) {
    auto it = config.find(f);
    if (it != config.end() && it->is_number_integer()) {
      if (field) *field = f;
      return it->get<int>();
    }
  }
  return std::nullopt;
}

const NeverTarget* never_target(const Architecture& a, std::string_view m) {
  const std::string_view leaf = leaf_of(m);
  for (const auto& n : a.never) {
    const bool by_leaf = n.kind == NeverKind::Embedding || n.kind == NeverKind::Router;
    if (by_leaf ? leaf == n.module : covers(n.module, m)) return &n;
  }
  return nullptr;
}

bool is_conv1d(const Architecture& a, std::string_view m) {
  const std::string_view leaf = leaf_of(m);
  return std::find(a.conv1d.begin(), a.conv1d.end(), leaf) != a.conv1d.end();
}

}  // namespace loftqd::model
