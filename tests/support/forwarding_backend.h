// A Backend that hands every call to another one: the base of the test decorators (counting the
// work, swapping one call for a reference implementation).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "quant/backend.h"

namespace loftqd::testing {

class ForwardingBackend : public quant::Backend {
 public:
  explicit ForwardingBackend(quant::Backend& in) : in_(in) {}
  using Buffer = quant::Buffer;

  std::string name() const override { return in_.name(); }
  std::unique_ptr<Buffer> alloc(size_t n) override { return in_.alloc(n); }
  void upload(Buffer& d, const float* s, size_t n) override { in_.upload(d, s, n); }
  void download(float* d, const Buffer& s, size_t n) override { in_.download(d, s, n); }
  void copy(const Buffer& s, Buffer& d, size_t n) override { in_.copy(s, d, n); }
  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const Buffer& a, const Buffer& b,
            float beta, Buffer& c) override {
    in_.gemm(ta, tb, m, n, k, alpha, a, b, beta, c);
  }
  void sub(const Buffer& a, const Buffer& b, Buffer& o, size_t n) override { in_.sub(a, b, o, n); }
  double sq_dist(const Buffer& a, const Buffer& b, size_t n) override {
    return in_.sq_dist(a, b, n);
  }
  double sq_norm(const Buffer& a, size_t n) override { return in_.sq_norm(a, n); }
  void quant_dequant(const quant::QuantSpec& s, const Buffer& i, Buffer& o, size_t n) override {
    in_.quant_dequant(s, i, o, n);
  }
  double residual_pass(const Buffer& w, const Buffer& l, const Buffer& r, int m, int n, int rank,
                       const Buffer& qd, Buffer& e, const NextIterate* next) override {
    return in_.residual_pass(w, l, r, m, n, rank, qd, e, next);
  }
  void orthonormalize(Buffer& a, int m, int k) override { in_.orthonormalize(a, m, k); }
  void svd(Buffer& a, int m, int n, Buffer& u, std::vector<float>& s, Buffer& vt) override {
    in_.svd(a, m, n, u, s, vt);
  }
  int svd_top(Buffer& a, int m, int n, int r, std::unique_ptr<Buffer>& u, std::vector<float>& s,
              std::unique_ptr<Buffer>& vt) override {
    return in_.svd_top(a, m, n, r, u, s, vt);
  }
  void make_factors(const Buffer& u, int m, int p, const std::vector<float>& s, const Buffer& vt,
                    int n, int r, Buffer& l, Buffer& ro) override {
    in_.make_factors(u, m, p, s, vt, n, r, l, ro);
  }

 protected:
  quant::Backend& in_;
};

}  // namespace loftqd::testing
