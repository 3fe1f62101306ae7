#include "common/parse.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <stdexcept>

namespace loftqd::common {
namespace {

using ::testing::HasSubstr;

TEST(ParseSize, BinaryAndDecimalUnitsAsDocumented) {
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("0"), 0u);
  EXPECT_EQ(parse_size("512B"), 512u);
  // K M G T and the IEC spellings are powers of 1024; KB MB GB TB powers of 1000.
  EXPECT_EQ(parse_size("10G"), 10ull << 30);
  EXPECT_EQ(parse_size("10GiB"), 10ull << 30);
  EXPECT_EQ(parse_size("10GB"), 10000000000ull);
  EXPECT_EQ(parse_size("512M"), 512ull << 20);
  EXPECT_EQ(parse_size("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_size("1.5GB"), 1500000000ull);
  EXPECT_EQ(parse_size("1.5M"), 1572864u);
  EXPECT_EQ(parse_size("2k"), 2048u);
  EXPECT_EQ(parse_size("2kb"), 2000u);
  EXPECT_EQ(parse_size("1T"), 1ull << 40);
  EXPECT_EQ(parse_size(" 8K "), 8192u);
}

TEST(ParseSize, RejectsWhatIsNotASize) {
  for (const char* bad : {"", "ten", "12Q", "-5G", "G", "1.2.3M", "10 GG", "1e3", "99999999999T"})
    EXPECT_EQ(parse_size(bad), std::nullopt) << bad;
  EXPECT_THAT(size_problem("12Q"), HasSubstr("unknown unit"));
  EXPECT_THAT(size_problem("99999999999T"), HasSubstr("too large"));
  EXPECT_EQ(size_problem("10G"), "");
  try {
    (void)parse_size_or_throw("--limit-rate", "fast");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("--limit-rate: 'fast' is not a size"));
  }
}

TEST(ParseDuration, UnitsCombinationsAndPlainSeconds) {
  EXPECT_EQ(parse_duration("15m"), 900);
  EXPECT_EQ(parse_duration("1h30m"), 5400);
  EXPECT_EQ(parse_duration("90s"), 90);
  EXPECT_EQ(parse_duration("1d"), 86400);
  EXPECT_EQ(parse_duration("600"), 600);
  for (const char* bad : {"", "0", "0s", "-5m", "5x", "m", "1h30", "5 m"})
    EXPECT_EQ(parse_duration(bad), std::nullopt) << bad;
}

}  // namespace
}  // namespace loftqd::common
