// daemon/progress: the bar's ETA from the rate so far.
#include "daemon/progress.h"

#include <gtest/gtest.h>

#include <cstdio>

using loftqd::daemon::Progress;

TEST(Progress, EtaFromTheRateSoFar) {
  FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  {
    Progress p("quantize", 100, out);
    EXPECT_EQ(p.eta_text(0, 5.0), "");  // no rate yet
    EXPECT_EQ(p.eta_text(25, 10.0), ", ETA 30s");
    EXPECT_EQ(p.eta_text(50, 150.0), ", ETA 2m30s");
    EXPECT_EQ(p.eta_text(1, 100.0), ", ETA 2h45m");
    EXPECT_EQ(p.eta_text(100, 100.0), "");  // done
  }
  std::fclose(out);
}
