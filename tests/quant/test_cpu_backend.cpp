// The CPU backend's orthonormalize: CholeskyQR2 on well-conditioned sketches, Householder when
// the sketch is too ill-conditioned or rank-deficient for it. Either way the result must have
// orthonormal columns spanning the input's columns (checked here in double, from the definition,
// not by re-running either algorithm).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "quant/backend.h"

using namespace loftqd::quant;

namespace {

// Row-major m x k, columns scaled by scale(j).
template <class Scale>
std::vector<float> sketch(int m, int k, unsigned seed, Scale scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> y(size_t(m) * k);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < k; ++j) y[size_t(i) * k + j] = g(rng) * static_cast<float>(scale(j));
  return y;
}

std::vector<float> orthonormalized(const std::vector<float>& y, int m, int k) {
  auto be = make_cpu_backend(1);
  auto b = be->alloc(y.size());
  be->upload(*b, y.data(), y.size());
  be->orthonormalize(*b, m, k);
  std::vector<float> q(y.size());
  be->download(q.data(), *b, q.size());
  return q;
}

// max |Q^T Q - I|.
double orthogonality_error(const std::vector<float>& q, int m, int k) {
  double worst = 0;
  for (int a = 0; a < k; ++a)
    for (int b = 0; b < k; ++b) {
      double d = 0;
      for (int i = 0; i < m; ++i) d += double(q[size_t(i) * k + a]) * q[size_t(i) * k + b];
      worst = std::max(worst, std::fabs(d - (a == b ? 1.0 : 0.0)));
    }
  return worst;
}

// max over columns of ||y_j - Q Q^T y_j|| / ||y_j|| (0 for a zero column).
double span_error(const std::vector<float>& y, const std::vector<float>& q, int m, int k) {
  double worst = 0;
  for (int j = 0; j < k; ++j) {
    std::vector<double> c(size_t(k), 0.0);
    for (int a = 0; a < k; ++a)
      for (int i = 0; i < m; ++i) c[a] += double(q[size_t(i) * k + a]) * y[size_t(i) * k + j];
    double res = 0, norm = 0;
    for (int i = 0; i < m; ++i) {
      double p = 0;
      for (int a = 0; a < k; ++a) p += double(q[size_t(i) * k + a]) * c[a];
      const double yj = y[size_t(i) * k + j];
      res += (yj - p) * (yj - p);
      norm += yj * yj;
    }
    if (norm > 0) worst = std::max(worst, std::sqrt(res / norm));
  }
  return worst;
}

}  // namespace

TEST(CpuOrthonormalize, WellConditionedSketchIsOrthonormalAndKeepsItsSpan) {
  const int m = 700, k = 48;
  const auto y = sketch(m, k, 1, [](int j) { return 1.0 + 0.05 * j; });
  const auto q = orthonormalized(y, m, k);
  EXPECT_LT(orthogonality_error(q, m, k), 1e-5);
  EXPECT_LT(span_error(y, q, m, k), 1e-5);
}

// Columns spread over 1e4 and 1e6 (Gram matrices of condition 1e8 and 1e12, at or past what a
// float32 Cholesky can factor): whichever path runs, CholeskyQR2 or the Householder fallback,
// the columns must come out orthonormal with the input's span. (Without a fallback, the
// breakdown at 1e6 would leave the sketch unorthonormalized.)
TEST(CpuOrthonormalize, IllConditionedSketchFallsBackAndIsStillOrthonormal) {
  const int m = 600, k = 40;
  for (double decades : {4.0, 6.0}) {
    const auto y = sketch(m, k, 2, [&](int j) { return std::pow(10.0, -decades * j / (k - 1)); });
    const auto q = orthonormalized(y, m, k);
    EXPECT_LT(orthogonality_error(q, m, k), 1e-5) << "spread 1e" << decades;
    EXPECT_LT(span_error(y, q, m, k), 1e-4) << "spread 1e" << decades;
  }
}

// A repeated column and a zero column (rank k - 2): no throw, finite, orthonormal columns whose
// span holds every input column.
TEST(CpuOrthonormalize, RankDeficientAndZeroSketchesStayFiniteAndOrthonormal) {
  const int m = 300, k = 16;
  auto y = sketch(m, k, 3, [](int) { return 1.0; });
  for (int i = 0; i < m; ++i) {
    y[size_t(i) * k + 5] = y[size_t(i) * k + 4];
    y[size_t(i) * k + 9] = 0.0f;
  }
  auto q = orthonormalized(y, m, k);
  for (float v : q) ASSERT_TRUE(std::isfinite(v));
  EXPECT_LT(orthogonality_error(q, m, k), 1e-5);
  EXPECT_LT(span_error(y, q, m, k), 1e-5);
  const std::vector<float> zero(size_t(m) * k, 0.0f);
  q = orthonormalized(zero, m, k);
  for (float v : q) ASSERT_TRUE(std::isfinite(v));
  EXPECT_LT(orthogonality_error(q, m, k), 1e-5);
}
