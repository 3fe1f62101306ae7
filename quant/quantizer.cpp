#include "quant/quantizer.h"

#include "quant/x86.h"  // the x86-64 kernels chosen at run time

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <thread>
#include <vector>

namespace loftqd::quant {

namespace {

// torch.linspace(-1, 1, n) in float32 as aten's scalar kernel computes it: step = 2/(n-1); the
// first half counts up from -1, the second half down from 1, so the table is exactly symmetric.
template <int N>
struct UniformTable {
  float v[N];
  UniformTable() {
    const float step = 2.0f / static_cast<float>(N - 1);
    for (int i = 0; i < N; ++i)
      v[i] = i < N / 2 ? -1.0f + step * static_cast<float>(i)
                       : 1.0f - step * static_cast<float>(N - i - 1);
  }
};

const UniformTable<4>& uniform2() {
  static const UniformTable<4> t;
  return t;
}
const UniformTable<8>& uniform3() {
  static const UniformTable<8> t;
  return t;
}
const UniformTable<16>& uniform4() {
  static const UniformTable<16> t;
  return t;
}
const UniformTable<256>& uniform8() {
  static const UniformTable<256> t;
  return t;
}

inline uint8_t nf4_code(float normalized) {
  // Count of thresholds strictly below: a value on a threshold takes the lower code, as
  // bitsandbytes' `x > t` decision tree does.
  int c = 0;
  for (float t : kNF4Thresholds) c += normalized > t ? 1 : 0;
  return static_cast<uint8_t>(c);
}

// argmin_k |y - table[k]| in float32, first minimum on ties (torch.argmin). The table is
// sorted, and fl(|y - t|) is monotone in t on each side of y, so only the two neighbours of y
// can win.
inline uint8_t nearest_code(std::span<const float> table, float y) {
  const size_t n = table.size();
  size_t hi = static_cast<size_t>(std::upper_bound(table.begin(), table.end(), y) - table.begin());
  if (hi == 0) return 0;
  if (hi == n) return static_cast<uint8_t>(n - 1);
  const size_t lo = hi - 1;
  const float dl = std::fabs(y - table[lo]);
  const float dh = std::fabs(y - table[hi]);
  return static_cast<uint8_t>(dl <= dh ? lo : hi);
}

uint8_t zero_code(std::span<const float> table) {
  return nearest_code(table, 0.0f);
}

// The hot loop of LoftQ (once per iteration over the whole weight). Values go through in
// chunks: first the codes, by counting table entries or thresholds (branch-free, so the
// compiler vectorizes it), then the table lookups. The codes are those of nf4_code and
// nearest_code, bit for bit.
constexpr size_t kChunk = 64;

// NF4: the number of thresholds strictly below x * inv, as nf4_code.
inline void nf4_chunk(const float* x, size_t n, float inv, float scale, float* out) {
  int32_t code[kChunk];
  for (size_t i = 0; i < n; ++i) {
    const float y = x[i] * inv;
    int32_t c = 0;
    for (float t : kNF4Thresholds) c += y > t ? 1 : 0;
    code[i] = c;
  }
  for (size_t i = 0; i < n; ++i) out[i] = kNF4Table[code[i]] * scale;
}

// Tables of N <= 16 entries: nearest_code without branches. upper_bound's index is the count
// of entries t with !(y < t) (for a NaN y that is N, as upper_bound gives); its two
// neighbours, clamped to the table, are then compared as nearest_code does.
template <int N>
void nearest_chunk(const float* table, const float* x, size_t n, float scale, float* out) {
  float y[kChunk];
  int32_t hi[kChunk];
  for (size_t i = 0; i < n; ++i) {
    y[i] = x[i] / scale;
    int32_t c = 0;
    for (int k = 0; k < N; ++k) c += y[i] < table[k] ? 0 : 1;
    hi[i] = c;
  }
  for (size_t i = 0; i < n; ++i) {
    const int32_t h = std::min(hi[i], N - 1), l = std::max(hi[i] - 1, 0);
    // l on ties; h - l is 0 or 1. Arithmetic rather than ?: keeps the compiler from a branch
    // that random data mispredicts half the time.
    const int32_t up = !(std::fabs(y[i] - table[l]) <= std::fabs(y[i] - table[h]));
    out[i] = table[l + up * (h - l)] * scale;
  }
}

template <class ChunkFn>
void by_chunks(const float* x, size_t n, float* out, ChunkFn fn) {
  for (size_t i = 0; i < n; i += kChunk) fn(x + i, std::min(kChunk, n - i), out + i);
}

#ifdef LOFTQD_X86_KERNELS
// NF4 with AVX-512, 16 values at a time: the code is found by a branch-free binary search over
// the 15 thresholds (padded with +inf to 16, one register), which gives the number of thresholds
// strictly below y exactly as nf4_code counts them, and the value by a register table lookup.
// The scale, its inverse and both products are the same IEEE operations as the portable path,
// so the output is bit-identical (QuantFused tests). Needs the block size to be a multiple of
// 16.
LOFTQD_AVX512_BEGIN
__attribute__((target("avx512f"))) void nf4_blocks_avx512(const float* x, size_t first_block,
                                                          size_t last_block, size_t bs,
                                                          float* out) {
  alignas(64) float thr[16];
  for (int k = 0; k < 15; ++k) thr[k] = kNF4Thresholds[k];
  thr[15] = std::numeric_limits<float>::infinity();
  const __m512 t = _mm512_load_ps(thr);
  const __m512 table = _mm512_loadu_ps(kNF4Table);
  const __m512i c7 = _mm512_set1_epi32(7), c3 = _mm512_set1_epi32(3), c1 = _mm512_set1_epi32(1);
  const __m512i s8 = _mm512_set1_epi32(8), s4 = _mm512_set1_epi32(4), s2 = _mm512_set1_epi32(2);
  for (size_t b = first_block; b < last_block; ++b) {
    const float* xb = x + b * bs;
    float* ob = out + b * bs;
    __m512 m = _mm512_setzero_ps();
    for (size_t i = 0; i < bs; i += 16)
      m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(xb + i)));
    const float scale = _mm512_reduce_max_ps(m);
    if (scale == 0.0f) {
      std::fill(ob, ob + bs, 0.0f);
      continue;
    }
    const __m512 inv = _mm512_set1_ps(1.0f / scale), sc = _mm512_set1_ps(scale);
    for (size_t i = 0; i < bs; i += 16) {
      const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(xb + i), inv);
      __m512i c = _mm512_setzero_si512();
      __mmask16 k = _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(c7, t), _CMP_GT_OQ);
      c = _mm512_mask_add_epi32(c, k, c, s8);
      k = _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(_mm512_add_epi32(c, c3), t), _CMP_GT_OQ);
      c = _mm512_mask_add_epi32(c, k, c, s4);
      k = _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(_mm512_add_epi32(c, c1), t), _CMP_GT_OQ);
      c = _mm512_mask_add_epi32(c, k, c, s2);
      k = _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(c, t), _CMP_GT_OQ);
      c = _mm512_mask_add_epi32(c, k, c, c1);
      _mm512_storeu_ps(ob + i, _mm512_mul_ps(_mm512_permutexvar_ps(c, table), sc));
    }
  }
}

LOFTQD_AVX512_END

#endif

void quant_dequant_range(const QuantSpec& s, const float* x, size_t first_block, size_t last_block,
                         float* out) {
  const size_t bs = static_cast<size_t>(s.block_size);
  const auto table = code_table(s.method, s.bits);
  const bool nf4 = s.method == QuantMethod::NF && s.bits == 4;
#ifdef LOFTQD_X86_KERNELS
  if (nf4 && bs % 16 == 0 && x86::have_avx512f())
    return nf4_blocks_avx512(x, first_block, last_block, bs, out);
#endif
  for (size_t b = first_block; b < last_block; ++b) {
    const float* xb = x + b * bs;
    float* ob = out + b * bs;
    const float scale = block_scale(s, xb);
    if (scale == 0.0f) {
      std::fill(ob, ob + bs, 0.0f);
      continue;
    }
    if (nf4) {
      const float inv = 1.0f / scale;
      by_chunks(xb, bs, ob,
                [&](const float* xc, size_t n, float* oc) { nf4_chunk(xc, n, inv, scale, oc); });
    } else if (table.size() == 4) {
      by_chunks(xb, bs, ob, [&](const float* xc, size_t n, float* oc) {
        nearest_chunk<4>(table.data(), xc, n, scale, oc);
      });
    } else if (table.size() == 8) {
      by_chunks(xb, bs, ob, [&](const float* xc, size_t n, float* oc) {
        nearest_chunk<8>(table.data(), xc, n, scale, oc);
      });
    } else if (table.size() == 16) {
      by_chunks(xb, bs, ob, [&](const float* xc, size_t n, float* oc) {
        nearest_chunk<16>(table.data(), xc, n, scale, oc);
      });
    } else {
      for (size_t i = 0; i < bs; ++i) ob[i] = table[nearest_code(table, xb[i] / scale)] * scale;
    }
  }
}

}  // namespace

bool supports(QuantMethod m, int bits) {
  if (m == QuantMethod::NF) return bits == 2 || bits == 3 || bits == 4;
  return bits == 2 || bits == 3 || bits == 4 || bits == 8;
}

std::set<int> supported_bits(QuantMethod m) {
  std::set<int> out;
  for (int b : {2, 3, 4, 8})
    if (supports(m, b)) out.insert(b);
  return out;
}

std::span<const float> code_table(QuantMethod m, int bits) {
  if (m == QuantMethod::NF) {
    switch (bits) {
      case 2:
        return kNF2Table;
      case 3:
        return kNF3Table;
      case 4:
        return kNF4Table;
      default:
        break;
    }
  } else {
    switch (bits) {
      case 2:
        return uniform2().v;
      case 3:
        return uniform3().v;
      case 4:
        return uniform4().v;
      case 8:
        return uniform8().v;
      default:
        break;
    }
  }
  throw std::invalid_argument(method_name(m) + " quantization does not support " +
                              std::to_string(bits) + " bits (" +
                              (m == QuantMethod::NF ? "nf: 2, 3, 4" : "uniform: 2, 3, 4, 8") + ")");
}

std::string method_name(QuantMethod m) {
  return m == QuantMethod::NF ? "nf" : "uniform";
}

std::string spec_name(const QuantSpec& s) {
  return method_name(s.method) + std::to_string(s.bits);
}

QuantMethod parse_method(const std::string& s) {
  if (s == "nf" || s == "normal") return QuantMethod::NF;
  if (s == "uniform") return QuantMethod::Uniform;
  throw std::invalid_argument("unknown quantization method '" + s + "' (expected nf or uniform)");
}

void check_spec(const QuantSpec& s, size_t n) {
  (void)code_table(s.method, s.bits);
  if (s.block_size <= 0) throw std::invalid_argument("block size must be positive");
  if (n == 0 || n % static_cast<size_t>(s.block_size) != 0)
    throw std::invalid_argument(std::to_string(n) +
                                " elements are not a multiple of the block size " +
                                std::to_string(s.block_size));
}

float block_scale(const QuantSpec& s, const float* block) {
  const size_t bs = static_cast<size_t>(s.block_size);
  if (s.method == QuantMethod::NF) {
    float m = 0.0f;
    for (size_t i = 0; i < bs; ++i) m = std::max(m, std::fabs(block[i]));
    return m;
  }
  // torch: weight_block.mean(-1) + 2.5 * weight_block.std(-1), float32 results. The sums are
  // taken in double and rounded once, which is what torch's float32 reductions approximate.
  double sum = 0.0;
  for (size_t i = 0; i < bs; ++i) sum += block[i];
  const double mean = sum / static_cast<double>(bs);
  double ss = 0.0;
  for (size_t i = 0; i < bs; ++i) ss += (block[i] - mean) * (block[i] - mean);
  const float stdv =
      bs > 1 ? static_cast<float>(std::sqrt(ss / static_cast<double>(bs - 1))) : 0.0f;
  return static_cast<float>(mean) + 2.5f * stdv;
}

uint8_t quantize_value(const QuantSpec& s, float x, float scale) {
  const auto table = code_table(s.method, s.bits);
  if (scale == 0.0f) return zero_code(table);
  if (s.method == QuantMethod::NF && s.bits == 4) return nf4_code(x * (1.0f / scale));
  return nearest_code(table, x / scale);
}

void quantize(const QuantSpec& s, const float* x, size_t n, uint8_t* codes, float* scales) {
  check_spec(s, n);
  const size_t bs = static_cast<size_t>(s.block_size);
  for (size_t b = 0; b < n / bs; ++b) {
    const float scale = block_scale(s, x + b * bs);
    scales[b] = scale;
    for (size_t i = 0; i < bs; ++i) codes[b * bs + i] = quantize_value(s, x[b * bs + i], scale);
  }
}

void dequantize(const QuantSpec& s, const uint8_t* codes, const float* scales, size_t n,
                float* out) {
  check_spec(s, n);
  const auto table = code_table(s.method, s.bits);
  const size_t bs = static_cast<size_t>(s.block_size);
  for (size_t i = 0; i < n; ++i) {
    const float scale = scales[i / bs];
    if (codes[i] >= table.size())
      throw std::invalid_argument("code out of range for " + spec_name(s));
    out[i] = scale == 0.0f ? 0.0f : table[codes[i]] * scale;
  }
}

void quant_dequant(const QuantSpec& s, const float* x, size_t n, float* out, int threads) {
  check_spec(s, n);
  const size_t blocks = n / static_cast<size_t>(s.block_size);
  const size_t nthreads = std::clamp<size_t>(static_cast<size_t>(std::max(threads, 1)), 1,
                                             std::max<size_t>(1, blocks / 1024));
  if (nthreads == 1) {
    quant_dequant_range(s, x, 0, blocks, out);
    return;
  }
  std::vector<std::thread> pool;
  for (size_t t = 0; t < nthreads; ++t) {
    const size_t b0 = blocks * t / nthreads, b1 = blocks * (t + 1) / nthreads;
    pool.emplace_back([&, b0, b1] { quant_dequant_range(s, x, b0, b1, out); });
  }
  for (auto& th : pool) th.join();
}

}  // namespace loftqd::quant
