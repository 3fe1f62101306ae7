// model/registry: the architecture table against transformers' names for each model type.
#include "model/registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "model/naming.h"

namespace loftqd::model {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

const Architecture& arch(const std::string& t) {
  const Architecture* a = find_architecture(t);
  if (!a) throw std::runtime_error("not registered: " + t);
  return *a;
}

std::set<std::string> targets_of(const std::string& t) {
  const auto& v = arch(t).targets;
  return {v.begin(), v.end()};
}

TEST(Registry, CoversThePublishedArchitectures) {
  for (const char* t :
       {"llama", "mistral", "mixtral",    "qwen2",      "qwen2_moe", "phi",    "phi3",
        "gemma", "gemma2",  "starcoder2", "falcon",     "gpt_neox",  "gpt2",   "opt",
        "t5",    "bart",    "mbart",      "deberta-v2", "bert",      "roberta"}) {
    const Architecture* a = find_architecture(t);
    ASSERT_NE(a, nullptr) << t;
    EXPECT_FALSE(a->targets.empty()) << t;
    EXPECT_FALSE(a->stacks.empty()) << t;
    EXPECT_FALSE(a->task_class.empty()) << t;
    EXPECT_FALSE(a->base_class.empty()) << t;
    EXPECT_TRUE(a->task_type == "CAUSAL_LM" || a->task_type == "SEQ_2_SEQ_LM" ||
                a->task_type == "SEQ_CLS")
        << t;
    for (const auto& st : a->stacks) EXPECT_FALSE(st.count_fields.empty()) << t;
    for (const auto& n : a->never) EXPECT_FALSE(n.reason.empty()) << t << " " << n.module;
    // default_target_modules reads the same table.
    EXPECT_EQ(default_target_modules(t), a->targets) << t;
    EXPECT_EQ(default_task_type(t), a->task_type) << t;
  }
  EXPECT_EQ(find_architecture("gpt9"), nullptr);
  EXPECT_THAT(known_model_types(), HasSubstr("deberta-v2"));
  const auto& all = architectures();
  EXPECT_TRUE(std::is_sorted(all.begin(), all.end(), [](const auto& x, const auto& y) {
    return x.model_type < y.model_type;
  }));
}

TEST(Registry, FusedMoeAndConv1DModulesAreTargets) {
  // The LoftQ authors' choice: every linear of the blocks, fused and MoE ones included.
  EXPECT_EQ(targets_of("phi3"),
            (std::set<std::string>{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}));
  EXPECT_EQ(targets_of("mixtral"),
            (std::set<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"}));
  EXPECT_EQ(targets_of("phi"),
            (std::set<std::string>{"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"}));
  EXPECT_EQ(targets_of("falcon"),
            (std::set<std::string>{"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}));
  EXPECT_EQ(targets_of("gpt2"), (std::set<std::string>{"c_attn", "c_proj", "c_fc"}));
  EXPECT_EQ(targets_of("starcoder2"),
            (std::set<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"}));
  EXPECT_TRUE(targets_of("t5").count("wi_0") && targets_of("t5").count("wo"));
  // GPT-2's modules are Conv1D, StarCoder2's c_fc/c_proj are nn.Linear.
  EXPECT_TRUE(is_conv1d(arch("gpt2"), "transformer.h.0.attn.c_attn"));
  EXPECT_TRUE(is_conv1d(arch("gpt2"), "transformer.h.0.mlp.c_proj"));
  EXPECT_FALSE(is_conv1d(arch("starcoder2"), "model.layers.0.mlp.c_proj"));
  EXPECT_FALSE(is_conv1d(arch("llama"), "model.layers.0.mlp.down_proj"));
}

TEST(Registry, NeverTargetsWithTheirReasons) {
  auto kind = [](const std::string& t, const std::string& module) {
    const NeverTarget* n = never_target(arch(t), module);
    return n ? std::string(never_kind_name(n->kind)) : std::string("-");
  };
  EXPECT_EQ(kind("llama", "model.embed_tokens"), "embedding");
  EXPECT_EQ(kind("llama", "lm_head"), "head");
  EXPECT_EQ(kind("llama", "model.layers.0.self_attn.q_proj"), "-");
  EXPECT_EQ(kind("mixtral", "model.layers.3.block_sparse_moe.gate"), "router");
  EXPECT_EQ(kind("mixtral", "model.layers.3.block_sparse_moe.experts.1.w1"), "-");
  EXPECT_EQ(kind("qwen2_moe", "model.layers.0.mlp.shared_expert_gate"), "router");
  EXPECT_EQ(kind("qwen2_moe", "model.layers.0.mlp.shared_expert.gate_proj"), "-");
  EXPECT_EQ(kind("gpt_neox", "embed_out"), "head");
  EXPECT_EQ(kind("gpt2", "transformer.wpe"), "embedding");
  EXPECT_EQ(kind("t5", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias"),
            "embedding");
  EXPECT_EQ(kind("bert", "cls.predictions.transform.dense"), "unused");
  EXPECT_EQ(kind("bert", "classifier"), "head");
  EXPECT_EQ(kind("deberta-v2", "pooler.dense"), "task head");
  EXPECT_EQ(kind("deberta-v2", "deberta.encoder.rel_embeddings"), "embedding");
  EXPECT_EQ(kind("roberta", "classifier.dense"), "task head");
  EXPECT_EQ(kind("roberta", "lm_head.dense"), "unused");
  EXPECT_THAT(never_target(arch("mixtral"), "model.layers.0.block_sparse_moe.gate")->reason,
              HasSubstr("experts"));
  EXPECT_EQ(arch("t5").keep_fp32, std::vector<std::string>{"wo"});
}

TEST(Registry, TaskClassesAndLoaders) {
  EXPECT_EQ(arch("bart").task_class, "BartForConditionalGeneration");
  EXPECT_EQ(arch("gpt2").task_class, "GPT2LMHeadModel");
  EXPECT_EQ(arch("deberta-v2").task_class, "DebertaV2ForSequenceClassification");
  EXPECT_EQ(arch("llama").base_class, "LlamaModel");
  EXPECT_EQ(auto_class_for("CAUSAL_LM"), "AutoModelForCausalLM");
  EXPECT_EQ(auto_class_for("SEQ_2_SEQ_LM"), "AutoModelForSeq2SeqLM");
  EXPECT_EQ(auto_class_for("SEQ_CLS"), "AutoModelForSequenceClassification");
  EXPECT_EQ(pipeline_tag_for("SEQ_2_SEQ_LM"), "text2text-generation");
  EXPECT_EQ(pipeline_tag_for("SEQ_CLS"), "text-classification");
  EXPECT_EQ(pipeline_tag_for("CAUSAL_LM"), "text-generation");
}

TEST(Registry, BaseClassSavesGetThePrefix) {
  const auto& llama = arch("llama");
  const std::vector<std::string> base = {"embed_tokens.weight", "layers.0.self_attn.q_proj.weight",
                                         "norm.weight"};
  const std::vector<std::string> task = {"model.embed_tokens.weight", "lm_head.weight"};
  EXPECT_TRUE(is_base_class_save(llama, base));
  EXPECT_FALSE(is_base_class_save(llama, task));
  EXPECT_EQ(task_name(llama, true, "layers.0.self_attn.q_proj.weight"),
            "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(task_name(llama, false, "model.norm.weight"), "model.norm.weight");
  // The original GPT-2 checkpoint: keys without "transformer.".
  EXPECT_TRUE(is_base_class_save(arch("gpt2"), {"wte.weight", "h.0.attn.c_attn.weight"}));
  EXPECT_EQ(task_name(arch("gpt2"), true, "h.0.attn.c_attn.weight"),
            "transformer.h.0.attn.c_attn.weight");
  // T5's task class does not nest the base model: never a prefix.
  EXPECT_EQ(task_prefix(arch("t5")), "");
  EXPECT_FALSE(is_base_class_save(arch("t5"), {"shared.weight", "encoder.block.0.x.weight"}));
}

TEST(Registry, LayerStacksAndTheirDepths) {
  const auto& bart = arch("bart");
  ASSERT_EQ(bart.stacks.size(), 2u);
  EXPECT_EQ(bart.stacks[0].name, "encoder");
  auto p = locate_layer(bart, "model.decoder.layers.3.fc1");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->stack, 1u);
  EXPECT_EQ(p->layer, 3);
  EXPECT_FALSE(locate_layer(bart, "model.shared"));
  p = locate_layer(arch("t5"), "encoder.block.2.layer.1.DenseReluDense.wi_0");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->stack, 0u);
  EXPECT_EQ(p->layer, 2);
  EXPECT_EQ(locate_layer(arch("gpt2"), "transformer.h.11.mlp.c_fc")->layer, 11);
  EXPECT_FALSE(locate_layer(arch("bert"), "bert.pooler.dense"));
  std::string field;
  EXPECT_EQ(
      config_depth(bart.stacks[1], json{{"decoder_layers", 6}, {"encoder_layers", 12}}, &field), 6);
  EXPECT_EQ(field, "decoder_layers");
  // T5's num_decoder_layers may be null: num_layers then.
  const auto& t5 = arch("t5");
  EXPECT_EQ(
      config_depth(t5.stacks[1], json{{"num_layers", 8}, {"num_decoder_layers", nullptr}}, &field),
      8);
  EXPECT_EQ(field, "num_layers");
  EXPECT_EQ(config_depth(arch("gpt2").stacks[0], json{{"n_layer", 12}}), 12);
  EXPECT_FALSE(config_depth(arch("llama").stacks[0], json::object()));
}

TEST(Registry, GenericArchitectureForUnregisteredTypes) {
  const json cfg = {{"model_type", "mystery"}, {"architectures", {"MysteryForSeq2SeqLM"}}};
  const auto a = generic_architecture(
      "mystery", cfg,
      {"m.enc.layers.0.q.weight", "m.enc.layers.1.q.weight", "m.dec.layers.0.q.weight", "x"});
  EXPECT_EQ(a.task_type, "SEQ_2_SEQ_LM");
  ASSERT_EQ(a.stacks.size(), 2u);
  EXPECT_EQ(a.stacks[0].path, "m.enc.layers");
  EXPECT_EQ(a.stacks[1].path, "m.dec.layers");
  EXPECT_EQ(task_prefix(a), "");
}

}  // namespace
}  // namespace loftqd::model
