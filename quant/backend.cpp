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

}  // namespace loftqd::quant
