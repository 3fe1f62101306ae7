// Tensor element types and float conversions (F32 <-> F16 / BF16).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace loftqd::model {

// Every dtype the safetensors format names. Only F32/F16/BF16 are converted;
// the others pass through byte for byte (embeddings in I8, masks in BOOL...).
enum class DType {
  F64,
  F32,
  F16,
  BF16,
  I64,
  I32,
  I16,
  I8,
  U64,
  U32,
  U16,
  U8,
  BOOL,
  F8_E4M3,
  F8_E5M2
};

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);                  // "F32", "BF16", ...
std::optional<DType> parse_dtype(std::string_view s);  // nullopt for unknown names
inline bool is_float_dtype(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

// IEEE conversions. Round to nearest, ties to even; NaN stays NaN (quiet, sign kept),
// +-Inf stays Inf, overflow rounds to Inf, subnormals are produced and read exactly.
uint16_t f32_to_bf16(float x);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float x);
float f16_to_f32(uint16_t h);

// Bulk conversions between a float dtype buffer (little-endian) and float32.
// `t` must be F32, F16 or BF16.
void to_f32(DType t, const void* src, float* dst, size_t n);
void from_f32(DType t, const float* src, void* dst, size_t n);

// Rounds every value to what `t` can hold (identity for F32).
void round_to_dtype(DType t, float* x, size_t n);

}  // namespace loftqd::model
