#include "common/sysinfo.h"

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>

namespace loftqd::common {

namespace {

// A number from a one-line cgroup file ("max" and unreadable files: none).
std::optional<uint64_t> cgroup_value(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s == "max") return std::nullopt;
  try {
    return std::stoull(s);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// What this process's cgroup (v2) lets it allocate still, when it has a limit.
std::optional<uint64_t> cgroup_headroom() {
  std::ifstream f("/proc/self/cgroup");
  std::string line;
  while (std::getline(f, line)) {
    if (!line.starts_with("0::")) continue;  // the v2 hierarchy
    const std::string dir = "/sys/fs/cgroup" + line.substr(3);
    const auto max = cgroup_value(dir + "/memory.max");
    if (!max) return std::nullopt;
    const uint64_t cur = cgroup_value(dir + "/memory.current").value_or(0);
    return *max > cur ? *max - cur : 0;
  }
  return std::nullopt;
}

}  // namespace

uint64_t available_memory_bytes() {
  uint64_t avail = 0;
  std::ifstream f("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (f >> key >> kib) {
    std::getline(f, unit);
    if (key == "MemAvailable:") {
      avail = kib * 1024;
      break;
    }
  }
  if (auto h = cgroup_headroom()) avail = avail ? std::min(avail, *h) : *h;
  return avail;
}

uint64_t peak_rss_bytes() {
  rusage ru{};
  if (::getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;  // KiB on Linux
}

std::string human_bytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "kB", "MB", "GB", "TB"};
  double v = static_cast<double>(bytes);
  size_t u = 0;
  while (v >= 1000.0 && u + 1 < std::size(kUnits)) {
    v /= 1000.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", v, kUnits[u]);
  return buf;
}

}  // namespace loftqd::common
