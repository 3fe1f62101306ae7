// The reference backend: OpenBLAS sgemm, LAPACKE sgeqrf/sorgqr/sgesdd.
#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <thread>

#include "quant/backend.h"

namespace loftqd::quant {

namespace {

class CpuBuffer final : public Buffer {
 public:
  explicit CpuBuffer(size_t n) : Buffer(n), v(n) {}
  std::vector<float> v;
};

CpuBuffer& cb(Buffer& b) { return static_cast<CpuBuffer&>(b); }
const CpuBuffer& cb(const Buffer& b) { return static_cast<const CpuBuffer&>(b); }

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

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : threads_(threads > 0 ? threads : default_threads()) {
    openblas_set_num_threads(threads_);
  }
  std::string name() const override { return "cpu"; }

  std::unique_ptr<Buffer> alloc(size_t n) override { return std::make_unique<CpuBuffer>(n); }
  void upload(Buffer& dst, const float* src, size_t n) override {
    check_size(dst, n, "upload");
    std::copy(src, src + n, cb(dst).v.data());
  }
  void download(float* dst, const Buffer& src, size_t n) override {
    check_size(src, n, "download");
    std::copy(cb(src).v.data(), cb(src).v.data() + n, dst);
  }
  void copy(const Buffer& src, Buffer& dst, size_t n) override {
    check_size(src, n, "copy");
    check_size(dst, n, "copy");
    std::copy(cb(src).v.data(), cb(src).v.data() + n, cb(dst).v.data());
  }

  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const Buffer& a, const Buffer& b,
            float beta, Buffer& c) override {
    check_size(a, size_t(m) * k, "gemm A");
    check_size(b, size_t(k) * n, "gemm B");
    check_size(c, size_t(m) * n, "gemm C");
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m,
                n, k, alpha, cb(a).v.data(), ta ? m : k, cb(b).v.data(), tb ? k : n, beta,
                cb(c).v.data(), n);
  }

  void sub(const Buffer& a, const Buffer& b, Buffer& out, size_t n) override {
    const float* pa = cb(a).v.data();
    const float* pb = cb(b).v.data();
    float* po = cb(out).v.data();
    for (size_t i = 0; i < n; ++i) po[i] = pa[i] - pb[i];
  }
  double sq_dist(const Buffer& a, const Buffer& b, size_t n) override {
    const float* pa = cb(a).v.data();
    const float* pb = cb(b).v.data();
    double s = 0.0;
    for (size_t i = 0; i < n; ++i) {
      const double d = double(pa[i]) - double(pb[i]);
      s += d * d;
    }
    return s;
  }
  double sq_norm(const Buffer& a, size_t n) override {
    const float* pa = cb(a).v.data();
    double s = 0.0;
    for (size_t i = 0; i < n; ++i) s += double(pa[i]) * double(pa[i]);
    return s;
  }
  void quant_dequant(const QuantSpec& spec, const Buffer& in, Buffer& out, size_t n) override {
    quant::quant_dequant(spec, cb(in).v.data(), n, cb(out).v.data(), threads_);
  }

  void orthonormalize(Buffer& a, int m, int k) override {
    if (k > m) throw std::logic_error("orthonormalize: more columns than rows");
    std::vector<float> tau(static_cast<size_t>(k));
    float* pa = cb(a).v.data();
    lapack_check(LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, m, k, pa, k, tau.data()), "sgeqrf");
    lapack_check(LAPACKE_sorgqr(LAPACK_ROW_MAJOR, m, k, k, pa, k, tau.data()), "sorgqr");
  }

  void svd(Buffer& a, int m, int n, Buffer& u, std::vector<float>& s, Buffer& vt) override {
    const int p = std::min(m, n);
    check_size(u, size_t(m) * p, "svd U");
    check_size(vt, size_t(p) * n, "svd Vt");
    s.assign(static_cast<size_t>(p), 0.0f);
    lapack_check(LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', m, n, cb(a).v.data(), n, s.data(),
                                cb(u).v.data(), p, cb(vt).v.data(), n),
                 "sgesdd");
  }

  void make_factors(const Buffer& u, int m, int p, const std::vector<float>& s, const Buffer& vt,
                    int n, int r, Buffer& l, Buffer& r_out) override {
    const int valid = std::min(r, p);
    const float* pu = cb(u).v.data();
    const float* pv = cb(vt).v.data();
    float* pl = cb(l).v.data();
    float* pr = cb(r_out).v.data();
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < r; ++j)
        pl[size_t(i) * r + j] = j < valid ? pu[size_t(i) * p + j] * std::sqrt(s[size_t(j)]) : 0.0f;
    for (int j = 0; j < r; ++j) {
      const float f = j < valid ? std::sqrt(s[size_t(j)]) : 0.0f;
      for (int c = 0; c < n; ++c) pr[size_t(j) * n + c] = j < valid ? f * pv[size_t(j) * n + c] : 0.0f;
    }
  }

 private:
  static int default_threads() {
    const unsigned hc = std::thread::hardware_concurrency();
    return hc == 0 ? 1 : static_cast<int>(hc);
  }
  int threads_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace loftqd::quant
