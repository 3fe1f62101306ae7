// The Backend calls with a generic implementation in terms of the others.
#include "quant/backend.h"

#include <algorithm>

namespace loftqd::quant {

int Backend::svd_top(Buffer& a, int m, int n, int /*r*/, std::unique_ptr<Buffer>& u,
                     std::vector<float>& s, std::unique_ptr<Buffer>& vt) {
  const int p = std::min(m, n);
  u = alloc(size_t(m) * p);
  vt = alloc(size_t(p) * n);
  svd(a, m, n, *u, s, *vt);
  return p;
}

double Backend::residual_pass(const Buffer& w, const Buffer& l, const Buffer& r, int m, int n,
                              int rank, const Buffer& qd, Buffer& e, const NextIterate* next) {
  const size_t mn = size_t(m) * n;
  copy(w, e, mn);
  gemm(false, false, m, n, rank, -1.0f, l, r, 1.0f, e);  // x = w - l r, in e
  const double err = sq_dist(e, qd, mn);
  if (next) {
    quant_dequant(*next->spec, e, *next->qd, mn);
    sub(w, *next->qd, e, mn);
  }
  return err;
}

}  // namespace loftqd::quant
