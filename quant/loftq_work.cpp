// quant/loftq.h's loftq_work: the Backend calls of loftq() and truncated_svd(), replayed as
// counts. Keep it in step with quant/loftq.cpp (tests/quant/test_loftq_work.cpp checks it
// against a counting Backend).
#include <algorithm>

#include "quant/loftq.h"

namespace loftqd::quant {

namespace cost {

double gemm_flops(int m, int n, int k) {
  return 2.0 * double(m) * double(n) * double(k);
}

double qr_flops(int m, int k) {
  const double dm = m, dk = k;
  return 4.0 * dm * dk * dk - 4.0 * dk * dk * dk / 3.0;
}

double svd_flops(int m, int n) {
  const double a = std::max(m, n), b = std::min(m, n);
  return std::min(14.0 * a * b * b + 8.0 * b * b * b, 6.0 * a * b * b + 20.0 * b * b * b);
}

double svd_top_flops(int m, int n, int r) {
  const double d = std::min(m, n), big = std::max(m, n), p = std::min(r, std::min(m, n));
  return d * d * big + 4.0 * d * d * d / 3.0 + 2.0 * d * d * p + 2.0 * p * d * big;
}

double make_factors_bytes(int m, int n, int r) {
  return 8.0 * double(r) * (double(m) + double(n));
}

}  // namespace cost

namespace {

// One truncated_svd() call; `warm`: a previous randomized call left its subspace.
void svd_work(const LoftqOptions& opt, int m, int n, bool warm, LoftqWork& w) {
  const int r = opt.rank, p = std::min(m, n);
  if (svd_mode_for(opt, m, n) == SvdMode::Exact) {
    w.other_flops += cost::svd_top_flops(m, n, r);
    w.bytes += cost::svd_top_bytes(size_t(m) * n) + cost::make_factors_bytes(m, n, r);
    return;
  }
  const int k = std::min(r + std::max(opt.oversample, 0), p);
  if (!warm) w.bytes += cost::copy_bytes(size_t(n) * k);  // the Gaussian test matrix
  const int q = warm ? opt.warm_power_iters : opt.power_iters;
  w.gemm_flops += cost::gemm_flops(m, k, n);  // Y = E Omega or E V
  w.other_flops += cost::qr_flops(m, k);
  for (int i = 0; i < q; ++i) {
    w.gemm_flops += cost::gemm_flops(n, k, m) + cost::gemm_flops(m, k, n);  // Z = E^T Y, Y = E Z
    w.other_flops += cost::qr_flops(n, k) + cost::qr_flops(m, k);
  }
  w.gemm_flops += cost::gemm_flops(k, n, m);  // B = Y^T E
  w.other_flops += cost::svd_flops(k, n);
  w.gemm_flops += cost::gemm_flops(m, k, k);  // U = Y Ub
  w.bytes += cost::make_factors_bytes(m, n, r);
  w.gemm_passes += 2 + 2 * q;
}

}  // namespace

LoftqWork loftq_work(const LoftqOptions& opt, int m, int n) {
  LoftqWork w;
  const size_t mn = size_t(m) * n;
  const int r = opt.rank;
  w.bytes += cost::copy_bytes(mn) + cost::sq_norm_bytes(mn);  // upload W, ||W||
  // The first iterate's Qd = qd(W), E = W - Qd and its QLoRA error.
  w.bytes += cost::copy_bytes(mn) + cost::sub_bytes(mn) + cost::sq_norm_bytes(mn);
  for (int t = 1; t <= opt.iters; ++t) {
    svd_work(opt, m, n, t > 1, w);
    // residual_pass: the error of this iterate and the next one's Qd and E.
    w.gemm_flops += cost::gemm_flops(m, n, r);  // W - L R
    w.gemm_passes += 1;
    w.bytes += cost::residual_pass_bytes(mn, t < opt.iters);
  }
  w.bytes += cost::copy_bytes(mn) + cost::copy_bytes(size_t(r) * n) +
             cost::copy_bytes(size_t(m) * r);  // download Q, A, B
  return w;
}

}  // namespace loftqd::quant
