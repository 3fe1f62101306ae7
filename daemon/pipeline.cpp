#include "daemon/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>

#include <spdlog/spdlog.h>

#include "common/ids.h"
#include "common/stopwatch.h"
#include "convert/convert.h"
#include "daemon/early_upload.h"
#include "daemon/shard_feed.h"
#include "hub/hub.h"
#include "model/safetensors.h"
#include "quant/device.h"
#include "storage/store.h"

namespace fs = std::filesystem;

namespace loftqd::daemon {

using common::Stopwatch;

namespace {

// Failures that retrying cannot fix until the upstream commit or the config changes.
bool permanent(hub::ErrorKind k) {
  using K = hub::ErrorKind;
  return k == K::RepoNotFound || k == K::RevisionNotFound || k == K::EntryNotFound ||
         k == K::GatedRepo || k == K::Unauthorized || k == K::Forbidden || k == K::UnsafePath ||
         k == K::BadRequest;
}

// How often a long step logs its progress.
constexpr std::chrono::seconds kProgressEvery{30};

struct JobFailure {
  std::string message;
  bool permanent;
};

// A stop request ended the download step at a durable point (partials stay for the next run).
struct DownloadInterrupted {};

convert::QuantizeOptions quantize_options(const config::LoftqSettings& s) {
  convert::QuantizeOptions q;
  q.settings = s;
  q.force = true;
  return q;
}

// The retry delay after a job's `attempt`-th failure: 30 s doubling per attempt, at most an hour.
int64_t backoff_s(int attempt) {
  return static_cast<int64_t>(std::min(3600.0, 30.0 * std::pow(2.0, attempt - 1)));
}

}  // namespace

int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

PipelineOptions pipeline_options(const config::Config& cfg, int threads,
                                 const common::EnvLookup& lookup) {
  PipelineOptions po;
  po.threads = threads;
  po.log = [](spdlog::level::level_enum level, const std::string& line) {
    spdlog::log(level, "{}", line);
  };
  po.upstream = upstream_client_options(cfg, lookup);
  if (cfg.publish.hub_org)
    po.hub = PublishEndpoint{po.upstream.endpoint, po.upstream.token, po.upstream.offline};
  return po;
}

Pipeline::Pipeline(config::Config cfg, storage::StateDb& db, PipelineOptions opt)
    : cfg_(std::move(cfg)), db_(db), opt_(std::move(opt)) {}

void Pipeline::log(const std::string& line, spdlog::level::level_enum level) const {
  if (!opt_.log) return;
  std::lock_guard g(log_mu_);  // the early upload's threads log too
  opt_.log(level, line);
}

void Pipeline::set_status(const std::string& s) const {
  if (opt_.status) opt_.status(s);
}

bool Pipeline::stopping() const {
  return opt_.stop && opt_.stop->load();
}

void Pipeline::beat() const {
  if (opt_.heartbeat) opt_.heartbeat();
}

void Pipeline::failpoint(const std::string& name) const {
  if (opt_.failpoint) opt_.failpoint(name);
}

// A job belongs to the entry with its repo and config hash (which covers the publish target
// and the settings): variants of one upstream repo are separate entries with their own jobs.
const config::RepoConfig* Pipeline::repo_config(const storage::Job& job, bool* repo_watched) const {
  *repo_watched = false;
  for (const auto& r : cfg_.repos) {
    if (r.repo != job.repo) continue;
    *repo_watched = true;
    if (config::config_hash(r, cfg_.publish.hub_org) == job.config_hash) return &r;
  }
  return nullptr;
}

void Pipeline::check_repos(SyncReport& report) {
  for (const auto& r : cfg_.repos) {
    if (stopping()) return;
    check_repo(r, report);
  }
}

bool Pipeline::check_repo(const config::RepoConfig& r, SyncReport& report) {
  if (opt_.upstream.offline) {  // said once per pass by the caller (kOfflineNotice)
    report.errors.push_back(r.repo + ": not checked: HF_HUB_OFFLINE is set");
    ++report.checks_failed;
    log("repo=" + r.repo + " step=check skipped=offline", spdlog::level::warn);
    return false;
  }
  hub::Client client(opt_.upstream);
  ++report.repos_checked;
  auto info = client.repo_info(r.repo, r.revision);
  if (!info) {
    const std::string& why = info.error().message;
    report.errors.push_back(r.repo + ": " + why);
    ++report.checks_failed;
    db_.repo_check_failed(r.repo, r.revision, why, now_s());
    if (opt_.metrics) opt_.metrics->check_failed(r.repo);
    log("repo=" + r.repo + " revision=" + r.revision + " step=check error=\"" + why + "\"",
        spdlog::level::warn);
    return false;
  }
  const std::string commit = info.value().sha;
  db_.repo_seen(r.repo, r.revision, commit, now_s());
  const std::string hash = config::config_hash(r, cfg_.publish.hub_org);
  const std::string target = config::render_publish_as(r.publish_as, r, cfg_.publish.hub_org);
  bool created = false;
  const auto job = db_.enqueue(r.repo, r.revision, commit, hash, target, now_s(), &created);
  if (created) {
    ++report.jobs_enqueued;
    log("repo=" + r.repo + " commit=" + commit + " job=" + std::to_string(job.id) +
        " step=enqueue target=" + target);
  }
  return true;
}

void Pipeline::run_jobs(SyncReport& report) {
  while (!stopping()) {
    auto job = db_.next_runnable(now_s());
    if (!job) return;
    run_job(*job, report);
  }
}

SyncReport Pipeline::sync_once() {
  SyncReport report;
  if (opt_.upstream.offline) log(kOfflineNotice);
  check_repos(report);
  run_jobs(report);
  return report;
}

struct Pipeline::JobContext {
  const storage::Job& job;
  std::string tag;        // "repo=... commit=... job=N", the start of each log line
  fs::path work;          // the job's work dir under the store
  fs::path out;           // the LoftQ layout, inside `work`
  Stopwatch since_start;  // the job's whole duration
  // The weights files going up while LoftQ runs (publish.early_upload): each backbone shard,
  // then the adapter. Null when off, or when the layout was reused.
  mutable std::unique_ptr<EarlyUpload> early;

  JobContext(const storage::Job& j, const std::string& store)
      : job(j),
        tag("repo=" + j.repo + " commit=" + j.upstream_commit + " job=" + std::to_string(j.id)),
        work(fs::path(store) / ".loftqd-work" / ("job-" + std::to_string(j.id))),
        out(work / "out") {}
};

struct Pipeline::Snapshot {
  fs::path dir;
  Stopwatch since;                             // the download's clock
  hub::SnapshotResult got;                     // what the calls made so far fetched
  std::map<std::string, std::string> pending;  // shard -> header block, for those still coming
  uint64_t pending_bytes = 0;                  // their sizes
  // The shards' download, started by the quantize step once its disk check has passed.
  hub::SnapshotRequest request;     // the whole selection
  int jobs = 1;                     // shards fetched at once
  std::unique_ptr<ShardFeed> feed;  // null until started
  double before_feed_s = 0;         // the download's seconds before the feed began
  bool complete() const { return pending.empty(); }
};

namespace {

// The shard files that a sharded snapshot's index lists and the snapshot lacks, in the order
// model::Checkpoint reads them (sorted). None when there is no index or it cannot be read:
// the quantize step then reports the problem itself.
std::vector<std::string> missing_shards(const fs::path& dir) {
  std::set<std::string> names;
  try {
    std::ifstream in(dir / "model.safetensors.index.json");
    if (!in) return {};
    const auto j = nlohmann::json::parse(in);
    for (const auto& [tensor, shard] : j.at("weight_map").items())
      names.insert(shard.get<std::string>());
  } catch (const std::exception&) {
    return {};
  }
  std::vector<std::string> out;
  for (const auto& n : names) {
    std::error_code ec;
    if (common::path_problem(n) || n.find('/') != std::string::npos) return {};
    if (!fs::exists(dir / n, ec)) out.push_back(n);
  }
  return out;
}

}  // namespace

void Pipeline::run_job(const storage::Job& job, SyncReport& report) {
  const JobContext ctx(job, cfg_.store);
  try {
    const config::RepoConfig& rc = job_config(job);  // still watched, same settings
    Snapshot snap = download(ctx, rc);               // 1. the upstream snapshot, its missing shards
    if (snap.complete()) download_done(ctx, snap);   // still coming while step 2 runs
    if (!quantize_step(ctx, rc, snap, report)) return;  // 2. LoftQ (false: stopped)
    if (!snap.complete()) download_done(ctx, snap);
    const std::string commit = publish(ctx);  // 3. one commit per target
    finish(ctx, commit, report);              // 4. recorded; work dir freed
  } catch (const DownloadInterrupted&) {
    ++report.jobs_interrupted;
    log(ctx.tag + " step=interrupted during=download seconds=" + ctx.since_start.str());
  } catch (const JobFailure& f) {
    fail(ctx, f.message, f.permanent, backoff_s(job.attempts + 1), report);
  } catch (const std::exception& e) {
    fail(ctx, e.what(), false, 60, report);
  }
}

const config::RepoConfig& Pipeline::job_config(const storage::Job& job) const {
  bool watched = false;
  const config::RepoConfig* rc = repo_config(job, &watched);
  if (!watched) throw JobFailure{"the repo is no longer in the configuration", true};
  if (!rc)
    throw JobFailure{
        "the configuration of target " + job.target + " changed since the job was queued", true};
  return *rc;
}

Pipeline::Snapshot Pipeline::download(const JobContext& ctx, const config::RepoConfig& rc) {
  const storage::Job& job = ctx.job;
  Snapshot snap;
  db_.set_state(job.id, storage::JobState::Downloading, now_s());
  log(ctx.tag + " step=download");
  set_status("downloading " + job.repo + "@" + job.upstream_commit.substr(0, 12));
  // A stop request cancels the transfers in flight (within about a second).
  hub::ClientOptions co = opt_.upstream;
  co.cancel = opt_.stop;
  hub::Client upstream(co);
  hub::SnapshotRequest sr;
  sr.repo = job.repo;
  sr.revision = job.upstream_commit;
  sr.allow = rc.allow_patterns;
  sr.ignore = rc.ignore_patterns;
  sr.store = fs::path(cfg_.store);
  const hub::ProgressFn progress = [this](uint64_t, uint64_t, const std::string&) { beat(); };
  auto fetch = [&](const hub::SnapshotRequest& req) {
    auto r = upstream.snapshot_download(req, progress);
    if (!r && stopping()) throw DownloadInterrupted{};
    if (!r) throw JobFailure{r.error().message, permanent(r.error().kind)};
    snap.got.add(r.value());
  };
  // Online, for a layout still to make, the shards come last and in the background: first
  // everything else (the index among it), then each missing shard's header, so that the
  // quantize step can plan every target and start on the first shard.
  std::error_code ec;
  const bool overlap =
      opt_.overlap_download && !opt_.upstream.offline && !fs::exists(ctx.out / "loftq.json", ec);
  hub::SnapshotRequest first = sr;
  if (overlap) first.ignore.push_back("*.safetensors");
  fetch(first);
  snap.dir = snap.got.dir;
  if (!overlap) return snap;
  const std::vector<std::string> shards = missing_shards(snap.dir);
  std::string why_not;  // why the shards come in the foreground after all
  uint64_t largest = 0;
  auto heads = upstream.safetensors_headers(job.repo, job.upstream_commit, shards);
  if (!heads) why_not = heads.error().message;
  for (size_t i = 0; heads && i < shards.size(); ++i) {
    try {
      const uint64_t size =
          model::SafetensorsFile::from_header(snap.dir / shards[i], heads.value()[i])->file_size();
      snap.pending_bytes += size;
      largest = std::max(largest, size);
    } catch (const std::exception& e) {  // the download and the quantize step say it again
      why_not = e.what();
      break;
    }
    snap.pending.emplace(shards[i], std::move(heads.value()[i]));
  }
  if (shards.empty() || !why_not.empty()) {
    if (!why_not.empty())
      log(ctx.tag + " step=download shards_in_background=0 reason=\"" + why_not + "\"",
          spdlog::level::warn);
    snap.pending.clear();
    snap.pending_bytes = 0;
    fetch(sr);
    return snap;
  }
  log(ctx.tag + " step=download shards_in_background=" + std::to_string(shards.size()) +
      " bytes=" + std::to_string(snap.pending_bytes));
  // Shards below the range threshold come `parallel` at a time, as snapshot_download fetches
  // small files; larger ones one at a time, each in `parallel` byte ranges.
  snap.jobs = largest < opt_.upstream.range_threshold ? opt_.upstream.parallel : 1;
  snap.request = sr;
  return snap;
}

void Pipeline::download_done(const JobContext& ctx, Snapshot& snap) {
  double seconds = snap.since.seconds();
  const size_t background = snap.pending.size();
  if (snap.feed) {
    auto r = snap.feed->finish();
    seconds = snap.before_feed_s + snap.feed->seconds();
    snap.feed.reset();
    if (!r) throw JobFailure{r.error().message, permanent(r.error().kind)};
    snap.got.add(r.value());
  }
  if (opt_.metrics) {
    opt_.metrics->add_downloaded(snap.got.bytes);
    opt_.metrics->step_finished("download", seconds);
  }
  log(ctx.tag + " step=download done files=" + std::to_string(snap.got.files) + " files_fetched=" +
      std::to_string(snap.got.downloaded) + " bytes_fetched=" + std::to_string(snap.got.bytes) +
      (background ? " shards_in_background=" + std::to_string(background) : "") +
      " seconds=" + std::to_string(seconds));
}

bool Pipeline::quantize_step(const JobContext& ctx, const config::RepoConfig& rc, Snapshot& snap,
                             SyncReport& report) {
  // The finished layout appears in the work dir in one rename, so a job that got past this
  // step before a crash publishes those same bytes again (the publish then finds them
  // unchanged and makes no second commit).
  std::error_code exists_ec;
  if (fs::exists(ctx.out / "loftq.json", exists_ec)) {
    log(ctx.tag + " step=quantize reused=" + ctx.out.string());
    return true;
  }
  // The step writes the layout (a backbone the snapshot's size) and a checkpoint of every
  // finished target tensor beside it (at most the weights again): twice the snapshot, checked
  // against the disk reserve now rather than hours in, with the shards still to come.
  uint64_t snapshot = snap.pending_bytes;
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(snap.dir, ec))
    if (e.is_regular_file(ec) &&
        !snap.pending.count(e.path().lexically_relative(snap.dir).string()))  // counted above
      if (const uint64_t n = e.file_size(ec); !ec) snapshot += n;  // follows the symlinks
  if (auto space = storage::check_space(cfg_.store, 2 * snapshot + snap.pending_bytes,
                                        cfg_.limits.disk_reserve_bytes);
      !space)
    throw JobFailure{"quantize: " + space.error().message + " (limits.disk_reserve)", false};
  if (!snap.complete()) {             // the shards' download, now that there is room for it
    std::vector<std::string> shards;  // in the order they are read (model::Checkpoint's: sorted)
    for (const auto& [name, head] : snap.pending) shards.push_back(name);
    snap.before_feed_s = snap.since.seconds();
    snap.feed =
        std::make_unique<ShardFeed>(opt_.upstream, snap.request, shards, snap.jobs,
                                    [this](uint64_t, uint64_t, const std::string&) { beat(); });
  }
  if (quantize(ctx, rc, snap, report)) return true;
  log(ctx.tag + " step=interrupted tensors_done=" +
      std::to_string(db_.tensors_done(ctx.job.id).size()) + " seconds=" + ctx.since_start.str());
  return false;
}

bool Pipeline::quantize(const JobContext& ctx, const config::RepoConfig& rc, Snapshot& snap,
                        SyncReport& report) {
  const storage::Job& job = ctx.job;
  db_.set_state(job.id, storage::JobState::Quantizing, now_s());
  log(ctx.tag + " step=quantize");
  convert::QuantizeOptions qo = quantize_options(rc.loftq);
  qo.repo_id = job.target;
  qo.source = source_info(job);
  std::string chosen;
  auto backends = quant::make_backends(rc.loftq.device, opt_.threads, &chosen);
  qo.fallback = backends.fallback();
  qo.tensor_jobs = opt_.threads;  // on the CPU: one tensor per thread (0: per core)
  fs::create_directories(ctx.work);
  // Finished tensors are checkpointed under the work dir; a job killed or stopped mid-way takes
  // the ones whose checkpoint matches when it runs again (the checkpoint files are the one
  // source of truth for that; the state db only records progress for the log and status).
  qo.checkpoint_dir = ctx.work / "tensors";
  qo.should_stop = [this] { return stopping(); };
  qo.pending_shards = snap.pending;
  qo.wait_for_shard = [&, this](const std::string& shard) {
    const Stopwatch waited;
    set_status("quantizing " + job.repo + ": waiting for " + shard);
    if (auto e = snap.feed->wait(shard, [this] { return stopping(); })) {
      if (stopping())  // as before any other tensor: the staging dir goes, the checkpoints stay
        throw convert::Interrupted(job.repo + ": interrupted while waiting for the download of '" +
                                   shard + "'");
      throw JobFailure{e->message, permanent(e->kind)};
    }
    log(ctx.tag + " step=quantize shard=" + shard + " waited_s=" + waited.str());
  };
  ctx.early = start_early_upload(ctx);
  if (ctx.early)
    qo.on_weights_file = [&ctx](const std::string& name, const fs::path& file) {
      ctx.early->add(name, file);
    };
  qo.on_tensor_done = [this, &job](const std::string& tensor) {
    db_.tensor_done(job.id, tensor);
    failpoint("tensor");
  };
  // A log line every kProgressEvery during the step (tensors done/total, ETA from this run's
  // rate), the status line and the metrics gauge at every tensor.
  const Stopwatch sw;
  auto last_line = std::chrono::steady_clock::now();
  size_t first_done = SIZE_MAX;  // tensors already done (resumed) when this run started
  storage::JobProgress run_progress;
  run_progress.run_started_at = now_s();
  qo.progress = [&, this](size_t done, size_t total, const std::string&) {
    beat();
    if (first_done == SIZE_MAX) first_done = done;
    run_progress.done = static_cast<int64_t>(done);
    run_progress.total = static_cast<int64_t>(total);
    run_progress.run_first_done = static_cast<int64_t>(first_done);
    run_progress.updated_at = now_s();
    db_.set_progress(job.id, run_progress);  // for `loftqd status` (progress and ETA)
    set_status("quantizing " + job.repo + " " + std::to_string(done) + "/" + std::to_string(total));
    if (opt_.metrics) opt_.metrics->job_progress(done, total);
    const auto now = std::chrono::steady_clock::now();
    if (now - last_line < kProgressEvery) return;
    last_line = now;
    const size_t run_done = done - first_done;
    const double eta = run_done ? sw.seconds() / run_done * (total - done) : 0;
    log(ctx.tag + " step=quantize progress tensors_done=" + std::to_string(done) +
        " tensors_total=" + std::to_string(total) +
        (run_done ? " eta_s=" + std::to_string(static_cast<int64_t>(eta)) : "") +
        " seconds=" + sw.str());
  };
  const size_t recorded = db_.tensors_done(job.id).size();
  if (recorded > 0)
    log(ctx.tag + " step=quantize resume_from=" + std::to_string(recorded) + " tensors");
  convert::QuantizeReport qr;
  try {
    qr = convert::quantize_model(snap.dir, ctx.out, qo, *backends.primary);
  } catch (const convert::Interrupted&) {
    ++report.jobs_interrupted;
    return false;
  } catch (const model::FormatError& e) {
    throw JobFailure{e.what(), true};
  } catch (const std::invalid_argument& e) {
    throw JobFailure{e.what(), true};
  }
  if (opt_.metrics) {
    for (const auto& l : qr.layers)
      if (!l.resumed) opt_.metrics->tensor_quantized(l.seconds);
    opt_.metrics->step_finished("quantize", qr.seconds);
    opt_.metrics->job_progress(0, 0);
  }
  // What the user must know (weights left out in full precision, ...): at warn, with the job.
  for (const auto& w : qr.warnings)
    log(ctx.tag + " step=quantize warning=\"" + w + "\"", spdlog::level::warn);
  // qr.layers holds one entry per quantized target tensor.
  log(ctx.tag + " step=quantize done tensors=" + std::to_string(qr.layers.size()) +
      " tensors_resumed=" + std::to_string(qr.resumed) +
      " tensor_jobs=" + std::to_string(qr.tensor_jobs) + " left_out=" +
      std::to_string(qr.loftq_json.value("left_out", nlohmann::json::array()).size()) +
      " device=\"" + chosen + "\" seconds=" + std::to_string(qr.seconds));
  return true;
}

convert::SourceInfo Pipeline::source_info(const storage::Job& job) const {
  convert::SourceInfo src;
  src.repo = job.repo;
  src.revision = job.revision;
  src.commit = job.upstream_commit;
  if (opt_.upstream.offline) {  // the card then reads the licence from the snapshot's README only
    log("repo=" + job.repo + " job=" + std::to_string(job.id) +
            " step=quantize card=\"HF_HUB_OFFLINE: the upstream's licence and access conditions "
            "are not asked\"",
        spdlog::level::warn);
    return src;
  }
  // The card keeps the upstream's licence and access conditions: a derivative published without
  // them would drop terms its users are bound by, so not knowing them fails the job.
  auto info = hub::Client(opt_.upstream).repo_info(job.repo, job.upstream_commit);
  if (!info)
    throw JobFailure{"cannot read the licence and access conditions of " + job.repo + ": " +
                         info.error().message,
                     permanent(info.error().kind)};
  src.license = info.value().license;
  src.gated = info.value().gated;
  src.is_private = info.value().is_private;
  return src;
}

bool Pipeline::publish_private(const JobContext& ctx) const {
  using V = config::Visibility;
  if (cfg_.publish.visibility != V::Inherit) return cfg_.publish.visibility == V::Private;
  const storage::Job& job = ctx.job;
  if (opt_.upstream.offline) {  // cannot ask: the safe side
    spdlog::warn(
        "{} step=publish private=yes reason=\"HF_HUB_OFFLINE: the upstream's visibility "
        "is unknown\"",
        ctx.tag);
    return true;
  }
  auto info = hub::Client(opt_.upstream).repo_info(job.repo, job.revision);
  if (!info)
    throw JobFailure{"cannot tell whether " + job.repo +
                         " is private or gated (publish.private "
                         "is \"inherit\"): " +
                         info.error().message,
                     permanent(info.error().kind)};
  return info.value().is_private || info.value().gated;
}

hub::ClientOptions Pipeline::upload_options(const PublishEndpoint& ep) const {
  hub::ClientOptions co = publish_client_options(ep);
  co.parallel_uploads = cfg_.limits.concurrent_uploads;
  return co;
}

std::unique_ptr<EarlyUpload> Pipeline::start_early_upload(const JobContext& ctx) const {
  if (!cfg_.publish.early_upload) return nullptr;
  std::vector<EarlyUpload::Target> targets;
  auto add = [&](const std::optional<PublishEndpoint>& ep, const char* where) {
    if (!ep || ep->offline) return;  // the publish step reports what is wrong with it
    targets.push_back({std::string(where) + "/" + ctx.job.target, upload_options(*ep)});
  };
  if (cfg_.publish.mirror) add(opt_.mirror, "mirror");
  if (cfg_.publish.hub_org) add(opt_.hub, "hub");
  if (targets.empty()) return nullptr;
  return std::make_unique<EarlyUpload>(
      std::move(targets), ctx.job.target, ctx.tag,
      [this](spdlog::level::level_enum level, const std::string& line) { log(line, level); },
      [this](const std::string& point) { failpoint(point); }, cfg_.limits.concurrent_uploads,
      [this] { beat(); });
}

std::string Pipeline::publish(const JobContext& ctx) {
  db_.set_state(ctx.job.id, storage::JobState::Publishing, now_s());
  set_status("publishing " + ctx.job.target);
  // The files sent while LoftQ ran: the last ones finish first, and their hashes save the
  // publish from reading the files again.
  std::map<std::string, hub::KnownHash> hashes;
  if (ctx.early) {
    const EarlyUpload::Done d = ctx.early->finish();
    ctx.early.reset();
    hashes = d.hashes;
    if (opt_.metrics) opt_.metrics->add_uploaded(d.bytes_sent);  // the commit counts the rest
    log(ctx.tag + " step=publish early done files=" + std::to_string(d.files) + " bytes_uploaded=" +
        std::to_string(d.bytes_sent) + " waited_s=" + std::to_string(d.waited_s));
  }
  failpoint("publish");
  const bool is_private = publish_private(ctx);
  std::string published;
  if (cfg_.publish.mirror) {
    if (!opt_.mirror) throw JobFailure{"publish.mirror is set but no mirror is running", true};
    published = publish_to(ctx, *opt_.mirror, "mirror", is_private, hashes);
  }
  if (cfg_.publish.hub_org) {
    if (!opt_.hub) throw JobFailure{"publish.hub_org is set but no Hub token is configured", true};
    published = publish_to(ctx, *opt_.hub, "hub", is_private, hashes);
  }
  failpoint("published");
  return published;
}

std::string Pipeline::publish_to(const JobContext& ctx, const PublishEndpoint& ep,
                                 const std::string& where, bool is_private,
                                 const std::map<std::string, hub::KnownHash>& hashes) {
  const storage::Job& job = ctx.job;
  const Stopwatch sw;
  hub::Client client(upload_options(ep));
  hub::PublishRequest pr;
  pr.dir = ctx.out;
  pr.repo = job.target;
  pr.is_private = is_private;  // applies when the repo is created
  pr.hashes = hashes;
  pr.summary = "LoftQ of " + job.repo + "@" + job.upstream_commit;
  pr.description = "loftqd " LOFTQD_VERSION "; upstream " + job.repo + " revision " + job.revision +
                   " commit " + job.upstream_commit + "; config " + job.config_hash;
  auto c = client.upload_folder(pr, [this](uint64_t, uint64_t, const std::string&) { beat(); });
  if (!c) throw JobFailure{where + ": " + c.error().message, permanent(c.error().kind)};
  if (opt_.metrics) {
    opt_.metrics->add_uploaded(c.value().bytes_uploaded);
    opt_.metrics->step_finished("publish", sw.seconds());
  }
  log(ctx.tag + " step=publish target=" + where + "/" + job.target +
      " private=" + (is_private ? "yes" : "no") + " commit_oid=" + c.value().commit_oid +
      (c.value().skipped ? " unchanged=yes" : "") +
      " bytes_uploaded=" + std::to_string(c.value().bytes_uploaded) +
      " hashes_reused=" + std::to_string(c.value().hashes_reused) + " seconds=" + sw.str());
  return c.value().commit_oid;
}

void Pipeline::finish(const JobContext& ctx, const std::string& published, SyncReport& report) {
  db_.set_published(ctx.job.id, published, now_s());
  db_.repo_processed(ctx.job.repo, ctx.job.upstream_commit, now_s());
  ++report.jobs_done;
  if (opt_.metrics) opt_.metrics->job_finished(true, ctx.since_start.seconds());
  log(ctx.tag + " step=done seconds=" + ctx.since_start.str());
  std::error_code ec;
  fs::remove_all(ctx.work, ec);
}

void Pipeline::fail(const JobContext& ctx, const std::string& error, bool permanent_failure,
                    int64_t retry_in_s, SyncReport& report) {
  ++report.jobs_failed;
  if (opt_.metrics) opt_.metrics->job_finished(false, ctx.since_start.seconds());
  report.errors.push_back(ctx.job.repo + ": " + error);
  db_.record_failure(ctx.job.id, error, permanent_failure, cfg_.limits.max_attempts,
                     now_s() + retry_in_s, now_s());
  if (permanent_failure) {  // never retried with this work: free its disk
    std::error_code ec;
    fs::remove_all(ctx.work, ec);
  }
  log(ctx.tag + " step=failed permanent=" + (permanent_failure ? std::string("yes") : "no") +
          " error=\"" + error + "\" seconds=" + ctx.since_start.str(),
      permanent_failure ? spdlog::level::err : spdlog::level::warn);
}

}  // namespace loftqd::daemon
