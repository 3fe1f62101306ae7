// daemon/metrics: the exposition text follows the rules of the Prometheus text format (0.0.4)
// that scrapers rely on: every family announced once by HELP and TYPE before its samples, each
// series (name + labels) once, `le` bounds in their plain decimal form, cumulative buckets ending
// in +Inf == _count. (promtool check metrics applies the same rules; see test_run for a scrape
// of the daemon checked by promtool when it is installed.)
#include "daemon/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "support/test_util.h"

using loftqd::daemon::Metrics;
using loftqd::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

namespace {

struct Sample {
  std::string name, labels;  // labels without braces, as written
  std::string value;
};

// Checks the format rules; returns the samples by "name{labels}".
std::map<std::string, Sample> parse_and_check(const std::string& text) {
  std::map<std::string, std::string> type_of;  // family -> type
  std::set<std::string> helped;
  std::map<std::string, Sample> series;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    EXPECT_FALSE(line.empty()) << "blank line in the exposition";
    if (line.rfind("# HELP ", 0) == 0) {
      const std::string fam = line.substr(7, line.find(' ', 7) - 7);
      EXPECT_TRUE(helped.insert(fam).second) << "second HELP for " << fam;
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream t(line.substr(7));
      std::string fam, type;
      t >> fam >> type;
      EXPECT_TRUE(helped.count(fam)) << "TYPE before HELP for " << fam;
      EXPECT_TRUE(type_of.emplace(fam, type).second) << "second TYPE for " << fam;
      EXPECT_THAT((std::vector<std::string>{"counter", "gauge", "histogram"}),
                  ::testing::Contains(type))
          << line;
      continue;
    }
    Sample s;
    const size_t brace = line.find('{'), space = line.rfind(' ');
    if (brace != std::string::npos && brace < space) {
      s.name = line.substr(0, brace);
      s.labels = line.substr(brace + 1, line.rfind('}') - brace - 1);
    } else {
      s.name = line.substr(0, space);
    }
    s.value = line.substr(space + 1);
    std::string fam = s.name;
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (!type_of.count(fam) && fam.size() > std::string(suffix).size() && fam.ends_with(suffix))
        fam = fam.substr(0, fam.size() - std::string(suffix).size());
    EXPECT_TRUE(type_of.count(fam)) << "sample before its TYPE: " << line;
    if (type_of[fam] == "counter") {
      EXPECT_TRUE(s.name.ends_with("_total")) << line;
    }
    const std::string key = s.name + "{" + s.labels + "}";
    EXPECT_TRUE(series.emplace(key, s).second) << "duplicate series " << key;
  }
  return series;
}

}  // namespace

TEST(Metrics, ExpositionFollowsTheTextFormatRules) {
  TempDir tmp;
  auto db = loftqd::storage::StateDb::open(tmp / "s.db");
  db->repo_seen("org/kept", "main", "c1", 100);
  db->repo_processed("org/kept", "c1", 200);
  db->repo_check_failed("org/broken", "main", "RepoNotFound: org/broken", 300);
  db->repo_seen("org/removed", "main", "c1", 100);
  db->repo_processed("org/removed", "c1", 150);
  Metrics m;
  m.tensor_quantized(0.05);  // exactly on a bound: counted in it (le is <=)
  m.tensor_quantized(0.3);
  m.tensor_quantized(1000);  // only in +Inf
  m.job_finished(true, 42);
  m.step_finished("download", 2);
  m.step_finished("quantize", 30);
  m.check_failed("org/broken");
  m.check_failed("org/removed");
  m.config_reloaded(false, 400);
  m.set_store(tmp.path());
  m.set_watched({"org/kept", "org/broken"});
  const std::string text = m.render(db.get());
  const auto s = parse_and_check(text);

  // le: the bucket bounds as written in the Prometheus docs, nothing like 0.050000000000000003.
  const std::vector<std::pair<std::string, std::string>> tensor_buckets = {
      {"0.05", "1"}, {"0.1", "1"}, {"0.25", "1"}, {"0.5", "2"}, {"1", "2"},
      {"2.5", "2"},  {"5", "2"},   {"10", "2"},   {"30", "2"},  {"60", "2"},
      {"120", "2"},  {"300", "2"}, {"+Inf", "3"}};
  for (const auto& [le, n] : tensor_buckets) {
    const auto it = s.find("loftqd_tensor_seconds_bucket{le=\"" + le + "\"}");
    ASSERT_NE(it, s.end()) << le << "\n" << text;
    EXPECT_EQ(it->second.value, n) << le;
  }
  EXPECT_EQ(s.at("loftqd_tensor_seconds_count{}").value, "3");
  EXPECT_EQ(s.at("loftqd_tensor_seconds_sum{}").value, "1000.35");
  EXPECT_EQ(s.at("loftqd_job_duration_seconds_bucket{le=\"60\"}").value, "1");
  EXPECT_EQ(s.at("loftqd_job_duration_seconds_bucket{le=\"10\"}").value, "0");
  EXPECT_EQ(s.at("loftqd_step_duration_seconds_bucket{step=\"quantize\",le=\"60\"}").value, "1");
  EXPECT_EQ(s.at("loftqd_step_duration_seconds_count{step=\"publish\"}").value, "0");
  EXPECT_EQ(s.at("loftqd_build_info{version=\"" LOFTQD_VERSION "\"}").value, "1");
  EXPECT_EQ(s.at("loftqd_config_last_reload_successful{}").value, "0");
  EXPECT_EQ(s.at("loftqd_check_errors_total{repo=\"org/broken\"}").value, "1");
  EXPECT_EQ(s.at("loftqd_last_check_timestamp_seconds{repo=\"org/broken\"}").value, "300");
  EXPECT_EQ(s.at("loftqd_last_check_ok{repo=\"org/broken\"}").value, "0");
  EXPECT_EQ(s.at("loftqd_last_check_ok{repo=\"org/kept\"}").value, "1");
  EXPECT_EQ(s.at("loftqd_last_success_timestamp_seconds{repo=\"org/kept\"}").value, "200");
  EXPECT_TRUE(s.count("loftqd_store_free_bytes{}"));
  // A repo that left the configuration leaves no series behind.
  EXPECT_THAT(text, Not(HasSubstr("org/removed")));
}

TEST(Metrics, PromNumberIsTheShortestExactDecimal) {
  EXPECT_EQ(loftqd::daemon::prom_number(0.05), "0.05");
  EXPECT_EQ(loftqd::daemon::prom_number(2.5), "2.5");
  EXPECT_EQ(loftqd::daemon::prom_number(300), "300");
  EXPECT_EQ(loftqd::daemon::prom_number(0.1 + 0.2), "0.30000000000000004");  // not 0.3: exact
  EXPECT_EQ(loftqd::daemon::prom_number(std::numeric_limits<double>::infinity()), "+Inf");
}
