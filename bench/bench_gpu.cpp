// Per-matrix LoftQ on the CUDA backend against the CPU backend, in one process (bench/gpu_check.sh,
// docs/performance.md). CUDA randomized vs CPU randomized (the CPU's exact SVD is far too slow
// at these sizes), plus CUDA exact as the reference error.
//
//   bench_gpu [--shapes 4096x4096,11008x4096] [--rank 64] [--iters 5] [--bits 4] [--reps 3]
//             [--threads 0] [--device N] [--no-cpu] [--exact-max-elems N] [--tf32] [--profile]
//             [--qr householder|cholesky|both]
//             [--check]
//   bench_gpu --model MODEL_DIR --out OUT_DIR [--rank 64] [--iters 5] [--bits 4]
//             (quantize_model end to end on the CUDA backend, CPU fallback on out-of-memory)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "bench/bench_util.h"
#include "bench/machine.h"
#include "convert/convert.h"
#include "quant/backend.h"
#include "quant/cuda_backend.h"
#include "quant/device.h"
#include "quant/loftq.h"

namespace q = loftqd::quant;
namespace convert = loftqd::convert;

namespace {

using loftqd::bench::Clock;
using loftqd::bench::Shape;
using loftqd::bench::since;

struct Args {
  std::vector<Shape> shapes{{4096, 4096}, {11008, 4096}};
  int rank = 64, iters = 5, bits = 4, reps = 3, threads = 0, device = 0;
  bool cpu = true, tf32 = false, profile = false, check = false;
  size_t exact_max = size_t(4096) * 4096;  // CUDA exact SVD only up to this many elements
  std::string model, out;                  // --model mode
  std::string qr = "both";                 // householder | cholesky | both
};

[[noreturn]] void usage(const std::string& err) {
  if (!err.empty()) std::fprintf(stderr, "bench_gpu: %s\n", err.c_str());
  std::fprintf(
      stderr,
      "usage: bench_gpu [options]\n"
      "  --shapes OUTxIN,...    (default 4096x4096,11008x4096)\n"
      "  --rank R --iters T --bits B   LoftQ settings (default 64, 5, 4)\n"
      "  --reps N               timed CUDA runs after one warm-up (default 3; the best is "
      "reported)\n"
      "  --threads N            CPU backend threads (default 0 = all cores)\n"
      "  --device N             CUDA device (default 0)\n"
      "  --no-cpu               skip the CPU baseline\n"
      "  --exact-max-elems N    run the CUDA exact SVD only up to N elements (default 16777216)\n"
      "  --tf32                 allow TF32 in cuBLAS\n"
      "  --profile              one more CUDA run with per-call timing (synchronized)\n"
      "  --check                exit 1 when 4096x4096 takes more than 0.15 s on CUDA or the\n"
      "                         CUDA error is more than 0.1 %% off the CPU's\n");
  std::exit(err.empty() ? 0 : 2);
}

int parse_int(const std::string& flag, const std::string& v) {
  return loftqd::bench::parse_int(flag, v, usage, 0);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(f + " needs a value");
      return argv[++i];
    };
    if (f == "-h" || f == "--help") usage("");
    if (f == "--shapes") {
      a.shapes = loftqd::bench::parse_shapes(val(), usage);
    } else if (f == "--rank") {
      a.rank = parse_int(f, val());
    } else if (f == "--iters") {
      a.iters = parse_int(f, val());
    } else if (f == "--bits") {
      a.bits = parse_int(f, val());
    } else if (f == "--reps") {
      a.reps = std::max(1, parse_int(f, val()));
    } else if (f == "--threads") {
      a.threads = parse_int(f, val());
    } else if (f == "--device") {
      a.device = parse_int(f, val());
    } else if (f == "--no-cpu") {
      a.cpu = false;
    } else if (f == "--exact-max-elems") {
      a.exact_max = static_cast<size_t>(std::stoull(val()));
    } else if (f == "--tf32") {
      a.tf32 = true;
    } else if (f == "--profile") {
      a.profile = true;
    } else if (f == "--check") {
      a.check = true;
    } else if (f == "--qr") {
      a.qr = val();
      if (a.qr != "householder" && a.qr != "cholesky" && a.qr != "both")
        usage("--qr expects householder, cholesky or both");
    } else if (f == "--model") {
      a.model = val();
    } else if (f == "--out") {
      a.out = val();
    } else {
      usage("unknown option '" + f + "'");
    }
  }
  if (a.model.empty() != a.out.empty()) usage("--model and --out go together");
  return a;
}

// Weight-like data, fast to make at 45M elements: Gaussian (splitmix64 + Box-Muller), std 0.02,
// every 97th input channel 6x larger (outlier channels), plus a rank-8 component so the
// spectrum has a head like trained weights.
std::vector<float> weight(int m, int n, uint64_t seed) {
  std::vector<float> w(size_t(m) * n);
  uint64_t s = seed;
  auto next = [&s] {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  auto unif = [&] { return (double(next() >> 11) + 0.5) * 0x1.0p-53; };
  std::vector<float> a(size_t(m) * 8), b(size_t(8) * n);
  for (auto& x : a) x = static_cast<float>(unif() - 0.5);
  for (auto& x : b) x = static_cast<float>(unif() - 0.5);
  for (size_t i = 0; i < w.size(); i += 2) {
    const double r = std::sqrt(-2.0 * std::log(unif())), t = 6.283185307179586 * unif();
    w[i] = static_cast<float>(0.02 * r * std::cos(t));
    if (i + 1 < w.size()) w[i + 1] = static_cast<float>(0.02 * r * std::sin(t));
  }
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float low = 0;
      for (int c = 0; c < 8; ++c) low += a[size_t(i) * 8 + c] * b[size_t(c) * n + j] / float(c + 1);
      float& x = w[size_t(i) * n + j];
      x += 0.01f * low;
      if (j % 97 == 5) x *= 6.0f;
    }
  return w;
}

// Wraps a backend, synchronizing after every call (a 1-value download) and timing it by name.
class ProfilingBackend final : public q::Backend {
 private:
  q::Backend& in_;
  std::unique_ptr<q::Buffer> probe_;
  std::map<std::string, std::pair<double, int>> t_;

  template <class F>
  auto timed(const std::string& what, F&& f) {
    const auto t0 = Clock::now();
    auto finish = [&] {
      float x;
      in_.download(&x, *probe_, 1);
      auto& e = t_[what];
      e.first += since(t0);
      ++e.second;
    };
    if constexpr (std::is_void_v<decltype(f())>) {
      f();
      finish();
    } else {
      auto r = f();
      finish();
      return r;
    }
  }

 public:
 public:
  explicit ProfilingBackend(q::Backend& inner) : in_(inner), probe_(inner.alloc(1)) {}
  std::string name() const override { return in_.name(); }
  std::unique_ptr<q::Buffer> alloc(size_t n) override {
    return timed("alloc", [&] { return in_.alloc(n); });
  }
  void upload(q::Buffer& d, const float* s, size_t n) override {
    timed("upload", [&] { in_.upload(d, s, n); });
  }
  void download(float* d, const q::Buffer& s, size_t n) override {
    timed("download", [&] { in_.download(d, s, n); });
  }
  void copy(const q::Buffer& s, q::Buffer& d, size_t n) override {
    timed("copy", [&] { in_.copy(s, d, n); });
  }
  void gemm(bool ta, bool tb, int m, int n, int k, float al, const q::Buffer& a, const q::Buffer& b,
            float be, q::Buffer& c) override {
    const std::string what =
        "gemm " + std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k);
    timed(what, [&] { in_.gemm(ta, tb, m, n, k, al, a, b, be, c); });
  }
  void sub(const q::Buffer& a, const q::Buffer& b, q::Buffer& o, size_t n) override {
    timed("sub", [&] { in_.sub(a, b, o, n); });
  }
  double sq_dist(const q::Buffer& a, const q::Buffer& b, size_t n) override {
    return timed("sq_dist", [&] { return in_.sq_dist(a, b, n); });
  }
  double sq_norm(const q::Buffer& a, size_t n) override {
    return timed("sq_norm", [&] { return in_.sq_norm(a, n); });
  }
  void quant_dequant(const q::QuantSpec& s, const q::Buffer& i, q::Buffer& o, size_t n) override {
    timed("quant_dequant", [&] { in_.quant_dequant(s, i, o, n); });
  }
  double residual_pass(const q::Buffer& w, const q::Buffer& l, const q::Buffer& r, int m, int n,
                       int rank, const q::Buffer& qd, q::Buffer& e,
                       const NextIterate* next) override {
    return timed("residual_pass " + std::to_string(m) + "x" + std::to_string(n),
                 [&] { return in_.residual_pass(w, l, r, m, n, rank, qd, e, next); });
  }
  void orthonormalize(q::Buffer& a, int m, int k) override {
    timed("orthonormalize " + std::to_string(m) + "x" + std::to_string(k),
          [&] { in_.orthonormalize(a, m, k); });
  }
  void svd(q::Buffer& a, int m, int n, q::Buffer& u, std::vector<float>& s,
           q::Buffer& vt) override {
    timed("svd " + std::to_string(m) + "x" + std::to_string(n),
          [&] { in_.svd(a, m, n, u, s, vt); });
  }
  int svd_top(q::Buffer& a, int m, int n, int r, std::unique_ptr<q::Buffer>& u,
              std::vector<float>& s, std::unique_ptr<q::Buffer>& vt) override {
    return timed("svd_top " + std::to_string(m) + "x" + std::to_string(n),
                 [&] { return in_.svd_top(a, m, n, r, u, s, vt); });
  }
  void make_factors(const q::Buffer& u, int m, int p, const std::vector<float>& s,
                    const q::Buffer& vt, int n, int r, q::Buffer& l, q::Buffer& ro) override {
    timed("make_factors", [&] { in_.make_factors(u, m, p, s, vt, n, r, l, ro); });
  }
  void report() const {
    double total = 0;
    for (const auto& [k, v] : t_) total += v.first;
    for (const auto& [k, v] : t_)
      std::printf("    %-34s %4d calls %9.2f ms %5.1f %%\n", k.c_str(), v.second, v.first * 1e3,
                  total > 0 ? 100.0 * v.first / total : 0.0);
    std::printf("    %-34s %9s %9.2f ms (synchronized after every call)\n", "total", "",
                total * 1e3);
  }
};

// The whole checkpoint through quantize_model on the CUDA backend (what `loftqd quantize
// --device cuda` runs), with the CPU as the out-of-memory fallback.
int quantize_model_mode(const Args& args) {
  q::CudaOptions co;
  co.allow_tf32 = args.tf32;
  co.cholesky_qr = args.qr == "cholesky";
  auto gpu = q::make_cuda_backend(args.device, co);
  auto cpu = q::make_cpu_backend(args.threads);
  convert::QuantizeOptions qo;
  qo.settings.rank = args.rank;
  qo.settings.iters = args.iters;
  qo.settings.plan = q::BitPlan::uniform(args.bits);
  qo.force = true;
  qo.fallback = cpu.get();
  const auto t0 = Clock::now();
  qo.progress = [&](size_t done, size_t total, const std::string& name) {
    if (done % 64 == 0)
      std::printf("  [%6.1f s] %zu/%zu %s\n", since(t0), done, total, name.c_str());
    std::fflush(stdout);
  };
  const auto rep = convert::quantize_model(args.model, args.out, qo, *gpu);
  double loftq_s = 0, worst = 0;
  for (const auto& l : rep.layers) loftq_s += l.seconds, worst = std::max(worst, l.loftq_error);
  std::printf(
      "quantize_model on %s: %.1f s end to end, %zu target weights, %.1f s of it in loftq(), worst "
      "loftq error %.5f\n",
      gpu->name().c_str(), since(t0), rep.layers.size(), loftq_s, worst);
  std::printf("result: model_seconds=%.2f loftq_seconds=%.2f\n", since(t0), loftq_s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  std::string why;
  const int count = q::cuda_device_count(&why);
  if (count == 0) {
    std::printf("bench_gpu: no CUDA device (%s); nothing to measure\n", why.c_str());
    return args.check ? 1 : 0;
  }
  std::printf("device: cuda:%d (%s)\n", args.device,
              q::cuda_device_description(args.device).c_str());
  if (!args.model.empty()) {
    try {
      return quantize_model_mode(args);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_gpu: %s\n", e.what());
      return 1;
    }
  }
  bool ok = true;
  try {
    // The default backend (Householder QR) and, unless --qr says otherwise, CholeskyQR2.
    struct Variant {
      std::string label;
      std::unique_ptr<q::Backend> be;
    };
    std::vector<Variant> variants;
    for (const bool chol : {false, true}) {
      if ((chol && args.qr == "householder") || (!chol && args.qr == "cholesky")) continue;
      q::CudaOptions co;
      co.allow_tf32 = args.tf32;
      co.cholesky_qr = chol;
      variants.push_back(
          {chol ? "cuda choleskyqr2" : "cuda householder", q::make_cuda_backend(args.device, co)});
    }
    std::unique_ptr<q::Backend> cpu;
    std::string cpu_desc;
    if (args.cpu) cpu = q::make_backend("cpu", args.threads, &cpu_desc);
    loftqd::bench::Machine machine;  // the CPU baseline's floors (bench/machine.h)
    if (args.cpu)
      loftqd::bench::print_machine(machine = loftqd::bench::measure_machine(args.threads));
    std::printf("LoftQ rank %d, T=%d, nf%d, block 64; CUDA %s; CPU baseline: %s\n", args.rank,
                args.iters, args.bits, args.tf32 ? "TF32 allowed" : "full float32",
                args.cpu ? cpu_desc.c_str() : "skipped");
    q::LoftqOptions o;
    o.rank = args.rank;
    o.iters = args.iters;
    o.quant = q::QuantSpec{q::QuantMethod::NF, args.bits, q::kDefaultBlockSize};
    for (const Shape& sh : args.shapes) {
      const auto t_gen = Clock::now();
      const auto w = weight(sh.out, sh.in, 0x5eed + uint64_t(sh.out) * 31 + uint64_t(sh.in));
      std::printf("\n%s (made in %.1f s)\n", sh.str().c_str(), since(t_gen));
      o.svd = q::SvdMode::Randomized;
      q::LoftqResult rc;
      double t_cpu = 0;
      if (args.cpu) {
        const auto t0 = Clock::now();
        rc = q::loftq(*cpu, w.data(), sh.out, sh.in, o);
        t_cpu = since(t0);
        std::printf("  %-22s %8.3f s                            qlora %.6f  loftq %.6f (iter %d)\n",
                    "cpu randomized:", t_cpu, rc.qlora_error, rc.loftq_error, rc.best_iter);
        std::printf("result: shape=%s cpu_seconds=%.4f\n", sh.str().c_str(), t_cpu);
        const double fl = machine.floor_s(q::loftq_work(o, sh.out, sh.in));
        std::printf("  cpu floor %.3f s (core=%s): %.2fx floor\n", fl, machine.core.c_str(),
                    t_cpu / fl);
      }
      double t_default = 0, t_best = 1e30;
      q::LoftqResult r_default;
      for (auto& v : variants) {
        (void)q::loftq(*v.be, w.data(), sh.out, sh.in, o);  // warm-up: handles, kernels, allocator
        std::vector<double> times;
        q::LoftqResult rg;
        for (int i = 0; i < args.reps; ++i) {
          const auto t0 = Clock::now();
          rg = q::loftq(*v.be, w.data(), sh.out, sh.in, o);
          times.push_back(since(t0));
        }
        std::sort(times.begin(), times.end());
        const double t = times.front();
        std::printf("  %-22s %8.3f s (best of %d, median %.3f)  qlora %.6f  loftq %.6f (iter %d)\n",
                    (v.label + ":").c_str(), t, args.reps, times[times.size() / 2], rg.qlora_error,
                    rg.loftq_error, rg.best_iter);
        if (&v == &variants.front()) t_default = t, r_default = rg;
        t_best = std::min(t_best, t);
        if (args.cpu) {
          const double rel = std::fabs(rg.loftq_error - rc.loftq_error) / rc.loftq_error;
          std::printf("    speed-up over the cpu: %.1fx; loftq error %.4f %% from the cpu's%s\n",
                      t_cpu / t, 100.0 * rel, rel <= 1e-3 ? "" : "  ** more than 0.1 % **");
          if (rel > 1e-3) ok = false;
        }
        if (args.profile) {
          ProfilingBackend prof(*v.be);
          (void)q::loftq(prof, w.data(), sh.out, sh.in, o);
          std::printf("    profile (%s):\n", v.label.c_str());
          prof.report();
        }
      }
      std::printf("result: shape=%s cuda_seconds=%.4f\n", sh.str().c_str(), t_default);
      if (size_t(sh.out) * size_t(sh.in) <= args.exact_max) {
        o.svd = q::SvdMode::Exact;
        const auto t0 = Clock::now();
        const auto re = q::loftq(*variants.front().be, w.data(), sh.out, sh.in, o);
        std::printf(
            "  %-22s %8.3f s                            qlora %.6f  loftq %.6f (iter %d); "
            "randomized is %+.3f %% of exact\n",
            "cuda exact:", since(t0), re.qlora_error, re.loftq_error, re.best_iter,
            100.0 * (r_default.loftq_error / re.loftq_error - 1.0));
        o.svd = q::SvdMode::Randomized;
      }
      if (sh.out == 4096 && sh.in == 4096 && args.rank == 64 && args.iters == 5) {
        const bool met = t_default <= 0.15;
        std::printf("  target 4096x4096 (r=64, T=5) <= 0.15 s on one H100: %s with %s (%.3f s)%s\n",
                    met ? "met" : "MISSED", variants.front().label.c_str(), t_default,
                    !met && t_best <= 0.15 ? "; met with another variant" : "");
        if (!met) ok = false;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: %s\n", e.what());
    return 1;
  }
  return args.check && !ok ? 1 : 0;
}
