// Quantizer tables and codes against known values (bitsandbytes, PEFT NFQuantizer, torch).
#include "quant/quantizer.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <vector>

using namespace loftqd::quant;

namespace {

QuantSpec spec(QuantMethod m, int bits) {
  return QuantSpec{m, bits, 64};
}

std::vector<uint8_t> codes_of(const QuantSpec& s, const std::vector<float>& x,
                              std::vector<float>* scales = nullptr) {
  std::vector<uint8_t> c(x.size());
  std::vector<float> sc(x.size() / s.block_size);
  quantize(s, x.data(), x.size(), c.data(), sc.data());
  if (scales) *scales = sc;
  return c;
}

}  // namespace

TEST(QuantTable, NF4IsBitsandbytesTable) {
  const float expected[16] = {-1.0f,
                              -0.6961928009986877f,
                              -0.5250730514526367f,
                              -0.39491748809814453f,
                              -0.28444138169288635f,
                              -0.18477343022823334f,
                              -0.09105003625154495f,
                              0.0f,
                              0.07958029955625534f,
                              0.16093020141124725f,
                              0.24611230194568634f,
                              0.33791524171829224f,
                              0.44070982933044434f,
                              0.5626170039176941f,
                              0.7229568362236023f,
                              1.0f};
  auto t = code_table(QuantMethod::NF, 4);
  ASSERT_EQ(t.size(), 16u);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(t[i], expected[i]) << i;
}

TEST(QuantTable, NF2AndNF3AreNormalMaps) {
  auto t2 = code_table(QuantMethod::NF, 2);
  ASSERT_EQ(t2.size(), 4u);
  EXPECT_EQ(t2[0], -1.0f);
  EXPECT_EQ(t2[1], 0.0f);
  EXPECT_EQ(t2[2], 0.33791524171829224f);
  EXPECT_EQ(t2[3], 1.0f);
  // Every NF2 value is an NF4 value, so NF2 survives a bitsandbytes NF4 reload.
  for (float v : t2) {
    bool found = false;
    for (float u : kNF4Table) found |= u == v;
    EXPECT_TRUE(found) << v;
  }
  const float nf3[8] = {-1.0f,
                        -0.4786292016506195f,
                        -0.217141792178154f,
                        0.0f,
                        0.16093020141124725f,
                        0.33791524171829224f,
                        0.5626170039176941f,
                        1.0f};
  auto t3 = code_table(QuantMethod::NF, 3);
  ASSERT_EQ(t3.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(t3[i], nf3[i]) << i;
}

TEST(QuantTable, UniformIsTorchLinspace) {
  auto t2 = code_table(QuantMethod::Uniform, 2);
  ASSERT_EQ(t2.size(), 4u);
  EXPECT_EQ(t2[1], -0.3333333134651184f);
  EXPECT_EQ(t2[2], 0.3333333134651184f);
  auto t3 = code_table(QuantMethod::Uniform, 3);
  EXPECT_EQ(t3[3], -0.14285707473754883f);
  EXPECT_EQ(t3[6], 0.7142857313156128f);
  auto t4 = code_table(QuantMethod::Uniform, 4);
  ASSERT_EQ(t4.size(), 16u);
  EXPECT_EQ(t4[0], -1.0f);
  EXPECT_EQ(t4[3], -0.5999999642372131f);
  EXPECT_EQ(t4[7], -0.0666666030883789f);
  EXPECT_EQ(t4[8], 0.0666666030883789f);
  EXPECT_EQ(t4[15], 1.0f);
  auto t8 = code_table(QuantMethod::Uniform, 8);
  ASSERT_EQ(t8.size(), 256u);
  EXPECT_EQ(t8[1], -0.9921568632125854f);
  EXPECT_EQ(t8[127], -0.0039215087890625f);
  EXPECT_EQ(t8[128], 0.0039215087890625f);
  EXPECT_EQ(t8[254], 0.9921568632125854f);
}

TEST(QuantTable, UnsupportedBitsAreRejected) {
  EXPECT_THROW(code_table(QuantMethod::NF, 8), std::invalid_argument);
  EXPECT_THROW(code_table(QuantMethod::Uniform, 5), std::invalid_argument);
  EXPECT_FALSE(supports(QuantMethod::NF, 1));
  EXPECT_TRUE(supports(QuantMethod::Uniform, 8));
  std::vector<float> x(65, 1.0f), out(65);
  EXPECT_THROW(quant_dequant(spec(QuantMethod::NF, 4), x.data(), x.size(), out.data()),
               std::invalid_argument);
}

TEST(QuantNF4, HandComputedCodes) {
  std::vector<float> x(64, 0.0f);
  x[0] = 1.0f;
  x[1] = -1.0f;
  x[2] = 0.5f;                  // 12 thresholds below 0.5 -> code 12 (0.4407...)
  x[3] = 0.0f;                  // 7 thresholds below 0 -> code 7
  x[4] = 0.03979014977812767f;  // on a threshold: lower code
  x[5] = std::nextafter(0.03979014977812767f, 1.0f);  // just above: upper code
  x[6] = -0.8480964004993439f;                        // on the lowest threshold
  x[7] = 0.9f;
  std::vector<float> scales;
  auto c = codes_of(spec(QuantMethod::NF, 4), x, &scales);
  EXPECT_EQ(scales[0], 1.0f);
  EXPECT_EQ(c[0], 15);
  EXPECT_EQ(c[1], 0);
  EXPECT_EQ(c[2], 12);
  EXPECT_EQ(c[3], 7);
  EXPECT_EQ(c[4], 7);
  EXPECT_EQ(c[5], 8);
  EXPECT_EQ(c[6], 0);
  EXPECT_EQ(c[7], 15);
}

TEST(QuantNF4, NegativeMaximumAndDequantize) {
  std::vector<float> x(64, 0.25f);
  x[10] = -2.0f;  // absmax 2, normalized -1 -> code 0
  x[11] = 1.0f;   // normalized 0.5 -> code 12
  std::vector<float> scales;
  auto c = codes_of(spec(QuantMethod::NF, 4), x, &scales);
  EXPECT_EQ(scales[0], 2.0f);
  EXPECT_EQ(c[10], 0);
  EXPECT_EQ(c[11], 12);
  EXPECT_EQ(c[0], 9);  // 0.125: nine thresholds below it (the ninth is 0.12025)
  std::vector<float> out(64);
  quant_dequant(spec(QuantMethod::NF, 4), x.data(), 64, out.data());
  EXPECT_EQ(out[10], -2.0f);
  EXPECT_EQ(out[11], 0.44070982933044434f * 2.0f);
}

TEST(QuantNF4, AllEqualAndAllZeroBlocks) {
  std::vector<float> x(128, 0.3f);
  for (int i = 64; i < 128; ++i) x[i] = 0.0f;
  std::vector<float> out(128, 42.0f), scales;
  auto c = codes_of(spec(QuantMethod::NF, 4), x, &scales);
  EXPECT_EQ(c[0], 15);
  EXPECT_EQ(scales[1], 0.0f);
  EXPECT_EQ(c[64], 7);  // a zero block codes to the table's zero
  quant_dequant(spec(QuantMethod::NF, 4), x.data(), 128, out.data());
  for (int i = 0; i < 64; ++i) EXPECT_EQ(out[i], 0.3f);
  for (int i = 64; i < 128; ++i) {
    EXPECT_EQ(out[i], 0.0f);
    EXPECT_FALSE(std::isnan(out[i]));
  }
  std::vector<float> neg(64, -0.3f);
  auto cn = codes_of(spec(QuantMethod::NF, 4), neg);
  EXPECT_EQ(cn[0], 0);
}

TEST(QuantNF2, NearestWithTiesToLowerIndex) {
  std::vector<float> x(64, 0.0f);
  x[0] = 1.0f;                  // scale 1: x/scale is exact
  x[1] = 0.16895762085914612f;  // exactly halfway between 0 and 0.33791524: lower index
  x[2] = std::nextafter(0.16895762085914612f, 1.0f);
  x[3] = 0.6f;   // nearer 0.3379 than 1
  x[4] = -0.5f;  // exactly halfway between -1 and 0: lower index (-1)
  x[5] = -0.49f;
  auto c = codes_of(spec(QuantMethod::NF, 2), x);
  EXPECT_EQ(c[0], 3);
  EXPECT_EQ(c[1], 1);
  EXPECT_EQ(c[2], 2);
  EXPECT_EQ(c[3], 2);
  EXPECT_EQ(c[4], 0);
  EXPECT_EQ(c[5], 1);
}

TEST(QuantNF3, Codes) {
  std::vector<float> x(64, 0.0f);
  x[0] = -1.0f;   // scale 1 from a negative maximum
  x[1] = 0.45f;   // between 0.3379 (d=0.112) and 0.5626 (d=0.1126): 0.3379 -> code 5
  x[2] = -0.35f;  // between -0.4786 (d=0.1286) and -0.2171 (d=0.1329): code 1
  auto c = codes_of(spec(QuantMethod::NF, 3), x);
  EXPECT_EQ(c[0], 0);
  EXPECT_EQ(c[1], 5);
  EXPECT_EQ(c[2], 1);
  EXPECT_EQ(c[3], 3);
}

TEST(QuantUniform, MeanPlusTwoAndAHalfStd) {
  // 32 x +1 and 32 x -1: mean 0, std (Bessel) sqrt(64/63) -> scale 2.5197629928588867.
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = i % 2 ? 1.0f : -1.0f;
  std::vector<float> scales, out(64);
  auto c = codes_of(spec(QuantMethod::Uniform, 2), x, &scales);
  EXPECT_EQ(scales[0], 2.5197629928588867f);
  EXPECT_EQ(c[1], 2);  // 1/2.51976 = 0.3969 -> nearest 0.33333
  EXPECT_EQ(c[0], 1);
  quant_dequant(spec(QuantMethod::Uniform, 2), x.data(), 64, out.data());
  EXPECT_EQ(out[1], 0.8399209380149841f);
  EXPECT_EQ(out[0], -0.8399209380149841f);
}

TEST(QuantUniform, RampBlock4Bit) {
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = static_cast<float>(i) / 64.0f - 0.25f;
  std::vector<float> scales, out(64);
  auto c = codes_of(spec(QuantMethod::Uniform, 4), x, &scales);
  EXPECT_EQ(scales[0], 0.9694916605949402f);
  const int expected[64] = {6,  6,  6,  6,  6,  6,  6,  6,  7,  7,  7,  7,  7,  7,  7,  7,
                            7,  8,  8,  8,  8,  8,  8,  8,  8,  9,  9,  9,  9,  9,  9,  9,
                            9,  10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11,
                            11, 11, 12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13};
  for (int i = 0; i < 64; ++i) EXPECT_EQ(c[i], expected[i]) << i;
  quant_dequant(spec(QuantMethod::Uniform, 4), x.data(), 64, out.data());
  EXPECT_EQ(out[0], -0.1938982605934143f);
}

TEST(QuantFused, MatchesQuantizeThenDequantizeAcrossThreads) {
  std::vector<float> x(64 * 5000);
  uint32_t s = 12345;
  for (auto& v : x) {
    s = s * 1664525u + 1013904223u;
    v = (static_cast<float>(s >> 8) / 16777216.0f - 0.5f) * ((s & 7) == 0 ? 10.0f : 1.0f);
  }
  for (auto m : {QuantMethod::NF, QuantMethod::Uniform}) {
    for (int bits : {2, 3, 4, 8}) {
      if (!supports(m, bits)) continue;
      QuantSpec sp = spec(m, bits);
      std::vector<uint8_t> codes(x.size());
      std::vector<float> scales(x.size() / 64), a(x.size()), b(x.size());
      quantize(sp, x.data(), x.size(), codes.data(), scales.data());
      dequantize(sp, codes.data(), scales.data(), x.size(), a.data());
      quant_dequant(sp, x.data(), x.size(), b.data(), 3);
      EXPECT_EQ(a, b) << spec_name(sp);
    }
  }
}

// quant_dequant has its own NF4 kernel on AVX-512 CPUs (a binary search over the thresholds):
// values exactly on a threshold (times the block's scale) and one float either side of it, zero
// and all-zero blocks, negative maxima and every block size that is a multiple of 16 must give
// the bytes of quantize + dequantize, whose codes are bitsandbytes' (the tests above).
TEST(QuantFused, Nf4OnAndAroundEveryThresholdMatchesTheScalarCodes) {
  for (int bs : {16, 32, 64, 128, 48}) {
    std::vector<float> x;
    for (float scale : {1.0f, 0.0123f, 3.5f}) {
      std::vector<float> vals;
      for (float t : kNF4Thresholds)
        for (float v : {t, std::nextafter(t, -2.0f), std::nextafter(t, 2.0f)})
          vals.push_back(v * scale);
      for (float v : {0.0f, -0.0f, 1e-40f, -1e-40f}) vals.push_back(v);
      for (size_t i = 0; i < vals.size(); i += static_cast<size_t>(bs) - 1) {
        // Each block: its scale first (+-scale alternately), then up to bs - 1 of the values.
        x.push_back((i / bs) % 2 ? -scale : scale);
        for (size_t k = 0; k + 1 < static_cast<size_t>(bs); ++k)
          x.push_back(i + k < vals.size() ? vals[i + k] : 0.5f * scale);
      }
    }
    x.insert(x.end(), static_cast<size_t>(bs), 0.0f);  // an all-zero block
    QuantSpec sp{QuantMethod::NF, 4, bs};
    std::vector<uint8_t> codes(x.size());
    std::vector<float> scales(x.size() / static_cast<size_t>(bs)), a(x.size()), b(x.size(), 7.0f);
    quantize(sp, x.data(), x.size(), codes.data(), scales.data());
    dequantize(sp, codes.data(), scales.data(), x.size(), a.data());
    quant_dequant(sp, x.data(), x.size(), b.data(), 1);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i)
      ASSERT_EQ(std::bit_cast<uint32_t>(a[i]), std::bit_cast<uint32_t>(b[i]))
          << "block size " << bs << ", element " << i << " (x = " << x[i] << ")";
  }
}
