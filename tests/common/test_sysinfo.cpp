// common/sysinfo: the machine's memory as the process sees it, and byte counts as text.
#include "common/sysinfo.h"

#include <gtest/gtest.h>

#include <vector>

namespace loftqd::common {
namespace {

TEST(Sysinfo, AvailableMemoryIsPlausible) {
  const uint64_t avail = available_memory_bytes();
  EXPECT_GT(avail, 16u << 20);  // a test machine has more than 16 MiB free
  EXPECT_LT(avail, uint64_t(1) << 50);
}

TEST(Sysinfo, PeakRssCoversWhatIsTouched) {
  EXPECT_GT(peak_rss_bytes(), 0u);
  std::vector<char> big(64u << 20, 1);  // 64 MiB, touched
  volatile char sink = big[big.size() / 2];
  (void)sink;
  EXPECT_GE(peak_rss_bytes(), uint64_t(64) << 20);
}

TEST(Sysinfo, HumanBytes) {
  EXPECT_EQ(human_bytes(0), "0 B");
  EXPECT_EQ(human_bytes(999), "999 B");
  EXPECT_EQ(human_bytes(1000), "1.00 kB");
  EXPECT_EQ(human_bytes(1234567), "1.23 MB");
  EXPECT_EQ(human_bytes(687000000), "687.00 MB");
  EXPECT_EQ(human_bytes(1500000000000ull), "1.50 TB");
}

}  // namespace
}  // namespace loftqd::common
