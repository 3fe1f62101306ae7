// Per-tensor checkpoints (QuantizeOptions::checkpoint_dir): the single source of truth for
// resuming. A finished tensor is one safetensors file holding Q, A and B in the tensor's dtype,
// its fingerprint and a checksum over everything; a later run takes it only when both match.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/fs.h"
#include "convert/internal.h"
#include "model/dtype.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace loftqd::convert::detail {

using namespace loftqd::model;  // NOLINT: safetensors, dtypes
using namespace loftqd::quant;  // NOLINT: specs, LoftQ options

namespace {

// A fast non-cryptographic 64-bit hash (four xxhash64-style lanes, so hashing a multi-GB
// checkpoint stays far below the cost of LoftQ). It guards against changed inputs and damaged
// checkpoint files, not against an adversary.
constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL, kP2 = 0xC2B2AE3D27D4EB4FULL,
                   kP3 = 0x165667B19E3779F9ULL;

uint64_t rotl(uint64_t x, int r) {
  return (x << r) | (x >> (64 - r));
}

uint64_t load64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

uint64_t round64(uint64_t acc, uint64_t in) {
  return rotl(acc + in * kP2, 31) * kP1;
}

}  // namespace

uint64_t hash_bytes(std::span<const std::byte> data, uint64_t seed) {
  const std::byte* p = data.data();
  const size_t n = data.size();
  size_t i = 0;
  uint64_t h;
  if (n >= 32) {
    uint64_t v[4] = {seed + kP1 + kP2, seed + kP2, seed, seed - kP1};
    for (; i + 32 <= n; i += 32)
      for (int l = 0; l < 4; ++l) v[l] = round64(v[l], load64(p + i + 8 * l));
    h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18);
    for (int l = 0; l < 4; ++l) h = (h ^ round64(0, v[l])) * kP1 + kP3;
  } else {
    h = seed + kP3;
  }
  h += n;
  for (; i + 8 <= n; i += 8) h = rotl(h ^ round64(0, load64(p + i)), 27) * kP1 + kP3;
  for (; i < n; ++i) h = rotl(h ^ (std::to_integer<uint64_t>(p[i]) * kP3), 11) * kP1;
  // splitmix64's finalizer: every input bit reaches every output bit.
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL;
  return h ^ (h >> 31);
}

namespace {

uint64_t hash_str(std::string_view s, uint64_t seed = 0) {
  return hash_bytes(std::as_bytes(std::span(s.data(), s.size())), seed);
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

constexpr const char* kCheckpointFormat = "loftqd-tensor-checkpoint/1";

}  // namespace

// Named by a hash of the tensor name (tensor names may hold characters a file name cannot); a
// collision only costs a recomputation, since the name is part of the fingerprint.
fs::path checkpoint_path(const fs::path& dir, const std::string& tensor) {
  return dir / (hex64(hash_str(tensor)) + ".safetensors");
}

// Everything that determines a target tensor's result, as canonical JSON text (keys sorted).
// The loftqd version stands in for the algorithm: a new version recomputes.
std::string tensor_fingerprint(const TensorInfo& t, const LoftqOptions& lo, double alpha,
                               uint64_t input_hash, bool conv1d) {
  json fp = {{"tensor", t.name},
             {"shape", t.shape},
             {"dtype", std::string(dtype_name(t.dtype))},
             {"method", method_name(lo.quant.method)},
             {"bits", lo.quant.bits},
             {"block_size", lo.quant.block_size},
             {"rank", lo.rank},
             {"iters", lo.iters},
             {"svd", svd_mode_name(lo.svd)},
             {"oversample", lo.oversample},
             {"power_iters", lo.power_iters},
             {"warm_power_iters", lo.warm_power_iters},
             {"seed", lo.seed},
             {"lora_alpha", alpha},
             {"input_hash", hex64(input_hash)},
             {"loftqd_version", LOFTQD_VERSION}};
  if (conv1d) fp["layout"] = "conv1d";  // LoftQ ran on the transpose
  return fp.dump();
}

namespace {

// Covers the metadata that is not checked otherwise and every byte of the three tensors, so a
// flipped bit anywhere in a checkpoint makes it be recomputed rather than published.
uint64_t checkpoint_checksum(const std::string& fingerprint, const std::string& report,
                             std::span<const std::byte> q, std::span<const std::byte> a,
                             std::span<const std::byte> b) {
  uint64_t h = hash_str(fingerprint);
  h = hash_str(report, h);
  h = hash_bytes(q, h);
  h = hash_bytes(a, h);
  return hash_bytes(b, h);
}

// The computed part of a LayerReport; the rest follows from the tensor and the plan, which the
// fingerprint covers. Doubles round-trip exactly through nlohmann's shortest representation.
std::string report_text(const LayerReport& lr) {
  return json{{"qlora_error", lr.qlora_error},
              {"loftq_error", lr.loftq_error},
              {"best_iter", lr.best_iter},
              {"seconds", lr.seconds}}
      .dump();
}

}  // namespace

void save_checkpoint(const fs::path& p, const std::string& fingerprint, const LayerReport& lr,
                     const TensorInfo& t, const FactorShape& shape, std::span<const std::byte> q,
                     std::span<const std::byte> a, std::span<const std::byte> b) {
  const int64_t m = shape.out_features, n = shape.in_features, rank = shape.rank;
  const std::string report = report_text(lr);
  const std::map<std::string, std::string> meta = {
      {"format", kCheckpointFormat},
      {"tensor", t.name},
      {"fingerprint", fingerprint},
      {"report", report},
      {"checksum", hex64(checkpoint_checksum(fingerprint, report, q, a, b))}};
  SafetensorsWriter w(p,
                      {TensorSpec{"q", t.dtype, t.shape}, TensorSpec{"a", t.dtype, {rank, n}},
                       TensorSpec{"b", t.dtype, {m, rank}}},
                      meta);
  w.write("q", q);
  w.write("a", a);
  w.write("b", b);
  w.commit();  // temp file, fsync, rename, fsync the directory
}

std::unique_ptr<SafetensorsFile> load_checkpoint(const fs::path& p, const std::string& fingerprint,
                                                 const TensorInfo& t, const FactorShape& shape,
                                                 LayerReport& lr) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return nullptr;
  try {
    auto f = SafetensorsFile::open(p);
    const auto& meta = f->metadata();
    auto get = [&](const char* k) -> const std::string* {
      auto it = meta.find(k);
      return it == meta.end() ? nullptr : &it->second;
    };
    const std::string *format = get("format"), *fp = get("fingerprint"), *report = get("report"),
                      *checksum = get("checksum");
    if (!format || *format != kCheckpointFormat || !fp || *fp != fingerprint || !report ||
        !checksum)
      return nullptr;
    const int64_t m = shape.out_features, n = shape.in_features, rank = shape.rank;
    auto tensor = [&](const char* name, std::vector<int64_t> want) -> const TensorInfo* {
      const TensorInfo* ti = f->find(name);
      return ti && ti->dtype == t.dtype && ti->shape == want ? ti : nullptr;
    };
    const TensorInfo *q = tensor("q", t.shape), *a = tensor("a", {rank, n}),
                     *b = tensor("b", {m, rank});
    if (!q || !a || !b || f->tensors().size() != 3) return nullptr;
    if (*checksum !=
        hex64(checkpoint_checksum(*fp, *report, f->bytes(*q), f->bytes(*a), f->bytes(*b))))
      return nullptr;
    const json r = json::parse(*report);
    lr.qlora_error = r.at("qlora_error").get<double>();
    lr.loftq_error = r.at("loftq_error").get<double>();
    lr.best_iter = r.at("best_iter").get<int>();
    lr.seconds = r.at("seconds").get<double>();
    return f;
  } catch (const std::exception&) {
    return nullptr;  // unreadable, truncated or malformed
  }
}

namespace {

// A run killed while writing a checkpoint leaves AtomicFile's temp file (".NAME.tmp.PID.N")
// behind; remove those of processes that are gone.
void remove_stale_checkpoint_temps(const fs::path& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const size_t tmp = name.find(".tmp.");
    if (!name.starts_with(".") || tmp == std::string::npos) continue;
    const size_t dot = name.find('.', tmp + 5);
    const std::string pid_str =
        name.substr(tmp + 5, dot == std::string::npos ? dot : dot - tmp - 5);
    if (pid_str.empty() || pid_str.size() > 9 ||
        !std::all_of(pid_str.begin(), pid_str.end(), ::isdigit))
      continue;
    const long pid = std::stol(pid_str);
    if (pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)
      fs::remove(e.path(), ec);
  }
}

}  // namespace

void prepare_checkpoint_dir(const fs::path& dir) {
  // Made durable too, or a power loss could take the directory with the checkpoints in it.
  const fs::path abs = fs::absolute(dir);
  if (fs::create_directories(abs)) common::fsync_dir(abs.parent_path());
  remove_stale_checkpoint_temps(dir);
}

}  // namespace loftqd::convert::detail
