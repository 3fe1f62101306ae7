// Blockwise quantizers: NF4 (bitsandbytes, bit-exact), NF2/NF3 (LoftQ/PEFT NFQuantizer),
// uniform 2/3/4/8-bit (NFQuantizer "uniform"). DESIGN §4. The code tables live here, once,
// for the CPU and CUDA backends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <set>
#include <span>
#include <string>

namespace loftqd::quant {

enum class QuantMethod { NF, Uniform };

inline constexpr int kDefaultBlockSize = 64;

struct QuantSpec {
  QuantMethod method = QuantMethod::NF;
  int bits = 4;
  int block_size = kDefaultBlockSize;
};

// bitsandbytes' NF4 table and its 15 decision thresholds (csrc/kernels.cu dQuantizeNF4),
// low to high: code = number of thresholds t with x > t.
inline constexpr float kNF4Table[16] = {-1.0f,
                                        -0.6961928009986877f,
                                        -0.5250730514526367f,
                                        -0.39491748809814453f,
                                        -0.28444138169288635f,
                                        -0.18477343022823334f,
                                        -0.09105003625154495f,
                                        0.0f,
                                        0.07958029955625534f,
                                        0.16093020141124725f,
                                        0.24611230194568634f,
                                        0.33791524171829224f,
                                        0.44070982933044434f,
                                        0.5626170039176941f,
                                        0.7229568362236023f,
                                        1.0f};
inline constexpr float kNF4Thresholds[15] = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f};
// NFQuantizer.create_normal_map(offset=0.9677083, symmetric=False, num_bits=2), with the
// 0.33791524 entry taken from the NF4 table so every NF2 code is an NF4 code.
inline constexpr float kNF2Table[4] = {-1.0f, 0.0f, 0.33791524171829224f, 1.0f};
// Same construction for num_bits=3 (float32 linspace, double ppf, float32 sort and divide).
inline constexpr float kNF3Table[8] = {-1.0f,
                                       -0.4786292016506195f,
                                       -0.217141792178154f,
                                       0.0f,
                                       0.16093020141124725f,
                                       0.33791524171829224f,
                                       0.5626170039176941f,
                                       1.0f};

bool supports(QuantMethod m, int bits);       // NF: 2,3,4; uniform: 2,3,4,8
std::set<int> supported_bits(QuantMethod m);  // the same, as a set
// The code table, sorted ascending. Throws std::invalid_argument for an unsupported pair.
std::span<const float> code_table(QuantMethod m, int bits);
std::string spec_name(const QuantSpec& s);       // "nf4", "uniform2", ...
QuantMethod parse_method(const std::string& s);  // "nf" | "uniform"; invalid_argument
std::string method_name(QuantMethod m);          // "nf" | "uniform"

// Throws std::invalid_argument unless the spec is supported and n is a positive multiple of
// the block size.
void check_spec(const QuantSpec& s, size_t n);

// Per-block scale: absmax for NF, mean + 2.5 * std (Bessel) for uniform.
float block_scale(const QuantSpec& s, const float* block);
// Code of one value given its block's scale (the rules of DESIGN §4: NF4 multiplies by the
// reciprocal and walks bitsandbytes' thresholds; the others divide and take the nearest table
// entry, ties to the lower index). A zero scale gives the code of the entry nearest 0.
uint8_t quantize_value(const QuantSpec& s, float x, float scale);

// Quantizes n values (n a multiple of the block size): codes[n], scales[n / block_size].
void quantize(const QuantSpec& s, const float* x, size_t n, uint8_t* codes, float* scales);
// table[code] * scale; a zero scale gives 0.
void dequantize(const QuantSpec& s, const uint8_t* codes, const float* scales, size_t n,
                float* out);
// out = dequantize(quantize(x)), fused, split over `threads` threads.
void quant_dequant(const QuantSpec& s, const float* x, size_t n, float* out, int threads = 1);

}  // namespace loftqd::quant
