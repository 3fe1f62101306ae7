#include "quant/loftq.h"

#include "common/stopwatch.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <stdexcept>

namespace loftqd::quant {

SvdMode parse_svd_mode(const std::string& s) {
  if (s == "exact") return SvdMode::Exact;
  if (s == "randomized") return SvdMode::Randomized;
  throw std::invalid_argument("unknown SVD mode '" + s + "' (expected exact or randomized)");
}

std::string svd_mode_name(SvdMode m) {
  return m == SvdMode::Exact ? "exact" : "randomized";
}

namespace {

SvdMode svd_mode_at_rank(const LoftqOptions& opt, int r, int m, int n) {
  if (opt.svd == SvdMode::Exact) return SvdMode::Exact;
  const long long p = std::min(m, n);
  const bool no_sketch = r + (long long)std::max(opt.oversample, 0) >= p;
  const bool cheap = p <= kExactMaxDim || (long long)kExactRankFraction * r >= p;
  return no_sketch || (opt.exact_where_cheap && cheap) ? SvdMode::Exact : SvdMode::Randomized;
}

}  // namespace

SvdMode svd_mode_for(const LoftqOptions& opt, int m, int n) {
  return svd_mode_at_rank(opt, opt.rank, m, n);
}

namespace {

// splitmix64 + Box-Muller: a portable, seeded Gaussian test matrix.
std::vector<float> gaussian(size_t n, uint64_t seed) {
  std::vector<float> out(n);
  uint64_t s = seed;
  auto next = [&s] {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  for (size_t i = 0; i < n; i += 2) {
    const double u1 = (double(next() >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = double(next() >> 11) * 0x1.0p-53;
    const double rad = std::sqrt(-2.0 * std::log(u1));
    out[i] = static_cast<float>(rad * std::cos(2.0 * std::numbers::pi * u2));
    if (i + 1 < n) out[i + 1] = static_cast<float>(rad * std::sin(2.0 * std::numbers::pi * u2));
  }
  return out;
}

}  // namespace

void truncated_svd(Backend& be, Buffer& e, int m, int n, int r, const LoftqOptions& opt,
                   SvdState& state, Buffer& l, Buffer& r_out) {
  const int p = std::min(m, n);
  const int k = std::min(r + std::max(opt.oversample, 0), p);
  if (svd_mode_at_rank(opt, r, m, n) == SvdMode::Exact) {
    std::unique_ptr<Buffer> u, vt;
    std::vector<float> s;
    const int got = be.svd_top(e, m, n, r, u, s, vt);
    be.make_factors(*u, m, got, s, *vt, n, r, l, r_out);
    return;
  }
  // Halko-Martinsson-Tropp with re-orthonormalized power iterations, warm-started from the
  // previous LoftQ iteration's right singular vectors.
  auto y = be.alloc(size_t(m) * k);
  auto z = be.alloc(size_t(n) * k);
  int q = opt.power_iters;
  if (state.vt && state.k == k) {
    be.gemm(false, true, m, k, n, 1.0f, e, *state.vt, 0.0f, *y);  // Y = E V
    q = opt.warm_power_iters;
  } else {
    auto omega = be.alloc(size_t(n) * k);
    const auto g = gaussian(size_t(n) * k, opt.seed);
    be.upload(*omega, g.data(), g.size());
    be.gemm(false, false, m, k, n, 1.0f, e, *omega, 0.0f, *y);  // Y = E Omega
  }
  be.orthonormalize(*y, m, k);
  for (int i = 0; i < q; ++i) {
    be.gemm(true, false, n, k, m, 1.0f, e, *y, 0.0f, *z);  // Z = E^T Y
    be.orthonormalize(*z, n, k);
    be.gemm(false, false, m, k, n, 1.0f, e, *z, 0.0f, *y);  // Y = E Z
    be.orthonormalize(*y, m, k);
  }
  auto bmat = be.alloc(size_t(k) * n);
  be.gemm(true, false, k, n, m, 1.0f, *y, e, 0.0f, *bmat);  // B = Y^T E  (k x n)
  auto ub = be.alloc(size_t(k) * k);
  auto vt = be.alloc(size_t(k) * n);
  std::vector<float> s;
  be.svd(*bmat, k, n, *ub, s, *vt);
  auto u = be.alloc(size_t(m) * k);
  be.gemm(false, false, m, k, k, 1.0f, *y, *ub, 0.0f, *u);  // U = Y Ub
  be.make_factors(*u, m, k, s, *vt, n, r, l, r_out);
  state.vt = std::move(vt);
  state.k = k;
}

std::vector<float> transposed(const std::vector<float>& x, size_t rows, size_t cols) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < rows; ++i)
    for (size_t j = 0; j < cols; ++j) y[j * rows + i] = x[i * cols + j];
  return y;
}

LoftqResult loftq(Backend& be, const float* w, int out_features, int in_features,
                  const LoftqOptions& opt) {
  const common::Stopwatch took;
  if (out_features <= 0 || in_features <= 0) throw std::invalid_argument("empty weight matrix");
  if (opt.rank <= 0) throw std::invalid_argument("rank must be > 0");
  if (opt.iters < 1) throw std::invalid_argument("iters must be >= 1");
  const int m = out_features, n = in_features, r = opt.rank;
  const size_t mn = size_t(m) * n;
  check_spec(opt.quant, mn);
  for (size_t i = 0; i < mn; ++i)
    if (!std::isfinite(w[i]))
      throw std::invalid_argument("weight has a non-finite value at element " + std::to_string(i));

  // W, the current iterate's Qd and E = W - Qd, the next iterate's Qd (computed in the same pass
  // as the current error, see Backend::residual_pass) and the best iterate so far.
  auto wb = be.alloc(mn), qd = be.alloc(mn), e = be.alloc(mn);
  auto l = be.alloc(size_t(m) * r), rr = be.alloc(size_t(r) * n);
  std::unique_ptr<Buffer> qd_next, best_q, best_l, best_r;
  be.upload(*wb, w, mn);
  const double w2 = be.sq_norm(*wb, mn);
  const double wn = w2 > 0 ? std::sqrt(w2) : 1.0;

  LoftqResult out;
  out.out_features = m;
  out.in_features = n;
  out.rank = r;
  out.svd = svd_mode_for(opt, m, n);
  double best = std::numeric_limits<double>::infinity();
  SvdState state;
  be.quant_dequant(opt.quant, *wb, *qd, mn);  // the first iterate starts from W itself
  be.sub(*wb, *qd, *e, mn);
  out.qlora_error = std::sqrt(be.sq_norm(*e, mn)) / wn;
  for (int t = 1; t <= opt.iters; ++t) {
    truncated_svd(be, *e, m, n, r, opt, state, *l, *rr);
    // The error of this iterate, ||W - L R - Qd||, and (but after the last) the next one's
    // Qd = dequant(quant(W - L R)) and E = W - Qd.
    const bool more = t < opt.iters;
    if (more && !qd_next) qd_next = be.alloc(mn);
    const Backend::NextIterate next{&opt.quant, qd_next.get()};
    const double err =
        std::sqrt(be.residual_pass(*wb, *l, *rr, m, n, r, *qd, *e, more ? &next : nullptr)) / wn;
    out.iter_errors.push_back(err);
    if (err < best) {  // keep the best iterate: swap it out of the working buffers
      best = err;
      out.best_iter = t;
      if (!best_q)
        best_q = be.alloc(mn), best_l = be.alloc(size_t(m) * r), best_r = be.alloc(size_t(r) * n);
      std::swap(best_q, qd);
      std::swap(best_l, l);
      std::swap(best_r, rr);
    }
    if (more) std::swap(qd, qd_next);
  }
  out.loftq_error = best;
  out.q.resize(mn);
  out.a.resize(size_t(r) * n);
  out.b.resize(size_t(m) * r);
  be.download(out.q.data(), *best_q, mn);
  be.download(out.a.data(), *best_r, size_t(r) * n);
  be.download(out.b.data(), *best_l, size_t(m) * r);
  out.seconds = took.seconds();
  return out;
}

}  // namespace loftqd::quant
