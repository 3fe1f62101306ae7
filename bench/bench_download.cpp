// Download throughput from the built-in mirror on loopback (docs/hub.md): one large file,
// fetched with `curl -o` (the baseline), with the hub client in a single stream, and with the hub
// client in parallel byte ranges. The hub client's times include the sha256 verification and the
// move into the store, which curl does not do.
//
//   bench_download [--size 1G] [--parallel 4] [--dir DIR] [--repeat 1]
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "common/parse.h"
#include "hub/hub.h"
#include "mirror/mirror.h"
#include "storage/store.h"

namespace fs = std::filesystem;
namespace st = loftqd::storage;
namespace hub = loftqd::hub;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Writes `size` pseudo-random bytes into the store as the one file of org/bench, returns the
// commit.
std::string make_repo(const fs::path& store_dir, uint64_t size) {
  st::Store store(store_dir);
  fs::path tmp = store_dir / "payload.tmp";
  fs::create_directories(store_dir);
  {
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) throw std::runtime_error("cannot write " + tmp.string());
    std::mt19937_64 rng(42);
    std::vector<uint64_t> buf(1 << 17);
    st::Hasher h(st::HashAlgo::Sha256);
    for (uint64_t done = 0; done < size;) {
      for (auto& v : buf) v = rng();
      size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size() * 8, size - done));
      std::fwrite(buf.data(), 1, n, f);
      done += n;
    }
    std::fclose(f);
  }
  auto sha = st::hash_file(tmp, st::HashAlgo::Sha256);
  if (!sha) throw std::runtime_error(sha.error().message);
  auto ok = store.commit_blob("org/bench", tmp, st::Digest::lfs(sha.value(), size));
  if (!ok) throw std::runtime_error(ok.error().message);
  auto c =
      store.commit_snapshot("org/bench", "main", {{"big.safetensors", sha.value()}}, std::nullopt);
  if (!c) throw std::runtime_error(c.error().message);
  return c.value();
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t size = uint64_t{1} << 30;
  int parallel = 4, repeat = 1;
  fs::path dir = fs::temp_directory_path() / "loftqd-bench-download";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--size")
      size = loftqd::common::parse_size_or_throw("--size", v);
    else if (a == "--parallel")
      parallel = std::atoi(v.c_str());
    else if (a == "--dir")
      dir = v;
    else if (a == "--repeat")
      repeat = std::atoi(v.c_str());
    else {
      std::fprintf(stderr,
                   "usage: bench_download [--size 1G] [--parallel 4] [--dir DIR] [--repeat N]\n");
      return 2;
    }
  }
  fs::remove_all(dir);
  auto t0 = std::chrono::steady_clock::now();
  make_repo(dir / "mirror-store", size);
  std::printf("payload: %.2f GiB written and hashed in %.1f s\n", size / double(1 << 30),
              seconds_since(t0));

  loftqd::mirror::MirrorOptions mo;
  mo.store = dir / "mirror-store";
  mo.port = 0;
  mo.threads = std::max(8, parallel * 2);
  loftqd::mirror::Mirror mirror(mo);
  mirror.start();
  std::string url = mirror.url() + "/org/bench/resolve/main/big.safetensors";
  double mib = size / double(1 << 20);

  std::printf("%-34s %10s %10s\n", "method", "seconds", "MiB/s");
  for (int rep = 0; rep < repeat; ++rep) {
    // Baseline: curl -o.
    fs::path out = dir / "curl.out";
    std::string cmd = "curl -sS -o '" + out.string() + "' '" + url + "'";
    t0 = std::chrono::steady_clock::now();
    int rc = std::system(cmd.c_str());
    double s = seconds_since(t0);
    if (rc != 0 || fs::file_size(out) != size) {
      std::fprintf(stderr, "curl failed (rc %d)\n", rc);
    } else {
      std::printf("%-34s %10.2f %10.0f\n", "curl -o (baseline)", s, mib / s);
    }
    fs::remove(out);

    // The same work the client does after the bytes arrive: hash and make the file durable.
    cmd += " && sha256sum '" + out.string() + "' > /dev/null && sync '" + out.string() + "'";
    t0 = std::chrono::steady_clock::now();
    rc = std::system(cmd.c_str());
    s = seconds_since(t0);
    if (rc == 0) std::printf("%-34s %10.2f %10.0f\n", "curl -o + sha256sum + sync", s, mib / s);
    fs::remove(out);

    // The same with OpenSSL's SHA-256 (SHA-NI where the CPU has it, as the client's): coreutils'
    // sha256sum may be several times slower.
    std::string ocmd = "curl -sS -o '" + out.string() + "' '" + url +
                       "' && openssl dgst -sha256 '" + out.string() + "' > /dev/null && sync '" +
                       out.string() + "'";
    t0 = std::chrono::steady_clock::now();
    rc = std::system(ocmd.c_str());
    s = seconds_since(t0);
    if (rc == 0)
      std::printf("%-34s %10.2f %10.0f\n", "curl -o + openssl sha256 + sync", s, mib / s);
    fs::remove(out);

    for (int p : {1, parallel}) {
      hub::ClientOptions o;
      o.endpoint = mirror.url();
      o.parallel = p;
      o.range_threshold = p > 1 ? 64 << 20 : UINT64_MAX;
      o.disk_reserve = 0;
      hub::Client c(o);
      hub::SnapshotRequest req;
      req.repo = "org/bench";
      req.store = dir / ("client-store-" + std::to_string(p));
      fs::remove_all(*req.store);
      t0 = std::chrono::steady_clock::now();
      auto r = c.snapshot_download(req);
      s = seconds_since(t0);
      if (!r) {
        std::fprintf(stderr, "fetch failed: %s\n", r.error().message.c_str());
        return 1;
      }
      std::string label = p > 1 ? "loftqd fetch, " + std::to_string(p) + " ranges (+sha256)"
                                : "loftqd fetch, 1 stream (+sha256)";
      std::printf("%-34s %10.2f %10.0f\n", label.c_str(), s, mib / s);
      fs::remove_all(*req.store);
    }
  }
  mirror.stop();
  fs::remove_all(dir);
  return 0;
}
