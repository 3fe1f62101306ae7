#include "quant/bitplan.h"

#include <gtest/gtest.h>

using namespace loftqd::quant;

namespace {
const std::set<int> kNF = {2, 3, 4};
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
