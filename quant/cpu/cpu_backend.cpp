// The reference backend: OpenBLAS sgemm/ssyrk/strmm, LAPACKE spotrf/strtri/sgeqrf/sorgqr/sgesdd
// and, for the exact mode's top triplets, dsyrk/dsyevr in double.
#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "quant/backend.h"
#include "quant/x86.h"

namespace loftqd::quant {

namespace {

// Host memory, left uninitialized: every backend call writes its outputs in full before they
// are read (sgemm with beta = 0 is given a zeroed C, below), so zero-filling a buffer would
// only cost a pass over memory. (Transparent huge pages for the matrix-sized buffers were
// tried: fewer page faults, but slower first touches of 180 MB buffers on the benchmark VM;
// see docs/performance.md.)
//
// Freed arrays go back to the backend's pool and are handed out again: matrix-sized arrays are
// above malloc's mmap threshold, so without it every tensor would map fresh pages and fault
// each one in again (a page-fault storm per tensor).
class BufferPool {
 public:
  struct Array {
    std::unique_ptr<float[]> p;
    size_t capacity = 0;
  };
  // An array of at least n floats: the smallest free one that is not more than twice as large,
  // else a new one.
  Array take(size_t n) {
    std::lock_guard g(mu_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->capacity >= n && it->capacity <= 2 * n &&
          (best == free_.end() || it->capacity < best->capacity))
        best = it;
    if (best == free_.end()) return Array{std::make_unique_for_overwrite<float[]>(n), n};
    Array a = std::move(*best);
    free_.erase(best);
    held_ -= a.capacity;
    return a;
  }
  // Keeps `a` for reuse, dropping the oldest arrays beyond kMaxHeld floats.
  void give(Array a) {
    std::lock_guard g(mu_);
    held_ += a.capacity;
    free_.push_back(std::move(a));
    while (held_ > kMaxHeld && !free_.empty()) {
      held_ -= free_.front().capacity;
      free_.erase(free_.begin());
    }
  }

 private:
  static constexpr size_t kMaxHeld = size_t(1) << 30;  // 4 GiB of float32
  std::mutex mu_;
  std::vector<Array> free_;
  size_t held_ = 0;
};

class CpuBuffer final : public Buffer {
 public:
  CpuBuffer(size_t n, std::shared_ptr<BufferPool> pool)
      : Buffer(n), pool_(std::move(pool)), a_(pool_->take(n)) {}
  ~CpuBuffer() override { pool_->give(std::move(a_)); }
  CpuBuffer(const CpuBuffer&) = delete;
  CpuBuffer& operator=(const CpuBuffer&) = delete;
  float* data() { return a_.p.get(); }
  const float* data() const { return a_.p.get(); }

 private:
  std::shared_ptr<BufferPool> pool_;  // outlives the backend when a buffer does
  BufferPool::Array a_;
};

CpuBuffer& cb(Buffer& b) {
  return static_cast<CpuBuffer&>(b);
}
const CpuBuffer& cb(const Buffer& b) {
  return static_cast<const CpuBuffer&>(b);
}

void check_size(const Buffer& b, size_t n, const char* what) {
  if (b.size() < n)
    throw std::logic_error(std::string("cpu backend: buffer too small for ") + what + " (" +
                           std::to_string(b.size()) + " < " + std::to_string(n) + ")");
}

void lapack_check(lapack_int info, const char* call) {
  if (info != 0)
    throw std::runtime_error(std::string("LAPACKE_") + call + " failed with info " +
                             std::to_string(info));
}

// sum over i < n of f(i)^2 in double, with eight partial sums: one running sum is bound by
// the latency of the add (the sums are over whole weight matrices, once per LoftQ iteration).
template <class F>
double sum_sq(size_t n, F f) {
  double s[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (size_t j = 0; j < 8; ++j) {
      const double d = f(i + j);
      s[j] += d * d;
    }
  double tail = 0.0;
  for (; i < n; ++i) {
    const double d = f(i);
    tail += d * d;
  }
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail;
}

// sum (a - b)^2 in double and out = a - b over n values, on AVX-512 where the CPU has it.
double sq_dist_values(const float* a, const float* b, size_t n) {
#ifdef LOFTQD_X86_KERNELS
  if (x86::have_avx512f()) return x86::sq_dist_avx512(a, b, n);
#endif
  return sum_sq(n, [a, b](size_t i) { return double(a[i]) - double(b[i]); });
}

void sub_values(const float* a, const float* b, float* out, size_t n) {
#ifdef LOFTQD_X86_KERNELS
  if (x86::have_avx512f()) return x86::sub_avx512(a, b, out, n);
#endif
  for (size_t i = 0; i < n; ++i) out[i] = a[i] - b[i];
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : threads_(threads > 0 ? threads : default_threads()) {
    openblas_set_num_threads(threads_);
  }
  std::string name() const override { return "cpu"; }

  std::unique_ptr<Buffer> alloc(size_t n) override { return std::make_unique<CpuBuffer>(n, pool_); }
  void upload(Buffer& dst, const float* src, size_t n) override {
    check_size(dst, n, "upload");
    std::copy(src, src + n, cb(dst).data());
  }
  void download(float* dst, const Buffer& src, size_t n) override {
    check_size(src, n, "download");
    std::copy(cb(src).data(), cb(src).data() + n, dst);
  }
  void copy(const Buffer& src, Buffer& dst, size_t n) override {
    check_size(src, n, "copy");
    check_size(dst, n, "copy");
    std::copy(cb(src).data(), cb(src).data() + n, cb(dst).data());
  }

  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const Buffer& a, const Buffer& b,
            float beta, Buffer& c) override {
    check_size(a, size_t(m) * k, "gemm A");
    check_size(b, size_t(k) * n, "gemm B");
    check_size(c, size_t(m) * n, "gemm C");
    // C is uninitialized memory when it is an output only; make beta = 0 ignore it whatever
    // the BLAS does with 0 * NaN.
    if (beta == 0.0f) std::fill_n(cb(c).data(), size_t(m) * n, 0.0f);
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
                k, alpha, cb(a).data(), ta ? m : k, cb(b).data(), tb ? k : n, beta, cb(c).data(),
                n);
  }

  void sub(const Buffer& a, const Buffer& b, Buffer& out, size_t n) override {
    sub_values(cb(a).data(), cb(b).data(), cb(out).data(), n);
  }
  double sq_dist(const Buffer& a, const Buffer& b, size_t n) override {
    return sq_dist_values(cb(a).data(), cb(b).data(), n);
  }
  double sq_norm(const Buffer& a, size_t n) override {
    const float* pa = cb(a).data();
    return sum_sq(n, [pa](size_t i) { return double(pa[i]); });
  }
  void quant_dequant(const QuantSpec& spec, const Buffer& in, Buffer& out, size_t n) override {
    quant::quant_dequant(spec, cb(in).data(), n, cb(out).data(), threads_);
  }

  // Backend::residual_pass in one pass over tiles of about 1 MiB of rows (a multiple of the
  // quantizer's blocks, so each tile quantizes on its own): x = W - L R for the tile (sgemm into a
  // copy of W's rows), the error, the next Qd and E, while the tile is in cache. Per element that
  // moves 16 bytes to and from memory instead of the separate calls' 44 (copy, the GEMM's update
  // of x, sq_dist, quant_dequant, sub) and never writes x. With more than one thread the
  // separate calls (each threaded) are kept.
  double residual_pass(const Buffer& w, const Buffer& l, const Buffer& r, int m, int n, int rank,
                       const Buffer& qd, Buffer& e, const NextIterate* next) override {
    if (threads_ > 1) return Backend::residual_pass(w, l, r, m, n, rank, qd, e, next);
    const size_t mn = size_t(m) * n;
    check_size(w, mn, "residual_pass W");
    check_size(qd, mn, "residual_pass Qd");
    check_size(l, size_t(m) * rank, "residual_pass L");
    check_size(r, size_t(rank) * n, "residual_pass R");
    check_size(e, mn, "residual_pass E");
    if (next) {
      check_spec(*next->spec, mn);
      check_size(*next->qd, mn, "residual_pass next Qd");
    }
    const size_t bs = next ? size_t(next->spec->block_size) : 1;
    const size_t align = bs / std::gcd(size_t(n), bs);  // rows per whole number of blocks
    size_t rows = std::max<size_t>(1, kTileFloats / size_t(n));
    rows = std::max(align, rows / align * align);
    auto tile = alloc(std::min(rows, size_t(m)) * n);
    float* x = cb(*tile).data();
    const float *pw = cb(w).data(), *pl = cb(l).data(), *pr = cb(r).data(), *pq = cb(qd).data();
    double err = 0.0;
    for (size_t i0 = 0; i0 < size_t(m); i0 += rows) {
      const size_t h = std::min(rows, size_t(m) - i0), cnt = h * size_t(n), at = i0 * size_t(n);
      std::copy_n(pw + at, cnt, x);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(h), n, rank, -1.0f,
                  pl + i0 * size_t(rank), rank, pr, n, 1.0f, x, n);
      err += sq_dist_values(x, pq + at, cnt);
      if (!next) continue;
      float* nq = cb(*next->qd).data() + at;
      quant::quant_dequant(*next->spec, x, cnt, nq, 1);
      sub_values(pw + at, nq, cb(e).data() + at, cnt);
    }
    return err;
  }

  // The thin Q of the row-major m x k matrix a, in place. CholeskyQR2 first: twice { G = A^T A
  // (syrk), G = R^T R (potrf), A = A R^-1 (trtri + trmm) }, passes over the tall, skinny sketch at
  // BLAS-3 speed instead of Householder's column panels (the sketches are m x 80: orthonormalize
  // was 12-14 % of a LoftQ run). Householder takes over when A is too ill-conditioned for it: when
  // a Cholesky factorization breaks down (a rank-deficient or zero A) or the first R's diagonal
  // spreads over more than 1e3 (as the CUDA backend's cholesky_qr option). The first pass leaves
  // A untouched until its check has passed, and after the second A spans the same columns, so
  // the fallback needs no copy.
  void orthonormalize(Buffer& a, int m, int k) override {
    if (k > m) throw std::logic_error("orthonormalize: more columns than rows");
    float* pa = cb(a).data();
    if (cholesky_qr2(pa, m, k)) return;
    std::vector<float> tau(static_cast<size_t>(k));
    lapack_check(LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, m, k, pa, k, tau.data()), "sgeqrf");
    lapack_check(LAPACKE_sorgqr(LAPACK_ROW_MAJOR, m, k, k, pa, k, tau.data()), "sorgqr");
  }

  void svd(Buffer& a, int m, int n, Buffer& u, std::vector<float>& s, Buffer& vt) override {
    const int p = std::min(m, n);
    check_size(u, size_t(m) * p, "svd U");
    check_size(vt, size_t(p) * n, "svd Vt");
    s.assign(static_cast<size_t>(p), 0.0f);
    // The row-major m x n matrix A is the column-major n x m matrix A^T. Its SVD
    // A^T = U' S V'^T gives A = V' S U'^T, and in column-major storage U' (n x p, ld n) is the
    // row-major p x n V^T of A while V'^T (p x m, ld p) is the row-major m x p U of A. So
    // LAPACK runs on the data in place, without the transposed copies of A, U and V^T that
    // LAPACKE's row-major interface would make (2-3x faster on the wide k x n matrices of the
    // randomized SVD, and three fewer matrix-sized buffers for an exact SVD).
    lapack_check(LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', n, m, cb(a).data(), n, s.data(),
                                cb(vt).data(), n, cb(u).data(), p),
                 "sgesdd");
  }

  // The top r triplets from the d x d Gram matrix of the small side, d = min(m, n), in double:
  // view E as X (d x D, D = max(m, n): X = E when m <= n, E^T otherwise), G = X X^T (dsyrk over
  // panels of X converted to double), its top p = min(r, d) eigenpairs G z = l z (dsyevr, MRRR),
  // s = sqrt(l), and the other side X^T z / s (dgemm over the same panels). Squaring the
  // singular values costs nothing at this precision: l's rounding is about (d + D) eps_64 l_max,
  // so every s above ~1e-6 s[0] comes out as accurate as sgesdd's float32 ones, and the rank-r
  // product U S V^T is the projection of E on the top eigenvectors, whatever the spectrum. The
  // values at or below that level are returned as 0 with zero vectors (their share of E is
  // below float32 rounding). Memory: G, the eigenvectors and one panel.
  int svd_top(Buffer& a, int m, int n, int r, std::unique_ptr<Buffer>& u, std::vector<float>& s,
              std::unique_ptr<Buffer>& vt) override {
    check_size(a, size_t(m) * n, "svd_top A");
    if (r <= 0) throw std::logic_error("svd_top: rank must be > 0");
    const bool wide = m <= n;
    const int d = std::min(m, n), big = std::max(m, n), p = std::min(r, d);
    const float* pa = cb(a).data();
    // Panels of X's columns c0 .. c0 + w: wide, E[:, c0:c0+w] as d x w; tall, E[c0:c0+w, :] as
    // w x d (X's panel transposed, so the BLAS calls below take it with Trans).
    const int pw = std::max(64, int((size_t(1) << 19) / size_t(d)));  // ~4 MB of doubles
    std::vector<double> panel;
    auto load = [&](int c0, int w) {
      panel.resize(size_t(d) * w);
      if (wide) {
        for (int i = 0; i < d; ++i)
          std::copy_n(pa + size_t(i) * n + c0, w, panel.data() + size_t(i) * w);
      } else {
        std::copy_n(pa + size_t(c0) * n, size_t(w) * d, panel.data());
      }
    };
    std::vector<double> g(size_t(d) * d, 0.0);
    for (int c0 = 0; c0 < big; c0 += pw) {
      const int w = std::min(pw, big - c0);
      load(c0, w);
      cblas_dsyrk(CblasRowMajor, CblasUpper, wide ? CblasNoTrans : CblasTrans, d, w, 1.0,
                  panel.data(), wide ? w : d, c0 == 0 ? 0.0 : 1.0, g.data(), d);
    }
    std::vector<double> lam(static_cast<size_t>(d)), z(size_t(d) * p);
    std::vector<lapack_int> support(2 * static_cast<size_t>(d));
    lapack_int found = 0;
    lapack_check(LAPACKE_dsyevr(LAPACK_ROW_MAJOR, 'V', 'I', 'U', d, g.data(), d, 0.0, 0.0,
                                d - p + 1, d, 0.0, &found, lam.data(), z.data(), p, support.data()),
                 "dsyevr");
    if (found != p)
      throw std::runtime_error("LAPACKE_dsyevr found " + std::to_string(found) + " of " +
                               std::to_string(p) + " eigenpairs");
    // Ascending -> descending; zero below the Gram's rounding level.
    const double top = std::max(lam[size_t(p) - 1], 0.0);
    const double floor = top * 64.0 * double(d + big) * std::numeric_limits<double>::epsilon();
    std::vector<double> inv(static_cast<size_t>(p));  // 1 / s, 0 for a zeroed value
    std::vector<double> zs(size_t(d) * p);            // the small side's vectors, descending
    s.resize(static_cast<size_t>(p));
    for (int j = 0; j < p; ++j) {
      const double l = lam[size_t(p - 1 - j)];
      const bool keep = l > floor && l > 0.0;
      const double sj = keep ? std::sqrt(l) : 0.0;
      s[size_t(j)] = static_cast<float>(sj);
      inv[size_t(j)] = keep ? 1.0 / sj : 0.0;
      for (int i = 0; i < d; ++i)
        zs[size_t(i) * p + j] = keep ? z[size_t(i) * p + (p - 1 - j)] : 0.0;
    }
    u = alloc(size_t(m) * p);
    vt = alloc(size_t(p) * n);
    float* small_side = cb(wide ? *u : *vt).data();  // u is m x p; vt is p x n = zs^T
    float* big_side = cb(wide ? *vt : *u).data();
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < p; ++j) {
        const float v = static_cast<float>(zs[size_t(i) * p + j]);
        if (wide)
          small_side[size_t(i) * p + j] = v;
        else
          small_side[size_t(j) * n + i] = v;
      }
    // The big side, panel by panel: wide, vt[:, c0:c0+w] = S^-1 zs^T E[:, c0:c0+w] (p x w);
    // tall, u[c0:c0+w, :] = E[c0:c0+w, :] zs S^-1 (w x p).
    std::vector<double> out;
    for (int c0 = 0; c0 < big; c0 += pw) {
      const int w = std::min(pw, big - c0);
      load(c0, w);
      out.resize(size_t(p) * w);
      if (wide) {
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, p, w, d, 1.0, zs.data(), p,
                    panel.data(), w, 0.0, out.data(), w);
        for (int j = 0; j < p; ++j)
          for (int c = 0; c < w; ++c)
            big_side[size_t(j) * n + c0 + c] =
                static_cast<float>(out[size_t(j) * w + c] * inv[size_t(j)]);
      } else {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, w, p, d, 1.0, panel.data(), d,
                    zs.data(), p, 0.0, out.data(), p);
        for (int c = 0; c < w; ++c)
          for (int j = 0; j < p; ++j)
            big_side[size_t(c0 + c) * p + j] =
                static_cast<float>(out[size_t(c) * p + j] * inv[size_t(j)]);
      }
    }
    return p;
  }

  void make_factors(const Buffer& u, int m, int p, const std::vector<float>& s, const Buffer& vt,
                    int n, int r, Buffer& l, Buffer& r_out) override {
    const int valid = std::min(r, p);
    const float* pu = cb(u).data();
    const float* pv = cb(vt).data();
    float* pl = cb(l).data();
    float* pr = cb(r_out).data();
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < r; ++j)
        pl[size_t(i) * r + j] = j < valid ? pu[size_t(i) * p + j] * std::sqrt(s[size_t(j)]) : 0.0f;
    for (int j = 0; j < r; ++j) {
      const float f = j < valid ? std::sqrt(s[size_t(j)]) : 0.0f;
      for (int c = 0; c < n; ++c)
        pr[size_t(j) * n + c] = j < valid ? f * pv[size_t(j) * n + c] : 0.0f;
    }
  }

 private:
  bool cholesky_qr2(float* pa, int m, int k) {
    std::vector<float> g(size_t(k) * k, 0.0f);
    for (int pass = 0; pass < 2; ++pass) {
      cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, k, m, 1.0f, pa, k, 0.0f, g.data(), k);
      if (LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'U', k, g.data(), k) != 0) return false;
      if (pass == 0) {
        float lo = std::fabs(g[0]), hi = lo;
        for (int i = 0; i < k; ++i) {
          const float d = std::fabs(g[size_t(i) * k + i]);
          lo = std::min(lo, d), hi = std::max(hi, d);
        }
        if (!(lo > 0.0f) || !std::isfinite(hi) || hi > 1e3f * lo) return false;
      }
      // A = A R^-1 as R^-1 (strtri, k x k) then a triangular multiply: OpenBLAS's strsm of a
      // 5632 x 80 sketch takes 2.35 ms here, strtri + strmm 0.49 ms. The products' rounding is
      // cond(R) eps like the solve's, and the second pass restores the orthogonality either way.
      if (LAPACKE_strtri(LAPACK_ROW_MAJOR, 'U', 'N', k, g.data(), k) != 0) return false;
      cblas_strmm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, m, k, 1.0f,
                  g.data(), k, pa, k);
    }
    return true;
  }

  static constexpr size_t kTileFloats = size_t(1) << 18;  // residual_pass's tiles: 1 MiB

  static int default_threads() {
    const unsigned hc = std::thread::hardware_concurrency();
    return hc == 0 ? 1 : static_cast<int>(hc);
  }
  int threads_;
  std::shared_ptr<BufferPool> pool_ = std::make_shared<BufferPool>();
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  return std::make_unique<CpuBackend>(threads);
}

}  // namespace loftqd::quant
