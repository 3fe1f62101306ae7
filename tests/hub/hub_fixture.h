// The fixture of the Hub client suites (test_api, test_transport, test_download): a
// fault-injecting test Hub (tests/fault) with three files, and client options that retry fast.
// A named namespace, so that every file's HubClient tests share one fixture type.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "fault/fault_server.h"
#include "hub/hub.h"
#include "storage/store.h"
#include "support/test_util.h"

namespace loftqd::testing::hubtest {

namespace fs = std::filesystem;
namespace hub = loftqd::hub;

inline constexpr const char* kToken = "hf_testsecret_0123456789";

struct HubFixture : ::testing::Test {
  FaultServer srv;
  TempDir tmp;
  void SetUp() override {
    srv.add_file("config.json", "{\"model_type\": \"llama\"}\n", false);
    srv.add_file("model.safetensors", random_bytes(300000, 1), true);
    srv.add_file("sub/tokenizer.json", "{\"tokens\": [1, 2, 3]}\n", false);
  }
  hub::ClientOptions opts() const {
    hub::ClientOptions o;
    o.endpoint = srv.url();
    o.token = kToken;
    o.backoff_base_s = 0.01;
    o.backoff_cap_s = 0.05;
    o.max_retries = 3;
    o.connect_timeout_s = 2;
    o.stall_timeout_s = 2;
    o.disk_reserve = 0;
    return o;
  }
  hub::SnapshotRequest store_req() const {
    hub::SnapshotRequest r;
    r.repo = srv.repo();
    r.store = tmp / "store";
    return r;
  }
  // Bytes of the given files (default: the three of SetUp).
  uint64_t total_size(std::vector<std::string> paths = {"config.json", "model.safetensors",
                                                        "sub/tokenizer.json"}) const {
    uint64_t n = 0;
    for (const auto& p : paths) n += srv.content(p).size();
    return n;
  }
  fs::path snapshot() const {
    return tmp / "store" / "models--org--model" / "snapshots" / srv.commit();
  }
  // No partials, temp files or half-made snapshots anywhere in the store.
  void expect_clean_store(bool expect_snapshot) const {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(tmp / "store", ec); !ec && it != fs::end(it);
         it.increment(ec)) {
      auto name = it->path().filename().string();
      EXPECT_EQ(name.find(".incomplete"), std::string::npos) << it->path();
      EXPECT_EQ(name.find(".tmp"), std::string::npos) << it->path();
    }
    EXPECT_EQ(fs::exists(snapshot()), expect_snapshot);
  }
};

}  // namespace loftqd::testing::hubtest
