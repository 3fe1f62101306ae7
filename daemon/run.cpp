#include "daemon/run.h"

#include "common/strings.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "config/config.h"
#include "daemon/metrics.h"
#include "daemon/notify.h"
#include "daemon/pipeline.h"
#include "daemon/sync.h"
#include "hub/hub.h"
#include "mirror/mirror.h"
#include "storage/state.h"
#include "storage/store.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace loftqd::daemon {

namespace {

// The scheduler's longest sleep: retries that fall due and the nightly window are noticed
// within this much.
constexpr auto kMaxSleep = std::chrono::seconds(30);

// Loads, applies env overrides and validates what `run` needs beyond parse_config.
config::Config load(const std::string& path) {
  auto cfg = config::load_config(path);
  config::apply_env(cfg);
  if (cfg.mirror.enabled) mirror::parse_listen(cfg.mirror.listen);  // invalid_argument: exit 2
  return cfg;
}

std::optional<std::string> read_secret(const std::optional<std::string>& file, const char* what) {
  if (!file) return std::nullopt;
  auto s = hub::read_token_file(*file);
  if (!s) throw std::invalid_argument(std::string(what) + " " + *file + " is missing or empty");
  return s;
}

// Minutes after midnight and a day number in the process's time zone (TZ is set at start-up,
// before any thread exists, so localtime_r needs no lock).
struct LocalTime {
  int minute_of_day;
  long day;  // days since 1970-01-01, local
};

LocalTime local_now(bool utc) {
  time_t t = ::time(nullptr);
  struct tm tm {};
  if (utc)
    ::gmtime_r(&t, &tm);
  else
    ::localtime_r(&t, &tm);
  const long day = (tm.tm_year - 70) * 366L + tm.tm_yday;  // monotone, unique per local day
  return {tm.tm_hour * 60 + tm.tm_min, day};
}

int g_signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  const int saved = errno;
  const auto c = static_cast<unsigned char>(sig);
  [[maybe_unused]] auto n = ::write(g_signal_pipe[1], &c, 1);
  errno = saved;
}

// State shared between the scheduler (main thread), the signal thread, the watchdog thread and
// the HTTP handlers.
struct Shared {
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<bool> stop{false};
  bool reload = false;
  bool done = false;                    // the main loop has ended
  std::set<std::string> webhook_repos;  // repos to check at once
  std::set<std::string> watched;        // repo ids of the current config
  std::optional<std::string> webhook_secret;
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

void handle_webhook(Shared& sh, mirror::HttpExchange& ex) {
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
  if (!sh.watched.count(repo))
    return answer(202, {{"status", "ignored"}, {"reason", "repo is not watched"}});
  sh.webhook_repos.insert(repo);
  sh.cv.notify_all();
  lk.unlock();
  spdlog::info("repo={} step=webhook scope={}", repo, scope.empty() ? "-" : scope);
  answer(202, {{"status", "queued"}, {"repo", repo}});
}

}  // namespace

int run_command(const RunOptions& ro) {
  // 1. Configuration. A bad one at start-up is a usage error (exit 2).
  config::Config cfg = load(ro.config_path);
  const std::string level = ro.log_level.value_or(cfg.log_level);
  spdlog::set_level(spdlog::level::from_str(level));

  // 2. Signals: the handler only writes the signal number to a pipe (async-signal-safe, and it
  // works whichever thread the kernel picks, BLAS workers created before main included); the
  // signal thread below reads the pipe and acts.
  if (::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
    throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : {SIGTERM, SIGINT, SIGHUP}) ::sigaction(s, &sa, nullptr);

  // The nightly window is in schedule.timezone. Setting TZ now, while this is the only thread,
  // keeps localtime_r lock-free later; a new timezone in a reloaded config needs a restart.
  const std::string tz = cfg.schedule.timezone;
  if (tz != "local" && tz != "UTC") ::setenv("TZ", (":" + tz).c_str(), 1);
  ::tzset();
  const bool tz_utc = tz == "UTC";

  // 3. State: one connection for the scheduler, one for the HTTP handlers (WAL lets them
  // read while the scheduler writes).
  fs::create_directories(cfg.store);
  auto db = storage::StateDb::open(cfg.state_db);
  auto reader_db = storage::StateDb::open(cfg.state_db);
  std::mutex reader_mu;

  Shared sh;
  sh.beat();
  sh.started_at = now_s();
  for (const auto& r : cfg.repos) sh.watched.insert(r.repo);
  sh.webhook_secret = read_secret(cfg.mirror.webhook_secret_file, "mirror.webhook_secret_file");
  Metrics metrics;
  Notifier notifier;

  // 4. The mirror: the configured listener (with /healthz, /metrics, /webhook) when enabled;
  // otherwise, when results go to the mirror, a private one on a loopback port.
  mirror::MirrorOptions mo;
  mo.store = cfg.store;
  auto write_token = read_secret(cfg.mirror.write_token_file, "mirror.write_token_file");
  // Without a configured token only the daemon itself may write (a random per-process token).
  mo.write_token = write_token ? write_token : std::optional<std::string>(common::random_hex(32));
  if (cfg.mirror.enabled) {
    auto [host, port] = mirror::parse_listen(cfg.mirror.listen);
    mo.host = host;
    mo.port = port;
  } else {
    mo.port = 0;
  }
  mo.extra_routes["GET /healthz"] = [&](mirror::HttpExchange& ex) {
    std::lock_guard g(sh.mu);
    const bool stopping = sh.stop.load();
    const double idle = sh.since_beat_s();
    const bool stalled = idle > ro.stall_limit_s;
    ex.status = stopping || stalled ? 503 : 200;
    ex.content_type = "application/json";
    ex.reply = json{{"status", stopping  ? "stopping"
                               : stalled ? "stalled"
                                         : "ok"},
                    {"version", LOFTQD_VERSION},
                    {"state", sh.status},
                    {"uptime_s", now_s() - sh.started_at},
                    {"last_pass_at", sh.last_pass_at},
                    {"seconds_since_progress", idle},
                    {"watched_repos", sh.watched.size()}}
                   .dump();
  };
  mo.extra_routes["GET /metrics"] = [&](mirror::HttpExchange& ex) {
    std::lock_guard g(reader_mu);
    ex.content_type = "text/plain; version=0.0.4; charset=utf-8";
    ex.reply = metrics.render(reader_db.get());
  };
  mo.extra_routes["POST /webhook"] = [&](mirror::HttpExchange& ex) { handle_webhook(sh, ex); };
  std::unique_ptr<mirror::Mirror> mirror;
  if (cfg.mirror.enabled || cfg.publish.mirror) {
    mirror = std::make_unique<mirror::Mirror>(mo);
    mirror->start();
    spdlog::info("mirror: serving {} on {} (/healthz, /metrics{}); HF_ENDPOINT={}", cfg.store,
                 mirror->url(), sh.webhook_secret ? ", /webhook" : "", mirror->url());
  }

  // 5. The signal thread. After the first SIGTERM/SIGINT it waits at most stop_grace_s for the
  // main loop to end: a download or upload in flight is not interruptible mid-file, and
  // everything it wrote is crash-safe, so past the grace period it exits as if killed (the job
  // resumes on restart). A second SIGTERM/SIGINT exits at once.
  std::thread signals([&] {
    std::optional<Clock::time_point> deadline;
    for (;;) {
      int timeout_ms = -1;
      if (deadline) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - Clock::now());
        if (left.count() <= 0) {
          std::lock_guard g(sh.mu);
          if (sh.done) return;
          spdlog::warn("stop: '{}' still running after {} s; exiting (it resumes on restart)",
                       sh.status, ro.stop_grace_s);
          std::_Exit(0);
        }
        timeout_ms = static_cast<int>(left.count());
      }
      pollfd pfd{g_signal_pipe[0], POLLIN, 0};
      if (::poll(&pfd, 1, timeout_ms) <= 0) continue;  // timeout (deadline) or EINTR
      unsigned char sig = 0;
      while (::read(g_signal_pipe[0], &sig, 1) == 1) {
        if (sig == 0) {  // the main loop has ended
          return;
        }
        if (sig == SIGHUP) {
          std::lock_guard g(sh.mu);
          sh.reload = true;
          sh.cv.notify_all();
          continue;
        }
        const char* name = sig == SIGINT ? "SIGINT" : "SIGTERM";
        if (sh.stop.exchange(true)) {
          spdlog::warn("second {} while stopping: exiting now (jobs resume on restart)", name);
          std::_Exit(0);
        }
        spdlog::info("{}: stopping (finishing or checkpointing the current step)", name);
        notifier.stopping("stopping");
        deadline = Clock::now() + std::chrono::seconds(ro.stop_grace_s);
        std::lock_guard g(sh.mu);
        sh.cv.notify_all();
      }
    }
  });

  // 6. The watchdog: fed while the daemon makes progress (see RunOptions::stall_limit_s).
  std::thread watchdog;
  if (auto every = notifier.watchdog_interval()) {
    watchdog = std::thread([&, every = *every] {
      std::unique_lock lk(sh.mu);
      while (!sh.done) {
        if (sh.since_beat_s() <= ro.stall_limit_s)
          notifier.watchdog();
        else
          spdlog::error("watchdog: no progress for {:.0f} s in '{}'", sh.since_beat_s(), sh.status);
        sh.cv.wait_for(lk, every, [&] { return sh.done; });
      }
    });
  }

  // 7. The scheduler.
  // Everything but the config-derived part (token, Hub target) is fixed for the process, so a
  // reload rebuilds the options with this one function.
  auto options_for = [&](const config::Config& c) {
    PipelineOptions p = pipeline_options(c, ro.threads);
    p.stop = &sh.stop;
    p.metrics = &metrics;
    p.heartbeat = [&] { sh.beat(); };
    p.status = [&](const std::string& st) {
      {
        std::lock_guard g(sh.mu);
        sh.status = st;
      }
      notifier.status(st);
    };
    if (c.publish.mirror && mirror) p.mirror = PublishEndpoint{mirror->url(), mo.write_token};
    return p;
  };
  PipelineOptions po = options_for(cfg);

  std::map<std::string, Clock::time_point> next_check;  // repo -> when it is polled next
  std::optional<long> nightly_done_day;
  if (cfg.limits.concurrent_jobs > 1)
    spdlog::warn("limits.concurrent_jobs = {}: this version runs one job at a time",
                 cfg.limits.concurrent_jobs);
  notifier.ready("idle; watching " + std::to_string(cfg.repos.size()) + " repos");
  spdlog::info("run: watching {} repos, poll every {} s{}; store {}", cfg.repos.size(),
               cfg.schedule.poll_interval_s,
               cfg.schedule.nightly ? ", nightly refresh in " + tz : std::string(), cfg.store);

  while (!sh.stop) {
    sh.beat();
    // SIGHUP: reload. Fields bound at start-up (store, state db, listener, time zone) keep
    // their values until a restart.
    bool reload = false;
    {
      std::lock_guard g(sh.mu);
      std::swap(reload, sh.reload);
    }
    if (reload) {
      notifier.reloading("reloading " + ro.config_path);
      try {
        config::Config n = load(ro.config_path);
        auto secret = read_secret(n.mirror.webhook_secret_file, "mirror.webhook_secret_file");
        for (const auto& [field, same] :
             {std::pair<const char*, bool>{"store", n.store == cfg.store},
              {"state_db", n.state_db == cfg.state_db},
              {"mirror.listen", n.mirror.listen == cfg.mirror.listen},
              {"mirror.enabled", n.mirror.enabled == cfg.mirror.enabled},
              {"mirror.write_token_file", n.mirror.write_token_file == cfg.mirror.write_token_file},
              {"schedule.timezone", n.schedule.timezone == cfg.schedule.timezone}})
          if (!same) spdlog::warn("reload: a change of {} takes effect after a restart", field);
        n.store = cfg.store;
        n.state_db = cfg.state_db;
        n.mirror.listen = cfg.mirror.listen;
        n.mirror.enabled = cfg.mirror.enabled;
        n.mirror.write_token_file = cfg.mirror.write_token_file;
        n.schedule.timezone = cfg.schedule.timezone;
        cfg = std::move(n);
        spdlog::set_level(spdlog::level::from_str(ro.log_level.value_or(cfg.log_level)));
        po = options_for(cfg);
        {
          std::lock_guard g(sh.mu);
          sh.watched.clear();
          for (const auto& r : cfg.repos) sh.watched.insert(r.repo);
          sh.webhook_secret = secret;
        }
        // Every repo is checked at once: a changed LoftQ setting or target means a new config
        // hash, hence a new job for the same upstream commit.
        next_check.clear();
        spdlog::info("reload: {} applied; watching {} repos", ro.config_path, cfg.repos.size());
      } catch (const std::exception& e) {
        spdlog::error("reload: {} rejected, keeping the previous configuration: {}", ro.config_path,
                      e.what());
      }
      notifier.ready("idle; watching " + std::to_string(cfg.repos.size()) + " repos");
    }

    // Which repos to check now: webhook hits, the nightly window (once per local day), and
    // those whose poll interval has passed.
    const auto now = Clock::now();
    std::set<std::string> due;
    std::string why;
    {
      std::lock_guard g(sh.mu);
      for (const auto& r : sh.webhook_repos) due.insert(r);
      sh.webhook_repos.clear();
    }
    if (!due.empty()) why = "webhook";
    if (cfg.schedule.nightly) {
      const auto lt = local_now(tz_utc);
      if (cfg.schedule.nightly->contains(lt.minute_of_day) && nightly_done_day != lt.day) {
        nightly_done_day = lt.day;
        for (const auto& r : cfg.repos) due.insert(r.repo);
        why = "nightly";
        spdlog::info("run: nightly window {}: refresh check of every repo", tz);
      }
    }
    for (const auto& r : cfg.repos) {
      auto it = next_check.find(r.repo);
      if (it == next_check.end() || it->second <= now) {
        due.insert(r.repo);
        if (why.empty()) why = "poll";
      }
    }

    Pipeline pipeline(cfg, *db, po);
    SyncReport report;
    for (const auto& r : cfg.repos) {
      if (sh.stop) break;
      if (!due.count(r.repo)) continue;
      po.status("checking " + r.repo);
      pipeline.check_repo(r, report);
      next_check[r.repo] = Clock::now() + std::chrono::seconds(cfg.schedule.poll_interval_s);
    }
    pipeline.run_jobs(report);
    if (report.repos_checked + report.jobs_done + report.jobs_failed + report.jobs_interrupted >
        0) {
      metrics.pass_finished();
      spdlog::info(
          "run: pass ({}) checked {} repos, {} jobs queued, {} done, {} failed, {} interrupted",
          why.empty() ? "retry" : why, report.repos_checked, report.jobs_enqueued, report.jobs_done,
          report.jobs_failed, report.jobs_interrupted);
      std::lock_guard g(sh.mu);
      sh.last_pass_at = now_s();
    }
    if (sh.stop) break;

    // Sleep until the next poll is due (or a retry/nightly check may be), a signal or a webhook.
    auto wake = Clock::now() + kMaxSleep;
    for (const auto& [repo, t] : next_check) wake = std::min(wake, t);
    const auto secs = std::chrono::duration_cast<std::chrono::seconds>(wake - Clock::now()).count();
    po.status("idle; next check in " + std::to_string(std::max<int64_t>(0, secs)) + " s");
    std::unique_lock lk(sh.mu);
    sh.cv.wait_until(lk, wake, [&] { return sh.stop || sh.reload || !sh.webhook_repos.empty(); });
  }

  // 8. Shutdown: the job in flight has stopped at a durable point.
  spdlog::info("run: stopped cleanly");
  {
    std::lock_guard g(sh.mu);
    sh.done = true;
    sh.cv.notify_all();
  }
  if (watchdog.joinable()) watchdog.join();
  if (mirror) mirror->stop();
  const unsigned char quit = 0;
  [[maybe_unused]] auto n = ::write(g_signal_pipe[1], &quit, 1);
  signals.join();
  for (int s : {SIGTERM, SIGINT, SIGHUP}) ::signal(s, SIG_DFL);
  ::close(g_signal_pipe[0]);
  ::close(g_signal_pipe[1]);
  return 0;
}

}  // namespace loftqd::daemon
