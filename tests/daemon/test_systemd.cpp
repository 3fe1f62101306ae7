// The install rules and the systemd units (root CMakeLists.txt, systemd/, docs/deployment.md):
// `cmake --install` of this build into a temp prefix puts every file where the docs say, and
// `systemd-analyze verify` accepts the installed units without a single warning.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "support/test_util.h"

#ifndef LOFTQD_BINARY
#error "LOFTQD_BINARY must name the built loftqd executable"
#endif
#ifndef LOFTQD_SOURCE_DIR
#error "LOFTQD_SOURCE_DIR must name the source tree"
#endif

extern char** environ;

namespace {

namespace fs = std::filesystem;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;

struct Proc {
  int exit_code = -1;
  std::string out;  // stdout and stderr
};

// Runs argv[0] (an absolute path) with the current environment minus DESTDIR, plus `extra_env`.
Proc run(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env = {}) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e)
    if (std::string_view(*e).rfind("DESTDIR=", 0) != 0) env.emplace_back(*e);
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> cargv, cenv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  for (const auto& e : env) cenv.push_back(const_cast<char*>(e.c_str()));
  cenv.push_back(nullptr);

  int fds[2];
  if (::pipe(fds) != 0) return {};
  const pid_t pid = ::fork();
  if (pid < 0) return {};
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    ::execve(cargv[0], cargv.data(), cenv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  Proc p;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    p.out.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  p.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return p;
}

std::optional<fs::path> find_in_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/local/bin:/usr/bin:/bin");
  for (std::string dir; std::getline(ss, dir, ':');) {
    if (dir.empty()) continue;
    fs::path p = fs::path(dir) / name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  for (const char* dir : {"/usr/bin", "/bin"}) {  // PATH may be trimmed under a test runner
    fs::path p = fs::path(dir) / name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return std::nullopt;
}

// KEY:TYPE=VALUE lines of CMakeCache.txt.
std::map<std::string, std::string> read_cache(const fs::path& file) {
  std::map<std::string, std::string> m;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#' || line[0] == '/') continue;
    const auto colon = line.find(':');
    const auto eq = line.find('=', colon == std::string::npos ? 0 : colon);
    if (colon == std::string::npos || eq == std::string::npos) continue;
    m[line.substr(0, colon)] = line.substr(eq + 1);
  }
  return m;
}

// Setting lines (not comments) of a unit file, in order.
std::vector<std::string> settings(const std::string& unit) {
  std::vector<std::string> v;
  std::stringstream ss(unit);
  for (std::string line; std::getline(ss, line);)
    if (!line.empty() && line[0] != '#' && line[0] != ';' && line[0] != '[') v.push_back(line);
  return v;
}

bool has_line(const std::vector<std::string>& lines, const std::string& l) {
  for (const auto& x : lines)
    if (x == l) return true;
  return false;
}

bool is_under(const fs::path& dir, const fs::path& p) {
  const auto rel = p.lexically_normal().lexically_relative(dir.lexically_normal());
  return !rel.empty() && *rel.begin() != "..";
}

// One `cmake --install` of this build, shared by the tests below.
class InstallTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new TempDir();
    const fs::path build = fs::path(LOFTQD_BINARY).parent_path().parent_path();
    cache_ = read_cache(build / "CMakeCache.txt");
    if (cache_.empty()) {
      error_ = "no CMakeCache.txt in " + build.string() + " (derived from LOFTQD_BINARY)";
      return;
    }
    auto get = [](const std::string& k, const std::string& dflt) {
      auto it = cache_.find(k);
      return it == cache_.end() || it->second.empty() ? dflt : it->second;
    };
    // Final locations as docs/deployment.md describes them, for the configured prefix P:
    // P/bin, LOFTQD_SYSTEMD_UNITDIR, /etc/loftqd for P=/usr (/etc/opt/X for P=/opt/X, else
    // P/etc/loftqd), P/share/doc/loftqd.
    const fs::path prefix = get("CMAKE_INSTALL_PREFIX", "/usr/local");
    const fs::path datarootdir = prefix / get("CMAKE_INSTALL_DATAROOTDIR", "share");
    final_bin_ = prefix / get("CMAKE_INSTALL_BINDIR", "bin") / "loftqd";
    final_unitdir_ = get("LOFTQD_SYSTEMD_UNITDIR", (prefix / "lib/systemd/system").string());
    const std::string p = prefix.lexically_normal().string();
    if (p == "/usr")
      final_confdir_ = "/etc/loftqd";
    else if (p.rfind("/opt/", 0) == 0)
      final_confdir_ = fs::path("/etc" + p) / "loftqd";
    else
      final_confdir_ = prefix / get("CMAKE_INSTALL_SYSCONFDIR", "etc") / "loftqd";
    final_docdir_ = cache_.count("CMAKE_INSTALL_DOCDIR") && !cache_["CMAKE_INSTALL_DOCDIR"].empty()
                        ? prefix / cache_["CMAKE_INSTALL_DOCDIR"]
                        : datarootdir / "doc" / "loftqd";

    // Destinations under P follow --prefix; the others stay absolute, and then DESTDIR keeps
    // them inside the temp dir too.
    new_prefix_ = tmp_->path() / "prefix";
    const bool needs_destdir =
        !is_under(prefix, final_unitdir_) || !is_under(prefix, final_confdir_);
    if (needs_destdir) destdir_ = tmp_->path() / "dest";
    auto map = [&](const fs::path& final_path) {
      fs::path p2 = is_under(prefix, final_path)
                        ? new_prefix_ / final_path.lexically_relative(prefix)
                        : final_path;
      return destdir_.empty() ? p2 : fs::path(destdir_.string() + p2.string());
    };
    bin_ = map(final_bin_);
    unitdir_ = map(final_unitdir_);
    confdir_ = map(final_confdir_);
    docdir_ = map(final_docdir_);

    const fs::path cmake = get("CMAKE_COMMAND", "/usr/bin/cmake");
    std::vector<std::string> env;
    if (!destdir_.empty()) env.push_back("DESTDIR=" + destdir_.string());
    install_ =
        run({cmake.string(), "--install", build.string(), "--prefix", new_prefix_.string()}, env);
  }

  static void TearDownTestSuite() {
    delete tmp_;
    tmp_ = nullptr;
  }

  void SetUp() override {
    ASSERT_TRUE(error_.empty()) << error_;
    ASSERT_EQ(install_.exit_code, 0) << install_.out;
  }

  static inline TempDir* tmp_ = nullptr;
  static inline std::map<std::string, std::string> cache_;
  static inline std::string error_;
  static inline Proc install_;
  static inline fs::path new_prefix_, destdir_;
  static inline fs::path final_bin_, final_unitdir_, final_confdir_, final_docdir_;
  static inline fs::path bin_, unitdir_, confdir_, docdir_;
};

TEST_F(InstallTest, FilesLandWhereDocumented) {
  ASSERT_TRUE(fs::is_regular_file(bin_)) << bin_ << "\n" << install_.out;
  EXPECT_EQ(::access(bin_.c_str(), X_OK), 0);
  auto version = run({bin_.string(), "--version"});
  EXPECT_EQ(version.exit_code, 0) << version.out;

  for (const char* unit : {"loftqd.service", "loftqd-nightly.service", "loftqd-nightly.timer"})
    EXPECT_TRUE(fs::is_regular_file(unitdir_ / unit)) << unitdir_ / unit << "\n" << install_.out;

  const std::string example = slurp(fs::path(LOFTQD_SOURCE_DIR) / "systemd/loftqd.example.json");
  ASSERT_TRUE(fs::is_regular_file(confdir_ / "loftqd.json.example")) << install_.out;
  EXPECT_EQ(slurp(confdir_ / "loftqd.json.example"), example);
  // Never a live config: the admin copies the example to loftqd.json.
  EXPECT_FALSE(fs::exists(confdir_ / "loftqd.json"));
  ASSERT_TRUE(fs::is_regular_file(docdir_ / "loftqd.example.json")) << install_.out;
  EXPECT_EQ(slurp(docdir_ / "loftqd.example.json"), example);
  EXPECT_TRUE(fs::is_regular_file(docdir_ / "deployment.md")) << install_.out;
}

TEST_F(InstallTest, UnitsAreConfigured) {
  const std::string service = slurp(unitdir_ / "loftqd.service");
  const std::string nightly = slurp(unitdir_ / "loftqd-nightly.service");
  const std::string timer = slurp(unitdir_ / "loftqd-nightly.timer");
  // No @VAR@ left unconfigured (std::regex is avoided: GCC 12 warns inside it under ASan).
  auto has_placeholder = [](const std::string& u) {
    for (size_t a = u.find('@'); a != std::string::npos; a = u.find('@', a + 1)) {
      size_t b = a + 1;
      while (b < u.size() && (std::isalpha(static_cast<unsigned char>(u[b])) || u[b] == '_')) ++b;
      if (b > a + 1 && b < u.size() && u[b] == '@') return true;
    }
    return false;
  };
  for (const auto* u : {&service, &nightly, &timer}) EXPECT_FALSE(has_placeholder(*u)) << *u;

  // ExecStart= names the binary at the configure-time prefix.
  const auto s = settings(service);
  EXPECT_TRUE(has_line(s, "ExecStart=" + final_bin_.string() +
                              " run --config ${CONFIGURATION_DIRECTORY}/loftqd.json"))
      << service;
  for (const char* want :
       {"Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=120",
        "Restart=on-failure", "RestartSec=10", "TimeoutStopSec=120", "DynamicUser=yes",
        "StateDirectory=loftqd", "ConfigurationDirectory=loftqd", "RuntimeDirectory=loftqd",
        "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes",
        "CapabilityBoundingSet=", "WantedBy=multi-user.target"})
    EXPECT_TRUE(has_line(s, want)) << want;

  const auto n = settings(nightly);
  EXPECT_TRUE(has_line(n, "ExecStart=" + final_bin_.string() +
                              " sync --config ${CONFIGURATION_DIRECTORY}/loftqd.json --once"))
      << nightly;
  EXPECT_TRUE(has_line(n, "Type=oneshot"));
  // Skipped while the daemon runs (its RuntimeDirectory= is /run/loftqd).
  EXPECT_TRUE(has_line(n, "ConditionPathExists=!/run/loftqd"));

  const auto t = settings(timer);
  EXPECT_TRUE(has_line(t, "OnCalendar=*-*-* 02:00"));
  EXPECT_TRUE(has_line(t, "Persistent=true"));
  EXPECT_TRUE(has_line(t, "Unit=loftqd-nightly.service"));

  // Settings left out for CUDA (they hide /dev/nvidia* or /proc/driver/nvidia, turn the device
  // policy into an allow list, or forbid W+X memory) stay out of both services.
  for (const auto* lines : {&s, &n})
    for (const auto& l : *lines)
      for (const char* bad : {"PrivateDevices=", "MemoryDenyWriteExecute=", "ProtectClock=",
                              "DeviceAllow=", "DevicePolicy=", "ProcSubset="})
        EXPECT_NE(l.rfind(bad, 0), 0u) << l;
}

// Every secret file of the shipped example config is handed over by LoadCredential= in both
// services under its file name (daemon::read_secret looks there under $CREDENTIALS_DIRECTORY),
// from the very path the example names: DynamicUser cannot read root's 0600 files directly.
TEST_F(InstallTest, ExampleSecretsAreLoadedAsCredentials) {
  const auto example =
      nlohmann::json::parse(slurp(fs::path(LOFTQD_SOURCE_DIR) / "systemd/loftqd.example.json"));
  const std::vector<std::string> secrets = {example["hub"]["token_file"],
                                            example["mirror"]["write_token_file"],
                                            example["mirror"]["webhook_secret_file"]};
  for (const char* unit : {"loftqd.service", "loftqd-nightly.service"}) {
    const auto s = settings(slurp(unitdir_ / unit));
    size_t credentials = 0;
    for (const auto& l : s) credentials += l.rfind("LoadCredential=", 0) == 0;
    EXPECT_EQ(credentials, secrets.size()) << unit;
    for (const auto& path : secrets) {
      const std::string want = "LoadCredential=" + fs::path(path).filename().string() + ":" + path;
      EXPECT_TRUE(has_line(s, want)) << unit << ": " << want;
    }
  }
}

TEST_F(InstallTest, SystemdAnalyzeVerifyIsClean) {
  const auto analyze = find_in_path("systemd-analyze");
  if (!analyze) GTEST_SKIP() << "systemd-analyze not installed (scripts/setup installs systemd)";

  // verify checks that the ExecStart= binary exists. The units name the configure-time path
  // (e.g. /usr/local/bin/loftqd), which this test does not install to: copies point at the
  // binary just installed instead; every other line is verified as installed.
  const fs::path dir = tmp_->path() / "verify";
  fs::create_directories(dir);
  std::vector<std::string> argv = {analyze->string(), "verify"};
  for (const char* unit : {"loftqd.service", "loftqd-nightly.service", "loftqd-nightly.timer"}) {
    std::string text = slurp(unitdir_ / unit);
    const std::string from = "ExecStart=" + final_bin_.string() + " ";
    const std::string to = "ExecStart=" + bin_.string() + " ";
    for (auto pos = text.find(from); pos != std::string::npos; pos = text.find(from, pos)) {
      text.replace(pos, from.size(), to);
      pos += to.size();
    }
    spit(dir / unit, text);
    argv.push_back((dir / unit).string());
  }
  const auto r = run(argv);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(r.out, "") << "systemd-analyze verify warned:\n" << r.out;

  // The check has teeth: an unknown setting is reported.
  const fs::path bad = tmp_->path() / "bad" / "loftqd.service";
  fs::create_directories(bad.parent_path());
  spit(bad, slurp(dir / "loftqd.service") + "\n[Service]\nNoSuchSetting=1\n");
  const auto rb = run({analyze->string(), "verify", bad.string()});
  EXPECT_NE(rb.out.find("NoSuchSetting"), std::string::npos) << rb.out;
}

}  // namespace
