#include "support/test_util.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#ifndef LOFTQD_BINARY
#error "LOFTQD_BINARY must name the loftqd executable"
#endif

namespace loftqd::testing {

TempDir::TempDir() {
  std::random_device rd;
  auto base = std::filesystem::temp_directory_path();
  for (int i = 0; i < 100; ++i) {
    auto p = base / ("loftqd-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    if (std::filesystem::create_directory(p)) {
      path_ = p;
      return;
    }
  }
  throw std::runtime_error("cannot create a temp dir");
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

RunResult run_loftqd(const std::vector<std::string>& args) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) throw std::runtime_error("pipe failed");
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::dup2(pipefd[1], 1);
    ::dup2(pipefd[1], 2);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    std::vector<char*> argv;
    std::string bin = LOFTQD_BINARY;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    _exit(127);
  }
  ::close(pipefd[1]);
  RunResult r;
  std::array<char, 4096> buf;
  ssize_t n;
  while ((n = ::read(pipefd[0], buf.data(), buf.size())) > 0) r.out.append(buf.data(), n);
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

Child::Child(const std::vector<std::string>& args, const std::filesystem::path& log,
             const std::vector<std::string>& env, const std::string& binary)
    : log_(log) {
  std::vector<std::string> argv_s = {binary.empty() ? std::string(LOFTQD_BINARY) : binary};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
    // A test runner may block signals; the daemon must see them as a service manager sends them.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
}

Child::~Child() {
  if (pid_ > 0 && !exit_code_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

void Child::signal(int sig) const {
  if (pid_ > 0 && !exit_code_) ::kill(pid_, sig);
}

std::optional<int> Child::wait(std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!exit_code_) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (std::chrono::steady_clock::now() >= until) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return exit_code_;
}

bool Child::running() {
  return !wait(std::chrono::milliseconds(0)).has_value();
}

std::string Child::log() const {
  std::error_code ec;
  return std::filesystem::exists(log_, ec) ? slurp(log_) : std::string();
}

bool Child::wait_for_log(const std::string& needle, std::chrono::milliseconds timeout,
                         size_t count) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (count_of(log(), needle) >= count) return true;
    if (!running() || std::chrono::steady_clock::now() >= until)
      return count_of(log(), needle) >= count;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

namespace {

std::vector<std::string> serve_args(const std::filesystem::path& store,
                                    const std::filesystem::path& token_file,
                                    const std::filesystem::path& work,
                                    const std::vector<std::string>& extra) {
  std::error_code ec;
  std::filesystem::remove(work / "port", ec);
  std::vector<std::string> a = {"serve",
                                "--store",
                                store.string(),
                                "--listen",
                                "127.0.0.1:0",
                                "--port-file",
                                (work / "port").string(),
                                "--write-token-file",
                                token_file.string()};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

}  // namespace

ServeProcess::ServeProcess(const std::filesystem::path& store,
                           const std::filesystem::path& token_file,
                           const std::filesystem::path& work, const std::vector<std::string>& extra)
    : child_(serve_args(store, token_file, work, extra), work / "serve.log") {
  const auto port_file = work / "port";
  for (int i = 0; i < 1000 && port_ == 0 && child_.running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::error_code ec;
    if (std::filesystem::exists(port_file, ec)) port_ = std::atoi(slurp(port_file).c_str());
  }
}

int ServeProcess::stop() {
  if (!exit_code_) {
    child_.signal(SIGTERM);
    exit_code_ = child_.wait(std::chrono::seconds(30)).value_or(-1);
  }
  return *exit_code_;
}

std::string raw_safetensors(const std::string& header, const std::string& buffer) {
  std::string out;
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>((uint64_t{header.size()} >> (8 * i)) & 0xFF));
  return out + header + buffer;
}

std::string safetensors_header_block(const std::filesystem::path& p) {
  const std::string all = slurp(p);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | static_cast<unsigned char>(all.at(static_cast<size_t>(i)));
  return all.substr(0, static_cast<size_t>(8 + n));
}

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

size_t count_of(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string::npos;
       pos = haystack.find(needle, pos + needle.size()))
    ++n;
  return n;
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + p.string());
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void spit(const std::filesystem::path& p, const std::string& content) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << content;
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

}  // namespace loftqd::testing
