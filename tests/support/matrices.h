// Test matrices shared by the LoftQ suites (CPU and CUDA).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "quant/loftq.h"

namespace loftqd::testing {

// LoftQ options for the NF quantizer at `bits` (blocks of 64), `iters` alternations, `rank`.
inline quant::LoftqOptions nf_options(int bits, int iters, quant::SvdMode mode, int rank = 16) {
  quant::LoftqOptions o;
  o.rank = rank;
  o.iters = iters;
  o.quant = quant::QuantSpec{quant::QuantMethod::NF, bits, 64};
  o.svd = mode;
  return o;
}

// n values drawn from N(0, sd^2) with mt19937(seed).
inline std::vector<float> gaussian(size_t n, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

// A weight-like m x n matrix: a decaying rank-24 part, Gaussian noise and outlier columns
// (every 97th, scaled 6x) — the structure that makes a low-rank correction worth having.
inline std::vector<float> structured_matrix(int m, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  const int k = 24;
  std::vector<double> u(size_t(m) * k), v(size_t(n) * k);
  for (auto& x : u) x = g(rng);
  for (auto& x : v) x = g(rng);
  std::vector<float> w(size_t(m) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int c = 0; c < k; ++c) s += u[size_t(i) * k + c] * v[size_t(j) * k + c] / (1.0 + c);
      double val = 0.004 * s + 0.01 * g(rng);
      if (j % 97 == 5) val *= 6.0;
      w[size_t(i) * n + j] = static_cast<float>(val);
    }
  return w;
}

}  // namespace loftqd::testing
