// The fixture of the mirror's in-process tests (tests/mirror/): a Mirror on a free loopback port
// over a temporary store, a seeded repo, a plain httplib client and hub client options.
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "hub/hub.h"
#include "mirror/mirror.h"
#include "storage/store.h"
#include "support/test_util.h"

namespace mirror_test {

namespace fs = std::filesystem;
namespace hub = loftqd::hub;
namespace st = loftqd::storage;
using loftqd::mirror::Mirror;
using loftqd::mirror::MirrorOptions;
using loftqd::testing::random_bytes;
using loftqd::testing::TempDir;

inline constexpr const char* kWriteToken = "hf_mirror_write_token_42";

struct MirrorFixture : ::testing::Test {
  TempDir tmp;
  std::unique_ptr<Mirror> mirror;
  st::Store store{tmp / "store"};
  std::string commit;

  void start(MirrorOptions o = {}) {
    o.store = tmp / "store";
    o.host = "127.0.0.1";
    o.port = 0;
    o.keep_alive_timeout_s = 0;
    if (!o.write_token) o.write_token = kWriteToken;
    mirror = std::make_unique<Mirror>(o);
    mirror->start();
  }
  // org/m: config.json (regular), model.safetensors (LFS), sub/dir/t.json (regular).
  void seed(const std::string& repo = "org/m", bool is_private = false) {
    std::map<std::string, std::string> files;
    for (auto [path, content] : std::vector<std::pair<std::string, std::string>>{
             {"config.json", "{\"model_type\": \"llama\"}\n"},
             {"model.safetensors", random_bytes(70000, 3)},
             {"sub/dir/t.json", "[1, 2, 3]\n"}}) {
      bool lfs = path.ends_with(".safetensors");
      auto d = lfs ? st::Digest::lfs(st::sha256_hex(content), content.size())
                   : st::Digest::git(st::git_blob_sha1(content), content.size());
      ASSERT_TRUE(store.put_blob(repo, content, d).ok());
      files[path] = d.hex;
    }
    st::RepoMeta meta{is_private, false, st::iso8601_now(), st::iso8601_now()};
    ASSERT_TRUE(store.write_meta(repo, meta).ok());
    auto c = store.commit_snapshot(repo, "main", files, std::nullopt);
    ASSERT_TRUE(c.ok());
    commit = c.value();
  }
  httplib::Client http() const {
    httplib::Client c("127.0.0.1", mirror->port());
    return c;
  }
  hub::ClientOptions client_opts(bool with_token = true) const {
    hub::ClientOptions o;
    o.endpoint = mirror->url();
    if (with_token) o.token = kWriteToken;
    o.backoff_base_s = 0.01;
    o.max_retries = 2;
    o.disk_reserve = 0;
    return o;
  }
  void TearDown() override {
    if (mirror) mirror->stop();
  }
};

inline httplib::Headers bearer(const std::string& t = kWriteToken) {
  return {{"Authorization", "Bearer " + t}};
}

using MirrorRead = MirrorFixture;
using MirrorWrite = MirrorFixture;

}  // namespace mirror_test
