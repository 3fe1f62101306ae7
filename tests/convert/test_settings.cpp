// convert/settings: the one settings value the config file and the CLI parse into.
#include "convert/settings.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <stdexcept>

namespace loftqd::convert {
namespace {

using ::testing::HasSubstr;

TEST(Settings, ValidatorsNameTheBound) {
  EXPECT_EQ(rank_problem(64), "");
  EXPECT_EQ(rank_problem(0), "must be >= 1");
  EXPECT_EQ(rank_problem(65537), "must be <= 65536");
  EXPECT_EQ(iters_problem(0), "must be >= 1");
  EXPECT_EQ(iters_problem(1000), "");
  EXPECT_EQ(block_size_problem(0), "must be >= 1");
  EXPECT_EQ(lora_alpha_problem(16), "");
  EXPECT_EQ(lora_alpha_problem(0), "must be a number > 0");
  EXPECT_EQ(lora_alpha_problem(-1), "must be a number > 0");
  EXPECT_EQ(lora_dropout_problem(0.05), "");
  EXPECT_EQ(lora_dropout_problem(1.0), "must be in [0, 1)");
  EXPECT_EQ(avg_bits_problem(2.5), "");
  EXPECT_EQ(avg_bits_problem(4.5), "must be a number in [2, 4]");
}

TEST(Settings, PlanIsCheckedAgainstTheQuantizerWithoutAModel) {
  EXPECT_EQ(plan_problem(quant::BitPlan::uniform(4), quant::QuantMethod::NF), "");
  EXPECT_THAT(plan_problem(quant::BitPlan::uniform(8), quant::QuantMethod::NF),
              HasSubstr("8 bits not supported (allowed: 2, 3, 4)"));
  EXPECT_EQ(plan_problem(quant::BitPlan::uniform(8), quant::QuantMethod::Uniform), "");
  EXPECT_THAT(plan_problem(quant::BitPlan::parse("0-7:4,6-:2"), quant::QuantMethod::NF),
              HasSubstr("overlap"));
  // An average plan takes module overrides, not layer rules.
  quant::BitPlan avg = quant::BitPlan::average(3);
  avg.add(quant::PlanRule{-1, -1, {"down_proj"}, 4});
  EXPECT_EQ(plan_problem(avg, quant::QuantMethod::NF), "");
  avg.add(quant::PlanRule{0, 3, {}, 4});
  EXPECT_THAT(plan_problem(avg, quant::QuantMethod::NF),
              HasSubstr("only module overrides (e.g. down_proj@*:4) can be combined"));
}

TEST(Settings, CheckReportsEveryProblemUnderItsFlag) {
  LoftqSettings s;
  s.rank = 0;
  s.iters = 0;
  s.lora_alpha = -2;
  s.plan = quant::BitPlan::uniform(5);
  EXPECT_EQ(validate(s).size(), 4u);
  try {
    check(s);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    const std::string m = e.what();
    EXPECT_THAT(m, HasSubstr("--rank: must be >= 1"));
    EXPECT_THAT(m, HasSubstr("--iters: must be >= 1"));
    EXPECT_THAT(m, HasSubstr("--lora-alpha: must be a number > 0"));
    EXPECT_THAT(m, HasSubstr("--bits: bit plan rule *:5: 5 bits not supported"));
  }
  EXPECT_EQ(flag_for_key("target_modules"), "--target-modules");
  EXPECT_NO_THROW(check(LoftqSettings{}));
}

TEST(Settings, CanonicalJsonKeepsThePlanForm) {
  LoftqSettings s;
  EXPECT_EQ(s.to_json()["bits"], 4);
  EXPECT_FALSE(s.to_json().contains("avg_bits"));
  s.plan = quant::BitPlan::average(3);
  EXPECT_EQ(s.to_json()["avg_bits"], 3.0);
  EXPECT_FALSE(s.to_json().contains("overrides"));
  s.plan.add(quant::PlanRule{-1, -1, {"down_proj"}, 4});
  EXPECT_EQ(s.to_json()["overrides"][0]["modules"][0], "down_proj");
  s.plan = quant::BitPlan::parse("0-7:4,8-:2");
  EXPECT_EQ(s.to_json()["bit_plan"].size(), 2u);
  EXPECT_EQ(s.to_json()["bit_plan"][1]["layers"], "8-");
  // The device changes where LoftQ runs, not the result: it is not in the canonical form.
  LoftqSettings a, b;
  b.device = quant::parse_device("cuda:1");
  EXPECT_EQ(a.to_json(), b.to_json());
  b.lora_dropout = 0.1;
  EXPECT_NE(a.to_json(), b.to_json());
  EXPECT_EQ(a.to_json().dump(),
            R"({"bits":4,"block_size":64,"iters":5,"lora_alpha":null,"quant":"nf","rank":64,)"
            R"("svd":"randomized","target_modules":[]})");
}

TEST(Settings, EngineOptionsFollowTheSettings) {
  LoftqSettings s;
  s.rank = 16;
  s.iters = 3;
  s.quant = quant::QuantMethod::Uniform;
  s.block_size = 32;
  s.svd = quant::SvdMode::Exact;
  const quant::LoftqOptions o = loftq_options(s, 2);
  EXPECT_EQ(o.rank, 16);
  EXPECT_EQ(o.iters, 3);
  EXPECT_EQ(o.quant.method, quant::QuantMethod::Uniform);
  EXPECT_EQ(o.quant.bits, 2);
  EXPECT_EQ(o.quant.block_size, 32);
  EXPECT_EQ(o.svd, quant::SvdMode::Exact);
  EXPECT_EQ(s.alpha(), 16.0);
  s.lora_alpha = 32;
  EXPECT_EQ(s.alpha(), 32.0);
}

}  // namespace
}  // namespace loftqd::convert
