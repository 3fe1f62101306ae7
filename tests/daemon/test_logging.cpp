// daemon/logging: the json log format's fields, taken from the message's key=value tokens.
#include "daemon/logging.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using loftqd::daemon::log_line_json;

TEST(Logging, JsonLineCarriesTheMessageAndItsFields) {
  const auto j = log_line_json(
      "2026-12-01T10:02:43.123+00:00", "warning",
      "repo=up/tiny commit=0123abcd job=7 step=failed permanent=no error=\"a b=c\" seconds=1.5");
  EXPECT_EQ(j["time"], "2026-12-01T10:02:43.123+00:00");
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["repo"], "up/tiny");
  EXPECT_EQ(j["commit"], "0123abcd");
  EXPECT_EQ(j["job"], 7);
  EXPECT_EQ(j["step"], "failed");
  EXPECT_EQ(j["error"], "a b=c");  // quoted values keep their spaces and '='
  EXPECT_EQ(j["duration_s"], 1.5);
  EXPECT_FALSE(j.contains("seconds"));
  EXPECT_EQ(j["msg"],
            "repo=up/tiny commit=0123abcd job=7 step=failed permanent=no "
            "error=\"a b=c\" seconds=1.5");
  // Plain text has no fields; the reserved keys are never overwritten by the message.
  const auto t = log_line_json("t", "info", "run: stopped cleanly level=x time=y");
  EXPECT_EQ(t["level"], "info");
  EXPECT_EQ(t["time"], "t");
  EXPECT_EQ(t.size(), 3u);
}

TEST(Logging, OnlyTextAndJsonAreFormats) {
  EXPECT_NO_THROW(loftqd::daemon::set_log_format("json"));
  EXPECT_NO_THROW(loftqd::daemon::set_log_format("text"));
  EXPECT_THROW(loftqd::daemon::set_log_format("xml"), std::invalid_argument);
}

// An idle poll's summary is logged once; a change logs how often it repeated, then the new line.
TEST(Logging, RepeatedLinesAreCollapsed) {
  using V = std::vector<std::string>;
  loftqd::daemon::RepeatFilter f;
  const std::string idle = "run: pass (poll) checked 1 repos (0 failed), 0 jobs queued";
  EXPECT_EQ(f.next(idle), V{idle});
  EXPECT_EQ(f.next(idle), V{});
  EXPECT_EQ(f.next(idle), V{});
  EXPECT_EQ(f.next("run: pass (webhook) 1 done"),
            (V{"(previous line repeated 2 times: " + idle + ")", "run: pass (webhook) 1 done"}));
  EXPECT_EQ(f.next(idle), V{idle});  // after another line it is new again
  EXPECT_EQ(f.next(idle), V{});
  EXPECT_EQ(f.flush(), V{"(previous line repeated 1 time: " + idle + ")"});
  EXPECT_EQ(f.next(idle), V{idle});  // a failure came between: logged again
  EXPECT_EQ(f.flush(), V{});
}
