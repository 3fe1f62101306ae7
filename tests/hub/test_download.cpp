// hub/download.cpp against the fault-injecting test Hub (tests/fault): downloads into the store
// and a local dir, shared blobs, patterns, resume after cuts, stalls and earlier runs, hash
// mismatches, unsafe names, parallel ranges, offline mode and the disk reserve.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "hub/hub.h"
#include "hub_fixture.h"
#include "storage/store.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using loftqd::testing::FaultServer;
using loftqd::testing::random_bytes;
using loftqd::testing::raw_safetensors;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using loftqd::testing::hubtest::kToken;
namespace hub = loftqd::hub;
namespace st = loftqd::storage;

using HubClient = loftqd::testing::hubtest::HubFixture;

TEST_F(HubClient, FetchWritesTheCacheLayout) {
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().commit, srv.commit());
  EXPECT_EQ(r.value().files, 3u);
  EXPECT_EQ(r.value().downloaded, 3u);
  EXPECT_EQ(r.value().bytes, total_size());
  auto repo = tmp / "store" / "models--org--model";
  EXPECT_EQ(slurp(repo / "refs" / "main"), srv.commit());
  auto sha = st::sha256_hex(srv.content("model.safetensors"));
  EXPECT_EQ(fs::read_symlink(snapshot() / "model.safetensors").string(), "../../blobs/" + sha);
  EXPECT_EQ(fs::read_symlink(snapshot() / "sub/tokenizer.json").string(),
            "../../../blobs/" + st::git_blob_sha1(srv.content("sub/tokenizer.json")));
  for (auto p : {"config.json", "model.safetensors", "sub/tokenizer.json"})
    EXPECT_EQ(slurp(snapshot() / p), srv.content(p)) << p;
  expect_clean_store(true);
  // Every request to the endpoint carried the token.
  for (const auto& q : srv.requests()) EXPECT_EQ(q.authorization, std::string("Bearer ") + kToken);

  // A second fetch finds everything in place and downloads nothing.
  auto again = c.snapshot_download(store_req());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again.value().downloaded, 0u);
  EXPECT_EQ(again.value().bytes, 0u);
}

TEST_F(HubClient, SharedAndEmptyBlobsAreFetchedOnce) {
  srv.add_file("copy/tokenizer.json", srv.content("sub/tokenizer.json"), false);
  srv.add_file("copy.safetensors", srv.content("model.safetensors"), true);
  srv.add_file("empty.txt", "", false);
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().files, 6u);
  EXPECT_EQ(r.value().downloaded, 4u);  // config, model, tokenizer, empty
  EXPECT_EQ(r.value().bytes, total_size({"config.json", "model.safetensors",
                                         "sub/tokenizer.json"}));  // shared blobs once
  EXPECT_EQ(slurp(snapshot() / "copy.safetensors"), srv.content("model.safetensors"));
  EXPECT_EQ(slurp(snapshot() / "copy/tokenizer.json"), srv.content("sub/tokenizer.json"));
  EXPECT_EQ(slurp(snapshot() / "empty.txt"), "");
  expect_clean_store(true);
}

TEST_F(HubClient, IncludeExcludePatterns) {
  hub::Client c(opts());
  auto req = store_req();
  req.allow = {"*.json"};
  req.ignore = {"sub/*"};
  auto r = c.snapshot_download(req);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().files, 1u);
  EXPECT_TRUE(fs::exists(snapshot() / "config.json"));
  EXPECT_FALSE(fs::exists(snapshot() / "model.safetensors"));
  EXPECT_FALSE(fs::exists(snapshot() / "sub"));
}

TEST_F(HubClient, LocalDirWritesPlainFiles) {
  hub::Client c(opts());
  hub::SnapshotRequest req;
  req.repo = "org/model";
  req.local_dir = tmp / "out";
  auto r = c.snapshot_download(req);
  ASSERT_TRUE(r.ok()) << r.error().message;
  for (auto p : {"config.json", "model.safetensors", "sub/tokenizer.json"}) {
    EXPECT_FALSE(fs::is_symlink(tmp / "out" / p));
    EXPECT_EQ(slurp(tmp / "out" / p), srv.content(p));
  }
  EXPECT_EQ(r.value().bytes, total_size());
  auto meta = slurp(tmp / "out/.cache/huggingface/download/model.safetensors.metadata");
  EXPECT_EQ(meta.substr(0, 41), srv.commit() + "\n");
  auto again = c.snapshot_download(req);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again.value().downloaded, 0u);
  EXPECT_EQ(again.value().bytes, 0u);
}

TEST_F(HubClient, DroppedConnectionResumesWithRange) {
  srv.drop_after("model.safetensors", 100000, 1);
  srv.drop_after("model.safetensors", 50000, 1);  // the resumed request is cut too
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
  std::vector<std::string> ranges;
  for (const auto& q : srv.requests())
    if (q.path.find("model.safetensors") != std::string::npos) ranges.push_back(q.range);
  ASSERT_EQ(ranges.size(), 3u);
  EXPECT_EQ(ranges[0], "");
  EXPECT_EQ(ranges[1], "bytes=100000-");
  EXPECT_EQ(ranges[2], "bytes=150000-");
  EXPECT_EQ(r.value().bytes, total_size());  // the resumed ranges, each byte once
  expect_clean_store(true);
}

TEST_F(HubClient, TruncatedBodyResumes) {
  srv.truncate("model.safetensors", 1234, 1);
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
  EXPECT_EQ(srv.count("GET", "model.safetensors"), 2u);
}

TEST_F(HubClient, PartialFromAnEarlierRunIsResumed) {
  std::string data = srv.content("model.safetensors");
  auto sha = st::sha256_hex(data);
  auto partial = tmp / "store/models--org--model/blobs" / (sha + ".incomplete");
  fs::create_directories(partial.parent_path());
  spit(partial, data.substr(0, 200000));
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), data);
  for (const auto& q : srv.requests())
    if (q.path.find("model.safetensors") != std::string::npos) {
      EXPECT_EQ(q.range, "bytes=200000-");
    }
  EXPECT_EQ(r.value().bytes, total_size() - 200000);  // the earlier run's bytes are not counted
}

TEST_F(HubClient, AGarbagePartialIsDroppedAndDownloadedAgain) {
  std::string data = srv.content("model.safetensors");
  auto partial = tmp / "store/models--org--model/blobs" / (st::sha256_hex(data) + ".incomplete");
  fs::create_directories(partial.parent_path());
  spit(partial, std::string(100000, 'x'));  // not a prefix of the file
  hub::Client c(opts());
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), data);
  expect_clean_store(true);
}

TEST_F(HubClient, StalledTransferIsCutAndResumed) {
  srv.stall("model.safetensors", 4096, 2, 1);
  auto o = opts();
  o.stall_timeout_s = 1;
  hub::Client c(o);
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
}

TEST_F(HubClient, WrongSha256IsRetriedOnceThenFails) {
  srv.corrupt("model.safetensors", 1);
  {
    hub::Client c(opts());
    auto r = c.snapshot_download(store_req());
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
    // Received twice, so counted twice.
    EXPECT_EQ(r.value().bytes, total_size() + srv.content("model.safetensors").size());
  }
  FaultServer other;
  other.add_file("w.safetensors", random_bytes(5000, 2), true);
  other.corrupt("w.safetensors", 2);
  auto o = opts();
  o.endpoint = other.url();
  hub::Client c(o);
  hub::SnapshotRequest req;
  req.repo = "org/model";
  req.store = tmp / "store2";
  auto bad = c.snapshot_download(req);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().kind, hub::ErrorKind::HashMismatch);
  EXPECT_NE(bad.error().message.find("sha256 mismatch"), std::string::npos) << bad.error().message;
  EXPECT_NE(bad.error().message.find("file 'w.safetensors'"), std::string::npos);
  auto blobs = tmp / "store2/models--org--model/blobs";
  EXPECT_TRUE(fs::is_empty(blobs));  // neither the partial nor a bad blob
  EXPECT_FALSE(fs::exists(tmp / "store2/models--org--model/snapshots"));
  EXPECT_FALSE(fs::exists(tmp / "store2/models--org--model/refs"));
}

TEST_F(HubClient, PathTraversalInTheTreeIsRefused) {
  for (const char* evil : {"../evil.txt", "/etc/passwd", ".git/config", "a\\b"}) {
    FaultServer bad;
    bad.add_file("config.json", "{}", false);
    bad.add_tree_entry(evil);
    auto o = opts();
    o.endpoint = bad.url();
    hub::Client c(o);
    hub::SnapshotRequest req;
    req.repo = "org/model";
    req.store = tmp / "evil-store";
    auto r = c.snapshot_download(req);
    ASSERT_FALSE(r.ok()) << evil;
    EXPECT_EQ(r.error().kind, hub::ErrorKind::UnsafePath);
    EXPECT_NE(r.error().message.find("unsafe file name"), std::string::npos);
    EXPECT_FALSE(fs::exists(tmp / "evil-store")) << "nothing may touch the disk";
    EXPECT_EQ(bad.count("GET", "/resolve/"), 0u);
  }
}

TEST_F(HubClient, ParallelRangesForLargeFiles) {
  auto o = opts();
  o.range_threshold = 100000;
  o.parallel = 3;
  srv.drop_after("model.safetensors", 20000, 1);  // one range is cut and resumed
  hub::Client c(o);
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
  size_t ranged = 0;
  for (const auto& q : srv.requests())
    if (q.path.find("model.safetensors") != std::string::npos && !q.range.empty()) ++ranged;
  EXPECT_EQ(ranged, 4u);  // three ranges plus the resumed one
  EXPECT_EQ(r.value().bytes, total_size());
  expect_clean_store(true);
}

// The parallel path hashes the chunks while they arrive; a corrupted range must still be caught
// (the download is repeated once) and a file corrupted every time must still fail, leaving nothing.
TEST_F(HubClient, ParallelRangesAreVerifiedLikeOneStream) {
  auto o = opts();
  o.range_threshold = 100000;
  o.parallel = 3;
  srv.corrupt("model.safetensors", 1);
  {
    hub::Client c(o);
    auto r = c.snapshot_download(store_req());
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
    EXPECT_EQ(r.value().bytes, total_size() + srv.content("model.safetensors").size());
  }
  FaultServer other;
  other.add_file("w.safetensors", random_bytes(300000, 3), true);
  other.corrupt("w.safetensors", 100);
  o.endpoint = other.url();
  hub::SnapshotRequest req;
  req.repo = "org/model";
  req.store = tmp / "store3";
  auto bad = hub::Client(o).snapshot_download(req);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().kind, hub::ErrorKind::HashMismatch);
  EXPECT_NE(bad.error().message.find("file 'w.safetensors'"), std::string::npos);
  EXPECT_TRUE(fs::is_empty(tmp / "store3/models--org--model/blobs"));
}

TEST_F(HubClient, OfflineUsesTheStoreOnly) {
  {
    hub::Client c(opts());
    ASSERT_TRUE(c.snapshot_download(store_req()).ok());
  }
  size_t before = srv.requests().size();
  auto o = opts();
  o.offline = true;
  hub::Client c(o);
  auto r = c.snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().commit, srv.commit());
  EXPECT_EQ(srv.requests().size(), before);
  auto req = store_req();
  req.revision = "other";
  auto miss = c.snapshot_download(req);
  ASSERT_FALSE(miss.ok());
  EXPECT_EQ(miss.error().kind, hub::ErrorKind::Offline);
}

TEST_F(HubClient, DiskReserveIsChecked) {
  auto o = opts();
  o.disk_reserve = uint64_t{1} << 62;
  auto r = hub::Client(o).snapshot_download(store_req());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, hub::ErrorKind::NoSpace);
  EXPECT_NE(r.error().message.find("not enough disk space"), std::string::npos);
}

// A snapshot with nothing left to fetch writes no file, so a full disk does not refuse it: the
// cached model stays usable (and whoever writes next checks its own needs).
TEST_F(HubClient, ACompleteSnapshotIsNotHeldToTheReserve) {
  ASSERT_TRUE(hub::Client(opts()).snapshot_download(store_req()).ok());
  auto o = opts();
  o.disk_reserve = uint64_t{1} << 62;
  auto r = hub::Client(o).snapshot_download(store_req());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().commit, srv.commit());
  EXPECT_EQ(r.value().downloaded, 0u);
  // One file gone: it must be fetched, and the reserve refuses it.
  fs::path gone;
  for (const auto& e : fs::directory_iterator(tmp / "store" / "models--org--model" / "blobs"))
    if (e.is_regular_file()) gone = e.path();
  ASSERT_FALSE(gone.empty());
  fs::remove(gone);
  auto miss = hub::Client(o).snapshot_download(store_req());
  ASSERT_FALSE(miss.ok());
  EXPECT_EQ(miss.error().kind, hub::ErrorKind::NoSpace);
}

// The daemon fetches a snapshot's shards one call at a time: `files` narrows the selection to
// the paths it names, and a path the selection lacks is an error, never an empty success.
TEST_F(HubClient, FilesNarrowTheSelectionToTheNamedPaths) {
  hub::Client c(opts());
  auto req = store_req();
  req.files = {"model.safetensors"};
  auto r = c.snapshot_download(req);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().files, 1u);
  EXPECT_EQ(r.value().downloaded, 1u);
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
  EXPECT_FALSE(fs::exists(snapshot() / "config.json"));
  EXPECT_EQ(srv.count("GET", "/resolve/"), 1u);
  for (auto files :
       {std::vector<std::string>{"nope.bin"}, std::vector<std::string>{"config.json", "sub"}}) {
    req.files = files;
    auto bad = c.snapshot_download(req);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error().kind, hub::ErrorKind::EntryNotFound);
    EXPECT_NE(bad.error().message.find("'" + files.back() + "' is not among the files selected"),
              std::string::npos)
        << bad.error().message;
  }
  req.files = {"config.json"};
  req.ignore = {"*.json"};  // named, but left out by the patterns
  auto ignored = c.snapshot_download(req);
  ASSERT_FALSE(ignored.ok());
  EXPECT_EQ(ignored.error().kind, hub::ErrorKind::EntryNotFound);
  EXPECT_FALSE(fs::exists(snapshot() / "config.json"));
}

// The header block comes with Range requests and no more: 100,000 bytes first, then exactly
// the rest of a longer header; a server that ignores Range is refused without reading the file.
// (Files shorter than the first read: tests/mirror/test_read_api.cpp, whose server clips ranges
// as the Hub does.)
TEST_F(HubClient, SafetensorsHeaderReadsTheHeaderBlockAndNoMore) {
  const std::string short_h = R"({"w":{"dtype":"U8","shape":[400000],"data_offsets":[0,400000]}})";
  srv.add_file("a.safetensors", raw_safetensors(short_h, random_bytes(400000, 3)), true);
  const std::string long_h = R"({"__metadata__":{"k":")" + std::string(150000, 'm') +
                             R"("},"w":{"dtype":"U8","shape":[10],"data_offsets":[0,10]}})";
  srv.add_file("b.safetensors", raw_safetensors(long_h, random_bytes(10, 3)), true);
  hub::Client c(opts());
  auto a = c.safetensors_header(srv.repo(), "main", "a.safetensors");
  ASSERT_TRUE(a.ok()) << a.error().message;
  EXPECT_EQ(a.value(), srv.content("a.safetensors").substr(0, 8 + short_h.size()));
  auto b = c.safetensors_header(srv.repo(), "main", "b.safetensors");
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_EQ(b.value(), srv.content("b.safetensors").substr(0, 8 + long_h.size()));
  std::vector<std::string> ranges;
  for (const auto& q : srv.requests())
    if (q.path.find("/resolve/") != std::string::npos) ranges.push_back(q.range);
  EXPECT_EQ(ranges, (std::vector<std::string>{"bytes=0-99999", "bytes=0-99999",
                                              "bytes=0-" + std::to_string(8 + long_h.size() - 1)}));
  srv.ignore_range("a.safetensors", 1);
  auto ignored = c.safetensors_header(srv.repo(), "main", "a.safetensors");
  ASSERT_FALSE(ignored.ok());
  EXPECT_EQ(ignored.error().kind, hub::ErrorKind::InvalidResponse);
  EXPECT_NE(ignored.error().message.find("ignores Range"), std::string::npos)
      << ignored.error().message;
  auto missing = c.safetensors_header(srv.repo(), "main", "nope.safetensors");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind, hub::ErrorKind::EntryNotFound);
}

// ClientOptions::cancel aborts a transfer in flight within about a second (here one stalled on
// purpose for 3 s, with a 30 s stall timeout), starts no request while it is set, and leaves
// the partial for the next download, which resumes it.
TEST_F(HubClient, ACancelAbortsTheTransferInFlightAndTheNextDownloadResumes) {
  srv.stall("model.safetensors", 100000, 3, 1);
  std::atomic<bool> cancel{false};
  auto o = opts();
  o.stall_timeout_s = 30;
  o.cancel = &cancel;
  hub::Client c(o);
  hub::Result<hub::SnapshotResult> r = hub::Error{hub::ErrorKind::Io, "not run"};
  std::chrono::steady_clock::time_point cancelled_at;
  std::thread t([&] { r = c.snapshot_download(store_req()); });
  for (int i = 0; i < 500 && srv.count("GET", "model.safetensors") == 0; ++i)  // the GET is in
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const bool started = srv.count("GET", "model.safetensors") > 0;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // 100,000 bytes in, then stalled
  cancelled_at = std::chrono::steady_clock::now();
  cancel = true;
  t.join();
  ASSERT_TRUE(started);
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - cancelled_at).count();
  ASSERT_FALSE(r.ok());
  EXPECT_LT(took, 2.0);
  EXPECT_FALSE(fs::exists(snapshot()));  // nothing linked...
  const fs::path partial =
      st::Store(tmp / "store")
          .incomplete_path(srv.repo(), st::sha256_hex(srv.content("model.safetensors")));
  ASSERT_TRUE(fs::exists(partial));  // ...but the partial is kept
  const uint64_t had = fs::file_size(partial);
  EXPECT_GE(had, 100000u);
  const size_t before = srv.requests().size();
  EXPECT_FALSE(c.snapshot_download(store_req()).ok());  // cancelled: no request at all
  EXPECT_EQ(srv.requests().size(), before);
  cancel = false;
  auto again = c.snapshot_download(store_req());
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(slurp(snapshot() / "model.safetensors"), srv.content("model.safetensors"));
  bool resumed = false;
  for (const auto& q : srv.requests())
    if (q.path.find("model.safetensors") != std::string::npos &&
        q.range == "bytes=" + std::to_string(had) + "-")
      resumed = true;
  EXPECT_TRUE(resumed);
}

// The headers of several shards come `parallel` at a time and in the order asked; one missing
// file fails the whole call.
TEST_F(HubClient, SafetensorsHeadersOfSeveralFilesKeepTheirOrder) {
  std::vector<std::string> names, want;
  for (int i = 0; i < 5; ++i) {
    const std::string h = "{\"w" + std::to_string(i) +
                          "\":{\"dtype\":\"U8\",\"shape\":[120000],\"data_offsets\":[0,120000]}}";
    names.push_back("s" + std::to_string(i) + ".safetensors");
    srv.add_file(names.back(), raw_safetensors(h, random_bytes(120000, 3)), true);
    want.push_back(srv.content(names.back()).substr(0, 8 + h.size()));
  }
  hub::Client c(opts());
  auto got = c.safetensors_headers(srv.repo(), "main", names);
  ASSERT_TRUE(got.ok()) << got.error().message;
  EXPECT_EQ(got.value(), want);
  EXPECT_EQ(srv.count("GET", ".safetensors"), 5u);
  names.insert(names.begin() + 2, "nope.safetensors");
  auto bad = c.safetensors_headers(srv.repo(), "main", names);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().kind, hub::ErrorKind::EntryNotFound);
  EXPECT_TRUE(c.safetensors_headers(srv.repo(), "main", {}).value().empty());
}
