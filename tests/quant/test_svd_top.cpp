// The CPU backend's svd_top (the exact mode's top triplets, from the Gram matrix in double):
// matrices built from known singular vectors and values in double, checked against them; a
// cross-check against LAPACK's sgesdd of the whole matrix; rank-deficient and zero inputs.
#include <cblas.h>
#include <gtest/gtest.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "quant/backend.h"
#include "support/matrices.h"

using namespace loftqd::quant;

namespace {

// Row-major rows x cols (cols <= rows) with orthonormal columns, in double (QR of a Gaussian).
std::vector<double> orthonormal_columns(int rows, int cols, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  std::vector<double> q(size_t(rows) * cols), tau(static_cast<size_t>(cols));
  for (auto& x : q) x = g(rng);
  EXPECT_EQ(LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, rows, cols, q.data(), cols, tau.data()), 0);
  EXPECT_EQ(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, rows, cols, cols, q.data(), cols, tau.data()), 0);
  return q;
}

// The m x n matrix U[:, :upto] diag(s[:upto]) V[:, :upto]^T (U: m x d, V: n x d, d = s.size()),
// in double.
std::vector<double> compose_usv(const std::vector<double>& u, const std::vector<double>& s,
                                const std::vector<double>& v, int m, int n, int upto) {
  const int d = static_cast<int>(s.size());
  std::vector<double> us(size_t(m) * upto), e(size_t(m) * n);
  for (int i = 0; i < m; ++i)
    for (int k = 0; k < upto; ++k) us[size_t(i) * upto + k] = u[size_t(i) * d + k] * s[size_t(k)];
  std::vector<double> vk(size_t(n) * upto);
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < upto; ++k) vk[size_t(j) * upto + k] = v[size_t(j) * d + k];
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, upto, 1.0, us.data(), upto, vk.data(),
              upto, 0.0, e.data(), n);
  return e;
}

struct TopTriplets {
  int p = 0;
  std::vector<float> u, s, vt;
};

TopTriplets svd_top_of(const std::vector<float>& e, int m, int n, int r) {
  auto be = make_cpu_backend(1);
  auto a = be->alloc(e.size());
  be->upload(*a, e.data(), e.size());
  std::unique_ptr<Buffer> u, vt;
  TopTriplets t;
  t.p = be->svd_top(*a, m, n, r, u, t.s, vt);
  t.u.resize(size_t(m) * t.p);
  t.vt.resize(size_t(t.p) * n);
  be->download(t.u.data(), *u, t.u.size());
  be->download(t.vt.data(), *vt, t.vt.size());
  return t;
}

// max |X^T X - I| over the first `k` columns of the row-major rows x ld matrix x (as columns),
// or of its rows when `rows_are_vectors`.
double triplet_orthogonality_error(const std::vector<float>& x, int count, int len, int k,
                                   bool rows_are_vectors) {
  auto at = [&](int vec, int i) {
    return double(rows_are_vectors ? x[size_t(vec) * len + i] : x[size_t(i) * count + vec]);
  };
  double worst = 0;
  for (int a = 0; a < k; ++a)
    for (int b = 0; b < k; ++b) {
      double d = 0;
      for (int i = 0; i < len; ++i) d += at(a, i) * at(b, i);
      worst = std::max(worst, std::fabs(d - (a == b ? 1.0 : 0.0)));
    }
  return worst;
}

// ||U diag(s) V^T - want||_F / ||want||_F over the first `upto` triplets.
double triplet_product_error(const TopTriplets& t, const std::vector<double>& want, int m, int n,
                             int upto) {
  double num = 0, den = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double x = 0;
      for (int k = 0; k < upto; ++k)
        x += double(t.u[size_t(i) * t.p + k]) * t.s[size_t(k)] * t.vt[size_t(k) * n + j];
      const double w = want[size_t(i) * n + j];
      num += (x - w) * (x - w);
      den += w * w;
    }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

struct SvdShape {
  int m, n, r;
};

class SvdTopKnown : public ::testing::TestWithParam<SvdShape> {};

}  // namespace

// Singular values 1 -> 0.6 over the top r (with a triple one at 0.995), a gap, then a tail
// from 0.3 down: the top r are well defined, and the panels of the Gram (about 2^19 doubles:
// 2048 columns for 256 rows) are crossed at 256 x 2100 and 2100 x 256.
TEST_P(SvdTopKnown, ValuesVectorsAndProductMatchTheConstruction) {
  const auto [m, n, r] = GetParam();
  const int d = std::min(m, n);
  std::vector<double> s(static_cast<size_t>(d));
  for (int i = 0; i < d; ++i)
    s[size_t(i)] = i < r ? 1.0 - 0.4 * i / r : 0.3 * std::pow(0.97, i - r);
  if (r > 4) s[1] = s[2] = s[3] = 0.995;
  const auto u = orthonormal_columns(m, d, 11), v = orthonormal_columns(n, d, 12);
  const auto e64 = compose_usv(u, s, v, m, n, d);
  const std::vector<float> e(e64.begin(), e64.end());
  const TopTriplets t = svd_top_of(e, m, n, r);
  ASSERT_GE(t.p, std::min(r, d));
  for (int j = 0; j < std::min(r, d); ++j) EXPECT_NEAR(t.s[size_t(j)], s[size_t(j)], 2e-6) << j;
  for (int j = 1; j < t.p; ++j) EXPECT_LE(t.s[size_t(j)], t.s[size_t(j - 1)]);
  const int k = std::min(r, d);
  EXPECT_LT(triplet_orthogonality_error(t.u, t.p, m, k, false), 1e-5);
  EXPECT_LT(triplet_orthogonality_error(t.vt, t.p, n, k, true), 1e-5);
  EXPECT_LT(triplet_product_error(t, compose_usv(u, s, v, m, n, k), m, n, k), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SvdTopKnown,
                         ::testing::Values(SvdShape{96, 130, 8}, SvdShape{130, 96, 8},
                                           SvdShape{256, 2100, 40}, SvdShape{2100, 256, 40},
                                           SvdShape{64, 64, 64}, SvdShape{40, 300, 64}));

// Against LAPACK's float32 SVD of the whole matrix (the previous exact mode) on a LoftQ-like
// matrix: the same values and the same rank-r product, to float32 rounding.
TEST(SvdTop, AgreesWithSgesddOfTheWholeMatrix) {
  for (const auto& [m, n, r] : {SvdShape{256, 2048, 64}, SvdShape{700, 300, 16}}) {
    const auto e = loftqd::testing::structured_matrix(m, n, 4);
    const TopTriplets t = svd_top_of(e, m, n, r);
    auto be = make_cpu_backend(1);
    const int p = std::min(m, n);
    auto a = be->alloc(e.size()), ub = be->alloc(size_t(m) * p), vb = be->alloc(size_t(p) * n);
    be->upload(*a, e.data(), e.size());
    TopTriplets ref;
    ref.p = p;
    be->svd(*a, m, n, *ub, ref.s, *vb);
    ref.u.resize(size_t(m) * p);
    ref.vt.resize(size_t(p) * n);
    be->download(ref.u.data(), *ub, ref.u.size());
    be->download(ref.vt.data(), *vb, ref.vt.size());
    for (int j = 0; j < r; ++j) EXPECT_NEAR(t.s[size_t(j)], ref.s[size_t(j)], 1e-5 * ref.s[0]);
    std::vector<double> want(size_t(m) * n, 0.0);
    for (int i = 0; i < m; ++i)
      for (int k = 0; k < r; ++k)
        for (int j = 0; j < n; ++j)
          want[size_t(i) * n + j] +=
              double(ref.u[size_t(i) * p + k]) * ref.s[size_t(k)] * ref.vt[size_t(k) * n + j];
    EXPECT_LT(triplet_product_error(t, want, m, n, r), 1e-5) << m << "x" << n;
  }
}

// Rank 5 asked for 16: the first 5 triplets reproduce the matrix, the rest are exact zeros.
TEST(SvdTop, RankDeficientGivesZerosPastTheRank) {
  const int m = 200, n = 300, rank = 5, r = 16;
  const auto u = orthonormal_columns(m, rank, 3), v = orthonormal_columns(n, rank, 4);
  const std::vector<double> s = {3.0, 2.0, 1.5, 1.0, 0.5};
  const auto e64 = compose_usv(u, s, v, m, n, rank);
  const std::vector<float> e(e64.begin(), e64.end());
  const TopTriplets t = svd_top_of(e, m, n, r);
  ASSERT_GE(t.p, r);
  for (int j = 0; j < rank; ++j) EXPECT_NEAR(t.s[size_t(j)], s[size_t(j)], 1e-5) << j;
  for (int j = rank; j < t.p; ++j) {
    EXPECT_EQ(t.s[size_t(j)], 0.0f) << j;
    for (int i = 0; i < m; ++i) EXPECT_EQ(t.u[size_t(i) * t.p + j], 0.0f);
    for (int c = 0; c < n; ++c) EXPECT_EQ(t.vt[size_t(j) * n + c], 0.0f);
  }
  EXPECT_LT(triplet_product_error(t, e64, m, n, t.p), 1e-6);
}

TEST(SvdTop, ZeroMatrixGivesZeroTriplets) {
  for (const auto& [m, n] : {std::pair{50, 80}, std::pair{80, 50}}) {
    const TopTriplets t = svd_top_of(std::vector<float>(size_t(m) * n, 0.0f), m, n, 8);
    ASSERT_GE(t.p, 8);
    for (float x : t.s) EXPECT_EQ(x, 0.0f);
    for (float x : t.u) EXPECT_EQ(x, 0.0f);
    for (float x : t.vt) EXPECT_EQ(x, 0.0f);
  }
}
