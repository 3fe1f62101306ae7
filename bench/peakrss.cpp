// bench_peakrss: runs a command, then reports its wall time and peak resident set size (the
// child's rusage from wait4, which counts the largest RSS of the process tree's waited-for
// members) on stderr. Exits with the command's status (128 + signal when it was killed).
//
//   bench_peakrss [--out FILE] -- COMMAND [ARGS...]
//
// FILE, when given, receives two lines "wall_s=SECONDS" and "peak_rss_kib=KIB".
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

int main(int argc, char** argv) {
  int first = 1;
  std::string out;
  while (first < argc && std::strcmp(argv[first], "--") != 0) {
    if (std::strcmp(argv[first], "--out") == 0 && first + 1 < argc) {
      out = argv[first + 1];
      first += 2;
    } else {
      std::fprintf(stderr, "usage: bench_peakrss [--out FILE] -- COMMAND [ARGS...]\n");
      return 2;
    }
  }
  if (first + 1 >= argc) {
    std::fprintf(stderr, "usage: bench_peakrss [--out FILE] -- COMMAND [ARGS...]\n");
    return 2;
  }
  char** cmd = argv + first + 1;
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid < 0) {
    std::perror("bench_peakrss: fork");
    return 1;
  }
  if (pid == 0) {
    execvp(cmd[0], cmd);
    std::fprintf(stderr, "bench_peakrss: exec %s: %s\n", cmd[0], std::strerror(errno));
    _exit(127);
  }
  int status = 0;
  rusage ru{};
  pid_t w;
  do {
    w = wait4(pid, &status, 0, &ru);
  } while (w < 0 && errno == EINTR);
  if (w < 0) {
    std::perror("bench_peakrss: wait4");
    return 1;
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const long kib = ru.ru_maxrss;  // KiB on Linux
  const double user = static_cast<double>(ru.ru_utime.tv_sec) + 1e-6 * ru.ru_utime.tv_usec;
  const double sys = static_cast<double>(ru.ru_stime.tv_sec) + 1e-6 * ru.ru_stime.tv_usec;
  std::fprintf(
      stderr,
      "bench_peakrss: wall %.1f s, user %.1f s, sys %.1f s, peak RSS %.1f MiB, page faults "
      "%ld minor / %ld major, context switches %ld voluntary / %ld involuntary\n",
      wall, user, sys, static_cast<double>(kib) / 1024.0, ru.ru_minflt, ru.ru_majflt, ru.ru_nvcsw,
      ru.ru_nivcsw);
  if (!out.empty()) {
    if (FILE* f = std::fopen(out.c_str(), "w")) {
      std::fprintf(f, "wall_s=%.1f\npeak_rss_kib=%ld\nuser_s=%.1f\nsys_s=%.1f\n", wall, kib, user,
                   sys);
      std::fclose(f);
    }
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}
