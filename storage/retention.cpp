#include "storage/retention.h"

#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <map>

#include "common/fs.h"
#include "common/strings.h"

namespace fs = std::filesystem;

namespace loftqd::storage {

namespace {

constexpr const char* kGcPrefix = ".gc-";

// Bytes of the regular files under `p` (symlinks not followed; `p` may be a file).
uint64_t tree_bytes(const fs::path& p) {
  std::error_code ec;
  if (fs::is_regular_file(fs::symlink_status(p, ec))) {
    const auto n = fs::file_size(p, ec);
    return ec ? 0 : n;
  }
  uint64_t total = 0;
  for (auto it = fs::recursive_directory_iterator(p, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    std::error_code sec;
    if (!fs::is_regular_file(it->symlink_status(sec))) continue;
    const auto n = fs::file_size(it->path(), sec);
    if (!sec) total += n;
  }
  return total;
}

// Renames `p` to `.gc-{name}-{hex}` beside it (one atomic step: readers see it whole or not at
// all), fsyncs the folder, then deletes the renamed tree. Returns the bytes freed.
Result<uint64_t> remove_atomically(const fs::path& p) {
  const fs::path gone =
      p.parent_path() / (kGcPrefix + p.filename().string() + "-" + common::random_hex(8));
  std::error_code ec;
  fs::rename(p, gone, ec);
  if (ec) return Error{Errc::Io, "cannot rename " + p.string() + ": " + ec.message()};
  try {
    common::fsync_dir(p.parent_path());
  } catch (const std::exception& e) {
    return Error{Errc::Io, e.what()};
  }
  const uint64_t bytes = tree_bytes(gone);
  fs::remove_all(gone, ec);
  if (ec) return Error{Errc::Io, "cannot remove " + gone.string() + ": " + ec.message()};
  return bytes;
}

// The .gc- entries of an interrupted run, in `dir`: already invisible, now deleted.
void remove_leftovers(const fs::path& dir, GcReport& report) {
  std::error_code ec;
  std::vector<fs::path> left;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::end(it); it.increment(ec))
    if (it->path().filename().string().starts_with(kGcPrefix)) left.push_back(it->path());
  for (const auto& p : left) {
    report.bytes_freed += tree_bytes(p);
    std::error_code rec;
    fs::remove_all(p, rec);
    if (rec) report.errors.push_back("cannot remove " + p.string() + ": " + rec.message());
  }
}

struct Snapshot {
  std::string commit;
  fs::file_time_type written;
};

// The repo's snapshots, newest first (by the snapshot folder's time; ties by name).
std::vector<Snapshot> snapshots_newest_first(const Store& store, const std::string& repo) {
  std::vector<Snapshot> out;
  std::error_code ec;
  const fs::path dir = store.repo_dir(repo) / "snapshots";
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::end(it); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code sec;
    if (!is_sha1_hex(name) || !fs::is_directory(it->symlink_status(sec))) continue;
    out.push_back({name, fs::last_write_time(it->path(), sec)});
  }
  std::sort(out.begin(), out.end(), [](const Snapshot& a, const Snapshot& b) {
    return a.written != b.written ? a.written > b.written : a.commit > b.commit;
  });
  return out;
}

void trim_snapshots(const Store& store, const RepoPolicy& p, GcReport& report,
                    const GcHooks& hooks) {
  std::set<std::string> keep = p.pinned;
  for (const auto& ref : store.list_refs(p.repo))
    if (auto c = store.read_ref(p.repo, ref)) keep.insert(*c);
  const auto snaps = snapshots_newest_first(store, p.repo);
  for (size_t i = 0; i < snaps.size() && i < p.keep_snapshots; ++i) keep.insert(snaps[i].commit);
  for (const auto& s : snaps) {
    if (keep.count(s.commit)) continue;
    auto r = remove_atomically(store.snapshot_dir(p.repo, s.commit));
    if (!r) {
      report.errors.push_back(p.repo + "@" + s.commit + ": " + r.error().message);
      continue;
    }
    report.bytes_freed += r.value();
    report.snapshots_removed.push_back(p.repo + "@" + s.commit);
    if (hooks.after_step) hooks.after_step("snapshot");
  }
}

// Every blob a snapshot folder links to, in-progress ones (.tmp-) included.
std::set<std::string> linked_blobs(const Store& store, const std::string& repo) {
  std::set<std::string> out;
  std::error_code ec;
  const fs::path dir = store.repo_dir(repo) / "snapshots";
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it.depth() == 0 && it->path().filename().string().starts_with(kGcPrefix)) {
      it.disable_recursion_pending();
      continue;
    }
    std::error_code sec;
    if (!it->is_symlink(sec)) continue;
    const auto target = fs::read_symlink(it->path(), sec);
    if (!sec) out.insert(target.filename().string());
  }
  return out;
}

void sweep_blobs(const Store& store, const RepoPolicy& p, GcReport& report, const GcHooks& hooks) {
  const std::set<std::string> linked = linked_blobs(store, p.repo);
  const std::time_t cutoff = std::time(nullptr) - static_cast<std::time_t>(p.min_blob_age.count());
  std::error_code ec;
  std::vector<fs::path> unlinked;
  for (auto it = fs::directory_iterator(store.repo_dir(p.repo) / "blobs", ec);
       !ec && it != fs::end(it); it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (name.ends_with(".incomplete")) name.resize(name.size() - 11);  // a partial download
    if ((!is_sha1_hex(name) && !is_sha256_hex(name)) || linked.count(name)) continue;
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (p.min_blob_age.count() == 0 || st.st_mtime < cutoff) unlinked.push_back(it->path());
  }
  for (const auto& b : unlinked) {
    const uint64_t bytes = tree_bytes(b);
    std::error_code rec;
    if (!fs::remove(b, rec) || rec) {
      report.errors.push_back("cannot remove " + b.string() + ": " + rec.message());
      continue;
    }
    report.bytes_freed += bytes;
    ++report.blobs_removed;
    if (hooks.after_step) hooks.after_step("blob");
  }
}

}  // namespace

GcReport collect_garbage(const Store& store, const std::vector<RepoPolicy>& policies,
                         const GcHooks& hooks) {
  GcReport report;
  remove_leftovers(store.root(), report);
  for (const auto& repo : store.list_repos())
    remove_leftovers(store.repo_dir(repo) / "snapshots", report);
  for (const auto& p : policies) {
    if (!store.has_repo(p.repo)) continue;
    if (p.remove_repo) {
      auto r = remove_atomically(store.repo_dir(p.repo));
      if (!r) {
        report.errors.push_back(p.repo + ": " + r.error().message);
        continue;
      }
      report.bytes_freed += r.value();
      report.repos_removed.push_back(p.repo);
      if (hooks.after_step) hooks.after_step("repo");
      continue;
    }
    trim_snapshots(store, p, report, hooks);
    if (p.sweep_blobs) sweep_blobs(store, p, report, hooks);
  }
  return report;
}

}  // namespace loftqd::storage
