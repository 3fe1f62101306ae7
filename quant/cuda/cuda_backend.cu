// The CUDA backend (STYLE §1-3): the same Backend interface as quant/cpu/cpu_backend.cpp, on one
// device. Buffers are row-major float32 in device memory; cuBLAS and cuSOLVER are column-major,
// so a row-major m x n matrix is used as its column-major transpose (n x m, leading dimension n)
// and the formulas below are written for that view.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/cuda/check.cuh"
#include "quant/cuda/kernels.cuh"
#include "quant/cuda/resources.cuh"
#include "quant/cuda_backend.h"
#include "quant/device.h"

namespace loftqd::quant {

namespace cuda {
namespace {

// Largest N for which a tall M x N SVD goes through QR + a Jacobi SVD of the N x N factor
// (randomized mode's projected matrix); larger ones (exact mode) use gesvd directly.
constexpr int kSmallSvd = 512;

class CudaBuffer final : public Buffer {
 public:
  CudaBuffer(std::shared_ptr<Resources> res, size_t n) : Buffer(n), res_(std::move(res)) {
    ptr_ = static_cast<float*>(res_->allocate(std::max<size_t>(n, 1) * sizeof(float), &held_));
  }
  ~CudaBuffer() override { res_->release(ptr_, held_); }
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;
  float* data() const { return ptr_; }
  const Resources* owner() const { return res_.get(); }

 private:
  std::shared_ptr<Resources> res_;
  float* ptr_ = nullptr;
  size_t held_ = 0;
};

// Scratch device memory for one call (cuSOLVER workspaces, transposes), from the cache.
class Scratch {
 public:
  Scratch(Resources& res, size_t floats) : res_(res) {
    ptr_ = static_cast<float*>(res_.allocate(std::max<size_t>(floats, 1) * sizeof(float), &held_));
  }
  ~Scratch() { res_.release(ptr_, held_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* get() const { return ptr_; }

 private:
  Resources& res_;
  float* ptr_ = nullptr;
  size_t held_ = 0;
};

void check_size(const Buffer& b, size_t n, const char* what) {
  if (b.size() < n)
    throw std::logic_error(std::string("cuda backend: buffer too small for ") + what + " (" +
                           std::to_string(b.size()) + " < " + std::to_string(n) + ")");
}

int check_info(Resources& res, const char* call) {
  int info = 0;
  CUDA_CHECK(
      cudaMemcpyAsync(&info, res.dev_info(), sizeof(int), cudaMemcpyDeviceToHost, res.stream()));
  CUDA_CHECK(cudaStreamSynchronize(res.stream()));
  if (info < 0)
    throw std::runtime_error(std::string("cuSOLVER ") + call + ": parameter " +
                             std::to_string(-info) + " is invalid");
  return info;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, const CudaOptions& opt)
      : res_(std::make_shared<Resources>(device, opt)) {}
  ~CudaBackend() override = default;

  std::string name() const override { return "cuda:" + std::to_string(res_->device()); }

  std::unique_ptr<Buffer> alloc(size_t n) override {
    res_->activate();
    return std::make_unique<CudaBuffer>(res_, n);
  }

  void upload(Buffer& dst, const float* src, size_t n) override {
    check_size(dst, n, "upload");
    res_->activate();
    res_->upload(ptr(dst), src, n * sizeof(float));
  }
  void download(float* dst, const Buffer& src, size_t n) override {
    check_size(src, n, "download");
    res_->activate();
    res_->download(dst, ptr(src), n * sizeof(float));
  }
  void copy(const Buffer& src, Buffer& dst, size_t n) override {
    check_size(src, n, "copy");
    check_size(dst, n, "copy");
    res_->activate();
    CUDA_CHECK(cudaMemcpyAsync(ptr(dst), ptr(src), n * sizeof(float), cudaMemcpyDeviceToDevice,
                               res_->stream()));
  }

  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const Buffer& a, const Buffer& b,
            float beta, Buffer& c) override {
    check_size(a, size_t(m) * k, "gemm A");
    check_size(b, size_t(k) * n, "gemm B");
    check_size(c, size_t(m) * n, "gemm C");
    res_->activate();
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    gemm_cm(tb, ta, n, m, k, alpha, ptr(b), tb ? k : n, ptr(a), ta ? m : k, beta, ptr(c), n);
  }

  void sub(const Buffer& a, const Buffer& b, Buffer& out, size_t n) override {
    check_size(a, n, "sub");
    check_size(b, n, "sub");
    check_size(out, n, "sub");
    res_->activate();
    cuda::sub(ptr(a), ptr(b), ptr(out), n, res_->stream());
  }
  double sq_dist(const Buffer& a, const Buffer& b, size_t n) override {
    check_size(a, n, "sq_dist");
    check_size(b, n, "sq_dist");
    return sq_sum(ptr(a), ptr(b), n);
  }
  double sq_norm(const Buffer& a, size_t n) override {
    check_size(a, n, "sq_norm");
    return sq_sum(ptr(a), nullptr, n);
  }
  void quant_dequant(const QuantSpec& spec, const Buffer& in, Buffer& out, size_t n) override {
    check_spec(spec, n);
    check_size(in, n, "quant_dequant");
    check_size(out, n, "quant_dequant");
    res_->activate();
    cuda::quant_dequant(make_quant_params(spec), ptr(in), ptr(out), n / size_t(spec.block_size),
                        res_->stream());
  }

  void orthonormalize(Buffer& a, int m, int k) override {
    if (k > m) throw std::logic_error("orthonormalize: more columns than rows");
    check_size(a, size_t(m) * k, "orthonormalize");
    res_->activate();
    // The row-major m x k matrix is column-major k x m: transpose it into a column-major m x k
    // work matrix, QR it in place (geqrf + orgqr), transpose the thin Q back.
    Scratch work(*res_, size_t(m) * k);
    transpose(ptr(a), k, m, work.get());
    thin_q(work.get(), m, k, nullptr);
    transpose(work.get(), m, k, ptr(a));
  }

  void svd(Buffer& a, int m, int n, Buffer& u, std::vector<float>& s, Buffer& vt) override {
    const int p = std::min(m, n);
    check_size(a, size_t(m) * n, "svd A");
    check_size(u, size_t(m) * p, "svd U");
    check_size(vt, size_t(p) * n, "svd Vt");
    res_->activate();
    Scratch sv(*res_, size_t(p));
    if (n >= m) {
      // Column-major X = A^T (n x m, tall) = U' S V'^T, so A = V' S U'^T: row-major u (m x m) is
      // the column-major storage of V'^T, row-major vt (m x n) that of U'.
      tall_svd(ptr(a), n, m, ptr(vt), sv.get(), ptr(u));
    } else {
      // A is tall: make it column-major (m x n), A = U' S V'^T, then bring U' and V'^T back to
      // row-major.
      Scratch x(*res_, size_t(m) * n), uc(*res_, size_t(m) * n), vtc(*res_, size_t(n) * n);
      transpose(ptr(a), n, m, x.get());
      tall_svd(x.get(), m, n, uc.get(), sv.get(), vtc.get());
      transpose(uc.get(), m, n, ptr(u));
      transpose(vtc.get(), n, n, ptr(vt));
    }
    s.assign(size_t(p), 0.0f);
    CUDA_CHECK(cudaMemcpyAsync(s.data(), sv.get(), size_t(p) * sizeof(float),
                               cudaMemcpyDeviceToHost, res_->stream()));
    res_->synchronize();
  }

  void make_factors(const Buffer& u, int m, int p, const std::vector<float>& s, const Buffer& vt,
                    int n, int r, Buffer& l, Buffer& r_out) override {
    const int valid = std::min({r, p, static_cast<int>(s.size())});
    check_size(u, size_t(m) * p, "make_factors U");
    check_size(vt, size_t(p) * n, "make_factors Vt");
    check_size(l, size_t(m) * r, "make_factors L");
    check_size(r_out, size_t(r) * n, "make_factors R");
    res_->activate();
    std::vector<float> f(size_t(r), 0.0f);
    for (int j = 0; j < valid; ++j) f[size_t(j)] = std::sqrt(s[size_t(j)]);  // as the CPU backend
    Scratch fd(*res_, size_t(r));
    res_->upload(fd.get(), f.data(), f.size() * sizeof(float));
    cuda::make_factors(ptr(u), m, p, fd.get(), ptr(vt), n, r, valid, ptr(l), ptr(r_out),
                       res_->stream());
  }

 private:
  std::shared_ptr<Resources> res_;

  float* ptr(const Buffer& b) const {
    const auto* cb = dynamic_cast<const CudaBuffer*>(&b);
    if (!cb || cb->owner() != res_.get())
      throw std::logic_error("cuda backend: buffer belongs to another backend");
    return cb->data();
  }

  cublasComputeType_t compute_type() const {
    return res_->options().allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  }

  // Column-major C (m x n) = alpha op(A) op(B) + beta C.
  void gemm_cm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
               const float* b, int ldb, float beta, float* c, int ldc) {
    CUBLAS_CHECK(cublasGemmEx(res_->blas(), ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                              tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, a, CUDA_R_32F,
                              std::max(lda, 1), b, CUDA_R_32F, std::max(ldb, 1), &beta, c,
                              CUDA_R_32F, std::max(ldc, 1), compute_type(), CUBLAS_GEMM_DEFAULT));
  }

  // dst (column-major cols x rows) = transpose of src (column-major rows x cols); not in place.
  void transpose(const float* src, int rows, int cols, float* dst) {
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSgeam(res_->blas(), CUBLAS_OP_T, CUBLAS_OP_N, cols, rows, &one, src, rows,
                             &zero, dst, cols, dst, cols));
  }

  // In place: the column-major M x N matrix x (ld M, M >= N) becomes Q of its thin QR. When r is
  // set, it receives R (N x N, column-major, zero below the diagonal).
  void thin_q(float* x, int rows, int cols, float* r) {
    if (res_->options().cholesky_qr && cholesky_qr2(x, rows, cols, r)) return;
    householder_q(x, rows, cols, r);
  }

  void householder_q(float* x, int rows, int cols, float* r) {
    auto h = res_->solver();
    Scratch tau(*res_, size_t(cols));
    int lw_qr = 0, lw_q = 0;
    CUSOLVER_CHECK(cusolverDnSgeqrf_bufferSize(h, rows, cols, x, rows, &lw_qr));
    CUSOLVER_CHECK(cusolverDnSorgqr_bufferSize(h, rows, cols, cols, x, rows, tau.get(), &lw_q));
    const int lwork = std::max({lw_qr, lw_q, 1});
    Scratch work(*res_, size_t(lwork));
    CUSOLVER_CHECK(
        cusolverDnSgeqrf(h, rows, cols, x, rows, tau.get(), work.get(), lwork, res_->dev_info()));
    if (r) upper_triangle(x, rows, cols, r, res_->stream());
    CUSOLVER_CHECK(cusolverDnSorgqr(h, rows, cols, cols, x, rows, tau.get(), work.get(), lwork,
                                    res_->dev_info()));
  }

  // CholeskyQR2: twice { G = x^T x; G = R^T R (potrf); x = x R^-1 (trsm) }, R = R2 R1. The Gram
  // matrix is always formed in full float32, TF32 or not. Returns false, with x restored, when
  // the first pass finds x too ill-conditioned (then Householder takes over).
  bool cholesky_qr2(float* x, int rows, int cols, float* r) {
    auto h = res_->solver();
    const size_t n = size_t(rows) * cols;
    Scratch backup(*res_, n), g(*res_, size_t(cols) * cols), r1(*res_, size_t(cols) * cols);
    CUDA_CHECK(cudaMemcpyAsync(backup.get(), x, n * sizeof(float), cudaMemcpyDeviceToDevice,
                               res_->stream()));
    int lwork = 0;
    CUSOLVER_CHECK(
        cusolverDnSpotrf_bufferSize(h, CUBLAS_FILL_MODE_UPPER, cols, g.get(), cols, &lwork));
    Scratch work(*res_, size_t(std::max(lwork, 1)));
    std::vector<float> diag(static_cast<size_t>(cols));
    const float one = 1.0f, zero = 0.0f;
    for (int pass = 0; pass < 2; ++pass) {
      CUBLAS_CHECK(cublasGemmEx(res_->blas(), CUBLAS_OP_T, CUBLAS_OP_N, cols, cols, rows, &one, x,
                                CUDA_R_32F, rows, x, CUDA_R_32F, rows, &zero, g.get(), CUDA_R_32F,
                                cols, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      CUSOLVER_CHECK(cusolverDnSpotrf(h, CUBLAS_FILL_MODE_UPPER, cols, g.get(), cols, work.get(),
                                      lwork, res_->dev_info()));
      if (pass == 0) {
        // One synchronization: the factorization's status and R's diagonal (a lower bound on
        // its condition number).
        CUDA_CHECK(cudaMemcpy2DAsync(diag.data(), sizeof(float), g.get(),
                                     sizeof(float) * (size_t(cols) + 1), sizeof(float),
                                     size_t(cols), cudaMemcpyDeviceToHost, res_->stream()));
        const int info = check_info(*res_, "potrf");
        float lo = diag.empty() ? 0.0f : std::fabs(diag[0]), hi = lo;
        for (float d : diag) lo = std::min(lo, std::fabs(d)), hi = std::max(hi, std::fabs(d));
        if (info != 0 || !(lo > 0.0f) || !std::isfinite(hi) || hi > 1e3f * lo) {
          CUDA_CHECK(cudaMemcpyAsync(x, backup.get(), n * sizeof(float), cudaMemcpyDeviceToDevice,
                                     res_->stream()));
          return false;
        }
      }
      CUBLAS_CHECK(cublasStrsm(res_->blas(), CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N,
                               CUBLAS_DIAG_NON_UNIT, rows, cols, &one, g.get(), cols, x, rows));
      if (r && pass == 0) upper_triangle(g.get(), cols, cols, r1.get(), res_->stream());
    }
    if (r) {
      // R = R2 R1 (both upper triangular).
      CUBLAS_CHECK(cublasStrmm(res_->blas(), CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N,
                               CUBLAS_DIAG_NON_UNIT, cols, cols, &one, g.get(), cols, r1.get(),
                               cols, r, cols));
    }
    return true;
  }

  // Thin SVD of the column-major M x N matrix x (ld M, M >= N; destroyed): u (M x N), s (N,
  // descending), vt (N x N), all column-major on the device.
  void tall_svd(float* x, int rows, int cols, float* u, float* s, float* vt) {
    auto h = res_->solver();
    if (cols <= kSmallSvd && rows > cols) {
      // x = Q R, R = Ur S Vr^T (Jacobi), so x = (Q Ur) S Vr^T.
      Scratch rr(*res_, size_t(cols) * cols), ur(*res_, size_t(cols) * cols),
          vr(*res_, size_t(cols) * cols);
      thin_q(x, rows, cols, rr.get());
      jacobi_svd(rr.get(), cols, s, ur.get(), vr.get());
      gemm_cm(false, false, rows, cols, cols, 1.0f, x, rows, ur.get(), cols, 0.0f, u, rows);
      transpose(vr.get(), cols, cols, vt);
      return;
    }
    if (rows == cols && cols <= kSmallSvd) {
      Scratch vr(*res_, size_t(cols) * cols);
      jacobi_svd(x, cols, s, u, vr.get());
      transpose(vr.get(), cols, cols, vt);
      return;
    }
    int lwork = 0;
    CUSOLVER_CHECK(cusolverDnSgesvd_bufferSize(h, rows, cols, &lwork));
    Scratch work(*res_, size_t(std::max(lwork, 1))), rwork(*res_, size_t(cols));
    CUSOLVER_CHECK(cusolverDnSgesvd(h, 'S', 'S', rows, cols, x, rows, s, u, rows, vt, cols,
                                    work.get(), lwork, rwork.get(), res_->dev_info()));
    if (check_info(*res_, "gesvd") > 0) throw std::runtime_error("cuSOLVER gesvd did not converge");
  }

  // SVD of the square column-major k x k matrix a (destroyed) by one-sided Jacobi (gesvdj): a =
  // u diag(s) v^T, s descending.
  void jacobi_svd(float* a, int k, float* s, float* u, float* v) {
    auto h = res_->solver();
    int lwork = 0;
    CUSOLVER_CHECK(cusolverDnSgesvdj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, 1, k, k, a, k, s, u, k,
                                                v, k, &lwork, res_->gesvdj_params()));
    Scratch work(*res_, size_t(std::max(lwork, 1)));
    CUSOLVER_CHECK(cusolverDnSgesvdj(h, CUSOLVER_EIG_MODE_VECTOR, 1, k, k, a, k, s, u, k, v, k,
                                     work.get(), lwork, res_->dev_info(), res_->gesvdj_params()));
    // info > 0: the sweep limit was reached before the tolerance; the factors are still usable
    // (their residual is what the last sweep left), so only invalid arguments are errors.
  }

  double sq_sum(const float* a, const float* b, size_t n) {
    if (n == 0) return 0.0;
    res_->activate();
    cuda::sq_sum(a, b, n, res_->dev_partials(), Resources::kMaxPartials, res_->dev_scalar(),
                 res_->stream());
    return res_->read_scalar();
  }
};

}  // namespace
}  // namespace cuda

bool cuda_built() {
  return true;
}

int cuda_device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (why) *why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device is present";
  return n;
}

std::string cuda_device_description(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "";
  }
  char mem[32];
  std::snprintf(mem, sizeof mem, "%.1f GiB",
                static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return std::string(prop.name) + ", " + mem + ", sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor);
}

std::unique_ptr<Backend> make_cuda_backend(int device, const CudaOptions& opt) {
  std::string why;
  const int count = cuda_device_count(&why);
  if (count == 0) throw std::invalid_argument("--device cuda: no CUDA device (" + why + ")");
  if (device < 0 || device >= count)
    throw std::invalid_argument("--device cuda:" + std::to_string(device) +
                                ": no such CUDA device (" + std::to_string(count) +
                                (count == 1 ? " device" : " devices") + " present)");
  return std::make_unique<cuda::CudaBackend>(device, opt);
}

}  // namespace loftqd::quant
