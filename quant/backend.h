// The compute interface LoftQ is written against (STYLE §1): the CPU backend (OpenBLAS +
// LAPACKE) is the reference; the CUDA backend mirrors it. Matrices are row-major float32 and
// live in backend-owned buffers (host memory on the CPU, device memory on a GPU).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "quant/quantizer.h"

namespace loftqd::quant {

class Buffer {
 public:
  virtual ~Buffer() = default;
  size_t size() const { return n_; }

 protected:
  explicit Buffer(size_t n) : n_(n) {}
  size_t n_;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  virtual std::unique_ptr<Buffer> alloc(size_t n) = 0;
  virtual void upload(Buffer& dst, const float* src, size_t n) = 0;
  virtual void download(float* dst, const Buffer& src, size_t n) = 0;
  virtual void copy(const Buffer& src, Buffer& dst, size_t n) = 0;

  // C (m x n) = alpha * op(A) * op(B) + beta * C, op(X) = X^T when the flag is set.
  virtual void gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const Buffer& a,
                    const Buffer& b, float beta, Buffer& c) = 0;
  // out = a - b, elementwise over n values.
  virtual void sub(const Buffer& a, const Buffer& b, Buffer& out, size_t n) = 0;
  // sum (a - b)^2 over n values, accumulated in double.
  virtual double sq_dist(const Buffer& a, const Buffer& b, size_t n) = 0;
  virtual double sq_norm(const Buffer& a, size_t n) = 0;
  // out = dequantize(quantize(in)) blockwise with spec (DESIGN §4).
  virtual void quant_dequant(const QuantSpec& spec, const Buffer& in, Buffer& out, size_t n) = 0;

  // Replaces the m x k matrix a (k <= m) by an orthonormal basis of its column space (thin QR).
  virtual void orthonormalize(Buffer& a, int m, int k) = 0;
  // Thin SVD of the m x n matrix a (destroyed): u (m x p), s (p, descending), vt (p x n),
  // p = min(m, n).
  virtual void svd(Buffer& a, int m, int n, Buffer& u, std::vector<float>& s, Buffer& vt) = 0;
  // One LoftQ iterate's pass over the m x n weight w, with x = w - l r (l: m x rank, r: rank x
  // n): returns sum (x - qd)^2 in double (the iterate's error). e is the iterate's E, already
  // consumed by the SVD, and is overwritten. With `next`, the pass also starts the next
  // iterate: next->qd = quant_dequant(*next->spec, x) and e = w - next->qd. The default runs
  // copy, gemm, sq_dist, quant_dequant and sub with x in e (no other buffer); the CPU backend
  // makes it one pass over row tiles of x that stay in cache, x never stored.
  struct NextIterate {
    const QuantSpec* spec;
    Buffer* qd;
  };
  virtual double residual_pass(const Buffer& w, const Buffer& l, const Buffer& r, int m, int n,
                               int rank, const Buffer& qd, Buffer& e, const NextIterate* next);
  // The largest r singular triplets of the m x n matrix a (destroyed), for the exact mode of
  // the LoftQ loop: u (m x p), s (p, descending), vt (p x n), with min(r, min(m, n)) <= p <=
  // min(m, n) the returned count; u and vt are allocated here. Singular values below what the
  // method resolves (relative to s[0]) may come back as 0 with zero vectors. The default is the
  // full thin svd(); the CPU backend solves the small Gram matrix's eigenproblem in double.
  virtual int svd_top(Buffer& a, int m, int n, int r, std::unique_ptr<Buffer>& u,
                      std::vector<float>& s, std::unique_ptr<Buffer>& vt);
  // l (m x r) = u[:, :r] * diag(sqrt(s[:r])), r_out (r x n) = diag(sqrt(s[:r])) * vt[:r, :],
  // where u is m x p and vt is p x n. Columns/rows at or past `valid` (<= r) are zero.
  virtual void make_factors(const Buffer& u, int m, int p, const std::vector<float>& s,
                            const Buffer& vt, int n, int r, Buffer& l, Buffer& r_out) = 0;
};

// OpenBLAS/LAPACKE backend. `threads` sets the BLAS and quantizer threads (0 = all cores).
std::unique_ptr<Backend> make_cpu_backend(int threads = 0);

// `n` CPU backends of one thread each, for computing n matrices at once, one per thread (the
// BLAS runs on the calling thread). The BLAS thread count is process-wide: it is 1 while any
// CpuWorkers lives, and back to what it was when the last one goes.
class CpuWorkers {
 public:
  explicit CpuWorkers(int n);
  ~CpuWorkers();
  CpuWorkers(const CpuWorkers&) = delete;
  CpuWorkers& operator=(const CpuWorkers&) = delete;
  std::vector<Backend*> backends() const;

 private:
  std::vector<std::unique_ptr<Backend>> backends_;
};

// How many matrices to compute at once on the CPU: `requested` (0 = one per core), and no more
// than `available_bytes` / `bytes_per_job` (at least 1).
int cpu_jobs(int requested, size_t bytes_per_job, size_t available_bytes);

}  // namespace loftqd::quant
