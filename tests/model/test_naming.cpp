#include "model/naming.h"

#include <gtest/gtest.h>

using namespace loftqd::model;

TEST(Naming, LayerIndexAcrossArchitectures) {
  EXPECT_EQ(layer_index("model.layers.3.self_attn.q_proj.weight"), 3);
  EXPECT_EQ(layer_index("model.decoder.layers.11.fc1.weight"), 11);
  EXPECT_EQ(layer_index("model.encoder.layers.0.self_attn.out_proj.weight"), 0);
  EXPECT_EQ(layer_index("bert.encoder.layer.7.attention.self.query.weight"), 7);
  EXPECT_EQ(layer_index("deberta.encoder.layer.2.attention.self.query_proj.weight"), 2);
  EXPECT_EQ(layer_index("encoder.block.5.layer.1.DenseReluDense.wi.weight"), 5);
  EXPECT_EQ(layer_index("transformer.h.9.attn.c_attn.weight"), 9);
  EXPECT_EQ(layer_index("model.embed_tokens.weight"), std::nullopt);
  EXPECT_EQ(layer_index("bert.pooler.dense.weight"), std::nullopt);
  EXPECT_EQ(layer_index("model.layers.x.q_proj.weight"), std::nullopt);
}

TEST(Naming, TargetsAndTaskTypes) {
  auto llama = default_target_modules("llama");
  EXPECT_EQ(llama.size(), 7u);
  EXPECT_TRUE(is_target_weight("model.layers.0.mlp.down_proj.weight", llama));
  EXPECT_FALSE(is_target_weight("model.layers.0.mlp.down_proj.bias", llama));
  EXPECT_FALSE(is_target_weight("model.layers.0.input_layernorm.weight", llama));
  EXPECT_FALSE(is_target_weight("lm_head.weight", llama));
  EXPECT_FALSE(is_target_weight("model.layers.0.mlp.xdown_proj.weight", llama));
  auto bart = default_target_modules("bart");
  EXPECT_TRUE(is_target_weight("model.encoder.layers.0.self_attn.out_proj.weight", bart));
  EXPECT_TRUE(is_target_weight("model.decoder.layers.1.fc2.weight", bart));
  auto bert = default_target_modules("bert");
  EXPECT_TRUE(is_target_weight("bert.encoder.layer.0.attention.output.dense.weight", bert));
  EXPECT_EQ(default_target_modules("deberta-v2")[0], "query_proj");
  EXPECT_EQ(default_task_type("llama"), "CAUSAL_LM");
  EXPECT_EQ(default_task_type("bart"), "SEQ_2_SEQ_LM");
  EXPECT_EQ(default_task_type("bert"), "SEQ_CLS");
  EXPECT_EQ(module_path("model.layers.3.self_attn.q_proj.weight"),
            "model.layers.3.self_attn.q_proj");
  EXPECT_EQ(module_leaf("model.layers.3.self_attn.q_proj.weight"), "q_proj");
}
