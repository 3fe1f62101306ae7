// The LoftQ loop (DESIGN §4), written once over quant::Backend.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/backend.h"
#include "quant/quantizer.h"

namespace loftqd::quant {

enum class SvdMode { Exact, Randomized };
SvdMode parse_svd_mode(const std::string& s);  // "exact" | "randomized"; invalid_argument
std::string svd_mode_name(SvdMode m);

struct LoftqOptions {
  int rank = 64;
  int iters = 5;  // T >= 1
  QuantSpec quant;
  SvdMode svd = SvdMode::Randomized;
  int oversample = 16;       // randomized: extra columns beyond the rank
  int power_iters = 2;       // randomized: power iterations from a random start
  int warm_power_iters = 1;  // randomized: power iterations when warm-started
  uint64_t seed = 0x10f7;    // random test matrix of the first iteration
};

struct LoftqResult {
  int out_features = 0, in_features = 0, rank = 0;
  std::vector<float> q;             // out x in, the dequantized backbone weight (float32)
  std::vector<float> a;             // rank x in   (PEFT lora_A, before alpha scaling)
  std::vector<float> b;             // out x rank  (PEFT lora_B)
  double qlora_error = 0;           // ||W - Q0||_F / ||W||_F
  double loftq_error = 0;           // ||W - Q - B A||_F / ||W||_F at the best iterate
  int best_iter = 0;                // 1-based
  std::vector<double> iter_errors;  // per iteration
  double seconds = 0;
};

// Runs LoftQ on the out x in row-major matrix w. Keeps the best iterate, so loftq_error never
// exceeds the T = 1 error. Throws std::invalid_argument on bad options or non-finite weights.
LoftqResult loftq(Backend& be, const float* w, int out_features, int in_features,
                  const LoftqOptions& opt);

// Rank-r truncated SVD factors of the m x n matrix e (row-major, on the backend; destroyed in
// exact mode): l (m x r), r (r x n). `warm_vt` carries the right subspace between calls in
// randomized mode (empty on the first call).
struct SvdState {
  std::unique_ptr<Buffer> vt;  // k x n
  int k = 0;
};
void truncated_svd(Backend& be, Buffer& e, int m, int n, int r, const LoftqOptions& opt,
                   SvdState& state, Buffer& l, Buffer& r_out);

}  // namespace loftqd::quant
