// `loftqd fetch REPO`: a snapshot of a Hub repo into a store (HF cache layout) or a plain dir.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "daemon/client_flags.h"
#include "daemon/commands.h"
#include "storage/store.h"

namespace loftqd::daemon {

namespace {

struct FetchArgs {
  std::string repo, revision = "main", store, local_dir;
  std::vector<std::string> include, exclude;
  ClientFlags client;
};

int fetch(const FetchArgs& a) {
  if (a.store.empty() && a.local_dir.empty())
    throw std::invalid_argument("fetch: give --store DIR or --local-dir DIR");
  hub::Client client = make_client(a.client);
  hub::SnapshotRequest req;
  req.repo = a.repo;
  req.revision = a.revision;
  req.allow = a.include;
  req.ignore = a.exclude;
  if (!a.store.empty()) req.store = a.store;
  if (!a.local_dir.empty()) req.local_dir = a.local_dir;
  if (auto p = storage::repo_id_problem(a.repo))
    throw std::invalid_argument(common::repo_id_error(a.repo));
  spdlog::info("fetch {}@{} from {}", a.repo, a.revision, client.options().endpoint);
  ByteProgress bar("fetch " + a.repo);
  auto r = client.snapshot_download(req, bar.fn());
  bar.finish();
  if (!r) return report_error(r.error());
  const auto& s = r.value();
  std::printf("fetched %s@%s (commit %s): %zu files, %zu downloaded (%llu bytes)\n%s\n",
              a.repo.c_str(), a.revision.c_str(), s.commit.c_str(), s.files, s.downloaded,
              static_cast<unsigned long long>(s.bytes), s.dir.string().c_str());
  return kExitOk;
}

}  // namespace

Command add_fetch_command(CLI::App& app) {
  auto a = std::make_shared<FetchArgs>();
  auto* c = app.add_subcommand("fetch", "download a snapshot of a Hub repo");
  c->add_option("REPO", a->repo, "repo id (org/name)")->required();
  c->add_option("--revision", a->revision, "branch, tag or commit")->capture_default_str();
  auto* o_store = c->add_option("--store", a->store, "store directory (HF cache layout)");
  auto* o_local = c->add_option("--local-dir", a->local_dir, "write plain files here instead");
  o_store->excludes(o_local);
  o_local->excludes(o_store);
  c->add_option("--include", a->include, "only files matching this glob (repeatable)");
  c->add_option("--exclude", a->exclude, "skip files matching this glob (repeatable)");
  c->add_option("--parallel", a->client.parallel, "files (and byte ranges) at once")
      ->capture_default_str();
  c->add_option("--disk-reserve", a->client.disk_reserve, "free space to keep, e.g. 10G")
      ->capture_default_str();
  c->add_option("--limit-rate", a->client.limit_rate,
                "cap on download speed per connection in bytes/s, e.g. 50M (0: none)")
      ->capture_default_str();
  c->add_option("--range-threshold", a->client.range_threshold,
                "files this large download in parallel byte ranges")
      ->capture_default_str();
  add_client_flags(c, a->client);
  return {c, [a] { return fetch(*a); }};
}

}  // namespace loftqd::daemon
