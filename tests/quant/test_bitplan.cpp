#include "quant/bitplan.h"

#include <gtest/gtest.h>

using namespace loftqd::quant;

namespace {
const std::set<int> kNF = {2, 3, 4};
}

TEST(BitPlanNames, LayerIndexAcrossArchitectures) {
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

TEST(BitPlanNames, TargetsAndTaskTypes) {
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

TEST(BitPlan, ParseRangesAndOverrides) {
  auto p = BitPlan::parse("0-7:4,8-:2,down_proj@8-:4");
  p.resolve(12, kNF);
  EXPECT_EQ(p.bits_for(0, "q_proj"), 4);
  EXPECT_EQ(p.bits_for(7, "q_proj"), 4);
  EXPECT_EQ(p.bits_for(8, "q_proj"), 2);
  EXPECT_EQ(p.bits_for(11, "q_proj"), 2);
  EXPECT_EQ(p.bits_for(11, "down_proj"), 4);
  EXPECT_EQ(p.bits_for(std::nullopt, "dense"), 4);  // unindexed: the plan's highest bits
  EXPECT_EQ(p.label(), "mixed");
  EXPECT_EQ(p.to_string(), "0-7:4,8-:2,down_proj@8-:4");
}

TEST(BitPlan, UncoveredLayerHasNoBits) {
  auto p = BitPlan::parse("0-3:4");
  p.resolve(8, kNF);
  EXPECT_EQ(p.bits_for(5, "q_proj"), std::nullopt);
}

TEST(BitPlan, AverageBitsFollowTheLoftqAuthors) {
  struct Case {
    double b;
    int layers, n4;
  } cases[] = {{3.0, 32, 16}, {2.5, 32, 8},  {2.25, 32, 4}, {4.0, 32, 32},
               {2.0, 32, 0},  {3.0, 22, 11}, {3.0, 5, 2}};
  for (const auto& c : cases) {
    auto p = BitPlan::average(c.b);
    p.resolve(c.layers, kNF);
    int n4 = 0;
    for (int i = 0; i < c.layers; ++i) n4 += p.bits_for(i, "q_proj") == 4;
    EXPECT_EQ(n4, c.n4) << c.b << " bits, " << c.layers << " layers";
    for (int i = 0; i < c.layers; ++i) EXPECT_EQ(p.bits_for(i, "q_proj"), i < c.n4 ? 4 : 2);
  }
  EXPECT_THROW(BitPlan::average(4.5), std::invalid_argument);
  EXPECT_THROW(BitPlan::average(1.0), std::invalid_argument);
  EXPECT_EQ(BitPlan::average(3).label(), "avg3bit");
}

TEST(BitPlan, RejectsOverlapsBadBitsAndSyntax) {
  auto overlap = BitPlan::parse("0-7:4,6-:2");
  EXPECT_THROW(overlap.resolve(12, kNF), std::invalid_argument);
  auto star = BitPlan::parse("*:4,3:2");
  EXPECT_THROW(star.resolve(12, kNF), std::invalid_argument);
  auto mods = BitPlan::parse("*:2,down_proj@0-5:4,down_proj@5:3");
  EXPECT_THROW(mods.resolve(12, kNF), std::invalid_argument);
  auto ok = BitPlan::parse("*:2,down_proj@0-5:4,up_proj@5:3");
  EXPECT_NO_THROW(ok.resolve(12, kNF));
  auto eight = BitPlan::parse("*:8");
  try {
    eight.resolve(4, kNF);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("8 bits not supported"), std::string::npos) << e.what();
  }
  EXPECT_THROW(BitPlan::parse("0-7"), std::invalid_argument);
  EXPECT_THROW(BitPlan::parse("7-3:4"), std::invalid_argument);
  EXPECT_THROW(BitPlan::parse("a-3:4"), std::invalid_argument);
  EXPECT_THROW(BitPlan::parse(""), std::invalid_argument);
}

TEST(BitPlan, JsonForm) {
  auto j = nlohmann::json::parse(R"([{"layers": "0-7", "bits": 4}, {"layers": "8-", "bits": 2},
                                     {"modules": ["down_proj"], "layers": "8-", "bits": 4}])");
  auto p = BitPlan::from_json(j);
  p.resolve(16, kNF);
  EXPECT_EQ(p.bits_for(9, "down_proj"), 4);
  EXPECT_EQ(p.bits_for(9, "up_proj"), 2);
  EXPECT_EQ(p.to_json()[1]["layers"], "8-");
  EXPECT_THROW(BitPlan::from_json(nlohmann::json::parse(R"([{"layers": "0-7", "bit": 4}])")),
               std::invalid_argument);
  EXPECT_THROW(BitPlan::from_json(nlohmann::json::parse(R"([{"layers": [0, 7], "bits": 4}])")),
               std::invalid_argument);
}
