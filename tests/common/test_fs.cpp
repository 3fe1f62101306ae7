// Durable atomic file writes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/fs.h"
#include "support/test_util.h"

namespace loftqd::common {
namespace {

namespace fs = std::filesystem;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::vector<std::string> list_dir(const fs::path& d) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(d)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(AtomicFile, TempFileIsHiddenInTheSameDirectory) {
  TempDir dir;
  AtomicFile f(dir / "out.bin");
  EXPECT_EQ(f.temp_path().parent_path(), dir.path());
  EXPECT_THAT(f.temp_path().filename().string(),
              StartsWith(".out.bin.tmp." + std::to_string(::getpid()) + "."));
  EXPECT_TRUE(fs::exists(f.temp_path()));
  EXPECT_GE(f.fd(), 0);
  EXPECT_FALSE(fs::exists(dir / "out.bin"));
}

TEST(AtomicFile, UncommittedLeavesNothing) {
  TempDir dir;
  fs::path temp;
  {
    AtomicFile f(dir / "out.bin");
    f.write("some data");
    temp = f.temp_path();
    EXPECT_TRUE(fs::exists(temp));
  }
  EXPECT_FALSE(fs::exists(temp));
  EXPECT_FALSE(fs::exists(dir / "out.bin"));
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(AtomicFile, UncommittedKeepsTheOldFile) {
  TempDir dir;
  spit(dir / "out.bin", "old");
  {
    AtomicFile f(dir / "out.bin");
    f.write("new");
  }
  EXPECT_EQ(slurp(dir / "out.bin"), "old");
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"out.bin"});
}

TEST(AtomicFile, CommitReplacesExistingFile) {
  TempDir dir;
  spit(dir / "out.bin", "old content that is longer");
  AtomicFile f(dir / "out.bin");
  f.write("new ");
  f.write(std::string("content"));
  EXPECT_EQ(slurp(dir / "out.bin"), "old content that is longer");  // not visible yet
  f.commit();
  EXPECT_EQ(slurp(dir / "out.bin"), "new content");
  EXPECT_FALSE(fs::exists(f.temp_path()));
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"out.bin"});
}

TEST(AtomicFile, PositionalWrite) {
  TempDir dir;
  AtomicFile f(dir / "p.txt");
  f.write("hello world");
  f.pwrite("J", 1, 0);
  f.pwrite("W", 1, 6);
  f.write("!");  // appends at the end, unaffected by pwrite
  f.commit();
  EXPECT_EQ(slurp(dir / "p.txt"), "Jello World!");
}

TEST(AtomicFile, WriteOrCommitAfterCommitThrows) {
  TempDir dir;
  AtomicFile f(dir / "x");
  f.commit();
  EXPECT_EQ(slurp(dir / "x"), "");
  EXPECT_THROW(f.write("more"), std::logic_error);
  EXPECT_THROW(f.commit(), std::logic_error);
  EXPECT_EQ(slurp(dir / "x"), "");
}

TEST(AtomicFile, MissingDirectoryNamesThePath) {
  TempDir dir;
  try {
    AtomicFile f(dir / "nope" / "x.bin");
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr((dir / "nope" / "x.bin").string()));
    EXPECT_THAT(e.what(), HasSubstr("No such file or directory"));
  }
}

TEST(AtomicFile, TwoWritersGetDistinctTempFiles) {
  TempDir dir;
  AtomicFile a(dir / "same");
  AtomicFile b(dir / "same");
  EXPECT_NE(a.temp_path(), b.temp_path());
  a.write("a");
  b.write("b");
  a.commit();
  b.commit();
  EXPECT_EQ(slurp(dir / "same"), "b");
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"same"});
}

TEST(FsutilWriteFileAtomic, WritesAndReplaces) {
  TempDir dir;
  write_file_atomic(dir / "a.json", "{}");
  EXPECT_EQ(read_file(dir / "a.json"), "{}");
  write_file_atomic(dir / "a.json", std::string("x\0y", 3));
  EXPECT_EQ(read_file(dir / "a.json"), std::string("x\0y", 3));
  write_file_atomic(dir / "a.json", "");
  EXPECT_EQ(read_file(dir / "a.json"), "");
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"a.json"});
}

TEST(FsutilReadFile, MissingFileNamesPathAndReason) {
  TempDir dir;
  try {
    read_file(dir / "missing.txt");
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr((dir / "missing.txt").string()));
    EXPECT_THAT(e.what(), HasSubstr("No such file or directory"));
  }
  EXPECT_THROW(read_file(dir.path()), std::runtime_error);  // a directory
}

TEST(FsutilReadFile, LargeBinaryContent) {
  TempDir dir;
  std::string s(300000, '\0');
  std::mt19937 rng(7);
  for (auto& c : s) c = static_cast<char>(rng());
  spit(dir / "big", s);
  EXPECT_EQ(read_file(dir / "big"), s);
}

TEST(FsutilCopyFileAtomic, CopiesMultipleChunks) {
  TempDir dir;
  std::string s(3 * (1 << 20) + 12345, '\0');
  std::mt19937 rng(11);
  for (auto& c : s) c = static_cast<char>(rng());
  spit(dir / "src", s);
  spit(dir / "dst", "old");
  copy_file_atomic(dir / "src", dir / "dst");
  EXPECT_EQ(slurp(dir / "dst"), s);
  copy_file_atomic(dir / "src", dir / "dst2");
  EXPECT_EQ(slurp(dir / "dst2"), s);
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"dst", "dst2", "src"}));
}

TEST(FsutilCopyFileAtomic, MissingSourceLeavesNothing) {
  TempDir dir;
  try {
    copy_file_atomic(dir / "nope", dir / "dst");
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr((dir / "nope").string()));
  }
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(FsutilFsyncDir, ExistingAndMissing) {
  TempDir dir;
  EXPECT_NO_THROW(fsync_dir(dir.path()));
  try {
    fsync_dir(dir / "missing");
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr((dir / "missing").string()));
  }
}

// regular_file_problem() names what a path is when it is not a regular file, without opening it.
TEST(RegularFileProblem, NamesEachKind) {
  TempDir tmp;
  spit(tmp / "file", "x");
  fs::create_symlink("file", tmp / "link");
  EXPECT_EQ(regular_file_problem(tmp / "file"), std::nullopt);
  EXPECT_EQ(regular_file_problem(tmp / "link"), std::nullopt);
  ASSERT_EQ(::mkfifo((tmp / "fifo").c_str(), 0644), 0);
  fs::create_symlink("loop", tmp / "loop");
  fs::create_symlink("nothing", tmp / "dangling");
  EXPECT_EQ(regular_file_problem(tmp / "fifo"), "is a FIFO, not a regular file");
  EXPECT_EQ(regular_file_problem(tmp / "loop"), "is a symbolic link loop");
  EXPECT_EQ(regular_file_problem(tmp / "dangling"), "is a dangling symbolic link");
  EXPECT_EQ(regular_file_problem(tmp / "absent"), "does not exist");
  EXPECT_EQ(regular_file_problem("/dev/null"), "is a character device, not a regular file");
  EXPECT_EQ(regular_file_problem(tmp.path()), "is a directory, not a regular file");
}

}  // namespace
}  // namespace loftqd::common
