// LoftQ SVD benchmark: exact (LAPACK gesdd, the reference) against randomized SVD (the default),
// in one process, on weight matrices of a synthetic Llama checkpoint. See docs/performance.md.
//
//   bench_loftq [--shapes 1024x1024,4096x4096,11008x4096] [--quick] [--rank 64] [--iters 5]
//               [--bits 4] [--threads 0] [--skip-exact] [--oversample P] [--power-iters Q]
//               [--warm-power-iters W] [--sweep] [--profile] [--check] [--workdir DIR]
//   bench_loftq --floor-of OUT_DIR/loftq.json [--threads N]
//
// Every run first measures the machine (bench/machine.h: sgemm peak, memory bandwidth, the BLAS
// kernels) and prints each LoftQ time as a multiple of its floor (quant::loftq_work at those
// rates; docs/performance.md, "Floors"). --floor-of prints the floor of a whole quantize run
// from its loftq.json instead (bench/e2e.sh).
//
// Prints, per shape, the seconds of exact and of the randomized sketch alone, the speed ratio
// exact/randomized, both final errors (loftq_error) and randomized/exact - 1, then which SVD the
// default (randomized mode, quant::svd_mode_for) runs and its error against exact. Not a ctest
// test: it takes minutes.
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_util.h"
#include "bench/machine.h"
#include "model/safetensors.h"
#include "model/synth.h"
#include "quant/backend.h"
#include "quant/loftq.h"

namespace fs = std::filesystem;
namespace q = loftqd::quant;
namespace model = loftqd::model;

namespace {

using loftqd::bench::Clock;
using loftqd::bench::Shape;
using loftqd::bench::since;

struct Args {
  std::vector<Shape> shapes;
  int rank = 64, iters = 5, bits = 4, threads = 0;
  int oversample = -1, power_iters = -1, warm_power_iters = -1;  // -1: LoftqOptions' defaults
  bool skip_exact = false, profile = false, check = false, sweep = false;
  std::string workdir;   // empty: a temporary directory, removed at exit
  std::string floor_of;  // a loftq.json: print the floor of that run and exit
};

[[noreturn]] void usage(const std::string& err);

int parse_int(const std::string& flag, const std::string& v) {
  return loftqd::bench::parse_int(flag, v, usage);
}

[[noreturn]] void usage(const std::string& err) {
  if (!err.empty()) std::fprintf(stderr, "bench_loftq: %s\n", err.c_str());
  std::fprintf(stderr,
               "usage: bench_loftq [options]\n"
               "  --shapes OUTxIN,...  weight shapes (default 1024x1024,4096x4096,11008x4096)\n"
               "  --quick              only 1024x1024 (a short smoke run)\n"
               "  --rank R             LoRA rank (default 64)\n"
               "  --iters T            LoftQ iterations (default 5)\n"
               "  --bits B             NF bits: 2, 3 or 4 (default 4)\n"
               "  --threads N          BLAS and quantizer threads (default 0 = all cores)\n"
               "  --skip-exact         run only the randomized SVD (and exact where it is the\n"
               "                       default)\n"
               "  --oversample P, --power-iters Q, --warm-power-iters W\n"
               "                       randomized SVD settings (default: LoftqOptions' defaults)\n"
               "  --sweep              also run a grid of (Q, W) settings against the same exact\n"
               "  --profile            time every backend call and print a breakdown\n"
               "  --check              exit 1 when a target is missed (default error <= exact\n"
               "                       + 0.5%%; randomized >= 20x faster on 4096x4096)\n"
               "  --workdir DIR        keep the synthetic checkpoints in DIR and reuse them\n"
               "  --floor-of FILE      the floor of the quantize run that wrote FILE (a\n"
               "                       loftq.json) on this machine, then exit\n");
  std::exit(err.empty() ? 0 : 2);
}

Args parse_args(int argc, char** argv) {
  Args a;
  a.shapes = {{1024, 1024}, {4096, 4096}, {11008, 4096}};
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(f + " needs a value");
      return argv[++i];
    };
    if (f == "--shapes")
      a.shapes = loftqd::bench::parse_shapes(value(), usage);
    else if (f == "--quick")
      a.shapes = {{1024, 1024}};
    else if (f == "--rank")
      a.rank = parse_int(f, value());
    else if (f == "--iters")
      a.iters = parse_int(f, value());
    else if (f == "--bits")
      a.bits = parse_int(f, value());
    else if (f == "--threads")
      a.threads = parse_int(f, value());
    else if (f == "--oversample")
      a.oversample = parse_int(f, value());
    else if (f == "--power-iters")
      a.power_iters = parse_int(f, value());
    else if (f == "--warm-power-iters")
      a.warm_power_iters = parse_int(f, value());
    else if (f == "--sweep")
      a.sweep = true;
    else if (f == "--skip-exact")
      a.skip_exact = true;
    else if (f == "--profile")
      a.profile = true;
    else if (f == "--check")
      a.check = true;
    else if (f == "--workdir")
      a.workdir = value();
    else if (f == "--floor-of")
      a.floor_of = value();
    else if (f == "--help" || f == "-h")
      usage("");
    else
      usage("unknown option '" + f + "'");
  }
  return a;
}

// ---------------------------------------------------------------------------------------------
// A Backend decorator that times every call (the wall time of the inner call; the CPU backend
// is synchronous), for the --profile breakdown.

class TimingBackend final : public q::Backend {
 public:
  explicit TimingBackend(q::Backend& inner) : in_(inner) {}
  std::string name() const override { return in_.name(); }

  std::unique_ptr<q::Buffer> alloc(size_t n) override {
    return timed("alloc", [&] { return in_.alloc(n); });
  }
  void upload(q::Buffer& dst, const float* src, size_t n) override {
    timed("upload", [&] { in_.upload(dst, src, n); });
  }
  void download(float* dst, const q::Buffer& src, size_t n) override {
    timed("download", [&] { in_.download(dst, src, n); });
  }
  void copy(const q::Buffer& src, q::Buffer& dst, size_t n) override {
    timed("copy", [&] { in_.copy(src, dst, n); });
  }
  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const q::Buffer& a,
            const q::Buffer& b, float beta, q::Buffer& c) override {
    // Group GEMMs by their inner dimension class: passes over the big matrix vs small ones.
    const char* kind = (k >= 1024 && (m >= 1024 || n >= 1024)) || (m >= 1024 && n >= 1024)
                           ? "gemm (over W)"
                           : "gemm (small)";
    timed(kind, [&] { in_.gemm(ta, tb, m, n, k, alpha, a, b, beta, c); });
  }
  void sub(const q::Buffer& a, const q::Buffer& b, q::Buffer& out, size_t n) override {
    timed("sub", [&] { in_.sub(a, b, out, n); });
  }
  double sq_dist(const q::Buffer& a, const q::Buffer& b, size_t n) override {
    return timed("sq_dist", [&] { return in_.sq_dist(a, b, n); });
  }
  double sq_norm(const q::Buffer& a, size_t n) override {
    return timed("sq_norm", [&] { return in_.sq_norm(a, n); });
  }
  void quant_dequant(const q::QuantSpec& spec, const q::Buffer& in, q::Buffer& out,
                     size_t n) override {
    timed("quant_dequant", [&] { in_.quant_dequant(spec, in, out, n); });
  }
  double residual_pass(const q::Buffer& w, const q::Buffer& l, const q::Buffer& r, int m, int n,
                       int rank, const q::Buffer& qd, q::Buffer& e,
                       const NextIterate* next) override {
    return timed("residual_pass",
                 [&] { return in_.residual_pass(w, l, r, m, n, rank, qd, e, next); });
  }
  void orthonormalize(q::Buffer& a, int m, int k) override {
    timed("orthonormalize", [&] { in_.orthonormalize(a, m, k); });
  }
  void svd(q::Buffer& a, int m, int n, q::Buffer& u, std::vector<float>& s,
           q::Buffer& vt) override {
    const bool big = std::min(m, n) >= 1024;
    timed(big ? "svd (full W)" : "svd (small)", [&] { in_.svd(a, m, n, u, s, vt); });
  }
  int svd_top(q::Buffer& a, int m, int n, int r, std::unique_ptr<q::Buffer>& u,
              std::vector<float>& s, std::unique_ptr<q::Buffer>& vt) override {
    return timed("svd_top (exact)", [&] { return in_.svd_top(a, m, n, r, u, s, vt); });
  }
  void make_factors(const q::Buffer& u, int m, int p, const std::vector<float>& s,
                    const q::Buffer& vt, int n, int r, q::Buffer& l, q::Buffer& r_out) override {
    timed("make_factors", [&] { in_.make_factors(u, m, p, s, vt, n, r, l, r_out); });
  }

  struct Stat {
    double seconds = 0;
    long calls = 0;
  };
  const std::map<std::string, Stat>& stats() const { return stats_; }
  void reset() { stats_.clear(); }

 private:
  template <class F>
  auto timed(const char* what, F f) -> decltype(f()) {
    struct Guard {
      Stat& s;
      Clock::time_point t0;
      ~Guard() {
        s.seconds += since(t0);
        ++s.calls;
      }
    } g{stats_[what], Clock::now()};
    return f();
  }
  q::Backend& in_;
  std::map<std::string, Stat> stats_;
};

void print_profile(const TimingBackend& tb, double total) {
  double sum = 0;
  for (const auto& [k, s] : tb.stats()) sum += s.seconds;
  for (const auto& [k, s] : tb.stats())
    if (s.seconds >= 0.0005 * total)
      std::printf("      %-16s %6ld calls %9.3f s %5.1f%%\n", k.c_str(), s.calls, s.seconds,
                  total > 0 ? 100.0 * s.seconds / total : 0.0);
  std::printf("      %-16s %16s %9.3f s %5.1f%%\n", "(outside)", "", total - sum,
              total > 0 ? 100.0 * (total - sum) / total : 0.0);
}

// ---------------------------------------------------------------------------------------------
// Benchmark matrices: q_proj (hidden x hidden) or gate_proj (intermediate x hidden) of a
// one-layer synthetic Llama (low-rank structure, heavy tails, outlier input channels).

struct ModelKey {
  int hidden = 0, intermediate = 0;
  auto operator<=>(const ModelKey&) const = default;
};

int pick_heads(int hidden) {
  for (int hd : {128, 64, 32, 16, 8, 4, 2, 1})
    if (hidden % hd == 0) return hidden / hd;
  return 1;
}

// The checkpoint (hidden, intermediate) and tensor that hold an OUTxIN matrix.
std::pair<ModelKey, std::string> source_of(const Shape& s, const std::vector<Shape>& all) {
  if (s.out != s.in) return {{s.in, s.out}, "model.layers.0.mlp.gate_proj.weight"};
  // Square: q_proj; share a checkpoint with a gate_proj shape of the same hidden if there is one.
  int inter = 0;
  for (const auto& o : all)
    if (o.in == s.in && o.out != o.in) inter = o.out;
  if (inter == 0) inter = ((s.in * 8 / 3 + 63) / 64) * 64;
  return {{s.in, inter}, "model.layers.0.self_attn.q_proj.weight"};
}

fs::path model_dir(const fs::path& root, const ModelKey& k) {
  return root / ("llama1-h" + std::to_string(k.hidden) + "-i" + std::to_string(k.intermediate));
}

std::vector<float> load_matrix(const fs::path& root, const ModelKey& key, const std::string& tensor,
                               const Shape& s) {
  const fs::path dir = model_dir(root, key);
  if (!fs::exists(dir / "model.safetensors")) {
    model::SynthOptions so;
    so.arch = "llama";
    so.layers = 1;
    so.hidden = key.hidden;
    so.intermediate = key.intermediate;
    so.heads = pick_heads(key.hidden);
    so.vocab = 256;
    so.dtype = model::DType::BF16;
    const auto t0 = Clock::now();
    fs::remove_all(dir);
    model::synth_checkpoint(so, dir);
    std::printf("synthesized %s in %.1f s\n", dir.string().c_str(), since(t0));
  }
  auto f = model::SafetensorsFile::open(dir / "model.safetensors");
  const model::TensorInfo* t = f->find(tensor);
  if (!t) throw std::runtime_error(dir.string() + ": no tensor " + tensor);
  if (t->shape.size() != 2 || t->shape[0] != s.out || t->shape[1] != s.in)
    throw std::runtime_error(dir.string() + ": " + tensor + " is not " + s.str());
  return f->read_f32(*t);
}

// CPU time of the whole process (all threads), user + system: less sensitive than wall time to
// other jobs on a shared machine.
double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double peak_rss_gib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / (1024.0 * 1024.0);  // ru_maxrss is in KiB
}

// Per shape: exact, the randomized sketch alone (exact_where_cheap = false) and the default
// (randomized mode, which runs exact where svd_mode_for says so: then it is the exact run).
struct Row {
  Shape shape;
  bool has_exact = false;
  q::SvdMode default_mode = q::SvdMode::Randomized;
  q::LoftqResult exact, rnd;
  const q::LoftqResult& dflt() const { return default_mode == q::SvdMode::Exact ? exact : rnd; }
  double ratio() const { return rnd.seconds > 0 ? exact.seconds / rnd.seconds : 0; }
  double diff_pct() const { return 100.0 * (rnd.loftq_error / exact.loftq_error - 1.0); }
  double default_diff_pct() const { return 100.0 * (dflt().loftq_error / exact.loftq_error - 1.0); }
};

// The summary table; false when a target is missed (the default's error more than 0.5 % above
// exact on any shape, the sketch less than 20x faster than exact on 4096x4096).
bool print_summary(const std::vector<Row>& rows) {
  bool ok = true;
  std::printf("\n%-11s %10s %10s %8s %12s %12s %9s %10s %9s  %s\n", "shape", "exact_s", "rand_s",
              "speedup", "exact_err", "rand_err", "err_diff", "default", "dflt_diff", "targets");
  for (const Row& r : rows) {
    if (!r.has_exact) {
      std::printf("%-11s %10s %10.2f %8s %12s %12.6f %9s %10s %9s  %s\n", r.shape.str().c_str(),
                  "-", r.rnd.seconds, "-", "-", r.rnd.loftq_error, "-",
                  q::svd_mode_name(r.default_mode).c_str(), "-", "(exact skipped)");
      continue;
    }
    const bool err_ok = r.default_diff_pct() <= 0.5;
    const bool speed_applies = r.shape.out == 4096 && r.shape.in == 4096;
    const bool speed_ok = !speed_applies || r.ratio() >= 20.0;
    ok = ok && err_ok && speed_ok;
    std::string verdict = std::string("default err<=0.5%: ") + (err_ok ? "ok" : "MISS");
    if (speed_applies) verdict += std::string(", >=20x: ") + (speed_ok ? "ok" : "MISS");
    std::printf("%-11s %10.2f %10.2f %7.1fx %12.6f %12.6f %+8.3f%% %10s %+8.3f%%  %s\n",
                r.shape.str().c_str(), r.exact.seconds, r.rnd.seconds, r.ratio(),
                r.exact.loftq_error, r.rnd.loftq_error, r.diff_pct(),
                q::svd_mode_name(r.default_mode).c_str(), r.default_diff_pct(), verdict.c_str());
  }
  return ok;
}

// One LoftQ run against its floor, for the table at the end.
struct FloorRow {
  Shape shape;
  std::string label;
  double seconds = 0, gemm_s = 0, mem_s = 0;
  double floor_s() const { return gemm_s + mem_s; }
};

void print_floors(const std::vector<FloorRow>& rows, const loftqd::bench::Machine& m) {
  std::printf("\nfloors (core=%s, sgemm %.1f GFLOP/s, memory %.1f GB/s):\n", m.core.c_str(),
              m.sgemm_gflops, m.gbps());
  std::printf("%-11s %-18s %9s %9s %9s %9s %8s\n", "shape", "run", "seconds", "floor_s", "gemm_s",
              "mem_s", "x_floor");
  for (const auto& r : rows)
    std::printf("%-11s %-18s %9.3f %9.3f %9.3f %9.3f %7.2fx\n", r.shape.str().c_str(),
                r.label.c_str(), r.seconds, r.floor_s(), r.gemm_s, r.mem_s,
                r.floor_s() > 0 ? r.seconds / r.floor_s() : 0.0);
}

// --floor-of: the floor of every layer of a quantize run (its loftq.json: rank, iters, svd and
// the layer shapes; the randomized settings are LoftqOptions' defaults, as loftqd's), summed,
// against the LoftQ seconds the run recorded. Prints "floor_s=" for bench/e2e.sh.
int floor_of(const std::string& path, int threads) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot read");
  const nlohmann::json j = nlohmann::json::parse(in);
  q::LoftqOptions o;
  o.rank = j.at("rank").get<int>();
  o.iters = j.at("iters").get<int>();
  o.svd = q::parse_svd_mode(j.at("svd").get<std::string>());
  const loftqd::bench::Machine m = loftqd::bench::measure_machine(threads);
  loftqd::bench::print_machine(m);
  double flops = 0, bytes = 0, gemm_s = 0, mem_s = 0, seconds = 0;
  size_t layers = 0;
  for (const auto& l : j.at("layers")) {
    const auto sh = l.at("shape");
    const q::LoftqWork w = q::loftq_work(o, sh.at(0).get<int>(), sh.at(1).get<int>());
    flops += w.flops(), bytes += w.bytes;
    gemm_s += m.gemm_s(w), mem_s += m.mem_s(w);
    seconds += l.value("seconds", 0.0);
    ++layers;
  }
  const double fl = gemm_s + mem_s;
  std::printf(
      "floor: %zu layers (r=%d, T=%d, svd %s): %.1f GFLOP + %.1f GB of elementwise passes = "
      "%.1f s (gemm %.1f s + memory %.1f s); the run's LoftQ seconds (sum over layers) %.1f s "
      "= %.2fx floor\n",
      layers, o.rank, o.iters, q::svd_mode_name(o.svd).c_str(), flops / 1e9, bytes / 1e9, fl,
      gemm_s, mem_s, seconds, fl > 0 ? seconds / fl : 0.0);
  std::printf("floor_s=%.3f\ncore=%s\n", fl, m.core.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse_args(argc, argv);
  if (!a.floor_of.empty()) return floor_of(a.floor_of, a.threads);
  const fs::path root =
      a.workdir.empty() ? fs::temp_directory_path() / ("bench_loftq-" + std::to_string(::getpid()))
                        : fs::path(a.workdir);
  fs::create_directories(root);
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      std::error_code ec;
      if (!p.empty()) fs::remove_all(p, ec);
    }
  } cleanup{a.workdir.empty() ? root : fs::path()};

  const loftqd::bench::Machine machine = loftqd::bench::measure_machine(a.threads);
  loftqd::bench::print_machine(machine);
  std::vector<FloorRow> floors;
  auto cpu = q::make_cpu_backend(a.threads);
  TimingBackend timing(*cpu);
  q::Backend& be = a.profile ? static_cast<q::Backend&>(timing) : *cpu;

  q::LoftqOptions base;
  base.rank = a.rank;
  base.iters = a.iters;
  base.quant = q::QuantSpec{q::QuantMethod::NF, a.bits, q::kDefaultBlockSize};
  if (a.oversample >= 0) base.oversample = a.oversample;
  if (a.power_iters >= 0) base.power_iters = a.power_iters;
  if (a.warm_power_iters >= 0) base.warm_power_iters = a.warm_power_iters;
  std::printf(
      "bench_loftq: rank %d, T=%d, %s, threads %s; randomized: oversample %d, power_iters %d, "
      "warm_power_iters %d\n",
      a.rank, a.iters, q::spec_name(base.quant).c_str(),
      a.threads > 0 ? std::to_string(a.threads).c_str() : "all", base.oversample, base.power_iters,
      base.warm_power_iters);

  // One LoftQ run; prints a line (and the profile) and returns the result without its factors.
  auto run = [&](const std::vector<float>& w, const Shape& s, const q::LoftqOptions& o,
                 const std::string& label) {
    timing.reset();
    const double c0 = cpu_seconds();
    q::LoftqResult r = q::loftq(be, w.data(), s.out, s.in, o);
    const double cpu_s = cpu_seconds() - c0;
    const q::LoftqWork work = q::loftq_work(o, s.out, s.in);
    floors.push_back({s, label, r.seconds, machine.gemm_s(work), machine.mem_s(work)});
    std::printf(
        "  %-11s %-18s %9.2f s (cpu %7.2f s)  qlora_error %.6f  loftq_error %.6f  best_iter %d  "
        "%.2fx floor (%.3f s)\n",
        s.str().c_str(), label.c_str(), r.seconds, cpu_s, r.qlora_error, r.loftq_error, r.best_iter,
        r.seconds / floors.back().floor_s(), floors.back().floor_s());
    if (a.profile) print_profile(timing, r.seconds);
    std::fflush(stdout);
    r.q.clear(), r.q.shrink_to_fit();
    r.a.clear(), r.a.shrink_to_fit();
    r.b.clear(), r.b.shrink_to_fit();
    return r;
  };

  struct SweepPoint {
    Shape shape;
    int oversample, power_iters, warm_power_iters;
    double seconds, error, exact_error;
  };
  std::vector<Row> rows;
  std::vector<SweepPoint> sweep;
  for (const Shape& s : a.shapes) {
    const auto [key, tensor] = source_of(s, a.shapes);
    const std::vector<float> w = load_matrix(root, key, tensor, s);
    Row row;
    row.shape = s;
    if (!a.skip_exact) {
      q::LoftqOptions o = base;
      o.svd = q::SvdMode::Exact;
      row.exact = run(w, s, o, "exact");
      row.has_exact = true;
    }
    q::LoftqOptions o = base;
    o.svd = q::SvdMode::Randomized;
    o.exact_where_cheap = false;
    row.rnd = run(w, s, o, "randomized");
    row.default_mode = q::svd_mode_for(base, s.out, s.in);
    if (row.default_mode == q::SvdMode::Exact && !row.has_exact) {
      o.svd = q::SvdMode::Exact;
      row.exact = run(w, s, o, "exact (default)");
      row.has_exact = true;
      o.svd = q::SvdMode::Randomized;
    }
    if (a.sweep) {
      for (const auto& [pi, wi] : {std::pair{1, 0}, std::pair{1, 1}, std::pair{2, 0},
                                   std::pair{2, 1}, std::pair{2, 2}, std::pair{3, 1}}) {
        q::LoftqOptions v = o;
        v.power_iters = pi;
        v.warm_power_iters = wi;
        const auto r =
            run(w, s, v, "randomized q=" + std::to_string(pi) + " w=" + std::to_string(wi));
        sweep.push_back({s, v.oversample, pi, wi, r.seconds, r.loftq_error,
                         row.has_exact ? row.exact.loftq_error : 0.0});
      }
    }
    rows.push_back(std::move(row));
  }

  if (!sweep.empty()) {
    std::printf("\n%-11s %10s %11s %16s %10s %12s %9s\n", "shape", "oversample", "power_iters",
                "warm_power_iters", "rand_s", "rand_err", "err_diff");
    for (const auto& p : sweep) {
      std::printf("%-11s %10d %11d %16d %10.2f %12.6f", p.shape.str().c_str(), p.oversample,
                  p.power_iters, p.warm_power_iters, p.seconds, p.error);
      if (p.exact_error > 0)
        std::printf(" %+8.3f%%\n", 100.0 * (p.error / p.exact_error - 1.0));
      else
        std::printf(" %9s\n", "-");
    }
  }

  const bool ok = print_summary(rows);
  print_floors(floors, machine);
  std::printf("peak RSS %.2f GiB\n", peak_rss_gib());
  return a.check && !ok ? 1 : 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_loftq: %s\n", e.what());
  return 1;
}
