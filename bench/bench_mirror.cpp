// The mirror's server core under load (docs/performance.md, "bench_mirror"): N threads download
// byte ranges of one large LFS file, each range checked against its sha256, while M idle and
// trickling connections are held open and a prober times a small request (model info) every
// 50 ms. Prints the download throughput and the prober's p50 / p99 / max latency.
//
//   bench_mirror [--size 256M] [--downloads 8] [--slow 216] [--range 8M] [--seconds 8]
//                [--dir DIR]
// (--slow S: S*200/216 idle and the rest trickling, as the issue-11 tests. The header deadline
// is raised to 30 s so they stay held for the whole run; keep --seconds below it.)
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/parse.h"
#include "mirror/mirror.h"
#include "storage/store.h"
#include "support/slow_clients.h"

namespace fs = std::filesystem;
namespace st = loftqd::storage;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  uint64_t size = uint64_t{256} << 20, range = uint64_t{8} << 20;
  int downloads = 8, slow = 216;
  double seconds = 8;
  fs::path dir = fs::temp_directory_path() / "loftqd-bench-mirror";
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--size")
      a.size = loftqd::common::parse_size_or_throw("--size", v);
    else if (k == "--range")
      a.range = loftqd::common::parse_size_or_throw("--range", v);
    else if (k == "--downloads")
      a.downloads = std::atoi(v.c_str());
    else if (k == "--slow")
      a.slow = std::atoi(v.c_str());
    else if (k == "--seconds")
      a.seconds = std::atof(v.c_str());
    else if (k == "--dir")
      a.dir = v;
    else
      throw std::invalid_argument("unknown option " + k);
  }
  if (a.range == 0 || a.size < a.range) throw std::invalid_argument("--range must be in (0, size]");
  return a;
}

// The payload: `size` pseudo-random bytes as org/bench's one LFS file, and the sha256 of each
// `range`-byte slice of it.
std::vector<std::string> make_repo(const fs::path& store_dir, uint64_t size, uint64_t range,
                                   std::string& payload) {
  payload.resize(size);
  std::mt19937_64 rng(7);
  for (size_t i = 0; i + 8 <= payload.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(&payload[i], &v, 8);
  }
  st::Store store(store_dir);
  const std::string sha = st::sha256_hex(payload);
  if (!store.put_blob("org/bench", payload, st::Digest::lfs(sha, size)))
    throw std::runtime_error("cannot store the payload");
  if (!store.commit_snapshot("org/bench", "main", {{"big.safetensors", sha}}, std::nullopt))
    throw std::runtime_error("cannot commit the payload");
  std::vector<std::string> shas;
  for (uint64_t off = 0; off + range <= size; off += range)
    shas.push_back(st::sha256_hex(std::string_view(payload).substr(off, range)));
  return shas;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse_args(argc, argv);
  fs::remove_all(a.dir);
  std::string payload;
  const auto shas = make_repo(a.dir / "store", a.size, a.range, payload);
  loftqd::mirror::MirrorOptions o;
  o.store = a.dir / "store";
  o.port = 0;
  o.header_timeout_s = 30;
  loftqd::mirror::Mirror mirror(o);
  const int port = mirror.start();
  const int trickling = a.slow * 16 / 216;
  loftqd::testing::SlowClients slow(port, a.slow - trickling, trickling);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bytes{0}, ranges{0}, bad{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < a.downloads; ++w)
    workers.emplace_back([&, w] {
      httplib::Client cli("127.0.0.1", port);
      cli.set_read_timeout(30, 0);
      for (size_t i = static_cast<size_t>(w); !stop; i += static_cast<size_t>(a.downloads)) {
        const size_t k = i % shas.size();
        const uint64_t off = k * a.range;
        const std::string r =
            "bytes=" + std::to_string(off) + "-" + std::to_string(off + a.range - 1);
        auto res = cli.Get("/org/bench/resolve/main/big.safetensors", {{"Range", r}});
        if (!res || res->status != 206 || st::sha256_hex(res->body) != shas[k]) {
          ++bad;
          continue;
        }
        bytes += res->body.size();
        ++ranges;
      }
    });
  std::vector<double> lat;
  const auto t0 = Clock::now();
  while (std::chrono::duration<double>(Clock::now() - t0).count() < a.seconds) {
    httplib::Client cli("127.0.0.1", port);
    cli.set_read_timeout(10, 0);
    const auto s = Clock::now();
    auto res = cli.Get("/api/models/org/bench");
    lat.push_back(std::chrono::duration<double, std::milli>(Clock::now() - s).count());
    if (!res || res->status != 200) ++bad;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  stop = true;
  for (auto& t : workers) t.join();
  mirror.stop();
  std::printf(
      "bench_mirror: %d range downloads (%llu MiB ranges of a %llu MiB file), %d idle + %d "
      "trickling connections, %.1f s\n",
      a.downloads, static_cast<unsigned long long>(a.range >> 20),
      static_cast<unsigned long long>(a.size >> 20), a.slow - trickling, trickling, took);
  std::printf("  downloads: %llu ranges, %.0f MiB/s (sha256 checked), %llu failed\n",
              static_cast<unsigned long long>(ranges.load()),
              static_cast<double>(bytes.load()) / took / (1 << 20),
              static_cast<unsigned long long>(bad.load()));
  std::printf("  model info: %zu requests, p50 %.1f ms, p99 %.1f ms, max %.1f ms\n", lat.size(),
              percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 1.0));
  fs::remove_all(a.dir);
  return bad.load() ? 1 : 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_mirror: %s\n", e.what());
  return 2;
}
