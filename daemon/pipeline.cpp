#include "daemon/pipeline.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include "hub/hub.h"
#include "quant/device.h"
#include "quant/layout.h"
#include "quant/safetensors.h"

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

quant::QuantizeOptions quantize_options(const config::LoftqSettings& s) {
  quant::QuantizeOptions q;
  q.rank = s.rank;
  q.iters = s.iters;
  q.method = quant::parse_method(s.quant);
  q.block_size = s.block_size;
  q.plan = s.plan();
  q.target_modules = s.target_modules;
  q.svd = quant::parse_svd_mode(s.svd);
  q.lora_alpha = s.lora_alpha;
  q.force = true;
  return q;
}

}  // namespace

int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Pipeline::Pipeline(config::Config cfg, storage::StateDb& db, PipelineOptions opt)
    : cfg_(std::move(cfg)), db_(db), opt_(std::move(opt)) {}

void Pipeline::log(const std::string& line) const {
  if (opt_.log) opt_.log(line);
}

const config::RepoConfig* Pipeline::repo_config(const std::string& repo) const {
  for (const auto& r : cfg_.repos)
    if (r.repo == repo) return &r;
  return nullptr;
}

void Pipeline::check_repos(SyncReport& report) {
  hub::ClientOptions co;
  co.endpoint = cfg_.hub.endpoint;
  co.token = opt_.upstream_token;
  hub::Client client(co);
  for (const auto& r : cfg_.repos) {
    if (opt_.stop && *opt_.stop) return;
    ++report.repos_checked;
    auto info = client.repo_info(r.repo, r.revision);
    if (!info) {
      report.errors.push_back(r.repo + ": " + info.error().message);
      log("repo=" + r.repo + " step=check error=\"" + info.error().message + "\"");
      continue;
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
  }
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
    auto snap = upstream.snapshot_download(sr);
    if (!snap) throw JobFailure{snap.error().message, permanent(snap.error().kind)};
    log(tag + " step=download done files=" + std::to_string(snap.value().files) +
        " fetched=" + std::to_string(snap.value().downloaded) + " seconds=" + seconds());

    // 2. Quantize into the job's work dir.
    db_.set_state(job.id, storage::JobState::Quantizing, now_s());
    log(tag + " step=quantize");
    quant::QuantizeOptions qo = quantize_options(rc->loftq);
    qo.repo_id = job.target;
    qo.source = quant::SourceInfo{job.repo, job.revision, job.upstream_commit};
    std::string chosen;
    auto backend = quant::make_backend(cfg_.device, opt_.threads, &chosen);
    std::unique_ptr<quant::Backend> cpu;
    if (backend->name() != "cpu") qo.fallback = (cpu = quant::make_cpu_backend(opt_.threads)).get();
    fs::create_directories(work);
    quant::QuantizeReport qr;
    try {
      qr = quant::quantize_model(snap.value().dir, work / "out", qo, *backend);
    } catch (const quant::FormatError& e) {
      throw JobFailure{e.what(), true};
    } catch (const std::invalid_argument& e) {
      throw JobFailure{e.what(), true};
    }
    log(tag + " step=quantize done layers=" + std::to_string(qr.layers.size()) + " device=\"" +
        chosen + "\" seconds=" + seconds());

    // 3. Publish: one commit per target, carrying the upstream commit.
    db_.set_state(job.id, storage::JobState::Publishing, now_s());
    std::string published;
    auto publish_to = [&](const PublishEndpoint& ep, const std::string& where) {
      hub::ClientOptions po;
      po.endpoint = ep.endpoint;
      po.token = ep.token;
      hub::Client client(po);
      hub::PublishRequest pr;
      pr.dir = work / "out";
      pr.repo = job.target;
      pr.summary = "LoftQ of " + job.repo + "@" + job.upstream_commit;
      pr.description = "loftqd " LOFTQD_VERSION "; upstream " + job.repo + " revision " +
                       job.revision + " commit " + job.upstream_commit + "; config " +
                       job.config_hash;
      auto c = client.upload_folder(pr);
      if (!c) throw JobFailure{where + ": " + c.error().message, permanent(c.error().kind)};
      published = c.value().commit_oid;
      log(tag + " step=publish target=" + where + "/" + job.target + " commit_oid=" + published +
          " seconds=" + seconds());
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
    db_.set_published(job.id, published, now_s());
    db_.repo_processed(job.repo, job.upstream_commit, now_s());
    ++report.jobs_done;
    log(tag + " step=done seconds=" + seconds());
    std::error_code ec;
    fs::remove_all(work, ec);
  } catch (const JobFailure& f) {
    ++report.jobs_failed;
    report.errors.push_back(job.repo + ": " + f.message);
    const int attempt = job.attempts + 1;
    const int64_t retry_at =
        now_s() + static_cast<int64_t>(std::min(3600.0, 30.0 * std::pow(2.0, attempt - 1)));
    db_.record_failure(job.id, f.message, f.permanent, cfg_.limits.max_attempts, retry_at, now_s());
    log(tag + " step=failed permanent=" + (f.permanent ? std::string("yes") : "no") + " error=\"" +
        f.message + "\" seconds=" + seconds());
  } catch (const std::exception& e) {
    ++report.jobs_failed;
    report.errors.push_back(job.repo + ": " + e.what());
    const int64_t retry_at = now_s() + 60;
    db_.record_failure(job.id, e.what(), false, cfg_.limits.max_attempts, retry_at, now_s());
    log(tag + " step=failed permanent=no error=\"" + std::string(e.what()) +
        "\" seconds=" + seconds());
  }
}

}  // namespace loftqd::daemon
