// Float conversions F32 <-> BF16 / F16 against known bit patterns, exhaustive round trips and
// independent reference roundings.
#include <gtest/gtest.h>

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "model/dtype.h"

namespace loftqd::model {
namespace {

float f(uint32_t bits) {
  return std::bit_cast<float>(bits);
}
uint32_t bits(float x) {
  return std::bit_cast<uint32_t>(x);
}

bool f16_is_nan(uint16_t h) {
  return (h & 0x7C00u) == 0x7C00u && (h & 0x03FFu) != 0;
}
bool bf16_is_nan(uint16_t h) {
  return (h & 0x7F80u) == 0x7F80u && (h & 0x007Fu) != 0;
}

TEST(DtypeNames, SizesNamesAndParsing) {
  struct Row {
    DType t;
    const char* name;
    size_t size;
  };
  const Row rows[] = {
      {DType::F64, "F64", 8},   {DType::F32, "F32", 4},         {DType::F16, "F16", 2},
      {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8},         {DType::I32, "I32", 4},
      {DType::I16, "I16", 2},   {DType::I8, "I8", 1},           {DType::U64, "U64", 8},
      {DType::U32, "U32", 4},   {DType::U16, "U16", 2},         {DType::U8, "U8", 1},
      {DType::BOOL, "BOOL", 1}, {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1}};
  for (const auto& r : rows) {
    EXPECT_EQ(dtype_size(r.t), r.size) << r.name;
    EXPECT_EQ(dtype_name(r.t), r.name);
    ASSERT_TRUE(parse_dtype(r.name).has_value()) << r.name;
    EXPECT_EQ(*parse_dtype(r.name), r.t);
  }
  EXPECT_FALSE(parse_dtype("bf16").has_value());
  EXPECT_FALSE(parse_dtype("F33").has_value());
  EXPECT_FALSE(parse_dtype("").has_value());
  EXPECT_FALSE(parse_dtype("F32 ").has_value());
  EXPECT_TRUE(is_float_dtype(DType::BF16));
  EXPECT_FALSE(is_float_dtype(DType::F64));
  EXPECT_FALSE(is_float_dtype(DType::I8));
}

TEST(DtypeBf16, KnownValues) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  // Ties to even.
  EXPECT_EQ(f32_to_bf16(f(0x3F808000)), 0x3F80);
  EXPECT_EQ(f32_to_bf16(f(0x3F818000)), 0x3F82);
  EXPECT_EQ(f32_to_bf16(f(0xBF818000)), 0xBF82);
  // Just off the tie.
  EXPECT_EQ(f32_to_bf16(f(0x3F808001)), 0x3F81);
  EXPECT_EQ(f32_to_bf16(f(0x3F807FFF)), 0x3F80);
  EXPECT_EQ(f32_to_bf16(f(0x3F80FFFF)), 0x3F81);
  // 1/3 = 0x3EAAAAAB -> 0x3EAB (the low half 0xAAAB is above the tie).
  EXPECT_EQ(f32_to_bf16(1.0f / 3.0f), 0x3EAB);
}

TEST(DtypeBf16, InfinityAndOverflow) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(f32_to_bf16(inf), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-inf), 0xFF80);
  // FLT_MAX is above the largest bf16 (0x7F7F) plus half an ulp: Inf under RNE.
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::max()), 0xFF80);
  EXPECT_EQ(f32_to_bf16(f(0x7F7F7FFF)), 0x7F7F);
  EXPECT_EQ(f32_to_bf16(f(0x7F7F8000)), 0x7F80);  // tie, 0x7F7F is odd -> rounds up to Inf
  EXPECT_EQ(f32_to_bf16(f(0x7F7E8000)), 0x7F7E);  // tie, 0x7F7E is even -> stays
  EXPECT_TRUE(std::isinf(bf16_to_f32(0x7F80)));
  EXPECT_GT(bf16_to_f32(0x7F80), 0.0f);
  EXPECT_TRUE(std::isinf(bf16_to_f32(0xFF80)));
  EXPECT_LT(bf16_to_f32(0xFF80), 0.0f);
}

TEST(DtypeBf16, NaNStaysNaN) {
  EXPECT_EQ(f32_to_bf16(f(0x7FC00000)), 0x7FC0);
  EXPECT_EQ(f32_to_bf16(f(0xFFC00000)), 0xFFC0);
  // Signaling NaN whose payload lives only in the low half: must not become Inf.
  EXPECT_EQ(f32_to_bf16(f(0x7F800001)), 0x7FC0);
  EXPECT_EQ(f32_to_bf16(f(0xFF800001)), 0xFFC0);
  // Payload in the high half is kept, quiet bit set.
  EXPECT_EQ(f32_to_bf16(f(0x7F810000)), 0x7FC1);
  // All-ones payload: rounding would carry out of the exponent; it must not.
  EXPECT_EQ(f32_to_bf16(f(0x7FFFFFFF)), 0x7FFF);
  EXPECT_EQ(f32_to_bf16(f(0xFFFFFFFF)), 0xFFFF);
  // Widening keeps sign and payload and quiets.
  EXPECT_EQ(bits(bf16_to_f32(0x7FC1)), 0x7FC10000u);
  EXPECT_EQ(bits(bf16_to_f32(0x7F81)), 0x7FC10000u);
  EXPECT_EQ(bits(bf16_to_f32(0xFF81)), 0xFFC10000u);
}

TEST(DtypeBf16, Subnormals) {
  // bf16 has float32's exponent range: its subnormals are f32 subnormals with 7 mantissa bits.
  EXPECT_EQ(f32_to_bf16(f(0x00010000)), 0x0001);
  EXPECT_EQ(bits(bf16_to_f32(0x0001)), 0x00010000u);
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.0f, -133));
  EXPECT_EQ(f32_to_bf16(f(0x00008000)), 0x0000);  // tie -> even (0)
  EXPECT_EQ(f32_to_bf16(f(0x00008001)), 0x0001);
  EXPECT_EQ(f32_to_bf16(f(0x00018000)), 0x0002);  // tie -> even (2)
  EXPECT_EQ(f32_to_bf16(f(0x80018000)), 0x8002);
  EXPECT_EQ(f32_to_bf16(f(0x007FFFFF)), 0x0080);  // largest f32 subnormal rounds to min normal
  EXPECT_EQ(f32_to_bf16(f(0x007F7FFF)), 0x007F);  // largest bf16 subnormal
  EXPECT_EQ(bits(bf16_to_f32(0x007F)), 0x007F0000u);
  EXPECT_EQ(bits(bf16_to_f32(0x8000)), 0x80000000u);  // -0 keeps its sign
}

TEST(DtypeBf16, ExhaustiveRoundTrip) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const auto b = static_cast<uint16_t>(h);
    const float x = bf16_to_f32(b);
    EXPECT_EQ(bits(x), (h << 16) | (bf16_is_nan(b) ? 0x00400000u : 0u)) << std::hex << h;
    const uint16_t back = f32_to_bf16(x);
    if (bf16_is_nan(b)) {
      EXPECT_TRUE(bf16_is_nan(back)) << std::hex << h;
      EXPECT_EQ(back, b | 0x0040) << std::hex << h;  // sign and payload kept, quieted
    } else {
      EXPECT_EQ(back, b) << std::hex << h;
    }
  }
}

// Independent reference: pick the nearer of the two neighbouring bf16 values in double
// arithmetic (exact here), ties to the even pattern; the value past the largest finite
// bf16 is treated as 2^128, as IEEE rounding with an unbounded exponent does.
uint16_t bf16_reference(float x) {
  const uint32_t b = bits(x);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000);
  const uint32_t a = b & 0x7FFFFFFF;
  const uint16_t lo = static_cast<uint16_t>(a >> 16);
  if ((a & 0xFFFF) == 0) return sign | lo;
  const uint16_t hi = lo + 1;
  const double v = std::fabs(static_cast<double>(x));
  const double lo_v = std::fabs(static_cast<double>(f(static_cast<uint32_t>(lo) << 16)));
  const double hi_v = hi == 0x7F80
                          ? std::ldexp(1.0, 128)
                          : std::fabs(static_cast<double>(f(static_cast<uint32_t>(hi) << 16)));
  const double dl = v - lo_v, dh = hi_v - v;
  if (dl < dh) return sign | lo;
  if (dh < dl) return sign | hi;
  return sign | ((lo & 1) ? hi : lo);
}

TEST(DtypeBf16, MatchesReferenceOnSampledFloats) {
  // Every 4099th float32 pattern (about a million, all exponents), plus both ties around each.
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += 4099) {
    const auto b = static_cast<uint32_t>(u);
    const float x = f(b);
    if (std::isnan(x)) continue;
    ASSERT_EQ(f32_to_bf16(x), bf16_reference(x)) << std::hex << b;
    const float tie = f((b & 0xFFFF0000u) | 0x8000u);
    if (!std::isnan(tie)) {
      ASSERT_EQ(f32_to_bf16(tie), bf16_reference(tie)) << std::hex << b;
    }
  }
}

TEST(DtypeF16, KnownValues) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_f16(0.5f), 0x3800);
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(0.1f), 0x2E66);
  EXPECT_EQ(f32_to_f16(1.0f / 3.0f), 0x3555);
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xC000), -2.0f);
  // Ties to even around 1.0 (f16 ulp at 1 is 2^-10).
  EXPECT_EQ(f32_to_f16(f(0x3F801000)), 0x3C00);  // 1 + 2^-11: tie -> 0x3C00 (even)
  EXPECT_EQ(f32_to_f16(f(0x3F803000)), 0x3C02);  // 1 + 3*2^-11: tie -> 0x3C02 (even)
  EXPECT_EQ(f32_to_f16(f(0x3F801001)), 0x3C01);  // just above the tie
  EXPECT_EQ(f32_to_f16(f(0x3F800FFF)), 0x3C00);  // just below the tie
  // Rounding that carries into the exponent: 2 - 2^-12 -> 2.0.
  EXPECT_EQ(f32_to_f16(2.0f - std::ldexp(1.0f, -12)), 0x4000);
}

TEST(DtypeF16, OverflowAndInfinity) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(f(0x477FEFFF)), 0x7BFF);  // largest float below 65520
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);       // halfway to 2^16: ties to even = Inf
  EXPECT_EQ(f32_to_f16(-65520.0f), 0xFC00);
  EXPECT_EQ(f32_to_f16(65536.0f), 0x7C00);
  EXPECT_EQ(f32_to_f16(1e10f), 0x7C00);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::max()), 0x7C00);
  EXPECT_EQ(f32_to_f16(inf), 0x7C00);
  EXPECT_EQ(f32_to_f16(-inf), 0xFC00);
  EXPECT_EQ(f16_to_f32(0x7C00), inf);
  EXPECT_EQ(f16_to_f32(0xFC00), -inf);
}

TEST(DtypeF16, NaNStaysNaN) {
  EXPECT_EQ(f32_to_f16(f(0x7FC00000)), 0x7E00);
  EXPECT_EQ(f32_to_f16(f(0xFFC00000)), 0xFE00);
  EXPECT_EQ(f32_to_f16(f(0x7F800001)), 0x7E00);  // payload below f16 precision: still NaN
  EXPECT_EQ(f32_to_f16(f(0xFF800001)), 0xFE00);
  EXPECT_EQ(f32_to_f16(f(0x7F802000)), 0x7E01);  // lowest payload bit f16 can hold
  EXPECT_EQ(f32_to_f16(f(0x7FFFFFFF)), 0x7FFF);  // must not round into the sign bit
  EXPECT_EQ(bits(f16_to_f32(0x7E00)), 0x7FC00000u);
  EXPECT_EQ(bits(f16_to_f32(0x7C01)), 0x7FC02000u);  // signaling -> quiet, payload kept
  EXPECT_EQ(bits(f16_to_f32(0xFE01)), 0xFFC02000u);
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7FFF)));
}

TEST(DtypeF16, Subnormals) {
  // f16 subnormals are k * 2^-24, k = 1..1023.
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);         // 0.5 units: tie -> 0
  EXPECT_EQ(f32_to_f16(-std::ldexp(1.0f, -25)), 0x8000);        // keeps the sign
  EXPECT_EQ(f32_to_f16(f(0x33000001)), 0x0001);                 // just above 2^-25
  EXPECT_EQ(f32_to_f16(3.0f * std::ldexp(1.0f, -26)), 0x0001);  // 0.75 units -> 1
  EXPECT_EQ(f32_to_f16(3.0f * std::ldexp(1.0f, -25)), 0x0002);  // 1.5 units: tie -> 2
  EXPECT_EQ(f32_to_f16(5.0f * std::ldexp(1.0f, -25)), 0x0002);  // 2.5 units: tie -> 2
  EXPECT_EQ(f32_to_f16(7.0f * std::ldexp(1.0f, -25)), 0x0004);  // 3.5 units: tie -> 4
  EXPECT_EQ(f32_to_f16(1023.0f * std::ldexp(1.0f, -24)), 0x03FF);
  EXPECT_EQ(f16_to_f32(0x03FF), 1023.0f * std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_f16(1023.5f * std::ldexp(1.0f, -24)), 0x0400);  // tie -> min normal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(f16_to_f32(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::denorm_min()), 0x8000);
  EXPECT_EQ(bits(f16_to_f32(0x8000)), 0x80000000u);
}

TEST(DtypeF16, ExhaustiveRoundTrip) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const auto b = static_cast<uint16_t>(h);
    const float x = f16_to_f32(b);
    const uint16_t back = f32_to_f16(x);
    const int exp = (h >> 10) & 0x1F;
    const int mant = h & 0x3FF;
    const float sign = (h & 0x8000) ? -1.0f : 1.0f;
    if (f16_is_nan(b)) {
      EXPECT_TRUE(std::isnan(x)) << std::hex << h;
      EXPECT_EQ(std::signbit(x), (h & 0x8000) != 0) << std::hex << h;
      EXPECT_TRUE(f16_is_nan(back)) << std::hex << h;
      EXPECT_EQ(back, b | 0x0200) << std::hex << h;  // sign and payload kept, quieted
      continue;
    }
    // Decode independently from the IEEE definition.
    float want;
    if (exp == 0x1F) {
      want = sign * std::numeric_limits<float>::infinity();
    } else if (exp == 0) {
      want = sign * std::ldexp(static_cast<float>(mant), -24);
    } else {
      want = sign * std::ldexp(static_cast<float>(1024 + mant), exp - 25);
    }
    EXPECT_EQ(bits(x), bits(want)) << std::hex << h;
    EXPECT_EQ(back, b) << std::hex << h;
  }
}

#ifdef __FLT16_MAX__
// The compiler's own _Float16 conversion (IEEE, round to nearest even) as a reference.
__extension__ typedef _Float16 half_t;
uint16_t f16_reference(float x) {
  const half_t h = static_cast<half_t>(x);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}

TEST(DtypeF16, MatchesCompilerFloat16OnSampledFloats) {
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += 4099) {
    const auto b = static_cast<uint32_t>(u);
    const float x = f(b);
    if (std::isnan(x)) continue;
    ASSERT_EQ(f32_to_f16(x), f16_reference(x)) << std::hex << b;
    const float tie = f((b & 0xFFFFE000u) | 0x1000u);
    if (!std::isnan(tie)) {
      ASSERT_EQ(f32_to_f16(tie), f16_reference(tie)) << std::hex << b;
    }
  }
  // Every subnormal and near-subnormal exponent, densely.
  for (uint32_t b = 0x32000000u; b < 0x39000000u; b += 97) {
    ASSERT_EQ(f32_to_f16(f(b)), f16_reference(f(b))) << std::hex << b;
  }
}
#endif

TEST(DtypeBulk, LittleEndianBytes) {
  const float src[2] = {1.0f, -2.0f};
  std::array<unsigned char, 9> buf{};
  // Unaligned destination on purpose.
  from_f32(DType::F16, src, buf.data() + 1, 2);
  EXPECT_EQ(buf[1], 0x00);
  EXPECT_EQ(buf[2], 0x3C);
  EXPECT_EQ(buf[3], 0x00);
  EXPECT_EQ(buf[4], 0xC0);
  from_f32(DType::BF16, src, buf.data() + 1, 2);
  EXPECT_EQ(buf[1], 0x80);
  EXPECT_EQ(buf[2], 0x3F);
  EXPECT_EQ(buf[3], 0x00);
  EXPECT_EQ(buf[4], 0xC0);
  from_f32(DType::F32, src, buf.data() + 1, 2);
  const std::array<unsigned char, 8> want = {0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0};
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(buf[1 + i], want[i]) << i;

  float out[2] = {0, 0};
  to_f32(DType::F32, buf.data() + 1, out, 2);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  const unsigned char h[5] = {0xEE, 0xFF, 0x7B, 0x01, 0x00};  // 0x7BFF, 0x0001
  to_f32(DType::F16, h + 1, out, 2);
  EXPECT_EQ(out[0], 65504.0f);
  EXPECT_EQ(out[1], std::ldexp(1.0f, -24));
  const unsigned char bh[5] = {0xEE, 0x80, 0x3F, 0xAB, 0x3E};  // 0x3F80, 0x3EAB
  to_f32(DType::BF16, bh + 1, out, 2);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 0.333984375f);
  to_f32(DType::F16, h, out, 0);  // n = 0 is fine
}

TEST(DtypeBulk, RoundToDtype) {
  std::vector<float> x = {1.0f + std::ldexp(1.0f, -8), 0.1f, 70000.0f, 1.0f / 3.0f};
  auto y = x;
  round_to_dtype(DType::F32, y.data(), y.size());
  EXPECT_EQ(y, x);
  y = x;
  round_to_dtype(DType::BF16, y.data(), y.size());
  EXPECT_EQ(y[0], 1.0f);  // tie -> even
  EXPECT_EQ(y[1], 0.10009765625f);
  EXPECT_EQ(y[2], 70144.0f);
  EXPECT_EQ(y[3], 0.333984375f);
  y = x;
  round_to_dtype(DType::F16, y.data(), y.size());
  EXPECT_EQ(y[0], 1.00390625f);  // exact in f16
  EXPECT_EQ(y[1], 0.0999755859375f);
  EXPECT_TRUE(std::isinf(y[2]));
  EXPECT_EQ(y[3], 0.333251953125f);
}

TEST(DtypeBulk, RejectsNonFloatDtypes) {
  float x = 1.0f;
  unsigned char b[8];
  EXPECT_THROW(from_f32(DType::I32, &x, b, 1), std::invalid_argument);
  EXPECT_THROW(to_f32(DType::F64, b, &x, 1), std::invalid_argument);
  EXPECT_THROW(round_to_dtype(DType::U8, &x, 1), std::invalid_argument);
}

}  // namespace
}  // namespace loftqd::model
