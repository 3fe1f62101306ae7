// The CUDA backend against the CPU reference (STYLE §7). These tests need a CUDA build and a
// device, and skip otherwise; the device choice (--device) is tests/quant/test_device.cpp.
#include <gtest/gtest.h>
#include <lapacke.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/cuda_backend.h"
#include "quant/device.h"
#include "quant/loftq.h"
#include "support/matrices.h"
#include "support/test_util.h"

using namespace loftqd::quant;

namespace {

using loftqd::testing::error_of;

// Named tolerances (CUDA vs CPU).
constexpr double kGemmRelTol = 1e-5;        // float32 GEMM, different summation order
constexpr double kSingularRelTol = 2e-4;    // float32 SVDs by different algorithms
constexpr double kLoftqErrorRelTol = 1e-3;  // the 0.1 %
constexpr double kSubspaceCos2 = 0.999;     // mean cos^2 of the principal angles
// LoftQ's factors on the two backends: float sums in another order move Q's codes near the
// thresholds at T > 1, and directions whose singular values nearly tie rotate within their
// span. On an H200 (2026-11-28) one of the 16 cases gave 0.9982-0.9986 while its LoftQ error
// agreed to 0.0006 % (the error itself is held to kLoftqErrorRelTol).
constexpr double kLoftqSubspaceCos2 = 0.995;
constexpr double kSumRelTol = 1e-10;         // double sums of floats in another order
constexpr double kSvdVectorCos2 = 1 - 1e-4;  // leading singular subspaces, float32 SVDs

#ifdef LOFTQD_HAVE_CUDA
#define REQUIRE_CUDA_DEVICE()                                                             \
  do {                                                                                    \
    std::string why_;                                                                     \
    if (cuda_device_count(&why_) == 0) GTEST_SKIP() << "no CUDA device (" << why_ << ")"; \
  } while (0)
#else
#define REQUIRE_CUDA_DEVICE() GTEST_SKIP() << "loftqd was built without CUDA"
#endif

using loftqd::testing::gaussian;
using loftqd::testing::structured_matrix;

// Blocks that probe the decision rules: an all-zero block, blocks whose values sit exactly on
// NF4 thresholds and on midpoints of the NF2/NF3/uniform tables (scale 1), a constant block.
std::vector<float> edge_blocks(const QuantSpec& s) {
  const size_t bs = static_cast<size_t>(s.block_size);
  std::vector<float> v(bs * 4, 0.0f);
  float* b1 = v.data() + bs;  // thresholds with absmax 1
  b1[0] = 1.0f;
  for (size_t i = 1; i < bs; ++i) b1[i] = kNF4Thresholds[(i - 1) % 15] * (i % 2 ? 1.0f : -1.0f);
  const auto table = code_table(s.method, s.bits);
  float* b2 = v.data() + 2 * bs;  // table midpoints with absmax 1
  b2[0] = -1.0f;
  for (size_t i = 1; i < bs; ++i) {
    const size_t k = (i - 1) % (table.size() - 1);
    b2[i] = (table[k] + table[k + 1]) / 2.0f;
  }
  float* b3 = v.data() + 3 * bs;
  for (size_t i = 0; i < bs; ++i) b3[i] = 0.25f;
  return v;
}

std::vector<float> run_quant(Backend& be, const QuantSpec& s, const std::vector<float>& x) {
  auto in = be.alloc(x.size()), out = be.alloc(x.size());
  be.upload(*in, x.data(), x.size());
  be.quant_dequant(s, *in, *out, x.size());
  std::vector<float> y(x.size());
  be.download(y.data(), *out, y.size());
  return y;
}

// Orthonormal basis (m x k, row-major) of the columns of a (m x k), in double.
std::vector<double> col_basis(const std::vector<float>& a, int m, int k) {
  std::vector<double> q(a.begin(), a.end());
  std::vector<double> tau(static_cast<size_t>(k));
  EXPECT_EQ(LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, m, k, q.data(), k, tau.data()), 0);
  EXPECT_EQ(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, m, k, k, q.data(), k, tau.data()), 0);
  return q;
}

// Mean cos^2 of the principal angles between the column spaces of a and b (both m x k):
// ||Qa^T Qb||_F^2 / k, 1 for the same subspace.
double subspace_cos2(const std::vector<float>& a, const std::vector<float>& b, int m, int k) {
  const auto qa = col_basis(a, m, k), qb = col_basis(b, m, k);
  double f = 0;
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) {
      double d = 0;
      for (int r = 0; r < m; ++r) d += qa[size_t(r) * k + i] * qb[size_t(r) * k + j];
      f += d * d;
    }
  return f / k;
}

std::vector<float> transpose(const std::vector<float>& a, int m, int n) {
  std::vector<float> t(a.size());
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) t[size_t(j) * m + i] = a[size_t(i) * n + j];
  return t;
}

LoftqOptions opts(int bits, int iters, SvdMode mode, int rank) {
  LoftqOptions o;
  o.rank = rank;
  o.iters = iters;
  o.quant = QuantSpec{QuantMethod::NF, bits, 64};
  o.svd = mode;
  o.exact_where_cheap = false;  // randomized: the sketch itself on these small shapes
  return o;
}

}  // namespace

// ---- CUDA vs CPU, on a device ----

TEST(CudaQuant, CodesMatchTheCpuBitForBit) {
  REQUIRE_CUDA_DEVICE();
  auto gpu = make_cuda_backend(0);
  auto cpu = make_cpu_backend(1);
  const std::vector<QuantSpec> specs = {
      {QuantMethod::NF, 4, 64},      {QuantMethod::NF, 2, 64},      {QuantMethod::NF, 3, 64},
      {QuantMethod::NF, 4, 128},     {QuantMethod::NF, 2, 32},      {QuantMethod::NF, 4, 48},
      {QuantMethod::Uniform, 2, 64}, {QuantMethod::Uniform, 4, 64}, {QuantMethod::Uniform, 8, 64},
  };
  for (const auto& s : specs) {
    auto x = edge_blocks(s);
    const auto g = gaussian(size_t(s.block_size) * 4099, 7, 0.02f);
    x.insert(x.end(), g.begin(), g.end());
    const auto want = run_quant(*cpu, s, x);
    const auto got = run_quant(*gpu, s, x);
    ASSERT_EQ(got.size(), want.size());
    size_t diff = 0, first = 0;
    for (size_t i = 0; i < got.size(); ++i)
      if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0 && diff++ == 0) first = i;
    EXPECT_EQ(diff, 0u) << spec_name(s) << " block " << s.block_size << ": first difference at "
                        << first << " (x " << x[first] << ": cpu " << want[first] << ", cuda "
                        << got[first] << ")";
    // The codes: every output is table[code(x)] * scale with the CPU's quantize().
    std::vector<uint8_t> codes(x.size());
    std::vector<float> scales(x.size() / size_t(s.block_size)), deq(x.size());
    quantize(s, x.data(), x.size(), codes.data(), scales.data());
    dequantize(s, codes.data(), scales.data(), x.size(), deq.data());
    EXPECT_EQ(got, deq) << spec_name(s);
  }
}

TEST(CudaBackend, ElementwiseAndNormsMatchTheCpu) {
  REQUIRE_CUDA_DEVICE();
  auto gpu = make_cuda_backend(0);
  for (size_t n : {size_t(1), size_t(3), size_t(1000), size_t(1) << 20, (size_t(1) << 20) + 3}) {
    const auto a = gaussian(n, 1), b = gaussian(n, 2);
    auto da = gpu->alloc(n), db = gpu->alloc(n), dc = gpu->alloc(n);
    gpu->upload(*da, a.data(), n);
    gpu->upload(*db, b.data(), n);
    gpu->sub(*da, *db, *dc, n);
    std::vector<float> c(n);
    gpu->download(c.data(), *dc, n);
    double d2 = 0, a2 = 0;
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(c[i], a[i] - b[i]) << i;
      d2 += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
      a2 += double(a[i]) * a[i];
    }
    EXPECT_NEAR(gpu->sq_dist(*da, *db, n), d2, kSumRelTol * d2) << n;
    EXPECT_NEAR(gpu->sq_norm(*da, n), a2, kSumRelTol * a2) << n;
    gpu->copy(*da, *dc, n);
    gpu->download(c.data(), *dc, n);
    EXPECT_EQ(c, a);
  }
}

TEST(CudaBackend, GemmMatchesTheCpuForEveryTranspose) {
  REQUIRE_CUDA_DEVICE();
  auto gpu = make_cuda_backend(0);
  auto cpu = make_cpu_backend(1);
  const int m = 70, n = 45, k = 33;
  const auto a = gaussian(size_t(m) * k, 3), b = gaussian(size_t(k) * n, 4),
             c0 = gaussian(size_t(m) * n, 5);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      std::vector<float> out[2];
      Backend* bes[2] = {cpu.get(), gpu.get()};
      for (int i = 0; i < 2; ++i) {
        auto da = bes[i]->alloc(a.size()), db = bes[i]->alloc(b.size()),
             dc = bes[i]->alloc(c0.size());
        bes[i]->upload(*da, a.data(), a.size());  // op(A) reads the same values as A^T when ta
        bes[i]->upload(*db, b.data(), b.size());
        bes[i]->upload(*dc, c0.data(), c0.size());
        bes[i]->gemm(ta, tb, m, n, k, 0.75f, *da, *db, -0.5f, *dc);
        out[i].resize(c0.size());
        bes[i]->download(out[i].data(), *dc, out[i].size());
      }
      double num = 0, den = 0;
      for (size_t i = 0; i < out[0].size(); ++i) {
        num += (double(out[0][i]) - out[1][i]) * (double(out[0][i]) - out[1][i]);
        den += double(out[0][i]) * out[0][i];
      }
      EXPECT_LT(std::sqrt(num / den), kGemmRelTol) << "ta " << ta << " tb " << tb;
    }
}

static CudaOptions with_qr(bool cholesky) {
  CudaOptions co;
  co.cholesky_qr = cholesky;
  return co;
}

// Orthonormalizes the m x k matrix y on the CPU ([0]) and the GPU ([1]), and checks that the
// GPU's columns are orthonormal (Q^T Q = I).
static std::array<std::vector<float>, 2> orthonormalize_on_both(Backend& cpu, Backend& gpu,
                                                                const std::vector<float>& y, int m,
                                                                int k) {
  std::array<std::vector<float>, 2> q;
  Backend* bes[2] = {&cpu, &gpu};
  for (int i = 0; i < 2; ++i) {
    auto d = bes[i]->alloc(y.size());
    bes[i]->upload(*d, y.data(), y.size());
    bes[i]->orthonormalize(*d, m, k);
    q[i].resize(y.size());
    bes[i]->download(q[i].data(), *d, q[i].size());
  }
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) {
      double d = 0;
      for (int r = 0; r < m; ++r) d += double(q[1][size_t(r) * k + i]) * q[1][size_t(r) * k + j];
      EXPECT_NEAR(d, i == j ? 1.0 : 0.0, 1e-5) << i << "," << j;
    }
  return q;
}

static void svd_and_orthonormalize_match_the_cpu(bool cholesky) {
  auto gpu = make_cuda_backend(0, with_qr(cholesky));
  auto cpu = make_cpu_backend(1);
  // Wide and tall, small (QR + Jacobi) and large (gesvd).
  for (auto [m, n] : {std::pair{40, 300}, std::pair{300, 40}, std::pair{64, 64},
                      std::pair{600, 700}, std::pair{700, 600}}) {
    const int p = std::min(m, n);
    const auto a = structured_matrix(m, n, 6);
    std::vector<float> s[2], u[2], vt[2];
    Backend* bes[2] = {cpu.get(), gpu.get()};
    for (int i = 0; i < 2; ++i) {
      auto da = bes[i]->alloc(a.size()), du = bes[i]->alloc(size_t(m) * p),
           dv = bes[i]->alloc(size_t(p) * n);
      bes[i]->upload(*da, a.data(), a.size());
      bes[i]->svd(*da, m, n, *du, s[i], *dv);
      u[i].resize(size_t(m) * p);
      vt[i].resize(size_t(p) * n);
      bes[i]->download(u[i].data(), *du, u[i].size());
      bes[i]->download(vt[i].data(), *dv, vt[i].size());
    }
    ASSERT_EQ(s[1].size(), size_t(p));
    for (int j = 0; j < p; ++j)
      EXPECT_NEAR(s[1][j], s[0][j], kSingularRelTol * s[0][0]) << m << "x" << n << " " << j;
    // u s vt reconstructs a.
    double num = 0, den = 0;
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double v = 0;
        for (int c = 0; c < p; ++c)
          v += double(u[1][size_t(i) * p + c]) * s[1][c] * vt[1][size_t(c) * n + j];
        num += (v - a[size_t(i) * n + j]) * (v - a[size_t(i) * n + j]);
        den += double(a[size_t(i) * n + j]) * a[size_t(i) * n + j];
      }
    EXPECT_LT(std::sqrt(num / den), 1e-5) << m << "x" << n;
    // The leading 8 singular vectors span the same subspaces (relative gaps after the 8th singular
    // value are >= 0.7 % on these matrices, far above float32 rounding).
    std::vector<float> u8[2], v8[2];
    for (int i = 0; i < 2; ++i) {
      for (int r = 0; r < m; ++r)
        for (int c = 0; c < 8; ++c) u8[i].push_back(u[i][size_t(r) * p + c]);
      for (int r = 0; r < n; ++r)
        for (int c = 0; c < 8; ++c) v8[i].push_back(vt[i][size_t(c) * n + r]);
    }
    EXPECT_GT(subspace_cos2(u8[0], u8[1], m, 8), kSvdVectorCos2) << m << "x" << n;
    EXPECT_GT(subspace_cos2(v8[0], v8[1], n, 8), kSvdVectorCos2) << m << "x" << n;
  }
  // orthonormalize: Q^T Q = I and the same column space as the CPU's.
  const int m = 500, k = 40;
  const auto y = gaussian(size_t(m) * k, 8);
  const auto q = orthonormalize_on_both(*cpu, *gpu, y, m, k);
  EXPECT_GT(subspace_cos2(q[0], q[1], m, k), kSvdVectorCos2);
}

TEST(CudaBackend, SvdAndOrthonormalizeMatchTheCpu) {
  REQUIRE_CUDA_DEVICE();
  svd_and_orthonormalize_match_the_cpu(false);
}

TEST(CudaBackend, SvdAndOrthonormalizeMatchTheCpuWithCholeskyQr2) {
  REQUIRE_CUDA_DEVICE();
  svd_and_orthonormalize_match_the_cpu(true);
}

// CholeskyQR2 hands an ill-conditioned matrix (condition ~1e4) to Householder QR: still
// orthonormal, still the CPU's column space.
TEST(CudaBackend, CholeskyQr2FallsBackOnIllConditionedInput) {
  REQUIRE_CUDA_DEVICE();
  auto gpu = make_cuda_backend(0, with_qr(true));
  auto cpu = make_cpu_backend(1);
  const int m = 600, k = 40;
  auto y = gaussian(size_t(m) * k, 21);
  for (int r = 0; r < m; ++r)
    for (int c = 0; c < k; ++c) y[size_t(r) * k + c] *= std::pow(10.0f, -float(c) / 10.0f);
  const auto q = orthonormalize_on_both(*cpu, *gpu, y, m, k);
  EXPECT_GT(subspace_cos2(q[0], q[1], m, k), 0.99);
}

TEST(CudaLoftq, ErrorAndSubspacesMatchTheCpu) {
  REQUIRE_CUDA_DEVICE();
  auto cpu = make_cpu_backend(2);
  const int m = 256, n = 384, r = 16;
  const auto w = structured_matrix(m, n, 9);
  for (const bool cholesky : {false, true})
    for (SvdMode mode : {SvdMode::Exact, SvdMode::Randomized})
      for (int bits : {4, 2}) {
        for (int iters : {1, 5}) {
          const auto o = opts(bits, iters, mode, r);
          const auto want = loftq(*cpu, w.data(), m, n, o);
          auto gpu = make_cuda_backend(0, with_qr(cholesky));
          const auto got = loftq(*gpu, w.data(), m, n, o);
          const std::string what = svd_mode_name(mode) + " nf" + std::to_string(bits) +
                                   " T=" + std::to_string(iters) +
                                   (cholesky ? " choleskyqr2" : " householder");
          // Same codes, so the same E = W - Q0; only the double sums' order differs.
          EXPECT_NEAR(got.qlora_error, want.qlora_error, 1e-9 * want.qlora_error) << what;
          EXPECT_NEAR(got.loftq_error, want.loftq_error, kLoftqErrorRelTol * want.loftq_error)
              << what;
          if (iters == 1) {
            EXPECT_EQ(got.q, want.q) << what;  // T = 1: Q = quant(W), same codes
          }
          // B (m x r) column spaces and A (r x n) row spaces.
          EXPECT_GT(subspace_cos2(got.b, want.b, m, r), kLoftqSubspaceCos2) << what;
          EXPECT_GT(subspace_cos2(transpose(got.a, r, n), transpose(want.a, r, n), n, r),
                    kLoftqSubspaceCos2)
              << what;
        }
      }
}

TEST(CudaLoftq, OutOfMemoryFallsBackToTheCpu) {
  REQUIRE_CUDA_DEVICE();
  CudaOptions co;
  // Smaller than one 2048 x 2048 float32 buffer (16 MiB), large enough for a small layer with
  // its cuSOLVER workspace (4 MiB for a 16 x 64 exact SVD with CUDA 13.0 on an H200: a 1 MiB
  // budget made the "still usable" check below fail there).
  co.memory_budget = size_t(8) << 20;
  auto gpu = make_cuda_backend(0, co);
  auto cpu = make_cpu_backend(1);
  const int m = 2048, n = 2048;
  const auto w = structured_matrix(m, n, 10);
  const auto o = opts(4, 2, SvdMode::Randomized, 16);
  EXPECT_THROW(loftq(*gpu, w.data(), m, n, o), DeviceOutOfMemory);
  std::vector<std::string> warnings;
  const auto got = loftq_with_fallback(*gpu, cpu.get(), w.data(), m, n, o, "t",
                                       [&](const std::string& s) { warnings.push_back(s); });
  const auto ref = loftq(*cpu, w.data(), m, n, o);
  EXPECT_EQ(got.q, ref.q);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("memory budget"), std::string::npos) << warnings[0];
  // The backend is still usable for a layer that fits.
  const auto small = structured_matrix(16, 64, 12);
  const auto ok = loftq(*gpu, small.data(), 16, 64, opts(4, 1, SvdMode::Exact, 4));
  EXPECT_EQ(ok.q, loftq(*cpu, small.data(), 16, 64, opts(4, 1, SvdMode::Exact, 4)).q);
}

TEST(CudaBackend, RejectsForeignBuffersAndNamesFailedCalls) {
  REQUIRE_CUDA_DEVICE();
  auto gpu = make_cuda_backend(0);
  auto cpu = make_cpu_backend(1);
  auto foreign = cpu->alloc(64);
  auto mine = gpu->alloc(64);
  EXPECT_NE(error_of([&] { gpu->copy(*foreign, *mine, 64); }).find("belongs to another backend"),
            std::string::npos);
  EXPECT_THROW(gpu->copy(*mine, *mine, 65), std::logic_error);
  // An impossible allocation is reported as an out-of-memory naming cudaMalloc.
  const std::string msg = error_of([&] { gpu->alloc(size_t(1) << 46); });
  EXPECT_NE(msg.find("cudaMalloc"), std::string::npos) << msg;
  EXPECT_THROW(gpu->alloc(size_t(1) << 46), DeviceOutOfMemory);
}

TEST(CudaBackend, Tf32OptionStillCloseToTheCpu) {
  REQUIRE_CUDA_DEVICE();
  CudaOptions co;
  co.allow_tf32 = true;
  auto gpu = make_cuda_backend(0, co);
  auto cpu = make_cpu_backend(2);
  const int m = 256, n = 384, r = 16;
  const auto w = structured_matrix(m, n, 13);
  const auto o = opts(4, 5, SvdMode::Randomized, r);
  const auto want = loftq(*cpu, w.data(), m, n, o);
  const auto got = loftq(*gpu, w.data(), m, n, o);
  EXPECT_NEAR(got.loftq_error, want.loftq_error, 5e-3 * want.loftq_error);
}
