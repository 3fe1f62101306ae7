// quant::loftq_work (the benchmarks' floors) against what loftq() actually calls: a Backend
// decorator adds up the same per-call counts (quant::cost) while the CPU backend does the work.
// A change to the loop's calls that loftq_work does not follow fails here.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "quant/backend.h"
#include "quant/loftq.h"
#include "support/forwarding_backend.h"
#include "support/matrices.h"

using namespace loftqd::quant;

namespace {

class CountingBackend final : public loftqd::testing::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  LoftqWork work;
  int big_m = 0, big_n = 0;  // the weight's shape: GEMMs over the whole of it are passes

  void upload(Buffer& d, const float* s, size_t n) override {
    work.bytes += cost::copy_bytes(n);
    in_.upload(d, s, n);
  }
  void download(float* d, const Buffer& s, size_t n) override {
    work.bytes += cost::copy_bytes(n);
    in_.download(d, s, n);
  }
  void copy(const Buffer& s, Buffer& d, size_t n) override {
    work.bytes += cost::copy_bytes(n);
    in_.copy(s, d, n);
  }
  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const Buffer& a, const Buffer& b,
            float beta, Buffer& c) override {
    work.gemm_flops += cost::gemm_flops(m, n, k);
    // A pass over the weight: two of the three dimensions are its m and n.
    std::vector<int> dims = {m, n, k};
    auto take = [&dims](int d) {
      const auto it = std::find(dims.begin(), dims.end(), d);
      return it != dims.end() ? (dims.erase(it), true) : false;
    };
    if (take(big_m) && take(big_n)) ++work.gemm_passes;
    in_.gemm(ta, tb, m, n, k, alpha, a, b, beta, c);
  }
  void sub(const Buffer& a, const Buffer& b, Buffer& o, size_t n) override {
    work.bytes += cost::sub_bytes(n);
    in_.sub(a, b, o, n);
  }
  double sq_dist(const Buffer& a, const Buffer& b, size_t n) override {
    work.bytes += cost::sq_dist_bytes(n);
    return in_.sq_dist(a, b, n);
  }
  double sq_norm(const Buffer& a, size_t n) override {
    work.bytes += cost::sq_norm_bytes(n);
    return in_.sq_norm(a, n);
  }
  void quant_dequant(const QuantSpec& s, const Buffer& i, Buffer& o, size_t n) override {
    work.bytes += cost::copy_bytes(n);
    in_.quant_dequant(s, i, o, n);
  }
  double residual_pass(const Buffer& w, const Buffer& l, const Buffer& r, int m, int n, int rank,
                       const Buffer& qd, Buffer& e, const NextIterate* next) override {
    work.gemm_flops += cost::gemm_flops(m, n, rank);
    if (m == big_m && n == big_n) ++work.gemm_passes;
    work.bytes += cost::residual_pass_bytes(size_t(m) * n, next != nullptr);
    return in_.residual_pass(w, l, r, m, n, rank, qd, e, next);
  }
  void orthonormalize(Buffer& a, int m, int k) override {
    work.other_flops += cost::qr_flops(m, k);
    in_.orthonormalize(a, m, k);
  }
  void svd(Buffer& a, int m, int n, Buffer& u, std::vector<float>& s, Buffer& vt) override {
    work.other_flops += cost::svd_flops(m, n);
    in_.svd(a, m, n, u, s, vt);
  }
  int svd_top(Buffer& a, int m, int n, int r, std::unique_ptr<Buffer>& u, std::vector<float>& s,
              std::unique_ptr<Buffer>& vt) override {
    work.other_flops += cost::svd_top_flops(m, n, r);
    work.bytes += cost::svd_top_bytes(size_t(m) * n);
    return in_.svd_top(a, m, n, r, u, s, vt);
  }
  void make_factors(const Buffer& u, int m, int p, const std::vector<float>& s, const Buffer& vt,
                    int n, int r, Buffer& l, Buffer& ro) override {
    work.bytes += cost::make_factors_bytes(m, n, r);
    in_.make_factors(u, m, p, s, vt, n, r, l, ro);
  }
};

struct WorkCase {
  int m, n, rank, iters;
  SvdMode svd;
  bool exact_where_cheap;
};

class LoftqWorkTest : public ::testing::TestWithParam<WorkCase> {};

}  // namespace

TEST_P(LoftqWorkTest, CountsWhatTheLoopCalls) {
  const WorkCase c = GetParam();
  LoftqOptions o;
  o.rank = c.rank;
  o.iters = c.iters;
  o.quant = QuantSpec{QuantMethod::NF, 4, 64};
  o.svd = c.svd;
  o.exact_where_cheap = c.exact_where_cheap;
  o.oversample = 8;
  auto cpu = make_cpu_backend(1);
  CountingBackend be(*cpu);
  be.big_m = c.m, be.big_n = c.n;
  const auto w = loftqd::testing::structured_matrix(c.m, c.n, 3);
  loftq(be, w.data(), c.m, c.n, o);
  const LoftqWork want = loftq_work(o, c.m, c.n);
  EXPECT_DOUBLE_EQ(want.gemm_flops, be.work.gemm_flops);
  EXPECT_DOUBLE_EQ(want.other_flops, be.work.other_flops);
  EXPECT_DOUBLE_EQ(want.bytes, be.work.bytes);
  EXPECT_EQ(want.gemm_passes, be.work.gemm_passes);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LoftqWorkTest,
                         ::testing::Values(WorkCase{192, 128, 8, 3, SvdMode::Randomized, false},
                                           WorkCase{128, 320, 16, 4, SvdMode::Randomized, false},
                                           WorkCase{96, 128, 8, 2, SvdMode::Randomized, true},
                                           WorkCase{128, 64, 8, 2, SvdMode::Exact, true},
                                           WorkCase{64, 64, 8, 1, SvdMode::Randomized, false}));

// The figures docs/performance.md quotes for 4096 x 4096 at the defaults (r = 64, T = 5,
// p = 16, q = 2, w = 1): 22 sketch passes + 5 of W - L R, 116 bytes per weight element (upload
// 8, ||W|| 4, the first Qd, E and ||E|| 24, four fused passes of 16 and the last of 8, download 8).
TEST(LoftqWork, DefaultsOn4096Squared) {
  LoftqOptions o;
  const LoftqWork w = loftq_work(o, 4096, 4096);
  EXPECT_EQ(w.gemm_passes, 27);
  const double mn = 4096.0 * 4096.0;
  // 116 bytes per element in matrix-sized passes, plus the factors and the test matrix.
  const double small = 5 * 8.0 * 64 * 8192 + 8.0 * 4096 * 80 + 8.0 * 64 * 8192;
  EXPECT_NEAR(w.bytes, 116.0 * mn + small, 1.0);
  EXPECT_NEAR(w.gemm_flops / mn, 22 * 2 * 80 + 5 * 2 * 64 + 5 * 2 * 80 * 80 / 4096.0, 1e-9);
}
