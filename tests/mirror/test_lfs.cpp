// mirror/lfs.cpp: multipart LFS uploads in parts through the hub client, onto a new branch.
// (The presigned basic upload and its rejection of wrong bytes: test_write_api.cpp.)
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

#include "hub/hub.h"
#include "mirror/mirror.h"
#include "mirror_fixture.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using loftqd::testing::random_bytes;
using loftqd::testing::slurp;
using loftqd::testing::spit;
namespace hub = loftqd::hub;
using loftqd::mirror::MirrorOptions;
using mirror_test::MirrorWrite;

TEST_F(MirrorWrite, MultipartUploadsAndBranches) {
  MirrorOptions o;
  o.multipart_threshold = 100000;
  o.multipart_chunk = 40000;
  auto parts = std::make_shared<std::atomic<int>>(0);
  o.on_request = [parts](const std::string& method, const std::string& path, int status) {
    if (method == "PUT" && path.find("/part/") != std::string::npos && status == 200) ++*parts;
  };
  start(o);
  fs::path dir = tmp / "layout";
  fs::create_directories(dir);
  spit(dir / "big.safetensors", random_bytes(250001, 9));
  spit(dir / "config.json", "{}\n");
  hub::Client c(client_opts());
  hub::PublishRequest pr;
  pr.dir = dir;
  pr.repo = "org/big";
  pr.branch = "dev";
  auto pub = c.upload_folder(pr);
  ASSERT_TRUE(pub.ok()) << pub.error().message;
  EXPECT_EQ(parts->load(), 7);  // 250001 bytes in parts of 40000
  auto main_info = c.repo_info("org/big", "main");
  ASSERT_TRUE(main_info.ok());
  EXPECT_TRUE(main_info.value().siblings.empty());  // the branch was created from main
  hub::SnapshotRequest sr;
  sr.repo = "org/big";
  sr.revision = "dev";
  sr.local_dir = tmp / "back";
  auto got = c.snapshot_download(sr);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(slurp(tmp / "back/big.safetensors"), slurp(dir / "big.safetensors"));
  for (auto& e : fs::directory_iterator(store.repo_dir("org/big") / "blobs"))
    EXPECT_EQ(e.path().filename().string().find(".multipart"), std::string::npos);
}

// What kill -9 during an LFS upload leaves (an .upload-{hex} temp, an abandoned .multipart) is
// removed when the next mirror starts once older than storage::kStaleTempAge; an upload younger
// than that stays for its client to finish.
TEST_F(MirrorWrite, StartupRemovesStaleUploadTemps) {
  seed();
  const auto blobs = store.repo_dir("org/m") / "blobs";
  const std::string oid = loftqd::storage::sha256_hex("an object");
  const auto upload = blobs / (oid + ".upload-0a1b2c3d4e5f");
  const auto multipart = blobs / (oid + ".multipart");
  const auto fresh = blobs / (oid + ".upload-ffffffffffff");
  for (const auto& p : {upload, multipart, fresh}) spit(p, random_bytes(5000, 9));
  auto age = [](const fs::path& p, std::chrono::seconds by) {
    fs::last_write_time(p, fs::last_write_time(p) - by);
  };
  age(upload, loftqd::storage::kStaleTempAge + std::chrono::minutes(10));
  age(multipart, loftqd::storage::kStaleTempAge + std::chrono::hours(48));
  age(fresh, std::chrono::minutes(30));
  start();
  EXPECT_FALSE(fs::exists(upload));
  EXPECT_FALSE(fs::exists(multipart));
  EXPECT_TRUE(fs::exists(fresh));
  // The repo still serves what it had.
  auto r = http().Get("/org/m/resolve/main/config.json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

// Under the store's lock (serve, run) nothing else can be writing: every upload temp a killed
// predecessor left goes at start, however young; blobs and partial downloads stay.
TEST_F(MirrorWrite, StartupUnderTheStoreLockRemovesEveryUploadTemp) {
  seed();
  const auto blobs = store.repo_dir("org/m") / "blobs";
  const std::string oid = loftqd::storage::sha256_hex("an object");
  const auto upload = blobs / (oid + ".upload-ffffffffffff");
  const auto multipart = blobs / (oid + ".multipart");
  const auto partial = blobs / (oid + ".incomplete");
  for (const auto& p : {upload, multipart, partial}) spit(p, random_bytes(5000, 9));
  size_t blobs_before = 0;
  for (auto& e : fs::directory_iterator(blobs)) blobs_before += e.is_regular_file();
  MirrorOptions o;
  o.store_locked = true;
  start(o);
  EXPECT_FALSE(fs::exists(upload));
  EXPECT_FALSE(fs::exists(multipart));
  EXPECT_TRUE(fs::exists(partial));  // a download partial resumes; not an upload temp
  size_t blobs_after = 0;
  for (auto& e : fs::directory_iterator(blobs)) blobs_after += e.is_regular_file();
  EXPECT_EQ(blobs_after, blobs_before - 2);
  auto r = http().Get("/org/m/resolve/main/config.json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}
