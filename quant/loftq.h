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

// Randomized SVD loses accuracy where the sketch is a large part of the matrix or the
// residual's spectrum is flat, and saves the least where the matrix is small: exact costs
// O(m n min(m, n)) per iteration against O(m n k) per GEMM pass of the sketch. So `randomized`
// (the default) is a rule, not a promise: it runs the exact SVD of the residual when
//   - rank + oversample >= min(m, n) (nothing left to sketch), or, with exact_where_cheap (the
//     default):
//   - min(m, n) <= kExactMaxDim (1024), or
//   - kExactRankFraction * rank >= min(m, n), i.e. rank >= min(m, n) / 4,
// and the HMT sketch (p = 16, q = 2, w = 1) otherwise. Measured (docs/performance.md, "Small
// matrices"): the sketch alone came to +0.43 % (1024x1024, r = 64) and +0.52 % (2048x512,
// r = 64) above exact, and issue 10 saw +0.72 % on a 256x256 o_proj at r = 64, against DESIGN's
// 0.5 % bound; at min(m, n) >= 2048 it stayed at or below +0.37 %. Exact on 1024x1024 costs
// about 2 s of CPU per matrix (the sketch 0.2 s); on 4096x4096 it would cost 60 s, so large
// shapes keep the sketch. The rule depends only on the shape and the options, so it is
// deterministic; LoftqResult::svd records the SVD that ran.
inline constexpr int kExactMaxDim = 1024;
inline constexpr int kExactRankFraction = 4;
struct LoftqOptions;
SvdMode svd_mode_for(const LoftqOptions& opt, int m, int n);

struct LoftqOptions {
  int rank = 64;
  int iters = 5;  // T >= 1
  QuantSpec quant;
  SvdMode svd = SvdMode::Randomized;
  int oversample = 16;       // randomized: extra columns beyond the rank
  int power_iters = 2;       // randomized: power iterations from a random start
  int warm_power_iters = 1;  // randomized: power iterations when warm-started
  // randomized: run the exact SVD on the small and high-rank shapes of svd_mode_for. false
  // sketches every shape where rank + oversample < min(m, n) (benchmarks and tests measure the
  // sketch alone that way).
  bool exact_where_cheap = true;
  uint64_t seed = 0x10f7;  // random test matrix of the first iteration
};

struct LoftqResult {
  int out_features = 0, in_features = 0, rank = 0;
  std::vector<float> q;             // out x in, the dequantized backbone weight (float32)
  std::vector<float> a;             // rank x in   (PEFT lora_A, before alpha scaling)
  std::vector<float> b;             // out x rank  (PEFT lora_B)
  double qlora_error = 0;           // ||W - Q0||_F / ||W||_F
  double loftq_error = 0;           // ||W - Q - B A||_F / ||W||_F at the best iterate
  int best_iter = 0;                // 1-based
  SvdMode svd = SvdMode::Exact;     // the SVD that ran (svd_mode_for: randomized may run exact)
  std::vector<double> iter_errors;  // per iteration
  double seconds = 0;
};

// The transpose of the rows x cols row-major matrix x (cols x rows, row-major): how a Conv1D
// weight, stored (in, out), becomes the (out, in) matrix LoftQ and PEFT see, and back.
std::vector<float> transposed(const std::vector<float>& x, size_t rows, size_t cols);

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

// The work of one loftq() call, counted from the Backend calls it makes for that shape and
// those options (the calls depend only on them, never on the data), for the benchmarks'
// floors (docs/performance.md, "Floors"): FLOPs a machine runs at its sgemm peak at best,
// bytes that elementwise passes move at its memory bandwidth at best.
struct LoftqWork {
  double gemm_flops = 0;   // the GEMMs: sketch passes over the residual, W - L R, U = Y Ub
  double other_flops = 0;  // QR (orthonormalize), SVD (svd, svd_top), by textbook operation counts
  double bytes = 0;        // elementwise passes: read + written, as STREAM counts them
  int gemm_passes = 0;     // GEMMs whose operand is the whole m x n matrix
  double flops() const { return gemm_flops + other_flops; }
  // The floor in seconds at `gflops` GFLOP/s and `gbps` GB/s.
  double floor_s(double gflops, double gbps) const {
    return flops() / (gflops * 1e9) + bytes / (gbps * 1e9);
  }
};
LoftqWork loftq_work(const LoftqOptions& opt, int m, int n);

// The per-call counts loftq_work adds up (and a counting Backend can check it with).
namespace cost {
double gemm_flops(int m, int n, int k);  // 2 m n k
double qr_flops(int m, int k);           // Householder geqrf + orgqr: 4 m k^2 - 4 k^3 / 3
// Thin SVD with U and V^T of an m x n matrix (a = max, b = min): the cheaper of Golub-Reinsch
// (14 a b^2 + 8 b^3) and R-SVD (6 a b^2 + 20 b^3), Golub & Van Loan's counts.
double svd_flops(int m, int n);
// svd_top's top r triplets by the CPU backend's Gram method (d = min, D = max, p = min(r, d)):
// the Gram matrix d^2 D, its tridiagonal reduction 4 d^3 / 3 and eigenvectors 2 d^2 p, the other
// side 2 p d D. (A backend that runs the full svd() instead does more; the floor stays a bound.)
double svd_top_flops(int m, int n, int r);
inline double svd_top_bytes(size_t n) {  // E is read twice (Gram, then the other side)
  return 8.0 * double(n);
}
// Backend::residual_pass: W and Qd read, and with a next iterate its Qd and E written (the
// GEMM's 2 m n rank FLOPs count as gemm_flops).
inline double residual_pass_bytes(size_t n, bool next) {
  return (next ? 16.0 : 8.0) * double(n);
}
inline double copy_bytes(size_t n) {  // upload, download, copy, quant_dequant
  return 8.0 * double(n);
}
inline double sub_bytes(size_t n) {
  return 12.0 * double(n);
}
inline double sq_dist_bytes(size_t n) {
  return 8.0 * double(n);
}
inline double sq_norm_bytes(size_t n) {
  return 4.0 * double(n);
}
double make_factors_bytes(int m, int n, int r);  // 8 r (m + n)
}  // namespace cost

}  // namespace loftqd::quant
