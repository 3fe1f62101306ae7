#include "daemon/run.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <utility>

#include "common/signals.h"
#include "common/strings.h"
#include "config/config.h"
#include "daemon/blas_kernels.h"
#include "daemon/hub_options.h"
#include "daemon/logging.h"
#include "daemon/metrics.h"
#include "daemon/notify.h"
#include "daemon/pipeline.h"
#include "daemon/retention.h"
#include "daemon/scheduler.h"
#include "hub/hub.h"
#include "mirror/mirror.h"
#include "storage/state.h"
#include "storage/store.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace loftqd::daemon {

namespace {

// Loads, applies env overrides and validates what `run` needs beyond parse_config.
config::Config load(const std::string& path) {
  auto cfg = config::load_config(path);
  config::apply_env(cfg);
  if (cfg.mirror.enabled) mirror::parse_listen(cfg.mirror.listen);  // invalid_argument: exit 2
  return cfg;
}

std::vector<std::string> repo_ids(const config::Config& cfg) {
  std::vector<std::string> ids;
  for (const auto& r : cfg.repos) ids.push_back(r.repo);
  return ids;
}

std::set<std::string> repo_set(const config::Config& cfg) {
  const auto ids = repo_ids(cfg);
  return {ids.begin(), ids.end()};
}

// State shared between the main loop, the signal thread, the watchdog thread and the HTTP
// handlers; `mu` guards everything that is not atomic, the scheduler included.
struct Shared {
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<bool> stop{false};
  bool reload = false;
  bool done = false;  // the main loop has ended
  std::optional<std::string> webhook_secret;
  std::set<std::string> watched;  // the configured repos (health)
  std::string status = "starting";
  std::atomic<int64_t> heartbeat_ms{0};  // steady clock
  int64_t started_at = 0, last_pass_at = 0;

  void beat() {
    heartbeat_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
            .count();
  }
  double since_beat_s() const {
    const auto now =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
            .count();
    return (now - heartbeat_ms.load()) / 1000.0;
  }
};

void handle_webhook(Shared& sh, Scheduler& sched, mirror::HttpExchange& ex) {
  auto answer = [&](int status, const json& body) {
    ex.status = status;
    ex.content_type = "application/json";
    ex.reply = body.dump();
  };
  std::unique_lock lk(sh.mu);
  if (!sh.webhook_secret)
    return answer(404, {{"error", "no webhook secret is configured (mirror.webhook_secret_file)"}});
  if (!storage::secure_equal(ex.header("x-webhook-secret"), *sh.webhook_secret))
    return answer(401, {{"error", "missing or wrong X-Webhook-Secret"}});
  json j = json::parse(ex.body, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("repo") || !j["repo"].is_object() ||
      !j["repo"].contains("name") || !j["repo"]["name"].is_string())
    return answer(400, {{"error", "expected a Hub webhook payload with repo.name"}});
  const std::string repo = j["repo"]["name"].get<std::string>();
  const std::string type = j["repo"].value("type", "model");
  std::string scope;
  if (j.contains("event") && j["event"].is_object()) scope = j["event"].value("scope", "");
  // Discussions and comments don't change the weights; only repo (content/config) events do.
  if (type != "model" || (!scope.empty() && scope.rfind("repo", 0) != 0))
    return answer(202, {{"status", "ignored"}, {"reason", "not a model repo change"}});
  if (!sched.webhook(repo))
    return answer(202, {{"status", "ignored"}, {"reason", "repo is not watched"}});
  sh.cv.notify_all();
  lk.unlock();
  spdlog::info("repo={} step=webhook scope={}", repo, scope.empty() ? "-" : scope);
  answer(202, {{"status", "queued"}, {"repo", repo}});
}

// What a reload changes in the watch list, one line per kind: targets added, removed, and
// those whose settings changed (a new config hash: they are published again).
void log_changes(const config::Config& from, const config::Config& to) {
  std::map<std::string, std::string> before, after;  // "repo -> target" -> config hash
  auto index = [](const config::Config& c, std::map<std::string, std::string>& out) {
    for (const auto& r : c.repos)
      out[r.repo + " -> " + config::render_publish_as(r.publish_as, r, c.publish.hub_org)] =
          config::config_hash(r, c.publish.hub_org);
  };
  index(from, before);
  index(to, after);
  std::string added, removed, changed;
  for (const auto& [k, h] : after) {
    const auto it = before.find(k);
    if (it == before.end())
      added += (added.empty() ? "" : ", ") + k;
    else if (it->second != h)
      changed += (changed.empty() ? "" : ", ") + k;
  }
  for (const auto& [k, h] : before)
    if (!after.count(k)) removed += (removed.empty() ? "" : ", ") + k;
  if (added.empty() && removed.empty() && changed.empty())
    spdlog::info("reload: the watched targets are unchanged");
  if (!added.empty()) spdlog::info("reload: added {}", added);
  if (!removed.empty()) spdlog::info("reload: removed {}", removed);
  if (!changed.empty()) spdlog::info("reload: new settings for {} (published again)", changed);
}

// The daemon's parts, built by run_command's steps in order and taken down by the destructor.
class Daemon {
 public:
  Daemon(const RunOptions& ro, config::Config cfg) : ro_(ro), cfg_(std::move(cfg)) {}
  ~Daemon() { shutdown(); }

  void logging();
  void secrets();
  void state();
  void signals();
  void scheduler();
  void mirror();
  void retention();
  void watchdog();
  void loop();
  void shutdown();

 private:
  PipelineOptions options_for(const config::Config& c);
  void reload();
  void pass();
  void sleep();
  void on_signals();
  void health(mirror::HttpExchange& ex);
  json repo_health();  // under sh_.mu

  const RunOptions& ro_;
  config::Config cfg_;
  bool tz_utc_ = true;
  Shared sh_;
  std::optional<storage::StoreLock> lock_;
  std::optional<std::string> write_token_;
  std::optional<Scheduler> sched_;  // guarded by sh_.mu
  Metrics metrics_;
  RepeatFilter repeats_;  // the idle pass summary, logged once until it changes
  Notifier notifier_;
  std::unique_ptr<storage::StateDb> db_, reader_db_;
  std::mutex reader_mu_;
  std::optional<common::SignalPipe> signal_pipe_;
  mirror::MirrorOptions mo_;
  std::unique_ptr<mirror::Mirror> mirror_;
  PipelineOptions po_;
  std::thread signal_thread_, watchdog_thread_;
  bool shut_down_ = false;
};

// Logging and the clock: the level, and the nightly window's time zone. Setting TZ now, while
// this is the only thread, keeps localtime_r lock-free later; a new timezone in a reloaded
// config needs a restart.
void Daemon::logging() {
  spdlog::set_level(spdlog::level::from_str(ro_.log_level.value_or(cfg_.log_level)));
  set_log_format(cfg_.log_format);
  const std::string& tz = cfg_.schedule.timezone;
  if (tz != "local" && tz != "UTC") ::setenv("TZ", (":" + tz).c_str(), 1);
  ::tzset();
  tz_utc_ = tz == "UTC";
  log_blas_kernels("run");  // the kernels every job's LoftQ runs on
}

// Every secret file is read now, before anything starts: an unreadable or empty one is a
// configuration error (exit 2) naming its key and path, never a failure later on.
void Daemon::secrets() {
  upstream_client_options(cfg_);  // hub.token_file (the options are built again per pass)
  write_token_ = read_secret(cfg_.mirror.write_token_file, "mirror.write_token_file");
  sh_.webhook_secret = read_secret(cfg_.mirror.webhook_secret_file, "mirror.webhook_secret_file");
}

// The store's lock first (one loftqd per store), then one connection for the main loop and one
// for the HTTP handlers (WAL lets them read while the loop writes).
void Daemon::state() {
  lock_.emplace(storage::StoreLock::acquire(cfg_.store));
  db_ = storage::StateDb::open(cfg_.state_db);
  reader_db_ = storage::StateDb::open(cfg_.state_db);
  sh_.beat();
  sh_.started_at = now_s();
}

// SIGTERM/SIGINT stop, SIGHUP reloads: the handler only feeds common::SignalPipe, and the
// signal thread started here acts on what arrives.
void Daemon::signals() {
  signal_pipe_.emplace(std::initializer_list<int>{SIGTERM, SIGINT, SIGHUP});
  signal_thread_ = std::thread([this] { on_signals(); });
}

// After the first SIGTERM/SIGINT the signal thread waits at most stop_grace_s for the main loop
// to end: a download or upload in flight is not interruptible mid-file, and everything it wrote
// is crash-safe, so past the grace period it exits as if killed (the job resumes on restart). A
// second SIGTERM/SIGINT exits at once.
void Daemon::on_signals() {
  std::optional<Clock::time_point> deadline;
  for (;;) {
    int timeout_ms = -1;
    if (deadline) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - Clock::now());
      if (left.count() <= 0) {
        std::lock_guard g(sh_.mu);
        if (sh_.done) return;
        spdlog::warn("stop: '{}' still running after {} s; exiting (it resumes on restart)",
                     sh_.status, ro_.stop_grace_s);
        std::_Exit(0);
      }
      timeout_ms = static_cast<int>(left.count());
    }
    const auto sig = signal_pipe_->next(timeout_ms);
    if (!sig) {  // the grace deadline, or shutdown() woke us
      std::lock_guard g(sh_.mu);
      if (sh_.done) return;
      continue;
    }
    if (*sig == SIGHUP) {
      std::lock_guard g(sh_.mu);
      sh_.reload = true;
      sh_.cv.notify_all();
      continue;
    }
    const char* name = *sig == SIGINT ? "SIGINT" : "SIGTERM";
    if (sh_.stop.exchange(true)) {
      spdlog::warn("second {} while stopping: exiting now (jobs resume on restart)", name);
      std::_Exit(0);
    }
    spdlog::info("{}: stopping (finishing or checkpointing the current step)", name);
    notifier_.stopping("stopping");
    deadline = Clock::now() + std::chrono::seconds(ro_.stop_grace_s);
    std::lock_guard g(sh_.mu);
    sh_.cv.notify_all();
  }
}

void Daemon::health(mirror::HttpExchange& ex) {
  std::lock_guard g(sh_.mu);
  const bool stopping = sh_.stop.load();
  const double idle = sh_.since_beat_s();
  const bool stalled = idle > ro_.stall_limit_s;
  ex.status = stopping || stalled ? 503 : 200;
  ex.content_type = "application/json";
  json h = {{"status", stopping  ? "stopping"
                       : stalled ? "stalled"
                                 : "ok"},
            {"version", LOFTQD_VERSION},
            {"state", sh_.status},
            {"uptime_s", now_s() - sh_.started_at},
            {"last_pass_at", sh_.last_pass_at ? json(sh_.last_pass_at) : json(nullptr)},
            {"seconds_since_progress", idle},
            {"watched_repos", sched_->watched()}};
  h["repos"] = repo_health();
  ex.reply = h.dump();
}

// Per watched repo: the last check (when, and its error if it failed) and the last success,
// from the state database (a repo whose check never worked is there too).
json Daemon::repo_health() {
  json out = json::array();
  std::lock_guard g(reader_mu_);
  std::map<std::string, storage::RepoState> by_repo;
  for (auto& r : reader_db_->repos()) by_repo.emplace(r.repo, std::move(r));
  for (const auto& id : sh_.watched) {
    const auto it = by_repo.find(id);
    json r = {{"repo", id}, {"last_check_at", nullptr}, {"last_success_at", nullptr}};
    if (it != by_repo.end()) {
      const auto& st = it->second;
      if (st.last_check_at) r["last_check_at"] = st.last_check_at;
      if (st.last_success_at) r["last_success_at"] = st.last_success_at;
      r["last_seen_commit"] = st.last_seen_commit;
      r["ok"] = st.last_check_error.empty();
      if (!st.last_check_error.empty()) r["last_check_error"] = st.last_check_error;
    }
    out.push_back(std::move(r));
  }
  return out;
}

// The configured listener (with /healthz, /metrics, /webhook) when enabled; otherwise, when
// results go to the mirror, a private one on a loopback port.
void Daemon::mirror() {
  mo_.store = cfg_.store;
  mo_.store_locked = true;  // state() took the StoreLock: a killed predecessor's temps go now
  // Without a configured token only the daemon itself may write (a random per-process token).
  mo_.write_token =
      write_token_ ? write_token_ : std::optional<std::string>(common::random_hex(32));
  mo_.port = 0;
  if (cfg_.mirror.enabled) std::tie(mo_.host, mo_.port) = mirror::parse_listen(cfg_.mirror.listen);
  // HEAD gets the same answer without the body (the server core drops it).
  for (const char* method : {"GET", "HEAD"}) {
    mo_.extra_routes[std::string(method) + " /healthz"] = [this](mirror::HttpExchange& ex) {
      health(ex);
    };
    mo_.extra_routes[std::string(method) + " /metrics"] = [this](mirror::HttpExchange& ex) {
      std::lock_guard g(reader_mu_);
      ex.content_type = "text/plain; version=0.0.4; charset=utf-8";
      ex.reply = metrics_.render(reader_db_.get());
    };
  }
  mo_.extra_routes["POST /webhook"] = [this](mirror::HttpExchange& ex) {
    handle_webhook(sh_, *sched_, ex);
  };
  if (cfg_.mirror.enabled || cfg_.publish.mirror) {
    mirror_ = std::make_unique<mirror::Mirror>(mo_);
    mirror_->start();
    spdlog::info("mirror: serving {} on {} (/healthz, /metrics{}); HF_ENDPOINT={}", cfg_.store,
                 mirror_->url(), sh_.webhook_secret ? ", /webhook" : "", mirror_->url());
  }
}

// Which repo is checked when (Scheduler), from the start-up configuration.
void Daemon::scheduler() {
  sched_.emplace(cfg_.schedule, repo_ids(cfg_));
  sh_.watched = repo_set(cfg_);
  metrics_.set_watched(sh_.watched);
  metrics_.set_store(cfg_.store);
  if (cfg_.limits.concurrent_jobs > 1)
    spdlog::warn("limits.concurrent_jobs = {}: this version runs one job at a time",
                 cfg_.limits.concurrent_jobs);
}

// What the store keeps (config retention): applied now and after every pass that did something.
void Daemon::retention() {
  apply_retention(cfg_, *db_, &metrics_, [](spdlog::level::level_enum level, const std::string& l) {
    spdlog::log(level, "{}", l);
  });
}

// Fed while the daemon makes progress (see RunOptions::stall_limit_s).
void Daemon::watchdog() {
  auto every = notifier_.watchdog_interval();
  if (!every) return;
  watchdog_thread_ = std::thread([this, every = *every] {
    std::unique_lock lk(sh_.mu);
    while (!sh_.done) {
      if (sh_.since_beat_s() <= ro_.stall_limit_s)
        notifier_.watchdog();
      else
        spdlog::error("watchdog: no progress for {:.0f} s in '{}'", sh_.since_beat_s(), sh_.status);
      sh_.cv.wait_for(lk, every, [&] { return sh_.done; });
    }
  });
}

// Everything but the config-derived part (token, Hub target) is fixed for the process, so a
// reload rebuilds the options with this one function.
PipelineOptions Daemon::options_for(const config::Config& c) {
  PipelineOptions p = pipeline_options(c, ro_.threads);
  p.stop = &sh_.stop;
  p.metrics = &metrics_;
  p.failpoint = ro_.failpoint;
  p.heartbeat = [this] { sh_.beat(); };
  p.status = [this](const std::string& st) {
    {
      std::lock_guard g(sh_.mu);
      sh_.status = st;
    }
    notifier_.status(st);
  };
  if (c.publish.mirror && mirror_) p.mirror = PublishEndpoint{mirror_->url(), mo_.write_token};
  return p;
}

// Until a signal stops it: reload when asked, check what is due and run the jobs, then sleep.
void Daemon::loop() {
  po_ = options_for(cfg_);
  if (po_.upstream.offline) spdlog::warn("{}", kOfflineNotice);
  notifier_.ready("idle; watching " + std::to_string(cfg_.repos.size()) + " repos");
  spdlog::info(
      "run: watching {} repos, poll every {} s{}; store {}", cfg_.repos.size(),
      cfg_.schedule.poll_interval_s,
      cfg_.schedule.nightly ? ", nightly refresh in " + cfg_.schedule.timezone : std::string(),
      cfg_.store);
  while (!sh_.stop) {
    sh_.beat();
    reload();
    pass();
    if (sh_.stop) break;
    sleep();
  }
  spdlog::info("run: stopped cleanly");  // the job in flight has stopped at a durable point
}

// SIGHUP: reload. Fields bound at start-up (store, state db, listener, time zone) keep their
// values until a restart; a bad new config is logged and the old one stays.
void Daemon::reload() {
  {
    std::lock_guard g(sh_.mu);
    if (!std::exchange(sh_.reload, false)) return;
  }
  notifier_.reloading("reloading " + ro_.config_path);
  try {
    config::Config n = load(ro_.config_path);
    upstream_client_options(n);  // hub.token_file must be readable before anything changes
    auto secret = read_secret(n.mirror.webhook_secret_file, "mirror.webhook_secret_file");
    for (const auto& [field, same] :
         {std::pair<const char*, bool>{"store", n.store == cfg_.store},
          {"state_db", n.state_db == cfg_.state_db},
          {"mirror.listen", n.mirror.listen == cfg_.mirror.listen},
          {"mirror.enabled", n.mirror.enabled == cfg_.mirror.enabled},
          {"mirror.write_token_file", n.mirror.write_token_file == cfg_.mirror.write_token_file},
          {"schedule.timezone", n.schedule.timezone == cfg_.schedule.timezone}})
      if (!same) spdlog::warn("reload: a change of {} takes effect after a restart", field);
    n.store = cfg_.store;
    n.state_db = cfg_.state_db;
    n.mirror.listen = cfg_.mirror.listen;
    n.mirror.enabled = cfg_.mirror.enabled;
    n.mirror.write_token_file = cfg_.mirror.write_token_file;
    n.schedule.timezone = cfg_.schedule.timezone;
    log_changes(cfg_, n);
    cfg_ = std::move(n);
    spdlog::set_level(spdlog::level::from_str(ro_.log_level.value_or(cfg_.log_level)));
    set_log_format(cfg_.log_format);
    po_ = options_for(cfg_);
    {
      std::lock_guard g(sh_.mu);
      sched_->reconfigure(cfg_.schedule, repo_ids(cfg_));  // every repo is checked at once
      sh_.webhook_secret = secret;
      sh_.watched = repo_set(cfg_);
      metrics_.set_watched(sh_.watched);
    }
    metrics_.config_reloaded(true, now_s());
    spdlog::info("reload: {} applied; watching {} repos", ro_.config_path, cfg_.repos.size());
  } catch (const std::exception& e) {
    metrics_.config_reloaded(false, now_s());
    spdlog::error("reload: {} rejected, keeping the previous configuration: {}", ro_.config_path,
                  e.what());
  }
  notifier_.ready("idle; watching " + std::to_string(cfg_.repos.size()) + " repos");
}

// One pass: check the repos the scheduler says are due, then run every runnable job.
void Daemon::pass() {
  Scheduler::Due due;
  {
    std::lock_guard g(sh_.mu);
    due = sched_->due(Clock::now(), Scheduler::local_now(tz_utc_));
  }
  if (due.nightly)
    spdlog::info("run: nightly window {}: refresh check of every repo", cfg_.schedule.timezone);
  Pipeline pipeline(cfg_, *db_, po_);
  SyncReport report;
  for (const auto& r : cfg_.repos) {
    if (sh_.stop) break;
    if (!due.repos.count(r.repo)) continue;
    po_.status("checking " + r.repo);
    pipeline.check_repo(r, report);
    std::lock_guard g(sh_.mu);
    sched_->checked(r.repo, Clock::now());
  }
  pipeline.run_jobs(report);
  if (report.repos_checked + report.jobs_done + report.jobs_failed + report.jobs_interrupted +
          report.checks_failed >
      0) {
    metrics_.pass_finished();
    const bool bad = report.checks_failed + report.jobs_failed > 0;
    const std::string line = fmt::format(
        "run: pass ({}) checked {} repos ({} failed), {} jobs queued, {} done, {} failed, {} "
        "interrupted",
        due.why.empty() ? "retry" : due.why, report.repos_checked, report.checks_failed,
        report.jobs_enqueued, report.jobs_done, report.jobs_failed, report.jobs_interrupted);
    if (bad) {  // failures are logged every time
      for (const auto& l : repeats_.flush()) spdlog::info("{}", l);
      spdlog::warn("{}", line);
    } else {
      const auto lines = repeats_.next(line);
      if (lines.empty()) spdlog::debug("{}", line);  // an idle poll like the last one
      for (const auto& l : lines) spdlog::info("{}", l);
    }
    {
      std::lock_guard g(sh_.mu);
      sh_.last_pass_at = now_s();
    }
    if (!sh_.stop) retention();
  }
}

// Until the next poll is due (or a retry/nightly check may be), a signal or a webhook.
void Daemon::sleep() {
  std::unique_lock lk(sh_.mu);
  const auto wake = sched_->wake_at(Clock::now());
  // The scheduler wakes every 30 s at most (retries, the nightly window); the next check is the
  // next poll, which with a long interval is much later.
  const auto next = sched_->next_poll().value_or(Clock::now());
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(next - Clock::now()).count();
  lk.unlock();
  po_.status("idle; next check in " + std::to_string(std::max<int64_t>(0, secs)) + " s");
  lk.lock();
  sh_.cv.wait_until(lk, wake, [&] { return sh_.stop || sh_.reload || sched_->webhook_pending(); });
}

// Idempotent: also what an exception on the way up or out leaves to the destructor.
void Daemon::shutdown() {
  if (std::exchange(shut_down_, true)) return;
  {
    std::lock_guard g(sh_.mu);
    sh_.done = true;
    sh_.cv.notify_all();
  }
  if (watchdog_thread_.joinable()) watchdog_thread_.join();
  if (mirror_) mirror_->stop();
  if (signal_pipe_) signal_pipe_->wake();
  if (signal_thread_.joinable()) signal_thread_.join();
  signal_pipe_.reset();  // the previous signal handlers again
}

}  // namespace

int run_command(const RunOptions& ro) {
  Daemon d(ro, load(ro.config_path));  // config: a bad one at start-up is a usage error (exit 2)
  d.logging();                         // logging: the level and the nightly window's time zone
  d.secrets();                         // secrets: token files read now (exit 2 when unreadable)
  d.state();                           // storage: the store's lock, the state db
  d.signals();                         // signals: SIGTERM/SIGINT stop, SIGHUP reloads
  d.scheduler();                       // scheduler: polls, the nightly window, webhooks
  d.mirror();                          // mirror: the store, /healthz, /metrics, /webhook
  d.retention();                       // retention: old snapshots and unneeded blobs freed
  d.watchdog();                        // watchdog: systemd's, fed while work makes progress
  d.loop();                            // loop: scheduler decides, pipeline works, until a stop
  d.shutdown();                        // shutdown: threads joined, mirror stopped
  return 0;
}

}  // namespace loftqd::daemon
