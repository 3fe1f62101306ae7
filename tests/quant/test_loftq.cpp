// The LoftQ loop against an independent computation and the paper's qualitative claims.
#include "quant/loftq.h"
#include "support/forwarding_backend.h"
#include "support/matrices.h"

#include <gtest/gtest.h>
#include <lapacke.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

using namespace loftqd::quant;

namespace {

using loftqd::testing::nf_options;
using loftqd::testing::structured_matrix;

double rel_err(const std::vector<float>& w, const std::vector<float>& q,
               const std::vector<float>& a, const std::vector<float>& b, int m, int n, int r) {
  double num = 0, den = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double ba = 0;
      for (int c = 0; c < r; ++c) ba += double(b[size_t(i) * r + c]) * a[size_t(c) * n + j];
      const double d = w[size_t(i) * n + j] - q[size_t(i) * n + j] - ba;
      num += d * d;
      den += double(w[size_t(i) * n + j]) * w[size_t(i) * n + j];
    }
  return std::sqrt(num / den);
}

// The CPU backend with the exact mode's SVD replaced by LAPACK's dgesdd of the whole matrix in
// double: the reference for how exact "exact" is.
class DoubleSvdBackend final : public loftqd::testing::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  int svd_top(Buffer& a, int m, int n, int, std::unique_ptr<Buffer>& u, std::vector<float>& s,
              std::unique_ptr<Buffer>& vt) override {
    const int p = std::min(m, n);
    std::vector<float> e(size_t(m) * n);
    download(e.data(), a, e.size());
    std::vector<double> ed(e.begin(), e.end()), sd(static_cast<size_t>(p)), ud(size_t(m) * p),
        vd(size_t(p) * n);
    EXPECT_EQ(LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', m, n, ed.data(), n, sd.data(), ud.data(), p,
                             vd.data(), n),
              0);
    const std::vector<float> uf(ud.begin(), ud.end()), vf(vd.begin(), vd.end());
    s.assign(sd.begin(), sd.end());
    u = alloc(uf.size());
    vt = alloc(vf.size());
    upload(*u, uf.data(), uf.size());
    upload(*vt, vf.data(), vf.size());
    return p;
  }
};

}  // namespace

TEST(Loftq, OneIterationIsQuantizeThenTruncatedSvd) {
  const int m = 96, n = 128, r = 8;
  auto w = structured_matrix(m, n, 1);
  auto be = make_cpu_backend(1);
  auto res = loftq(*be, w.data(), m, n, nf_options(4, 1, SvdMode::Exact, r));

  // Independent: NF4 by the scalar rules, residual SVD in double precision (LAPACK dgesvd).
  std::vector<float> q(w.size());
  for (size_t b = 0; b < w.size(); b += 64) {
    float amax = 0;
    for (size_t i = 0; i < 64; ++i) amax = std::max(amax, std::fabs(w[b + i]));
    for (size_t i = 0; i < 64; ++i) {
      const float y = w[b + i] * (1.0f / amax);
      int c = 0;
      for (float t : kNF4Thresholds) c += y > t;
      q[b + i] = kNF4Table[c] * amax;
    }
  }
  EXPECT_EQ(res.q, q);
  std::vector<double> e(w.size()), s(n), u(size_t(m) * m), vt(size_t(n) * n), sup(n);
  for (size_t i = 0; i < w.size(); ++i) e[i] = double(w[i]) - q[i];
  ASSERT_EQ(LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'A', 'A', m, n, e.data(), n, s.data(), u.data(), m,
                           vt.data(), n, sup.data()),
            0);
  double max_diff = 0, max_val = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double ref = 0, got = 0;
      for (int c = 0; c < r; ++c) {
        ref += u[size_t(i) * m + c] * s[c] * vt[size_t(c) * n + j];
        got += double(res.b[size_t(i) * r + c]) * res.a[size_t(c) * n + j];
      }
      max_diff = std::max(max_diff, std::fabs(ref - got));
      max_val = std::max(max_val, std::fabs(ref));
    }
  EXPECT_LT(max_diff, 1e-4 * max_val);
  // sqrt(S) split: the factors have equal row/column norms.
  double a0 = 0, b0 = 0;
  for (int j = 0; j < n; ++j) a0 += double(res.a[j]) * res.a[j];
  for (int i = 0; i < m; ++i) b0 += double(res.b[size_t(i) * r]) * res.b[size_t(i) * r];
  EXPECT_NEAR(a0, s[0], 1e-3 * s[0]);
  EXPECT_NEAR(b0, s[0], 1e-3 * s[0]);
  EXPECT_EQ(res.best_iter, 1);
  EXPECT_NEAR(res.loftq_error, rel_err(w, res.q, res.a, res.b, m, n, r), 1e-6);
}

TEST(Loftq, BeatsQloraByThreePercentAt4BitsAndMoreAt2Bits) {
  const int m = 256, n = 384, r = 16;
  auto w = structured_matrix(m, n, 2);
  auto be = make_cpu_backend(2);
  auto r4 = loftq(*be, w.data(), m, n, nf_options(4, 5, SvdMode::Exact, r));
  auto r2 = loftq(*be, w.data(), m, n, nf_options(2, 5, SvdMode::Exact, r));
  const double gain4 = 1.0 - r4.loftq_error / r4.qlora_error;
  const double gain2 = 1.0 - r2.loftq_error / r2.qlora_error;
  EXPECT_GE(gain4, 0.03) << r4.qlora_error << " -> " << r4.loftq_error;
  EXPECT_GE(gain2, 0.03) << r2.qlora_error << " -> " << r2.loftq_error;
  // "More at 2 bits": the error LoftQ removes, in units of ||W||, grows as the bits shrink.
  EXPECT_GT(r2.qlora_error - r2.loftq_error, 2.0 * (r4.qlora_error - r4.loftq_error));
  EXPECT_NEAR(r4.loftq_error, rel_err(w, r4.q, r4.a, r4.b, m, n, r), 1e-5);
  EXPECT_NEAR(r2.loftq_error, rel_err(w, r2.q, r2.a, r2.b, m, n, r), 1e-5);
}

TEST(Loftq, KeepsTheBestIterate) {
  const int m = 128, n = 192;
  auto w = structured_matrix(m, n, 3);
  auto be = make_cpu_backend(1);
  auto res = loftq(*be, w.data(), m, n, nf_options(2, 6, SvdMode::Exact, 8));
  ASSERT_EQ(res.iter_errors.size(), 6u);
  double mn = res.iter_errors[0];
  int arg = 1;
  for (size_t i = 0; i < res.iter_errors.size(); ++i)
    if (res.iter_errors[i] < mn) mn = res.iter_errors[i], arg = int(i) + 1;
  EXPECT_EQ(res.loftq_error, mn);
  EXPECT_EQ(res.best_iter, arg);
  EXPECT_LE(res.loftq_error, res.iter_errors[0]);
  EXPECT_NEAR(res.loftq_error, rel_err(w, res.q, res.a, res.b, m, n, 8), 1e-5);
}

// Every iterate of the exact mode against the same loop with a double-precision SVD. The
// quantizer's codes make two loops diverge at the first code that a perturbation flips, and a
// float32 SVD does flip some: the loop on sgesdd of the whole matrix ends 7e-5 away on
// 256x2048. The Gram method in double stays within 2e-12 through all five iterations here.
TEST(Loftq, ExactModeFollowsADoublePrecisionSvdThroughEveryIteration) {
  struct Case {
    int m, n, r;
    uint32_t seed;
  };
  for (const Case c : {Case{256, 2048, 64, 3}, Case{1024, 256, 64, 2}, Case{256, 256, 16, 1}}) {
    const auto w = structured_matrix(c.m, c.n, c.seed);
    auto cpu = make_cpu_backend(1);
    DoubleSvdBackend dbl(*cpu);
    const auto o = nf_options(4, 5, SvdMode::Exact, c.r);
    const auto got = loftq(*cpu, w.data(), c.m, c.n, o);
    const auto want = loftq(dbl, w.data(), c.m, c.n, o);
    ASSERT_EQ(got.iter_errors.size(), want.iter_errors.size());
    for (size_t t = 0; t < want.iter_errors.size(); ++t)
      EXPECT_NEAR(got.iter_errors[t] / want.iter_errors[t], 1.0, 1e-7)
          << c.m << "x" << c.n << " iteration " << t + 1;
  }
}

TEST(Loftq, RandomizedSketchWithinHalfAPercentOfExact) {
  const int m = 320, n = 448, r = 32;
  auto w = structured_matrix(m, n, 4);
  auto be = make_cpu_backend(2);
  for (int bits : {4, 2}) {
    auto ex = loftq(*be, w.data(), m, n, nf_options(bits, 5, SvdMode::Exact, r));
    auto o = nf_options(bits, 5, SvdMode::Randomized, r);
    o.exact_where_cheap = false;  // the sketch itself, on a shape where the default runs exact
    auto rnd = loftq(*be, w.data(), m, n, o);
    EXPECT_EQ(rnd.svd, SvdMode::Randomized);
    EXPECT_LE(rnd.loftq_error, ex.loftq_error * 1.005) << bits << " bits";
    EXPECT_NEAR(rnd.loftq_error, rel_err(w, rnd.q, rnd.a, rnd.b, m, n, r), 1e-5);
  }
}

// The rule of loftq.h, shape by shape: exact where min(m, n) <= kExactMaxDim (1024) or
// 4 * rank >= min(m, n) or rank + oversample >= min(m, n); the sketch elsewhere.
TEST(Loftq, DefaultSvdModeFollowsTheDocumentedRule) {
  LoftqOptions o;  // the defaults: randomized, rank 64, oversample 16
  EXPECT_EQ(o.svd, SvdMode::Randomized);
  EXPECT_EQ(svd_mode_for(o, 256, 256), SvdMode::Exact);    // a small model's o_proj
  EXPECT_EQ(svd_mode_for(o, 256, 2048), SvdMode::Exact);   // TinyLlama's k_proj
  EXPECT_EQ(svd_mode_for(o, 4864, 896), SvdMode::Exact);   // min = 896
  EXPECT_EQ(svd_mode_for(o, 1024, 1024), SvdMode::Exact);  // min = 1024
  EXPECT_EQ(svd_mode_for(o, 4096, 1025), SvdMode::Randomized);
  EXPECT_EQ(svd_mode_for(o, 2048, 2048), SvdMode::Randomized);
  EXPECT_EQ(svd_mode_for(o, 11008, 4096), SvdMode::Randomized);
  o.rank = 512;  // 4 * 512 >= 2048
  EXPECT_EQ(svd_mode_for(o, 2048, 4096), SvdMode::Exact);
  EXPECT_EQ(svd_mode_for(o, 4096, 2049), SvdMode::Randomized);
  o.exact_where_cheap = false;  // only "nothing left to sketch" remains
  o.rank = 64;
  EXPECT_EQ(svd_mode_for(o, 256, 256), SvdMode::Randomized);
  EXPECT_EQ(svd_mode_for(o, 80, 4096), SvdMode::Exact);  // 64 + 16 >= 80
  EXPECT_EQ(svd_mode_for(o, 81, 4096), SvdMode::Randomized);
  o.svd = SvdMode::Exact;
  EXPECT_EQ(svd_mode_for(o, 4096, 4096), SvdMode::Exact);
}

// Issue 10: with the plain sketch, 256 x 256 at rank 64 (Gemma's o_proj) was 0.72 % worse than
// the exact loop. The default must stay within DESIGN's 0.5 % on small and high-rank shapes.
TEST(Loftq, DefaultWithinHalfAPercentOfExactOnSmallShapes) {
  auto be = make_cpu_backend(1);  // about 1 s of CPU; 2 BLAS threads stall on a loaded machine
  struct Case {
    int m, n, r;
  };
  for (const Case c : {Case{256, 256, 64}, Case{256, 256, 16}, Case{256, 1024, 64},
                       Case{512, 512, 64}, Case{1024, 256, 64}}) {
    const auto w = structured_matrix(c.m, c.n, 20 + uint32_t(c.m + c.n + c.r));
    const std::string what =
        std::to_string(c.m) + "x" + std::to_string(c.n) + " r=" + std::to_string(c.r);
    const auto ex = loftq(*be, w.data(), c.m, c.n, nf_options(4, 5, SvdMode::Exact, c.r));
    const auto def = loftq(*be, w.data(), c.m, c.n, nf_options(4, 5, SvdMode::Randomized, c.r));
    EXPECT_EQ(def.svd, svd_mode_for(nf_options(4, 5, SvdMode::Randomized, c.r), c.m, c.n)) << what;
    EXPECT_LE(def.loftq_error, ex.loftq_error * 1.005) << what;
    // The error is the one the returned factors give, computed here in double.
    EXPECT_NEAR(def.loftq_error, rel_err(w, def.q, def.a, def.b, c.m, c.n, c.r), 1e-5) << what;
  }
}

TEST(Loftq, RankAboveMatrixSizeIsZeroPadded) {
  const int m = 8, n = 64, r = 16;
  auto w = structured_matrix(m, n, 5);
  auto be = make_cpu_backend(1);
  auto res = loftq(*be, w.data(), m, n, nf_options(4, 2, SvdMode::Randomized, r));
  ASSERT_EQ(res.a.size(), size_t(r) * n);
  ASSERT_EQ(res.b.size(), size_t(m) * r);
  for (int c = m; c < r; ++c)
    for (int j = 0; j < n; ++j) EXPECT_EQ(res.a[size_t(c) * n + j], 0.0f);
  EXPECT_LT(res.loftq_error, 1e-5);  // full rank: the correction is exact
}

TEST(Loftq, RejectsBadInput) {
  auto be = make_cpu_backend(1);
  std::vector<float> w(64 * 4, 0.1f);
  w[7] = std::nanf("");
  EXPECT_THROW(loftq(*be, w.data(), 4, 64, nf_options(4, 1, SvdMode::Exact, 2)),
               std::invalid_argument);
  w[7] = 0.1f;
  EXPECT_THROW(loftq(*be, w.data(), 4, 64, nf_options(4, 0, SvdMode::Exact, 2)),
               std::invalid_argument);
  EXPECT_THROW(loftq(*be, w.data(), 4, 64, nf_options(4, 1, SvdMode::Exact, 0)),
               std::invalid_argument);
  EXPECT_THROW(loftq(*be, w.data(), 4, 64, nf_options(5, 1, SvdMode::Exact, 2)),
               std::invalid_argument);
  EXPECT_THROW(loftq(*be, w.data(), 3, 50, nf_options(4, 1, SvdMode::Exact, 2)),
               std::invalid_argument);
}
