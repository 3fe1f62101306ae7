// `loftqd publish DIR REPO`: uploads a directory to a Hub repo as one commit.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "daemon/client_flags.h"
#include "daemon/commands.h"
#include "storage/store.h"

namespace fs = std::filesystem;

namespace loftqd::daemon {

namespace {

struct PublishArgs {
  std::string dir, repo, revision = "main", message;
  bool is_private = false, keep_remote = false;
  ClientFlags client;
};

int publish(const PublishArgs& a) {
  hub::Client client = make_client(a.client);
  if (auto p = storage::repo_id_problem(a.repo))
    throw std::invalid_argument(common::repo_id_error(a.repo));
  if (!fs::is_directory(a.dir)) throw std::invalid_argument("not a directory: " + a.dir);
  hub::PublishRequest req;
  req.dir = a.dir;
  req.repo = a.repo;
  req.branch = a.revision;
  req.is_private = a.is_private;
  req.summary = a.message;
  req.delete_missing = !a.keep_remote;
  spdlog::info("publish {} -> {}@{} on {}", a.dir, a.repo, a.revision, client.options().endpoint);
  ByteProgress bar("publish " + a.repo);
  auto r = client.upload_folder(req, bar.fn());
  bar.finish();
  if (!r) return report_error(r.error());
  if (r.value().skipped) {
    std::printf("unchanged: %s@%s already holds %s at commit %s (no new commit)\n%s\n",
                a.repo.c_str(), a.revision.c_str(), a.dir.c_str(), r.value().commit_oid.c_str(),
                r.value().commit_url.c_str());
    return kExitOk;
  }
  std::printf("published %s to %s@%s: commit %s (%zu files, %zu LFS uploads, %zu deleted)\n%s\n",
              a.dir.c_str(), a.repo.c_str(), a.revision.c_str(), r.value().commit_oid.c_str(),
              r.value().files, r.value().lfs_uploaded, r.value().deleted,
              r.value().commit_url.c_str());
  return kExitOk;
}

}  // namespace

Command add_publish_command(CLI::App& app) {
  auto a = std::make_shared<PublishArgs>();
  auto* c = app.add_subcommand("publish", "upload a directory to a Hub repo as one commit");
  c->add_option("DIR", a->dir, "directory to upload (e.g. written by loftqd quantize)")->required();
  c->add_option("REPO", a->repo, "repo id (org/name)")->required();
  c->add_option("--revision", a->revision, "branch (created from main if missing)")
      ->capture_default_str();
  c->add_flag("--private", a->is_private, "create the repo private");
  c->add_option("--message", a->message, "commit title");
  c->add_flag("--keep-remote", a->keep_remote,
              "keep files on the branch that DIR lacks (default: delete them)");
  c->add_option("--parallel", a->client.parallel, "files hashed and LFS objects uploaded at once")
      ->capture_default_str();
  add_client_flags(c, a->client);
  return {c, [a] { return publish(*a); }};
}

}  // namespace loftqd::daemon
