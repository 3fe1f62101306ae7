// Backend::residual_pass: the CPU backend's fused tile pass against the definition (x = W - L R,
// sum (x - Qd)^2, Qd' = qd(x), E = W - Qd') and against the separate calls of the default, on
// shapes whose tiles end inside a row block or leave a short last tile.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "quant/backend.h"
#include "support/matrices.h"

using namespace loftqd::quant;
using loftqd::testing::gaussian;

namespace {

struct PassOut {
  double err = 0;
  std::vector<float> qd, e;
};

// One residual_pass on a fresh one-thread CPU backend; `base` runs Backend's default (the
// separate calls) instead of the CPU override.
PassOut run_pass(const std::vector<float>& w, const std::vector<float>& l,
                 const std::vector<float>& r, const std::vector<float>& qd, int m, int n, int rank,
                 const QuantSpec* spec, bool base) {
  auto be = make_cpu_backend(1);
  auto up = [&](const std::vector<float>& v) {
    auto b = be->alloc(v.size());
    be->upload(*b, v.data(), v.size());
    return b;
  };
  auto bw = up(w), bl = up(l), br = up(r), bq = up(qd);
  const size_t mn = size_t(m) * n;
  auto nq = be->alloc(mn), ne = be->alloc(mn);
  const Backend::NextIterate next{spec, nq.get()};
  const Backend::NextIterate* np = spec ? &next : nullptr;
  PassOut o;
  o.err = base ? be->Backend::residual_pass(*bw, *bl, *br, m, n, rank, *bq, *ne, np)
               : be->residual_pass(*bw, *bl, *br, m, n, rank, *bq, *ne, np);
  if (spec) {
    o.qd.resize(mn);
    o.e.resize(mn);
    be->download(o.qd.data(), *nq, mn);
    be->download(o.e.data(), *ne, mn);
  }
  return o;
}

struct PassShape {
  int m, n, rank, block;
};

class ResidualPass : public ::testing::TestWithParam<PassShape> {};

}  // namespace

TEST_P(ResidualPass, FusedTilesMatchTheDefinitionAndTheSeparateCalls) {
  const auto [m, n, rank, block] = GetParam();
  const size_t mn = size_t(m) * n;
  const auto w = gaussian(mn, 1, 0.02f), l = gaussian(size_t(m) * rank, 2, 0.05f),
             r = gaussian(size_t(rank) * n, 3, 0.05f), qd = gaussian(mn, 4, 0.02f);
  const QuantSpec spec{QuantMethod::NF, 4, block};
  const PassOut got = run_pass(w, l, r, qd, m, n, rank, &spec, false);
  const PassOut sep = run_pass(w, l, r, qd, m, n, rank, &spec, true);

  // The error from the definition, in double.
  double want = 0;
  std::vector<double> x(static_cast<size_t>(n));
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double lr = 0;
      for (int k = 0; k < rank; ++k) lr += double(l[size_t(i) * rank + k]) * r[size_t(k) * n + j];
      const double d = double(w[size_t(i) * n + j]) - lr - qd[size_t(i) * n + j];
      want += d * d;
    }
  }
  EXPECT_NEAR(got.err / want, 1.0, 1e-5);
  EXPECT_NEAR(sep.err / want, 1.0, 1e-5);
  // E = W - Qd' exactly, for the Qd' the pass returned.
  size_t e_wrong = 0, qd_differs = 0;
  for (size_t i = 0; i < mn; ++i) {
    e_wrong += got.e[i] != w[i] - got.qd[i];
    qd_differs += got.qd[i] != sep.qd[i];
  }
  EXPECT_EQ(e_wrong, 0u);
  // Qd' as the separate calls quantize W - L R: the same codes, but where the tile's GEMM and
  // the whole matrix's round x to different sides of a threshold.
  EXPECT_LE(qd_differs, mn / 10000 + 1) << qd_differs << " of " << mn;
  // Without a next iterate only the error is computed (its tiles need no block alignment, so
  // their GEMMs may round differently).
  const PassOut last = run_pass(w, l, r, qd, m, n, rank, nullptr, false);
  EXPECT_NEAR(last.err / want, 1.0, 1e-5);
}

// 704 x 1000 at blocks of 64: 8-row alignment, tiles of 256 rows and a last one of 192;
// 3000 x 96: 2-row alignment (a block spans rows), two tiles; 64 x 4096: one tile of all rows;
// 480 x 600 at blocks of 128: 16-row alignment, tiles of 432 and 48 rows.
INSTANTIATE_TEST_SUITE_P(Shapes, ResidualPass,
                         ::testing::Values(PassShape{704, 1000, 16, 64}, PassShape{3000, 96, 8, 64},
                                           PassShape{64, 4096, 64, 64},
                                           PassShape{480, 600, 8, 128}));

// The elementwise calls the pass is made of (AVX-512 where the CPU has it), at lengths that leave
// every tail of their loops: sub exact, sq_dist to double rounding.
TEST(CpuElementwise, SubAndSqDistMatchTheDefinitionAtEveryTailLength) {
  auto be = make_cpu_backend(1);
  for (size_t n : {size_t(1), size_t(7), size_t(8), size_t(15), size_t(33), size_t(1000003)}) {
    const auto a = gaussian(n, 5, 1.0f), b = gaussian(n, 6, 3.0f);
    auto ba = be->alloc(n), bb = be->alloc(n), bo = be->alloc(n);
    be->upload(*ba, a.data(), n);
    be->upload(*bb, b.data(), n);
    be->sub(*ba, *bb, *bo, n);
    std::vector<float> o(n);
    be->download(o.data(), *bo, n);
    double want = 0;
    size_t wrong = 0;
    for (size_t i = 0; i < n; ++i) {
      wrong += o[i] != a[i] - b[i];
      const double d = double(a[i]) - double(b[i]);
      want += d * d;
    }
    EXPECT_EQ(wrong, 0u) << n;
    EXPECT_NEAR(be->sq_dist(*ba, *bb, n) / want, 1.0, 1e-12) << n;
  }
}
