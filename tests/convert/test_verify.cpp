#include "convert/verify.h"

#include <gtest/gtest.h>

#include <vector>

using namespace loftqd::convert;
using namespace loftqd::model;
using namespace loftqd::quant;

TEST(VerifyBlocks, QuantizedBlocksAreRepresentable) {
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = 0.01f * static_cast<float>((i * 37) % 23) - 0.1f;
  for (auto m : {QuantMethod::NF, QuantMethod::Uniform}) {
    for (int bits : {2, 3, 4}) {
      const QuantSpec s{m, bits, 64};
      std::vector<float> q(64);
      quant_dequant(s, x.data(), 64, q.data());
      for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
        std::vector<float> r = q;
        round_to_dtype(dt, r.data(), r.size());
        EXPECT_TRUE(
            block_representable(r.data(), 64, code_table(m, bits), dt, m == QuantMethod::NF))
            << spec_name(s) << " " << dtype_name(dt);
      }
    }
  }
}

TEST(VerifyBlocks, OffTableValuesAreCaught) {
  std::vector<float> q(64, 0.0f);
  q[0] = 1.0f;
  q[1] = 0.5f;  // not an NF4 code (0.4407 and 0.5626 are)
  EXPECT_FALSE(
      block_representable(q.data(), 64, code_table(QuantMethod::NF, 4), DType::BF16, true));
  q[1] = 0.44070982933044434f;
  EXPECT_TRUE(block_representable(q.data(), 64, code_table(QuantMethod::NF, 4), DType::F32, true));
  q[2] = 0.16093020141124725f;  // an NF4 code but not an NF2 code
  EXPECT_FALSE(block_representable(q.data(), 64, code_table(QuantMethod::NF, 2), DType::F32, true));
  // Uniform 4-bit: values on a grid of one scale pass, a value between grid points does not.
  auto u4 = code_table(QuantMethod::Uniform, 4);
  std::vector<float> g(64, 0.0f);
  for (int i = 0; i < 64; ++i) g[i] = u4[i % 16] * 0.37f;
  EXPECT_TRUE(block_representable(g.data(), 64, u4, DType::F32, false));
  g[3] = 0.5f * (u4[5] + u4[6]) * 0.37f;
  EXPECT_FALSE(block_representable(g.data(), 64, u4, DType::F32, false));
  std::vector<float> zeros(64, 0.0f);
  EXPECT_TRUE(
      block_representable(zeros.data(), 64, code_table(QuantMethod::NF, 2), DType::BF16, true));
}
