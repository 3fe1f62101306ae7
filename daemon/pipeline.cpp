#include "daemon/pipeline.h"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include <spdlog/spdlog.h>

#include "convert/convert.h"
#include "hub/hub.h"
#include "model/safetensors.h"
#include "quant/device.h"

namespace fs = std::filesystem;

namespace loftqd::daemon {

namespace {

// Failures that retrying cannot fix until the upstream commit or the config changes.
bool permanent(hub::ErrorKind k) {
  using K = hub::ErrorKind;
  return k == K::RepoNotFound || k == K::RevisionNotFound || k == K::EntryNotFound ||
         k == K::GatedRepo || k == K::Unauthorized || k == K::Forbidden || k == K::UnsafePath ||
         k == K::BadRequest;
}

struct JobFailure {
  std::string message;
  bool permanent;
};

convert::QuantizeOptions quantize_options(const config::LoftqSettings& s) {
  convert::QuantizeOptions q;
  q.settings = s;
  q.force = true;
  return q;
}

// Crash-test hook: LOFTQD_FAILPOINT="name:ms[,name:ms...]" makes the pipeline log
// "failpoint=name" and sleep ms milliseconds at that point, so a test can kill -9 the daemon
// exactly there. Points: tensor (after each tensor's checkpoint is recorded), publish (before the
// upload), published (after the commit, before the state db records it). Unset in production: one
// getenv per job step.
void failpoint(const std::string& name, const std::function<void(const std::string&)>& log) {
  const char* fp = std::getenv("LOFTQD_FAILPOINT");
  if (!fp) return;
  const std::string spec = fp;
  size_t pos = 0;
  while (pos < spec.size()) {
    size_t end = spec.find(',', pos);
    if (end == std::string::npos) end = spec.size();
    const std::string item = spec.substr(pos, end - pos);
    const size_t colon = item.find(':');
    if (colon != std::string::npos && item.substr(0, colon) == name) {
      if (log) log("failpoint=" + name);
      std::this_thread::sleep_for(std::chrono::milliseconds(std::atoll(item.c_str() + colon + 1)));
    }
    pos = end + 1;
  }
}

}  // namespace

int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

PipelineOptions pipeline_options(const config::Config& cfg, int threads) {
  PipelineOptions po;
  po.threads = threads;
  po.log = [](const std::string& line) { spdlog::info("{}", line); };
  const auto config_token =
      cfg.hub.token_file ? hub::read_token_file(*cfg.hub.token_file) : std::nullopt;
  po.upstream_token = hub::find_token(config_token);
  if (cfg.publish.hub_org) po.hub = PublishEndpoint{cfg.hub.endpoint, po.upstream_token};
  return po;
}

Pipeline::Pipeline(config::Config cfg, storage::StateDb& db, PipelineOptions opt)
    : cfg_(std::move(cfg)), db_(db), opt_(std::move(opt)) {}

void Pipeline::log(const std::string& line) const {
  if (opt_.log) opt_.log(line);
}

void Pipeline::set_status(const std::string& s) const {
  if (opt_.status) opt_.status(s);
}

void Pipeline::beat() const {
  if (opt_.heartbeat) opt_.heartbeat();
}

const config::RepoConfig* Pipeline::repo_config(const std::string& repo) const {
  for (const auto& r : cfg_.repos)
    if (r.repo == repo) return &r;
  return nullptr;
}

void Pipeline::check_repos(SyncReport& report) {
  for (const auto& r : cfg_.repos) {
    if (opt_.stop && *opt_.stop) return;
    check_repo(r, report);
  }
}

bool Pipeline::check_repo(const config::RepoConfig& r, SyncReport& report) {
  hub::ClientOptions co;
  co.endpoint = cfg_.hub.endpoint;
  co.token = opt_.upstream_token;
  hub::Client client(co);
  ++report.repos_checked;
  auto info = client.repo_info(r.repo, r.revision);
  if (!info) {
    report.errors.push_back(r.repo + ": " + info.error().message);
    log("repo=" + r.repo + " step=check error=\"" + info.error().message + "\"");
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
  while (!(opt_.stop && *opt_.stop)) {
    auto job = db_.next_runnable(now_s());
    if (!job) return;
    run_job(*job, report);
  }
}

SyncReport Pipeline::sync_once() {
  SyncReport report;
  check_repos(report);
  run_jobs(report);
  return report;
}

bool Pipeline::quantize(const storage::Job& job, const config::RepoConfig& rc,
                        const fs::path& model_dir, const fs::path& out, const std::string& tag,
                        SyncReport& report) {
  db_.set_state(job.id, storage::JobState::Quantizing, now_s());
  log(tag + " step=quantize");
  convert::QuantizeOptions qo = quantize_options(rc.loftq);
  qo.repo_id = job.target;
  qo.source = convert::SourceInfo{job.repo, job.revision, job.upstream_commit};
  std::string chosen;
  auto backends = quant::make_backends(rc.loftq.device, opt_.threads, &chosen);
  qo.fallback = backends.fallback();
  fs::create_directories(out.parent_path());
  // Finished tensors are checkpointed under the work dir and recorded in the state db, so a
  // job killed or stopped mid-way skips them when it runs again.
  qo.checkpoint_dir = out.parent_path() / "tensors";
  qo.should_stop = [this] { return opt_.stop && opt_.stop->load(); };
  qo.on_tensor_done = [this, &job](const std::string& tensor) {
    db_.tensor_done(job.id, tensor);
    failpoint("tensor", opt_.log);
  };
  qo.progress = [this, &job](size_t done, size_t total, const std::string&) {
    beat();
    set_status("quantizing " + job.repo + " " + std::to_string(done) + "/" + std::to_string(total));
  };
  const size_t recorded = db_.tensors_done(job.id).size();
  if (recorded > 0)
    log(tag + " step=quantize resume_from=" + std::to_string(recorded) + " tensors");
  convert::QuantizeReport qr;
  try {
    qr = convert::quantize_model(model_dir, out, qo, *backends.primary);
  } catch (const convert::Interrupted&) {
    ++report.jobs_interrupted;
    return false;
  } catch (const model::FormatError& e) {
    throw JobFailure{e.what(), true};
  } catch (const std::invalid_argument& e) {
    throw JobFailure{e.what(), true};
  }
  if (opt_.metrics)
    for (const auto& l : qr.layers)
      if (!l.resumed) opt_.metrics->tensor_quantized(l.seconds);
  log(tag + " step=quantize done layers=" + std::to_string(qr.layers.size()) +
      " resumed=" + std::to_string(qr.resumed) + " device=\"" + chosen +
      "\" seconds=" + std::to_string(qr.seconds));
  return true;
}

void Pipeline::run_job(const storage::Job& job, SyncReport& report) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string tag =
      "repo=" + job.repo + " commit=" + job.upstream_commit + " job=" + std::to_string(job.id);
  auto seconds = [&] {
    return std::to_string(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  };
  const config::RepoConfig* rc = repo_config(job.repo);
  const fs::path work = fs::path(cfg_.store) / ".loftqd-work" / ("job-" + std::to_string(job.id));
  try {
    if (!rc) throw JobFailure{"the repo is no longer in the configuration", true};
    if (config::config_hash(*rc, cfg_.publish.hub_org) != job.config_hash)
      throw JobFailure{"the configuration changed since the job was queued", true};

    // 1. Download (resumes partials; verified blobs are never fetched twice).
    db_.set_state(job.id, storage::JobState::Downloading, now_s());
    log(tag + " step=download");
    set_status("downloading " + job.repo + "@" + job.upstream_commit.substr(0, 12));
    hub::ClientOptions co;
    co.endpoint = cfg_.hub.endpoint;
    co.token = opt_.upstream_token;
    co.parallel = cfg_.limits.concurrent_downloads;
    co.disk_reserve = cfg_.limits.disk_reserve_bytes;
    hub::Client upstream(co);
    hub::SnapshotRequest sr;
    sr.repo = job.repo;
    sr.revision = job.upstream_commit;
    sr.allow = rc->allow_patterns;
    sr.ignore = rc->ignore_patterns;
    sr.store = fs::path(cfg_.store);
    auto snap =
        upstream.snapshot_download(sr, [this](uint64_t, uint64_t, const std::string&) { beat(); });
    if (!snap) throw JobFailure{snap.error().message, permanent(snap.error().kind)};
    if (opt_.metrics) opt_.metrics->add_downloaded(snap.value().bytes);
    log(tag + " step=download done files=" + std::to_string(snap.value().files) +
        " fetched=" + std::to_string(snap.value().downloaded) + " seconds=" + seconds());

    // 2. Quantize into the job's work dir. The finished layout appears there in one rename, so
    // a job that got past this step before a crash publishes those same bytes again (the
    // publish then finds them unchanged and makes no second commit).
    const fs::path out = work / "out";
    std::error_code exists_ec;
    if (fs::exists(out / "loftq.json", exists_ec)) {
      log(tag + " step=quantize reused=" + out.string());
    } else if (!quantize(job, *rc, snap.value().dir, out, tag, report)) {
      log(tag + " step=interrupted tensors_done=" +
          std::to_string(db_.tensors_done(job.id).size()) + " seconds=" + seconds());
      return;
    }

    // 3. Publish: one commit per target, carrying the upstream commit.
    db_.set_state(job.id, storage::JobState::Publishing, now_s());
    set_status("publishing " + job.target);
    failpoint("publish", opt_.log);
    std::string published;
    auto publish_to = [&](const PublishEndpoint& ep, const std::string& where) {
      hub::ClientOptions po;
      po.endpoint = ep.endpoint;
      po.token = ep.token;
      hub::Client client(po);
      hub::PublishRequest pr;
      pr.dir = out;
      pr.repo = job.target;
      pr.summary = "LoftQ of " + job.repo + "@" + job.upstream_commit;
      pr.description = "loftqd " LOFTQD_VERSION "; upstream " + job.repo + " revision " +
                       job.revision + " commit " + job.upstream_commit + "; config " +
                       job.config_hash;
      auto c = client.upload_folder(pr);
      if (!c) throw JobFailure{where + ": " + c.error().message, permanent(c.error().kind)};
      published = c.value().commit_oid;
      if (opt_.metrics) opt_.metrics->add_uploaded(c.value().bytes_uploaded);
      log(tag + " step=publish target=" + where + "/" + job.target + " commit_oid=" + published +
          (c.value().skipped ? " unchanged=yes" : "") + " seconds=" + seconds());
    };
    if (cfg_.publish.mirror) {
      if (!opt_.mirror) throw JobFailure{"publish.mirror is set but no mirror is running", true};
      publish_to(*opt_.mirror, "mirror");
    }
    if (cfg_.publish.hub_org) {
      if (!opt_.hub)
        throw JobFailure{"publish.hub_org is set but no Hub token is configured", true};
      publish_to(*opt_.hub, "hub");
    }
    failpoint("published", opt_.log);
    db_.set_published(job.id, published, now_s());
    db_.repo_processed(job.repo, job.upstream_commit, now_s());
    ++report.jobs_done;
    if (opt_.metrics) opt_.metrics->job_finished(true);
    log(tag + " step=done seconds=" + seconds());
    std::error_code ec;
    fs::remove_all(work, ec);
  } catch (const JobFailure& f) {
    ++report.jobs_failed;
    if (opt_.metrics) opt_.metrics->job_finished(false);
    report.errors.push_back(job.repo + ": " + f.message);
    const int attempt = job.attempts + 1;
    const int64_t retry_at =
        now_s() + static_cast<int64_t>(std::min(3600.0, 30.0 * std::pow(2.0, attempt - 1)));
    db_.record_failure(job.id, f.message, f.permanent, cfg_.limits.max_attempts, retry_at, now_s());
    if (f.permanent) {  // never retried with this work: free its disk
      std::error_code ec;
      fs::remove_all(work, ec);
    }
    log(tag + " step=failed permanent=" + (f.permanent ? std::string("yes") : "no") + " error=\"" +
        f.message + "\" seconds=" + seconds());
  } catch (const std::exception& e) {
    ++report.jobs_failed;
    if (opt_.metrics) opt_.metrics->job_finished(false);
    report.errors.push_back(job.repo + ": " + e.what());
    const int64_t retry_at = now_s() + 60;
    db_.record_failure(job.id, e.what(), false, cfg_.limits.max_attempts, retry_at, now_s());
    log(tag + " step=failed permanent=no error=\"" + std::string(e.what()) +
        "\" seconds=" + seconds());
  }
}

}  // namespace loftqd::daemon
