// `loftqd status --config F`: the jobs table, and config errors as exit code 2.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "storage/state.h"
#include "support/test_util.h"

using loftqd::testing::run_loftqd;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using ::testing::HasSubstr;

TEST(Status, BadConfigIsAUsageErrorListingEveryProblem) {
  TempDir tmp;
  spit(tmp / "c.json",
       R"({"store": 5, "repos": [{"repo": "org/m", "loftq": {"rank": -1}}], "bogus": true})");
  auto r = run_loftqd({"status", "--config", (tmp / "c.json").string()});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("c.json"));
  EXPECT_THAT(r.out, HasSubstr("/store: must be a string"));
  EXPECT_THAT(r.out, HasSubstr("/repos/0/loftq/rank: must be >= 1"));
  EXPECT_THAT(r.out, HasSubstr("/bogus: unknown key"));
  r = run_loftqd({"status", "--config", (tmp / "missing.json").string()});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("cannot read"));
}

TEST(Status, PrintsReposAndJobs) {
  TempDir tmp;
  const std::string store = (tmp / "store").string();
  spit(tmp / "c.json", R"({"store": ")" + store + R"(", "repos": [{"repo": "org/m"}]})");
  auto r = run_loftqd({"status", "--config", (tmp / "c.json").string()});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("no state database"));
  std::filesystem::create_directories(tmp / "store");
  {
    auto db = loftqd::storage::StateDb::open(tmp / "store" / "loftqd.db");
    db->repo_seen("org/m", "main", "0123456789abcdef", 1);
    auto j = db->enqueue("org/m", "main", "0123456789abcdef", "feedfacecafebeef", "org/m-loftq", 2);
    db->record_failure(j.id, "RepoNotFound: org/m", true, 5, 0, 3);
  }
  r = run_loftqd({"status", "--config", (tmp / "c.json").string()});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("org/m"));
  EXPECT_THAT(r.out, HasSubstr("failed"));
  EXPECT_THAT(r.out, HasSubstr("RepoNotFound: org/m"));
  EXPECT_THAT(r.out, HasSubstr("failed=1"));
}
