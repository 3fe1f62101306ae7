// storage/store.cpp: validation, hashing, patterns, disk space, cache layout, atomic commits.
#include "storage/store.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <set>
#include <string>
#include <thread>

#include "support/test_util.h"

namespace fs = std::filesystem;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
namespace st = loftqd::storage;

TEST(StorePath, AcceptsOrdinaryRepoPaths) {
  for (const char* p : {"config.json", "loftq_init/adapter_model.safetensors", "a/b/c.txt",
                        ".gitattributes", "dir/.hidden", "x..y", "...", "git/.gitignore"})
    EXPECT_EQ(st::path_problem(p), std::nullopt) << p;
}

TEST(StorePath, RefusesUnsafePaths) {
  struct Case {
    std::string path, why;
  };
  for (const auto& c : std::vector<Case>{{"/etc/passwd", "absolute"},
                                         {"../x", "'..'"},
                                         {"a/../../x", "'..'"},
                                         {"a/..", "'..'"},
                                         {".git/config", "'.git'"},
                                         {"sub/.GIT/hooks/x", "'.git'"},
                                         {"a\\b", "backslash"},
                                         {std::string("a\0b", 3), "NUL"},
                                         {"a//b", "empty"},
                                         {"a/", "empty"},
                                         {"./a", "'.'"},
                                         {"", "empty"}}) {
    auto p = st::path_problem(c.path);
    ASSERT_TRUE(p.has_value()) << c.path;
    EXPECT_NE(p->find(c.why), std::string::npos) << c.path << ": " << *p;
  }
}

TEST(StorePath, RepoIdsAndRevisions) {
  EXPECT_EQ(st::repo_id_problem("gpt2"), std::nullopt);
  EXPECT_EQ(st::repo_id_problem("LoftQ/Llama-2-7b-hf-4bit-64rank"), std::nullopt);
  EXPECT_TRUE(st::repo_id_problem("a/b/c"));
  EXPECT_TRUE(st::repo_id_problem("../x"));
  EXPECT_TRUE(st::repo_id_problem("a--b/c"));
  EXPECT_TRUE(st::repo_id_problem("org/"));
  EXPECT_EQ(st::revision_problem("main"), std::nullopt);
  EXPECT_EQ(st::revision_problem("refs/pr/1"), std::nullopt);
  EXPECT_TRUE(st::revision_problem("../main"));
  EXPECT_TRUE(st::revision_problem("a b"));
  EXPECT_EQ(st::repo_folder_name("org/name"), "models--org--name");
  EXPECT_EQ(st::repo_folder_name("gpt2"), "models--gpt2");
}

TEST(StoreHash, KnownDigests) {
  EXPECT_EQ(st::sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(st::git_blob_sha1("hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
  EXPECT_EQ(st::git_blob_sha1(""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
  // The pointer git writes for an LFS object, and the oid the Hub lists for it.
  std::string sha = st::sha256_hex("abc");
  EXPECT_EQ(st::lfs_pointer(sha, 3),
            "version https://git-lfs.github.com/spec/v1\noid sha256:" + sha + "\nsize 3\n");
  st::FileEntry e{"x.bin", sha, 3};
  EXPECT_TRUE(e.lfs());
  EXPECT_EQ(e.git_oid(), st::git_blob_sha1(st::lfs_pointer(sha, 3)));
  TempDir tmp;
  spit(tmp / "f", "hello\n");
  EXPECT_EQ(st::hash_file(tmp / "f", st::HashAlgo::Sha1, true).value(),
            "ce013625030ba8dba906f756967f9e9ca394464a");
}

TEST(StorePatterns, FnmatchLikePython) {
  EXPECT_TRUE(st::fnmatch("*.json", "config.json"));
  EXPECT_TRUE(st::fnmatch("*.json", "loftq_init/adapter_config.json"));  // '*' spans '/'
  EXPECT_FALSE(st::fnmatch("*.json", "model.safetensors"));
  EXPECT_TRUE(st::fnmatch("model-0000?-of-00002.safetensors", "model-00001-of-00002.safetensors"));
  EXPECT_TRUE(st::fnmatch("[ab]*.txt", "b1.txt"));
  EXPECT_FALSE(st::fnmatch("[!ab]*.txt", "b1.txt"));
  EXPECT_TRUE(st::fnmatch("[a-c]x", "bx"));
  EXPECT_TRUE(st::fnmatch("loftq_init/", "loftq_init/adapter_model.safetensors"));
  EXPECT_TRUE(st::fnmatch("[x", "[x"));
  EXPECT_TRUE(st::fnmatch("*", ""));
  EXPECT_FALSE(st::fnmatch("a", "ab"));
  std::vector<std::string> allow = {"*.json", "*.safetensors"}, ignore = {"loftq_init/*"};
  EXPECT_TRUE(st::path_selected("config.json", allow, ignore));
  EXPECT_FALSE(st::path_selected("README.md", allow, ignore));
  EXPECT_FALSE(st::path_selected("loftq_init/adapter_config.json", allow, ignore));
  EXPECT_TRUE(st::path_selected("README.md", {}, {}));
}

TEST(StoreSpace, ReserveAndSizes) {
  TempDir tmp;
  EXPECT_TRUE(st::check_space(tmp.path(), 1, 0).ok());
  auto s = st::check_space(tmp.path(), 1, uint64_t{1} << 62);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, st::Errc::NoSpace);
  EXPECT_NE(s.error().message.find("not enough disk space"), std::string::npos);
}

TEST(StoreLayout, CommitBlobVerifiesAndMoves) {
  TempDir tmp;
  st::Store store(tmp.path());
  std::string data = "weights";
  auto sha = st::sha256_hex(data);
  auto partial = store.incomplete_path("org/m", sha);
  fs::create_directories(partial.parent_path());
  spit(partial, data);
  ASSERT_TRUE(store.commit_blob("org/m", partial, st::Digest::lfs(sha, data.size())).ok());
  EXPECT_FALSE(fs::exists(partial));
  EXPECT_EQ(slurp(store.blob_path("org/m", sha)), data);

  // A wrong hash deletes the partial and says what differed.
  auto other = st::sha256_hex("other");
  auto bad = store.incomplete_path("org/m", other);
  spit(bad, "not other");
  auto s = store.commit_blob("org/m", bad, st::Digest::lfs(other, std::nullopt));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, st::Errc::HashMismatch);
  EXPECT_NE(s.error().message.find("sha256 mismatch"), std::string::npos);
  EXPECT_FALSE(fs::exists(bad));
  EXPECT_FALSE(store.has_blob("org/m", other));

  // Size is checked before hashing.
  spit(bad, "x");
  s = store.commit_blob("org/m", bad, st::Digest::lfs(other, 5));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, st::Errc::SizeMismatch);
}

TEST(StoreLayout, SnapshotsAreRelativeSymlinksAndRefsAtomic) {
  TempDir tmp;
  st::Store store(tmp.path());
  std::string a = "{\"a\": 1}\n", b = "tensor bytes";
  auto ea = st::git_blob_sha1(a), eb = st::sha256_hex(b);
  ASSERT_TRUE(store.put_blob("org/m", a, st::Digest::git(ea, a.size())).ok());
  ASSERT_TRUE(store.put_blob("org/m", b, st::Digest::lfs(eb, b.size())).ok());
  EXPECT_FALSE(store.put_blob("org/m", "zzz", st::Digest::git(ea, 3)).ok());
  std::map<std::string, std::string> files = {{"config.json", ea}, {"sub/dir/w.safetensors", eb}};
  auto c = store.commit_snapshot("org/m", "main", files, std::nullopt);
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_TRUE(st::is_sha1_hex(c.value()));
  EXPECT_EQ(c.value(), st::Store::commit_id(files, std::nullopt));
  EXPECT_EQ(store.read_ref("org/m", "main"), c.value());
  EXPECT_EQ(slurp(store.ref_path("org/m", "main")), c.value());  // no newline, as huggingface_hub
  auto link = store.snapshot_dir("org/m", c.value()) / "sub/dir/w.safetensors";
  EXPECT_EQ(fs::read_symlink(link).string(), "../../../../blobs/" + eb);
  EXPECT_EQ(slurp(link), b);
  auto listed = store.list_snapshot("org/m", c.value());
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed.value().size(), 2u);
  EXPECT_EQ(listed.value()[1].path, "sub/dir/w.safetensors");
  EXPECT_EQ(listed.value()[1].size, b.size());
  EXPECT_TRUE(listed.value()[1].lfs());
  EXPECT_EQ(store.resolve("org/m", c.value()), c.value());
  EXPECT_EQ(store.resolve("org/m", "nope"), std::nullopt);
  EXPECT_EQ(store.list_repos(), std::vector<std::string>{"org/m"});

  // A second commit on top: new id, the parent's snapshot left intact, no temp dirs left.
  files.erase("config.json");
  auto c2 = store.commit_snapshot("org/m", "main", files, c.value());
  ASSERT_TRUE(c2.ok());
  EXPECT_NE(c2.value(), c.value());
  EXPECT_EQ(store.read_ref("org/m", "main"), c2.value());
  EXPECT_TRUE(fs::exists(store.snapshot_dir("org/m", c.value()) / "config.json"));
  for (const auto& e : fs::directory_iterator(store.repo_dir("org/m") / "snapshots"))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos);
  for (const auto& e : fs::directory_iterator(store.repo_dir("org/m") / "refs"))
    EXPECT_EQ(e.path().filename().string(), "main");

  // Unsafe paths and missing blobs are refused before anything is written.
  auto bad = store.commit_snapshot("org/m", "main", {{"../evil", eb}}, c2.value());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, st::Errc::InvalidPath);
  auto missing =
      store.commit_snapshot("org/m", "main", {{"x", st::sha256_hex("nope")}}, c2.value());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, st::Errc::NotFound);
  EXPECT_EQ(store.read_ref("org/m", "main"), c2.value());
  EXPECT_THROW(store.repo_dir("../x"), std::invalid_argument);
}

TEST(StoreLayout, MetaRoundTrip) {
  TempDir tmp;
  st::Store store(tmp.path());
  EXPECT_FALSE(store.read_meta("org/m"));
  st::RepoMeta m{true, false, st::iso8601_now(), st::iso8601_now()};
  ASSERT_TRUE(store.write_meta("org/m", m).ok());
  auto r = store.read_meta("org/m");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->is_private);
  EXPECT_EQ(r->last_modified, m.last_modified);
}

TEST(StoreEncoding, Base64RoundTrip) {
  EXPECT_EQ(st::base64_encode(""), "");
  EXPECT_EQ(st::base64_encode("f"), "Zg==");
  EXPECT_EQ(st::base64_encode("fo"), "Zm8=");
  EXPECT_EQ(st::base64_encode("foo"), "Zm9v");
  std::string bin;
  for (int i = 0; i < 256; ++i) bin += static_cast<char>(i);
  EXPECT_EQ(st::base64_decode(st::base64_encode(bin)), bin);
  EXPECT_EQ(st::base64_decode("Zm9v\nYmFy"), "foobar");
  EXPECT_EQ(st::base64_decode("Zm9v!"), std::nullopt);
  EXPECT_TRUE(st::secure_equal("abc", "abc"));
  EXPECT_FALSE(st::secure_equal("abc", "abd"));
}

// flock(2) locks belong to an open file description, so a second acquire() in this process
// conflicts exactly as a second loftqd process would.
TEST(StoreLockTest, SecondHolderIsRefusedWithThePidAndTheStore) {
  TempDir tmp;
  const auto store = tmp / "store";
  {
    auto first = loftqd::storage::StoreLock::acquire(store);  // creates the store too
    EXPECT_TRUE(std::filesystem::is_directory(store));
    EXPECT_EQ(slurp(store / "loftqd.lock"), std::to_string(::getpid()) + "\n");
    try {
      loftqd::storage::StoreLock::acquire(store);
      ADD_FAILURE() << "a second lock on one store was granted";
    } catch (const loftqd::storage::StoreBusy& e) {
      EXPECT_EQ(std::string(e.what()), "another loftqd (pid " + std::to_string(::getpid()) +
                                           ") is using " + store.string());
    }
    // Another store is independent.
    auto other = loftqd::storage::StoreLock::acquire(tmp / "other");
  }
  // Released with its holder; the stale pid in the file does not block the next one.
  EXPECT_NO_THROW(loftqd::storage::StoreLock::acquire(store));
}

TEST(StoreLockTest, HeldSaysWhetherAProcessUsesTheStore) {
  TempDir tmp;
  const auto store = tmp / "store";
  EXPECT_FALSE(loftqd::storage::StoreLock::held(store));  // no lock file yet
  {
    auto lock = loftqd::storage::StoreLock::acquire(store);
    EXPECT_TRUE(loftqd::storage::StoreLock::held(store));
  }
  EXPECT_FALSE(loftqd::storage::StoreLock::held(store));
  // The probe itself leaves the store free.
  EXPECT_NO_THROW(loftqd::storage::StoreLock::acquire(store));
}

namespace {

// Sets the mtime of `p` (not following a link) `age` into the past.
void age_by(const fs::path& p, std::chrono::seconds age) {
  struct timespec ts[2];
  ::clock_gettime(CLOCK_REALTIME, &ts[0]);
  ts[0].tv_sec -= static_cast<time_t>(age.count());
  ts[1] = ts[0];
  ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), ts, AT_SYMLINK_NOFOLLOW), 0) << p;
}

}  // namespace

// Stale temps (older than the age) of the shapes the store and the mirror write are removed;
// fresh temps, blobs, partial downloads, refs, snapshot links and look-alikes stay.
TEST(StoreTemps, RemovesOnlyItsOwnStaleTemps) {
  TempDir tmp;
  st::Store store(tmp / "store");
  const std::string content = "hello";
  const auto d = st::Digest::git(st::git_blob_sha1(content), content.size());
  ASSERT_TRUE(store.put_blob("org/m", content, d).ok());
  auto c = store.commit_snapshot("org/m", "main", {{"a.txt", d.hex}}, std::nullopt);
  ASSERT_TRUE(c.ok());
  const auto repo = store.repo_dir("org/m");
  const std::string sha = std::string(64, 'a'), sha1 = std::string(40, 'b');
  const std::vector<fs::path> stale = {
      repo / "blobs" / (sha + ".upload-0123456789ab"),
      repo / "blobs" / (sha + ".multipart"),
      repo / "blobs" / ("." + sha1 + ".tmp.4242.0123456789abcdef"),
      repo / "refs" / ".main.tmp.17.00112233445566ff",
      repo / ".loftqd-repo.json.tmp.99.abcdefabcdefabcd",
      repo / "snapshots" / (".tmp-" + sha1 + "-0badc0de"),
  };
  const std::vector<fs::path> kept = {
      repo / "blobs" / (sha + ".incomplete"),      // a resumable download partial
      repo / "blobs" / (sha + ".upload-notes"),    // not {hex}
      repo / "blobs" / "notes.multipart",          // not {etag}.multipart
      repo / "blobs" / (sha1 + ".multipart.bak"),  // not ours
      repo / "refs" / "feature.tmp",               // not an atomic temp
      repo / "README.tmp.1.abc",                   // no leading dot
      repo / "snapshots" / (".tmp-" + sha1),       // no suffix
  };
  for (const auto& p : stale) {
    if (p.parent_path().filename() == "snapshots") {
      fs::create_directories(p / "sub");
      spit(p / "sub" / "x", "x");
    } else {
      spit(p, "partial bytes");
    }
  }
  for (const auto& p : kept) spit(p, "keep me");
  const auto fresh = repo / "blobs" / (sha + ".upload-fedcba987654");
  spit(fresh, "an upload in progress");
  for (const auto& p : stale) age_by(p, st::kStaleTempAge + std::chrono::minutes(1));
  for (const auto& p : kept) age_by(p, std::chrono::hours(24 * 30));
  age_by(store.blob_path("org/m", d.hex), std::chrono::hours(24 * 30));
  age_by(store.ref_path("org/m", "main"), std::chrono::hours(24 * 30));
  age_by(fresh, st::kStaleTempAge - std::chrono::minutes(5));

  EXPECT_EQ(store.remove_stale_temps(), stale.size());
  for (const auto& p : stale) EXPECT_FALSE(fs::exists(fs::symlink_status(p))) << p;
  for (const auto& p : kept) EXPECT_TRUE(fs::exists(p)) << p;
  EXPECT_TRUE(fs::exists(fresh));
  EXPECT_EQ(slurp(store.snapshot_dir("org/m", c.value()) / "a.txt"), content);
  EXPECT_EQ(store.read_ref("org/m", "main"), c.value());
  EXPECT_EQ(store.remove_stale_temps(), 0u);
  // With a zero age the in-progress upload counts as stale too.
  EXPECT_EQ(store.remove_stale_temps(std::chrono::seconds(0)), 1u);
  EXPECT_FALSE(fs::exists(fresh));
}

// A reader listing a snapshot while links are (re)made in it (the quantize step runs while the
// daemon's shard feed links shards) sees only the model's files: link_file's temporary link is
// hidden (a dot name) until it is renamed into place.
TEST(StoreLayout, ALinkBeingMadeIsNeverListedAsAFile) {
  TempDir tmp;
  st::Store store(tmp.path());
  const std::string a = "first", b = "second";
  const auto ea = st::sha256_hex(a), eb = st::sha256_hex(b);
  ASSERT_TRUE(store.put_blob("org/m", a, st::Digest::lfs(ea, a.size())).ok());
  ASSERT_TRUE(store.put_blob("org/m", b, st::Digest::lfs(eb, b.size())).ok());
  const std::string commit(40, 'c');
  ASSERT_TRUE(store.link_file("org/m", commit, "w.safetensors", ea).ok());
  std::atomic<bool> done{false};
  std::thread relink([&] {
    for (int i = 0; i < 3000; ++i)
      EXPECT_TRUE(store.link_file("org/m", commit, "w.safetensors", i % 2 ? ea : eb).ok());
    done = true;
  });
  std::set<std::string> seen;
  const fs::path dir = store.snapshot_dir("org/m", commit);
  while (!done)
    for (const auto& e : fs::directory_iterator(dir))
      if (!e.path().filename().string().starts_with(".")) seen.insert(e.path().filename());
  relink.join();
  EXPECT_EQ(seen, std::set<std::string>{"w.safetensors"});
  EXPECT_EQ(slurp(dir / "w.safetensors"), a);  // the last link made (i = 2999)
}
