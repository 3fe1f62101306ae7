#include "model/dtype.h"

#include <bit>
#include <cstring>
#include <stdexcept>
#include <string>

namespace loftqd::model {

namespace {

struct DTypeEntry {
  DType type;
  std::string_view name;
  size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::F64, "F64", 8},   {DType::F32, "F32", 4},         {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8},         {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},   {DType::I8, "I8", 1},           {DType::U64, "U64", 8},
    {DType::U32, "U32", 4},   {DType::U16, "U16", 2},         {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1}, {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
};

const DTypeEntry& entry(DType t) {
  for (const auto& e : kDTypes) {
    if (e.type == t) return e;
  }
  throw std::invalid_argument("unknown DType value " + std::to_string(static_cast<int>(t)));
}

inline uint32_t f32_bits(float x) {
  return std::bit_cast<uint32_t>(x);
}
inline float bits_f32(uint32_t b) {
  return std::bit_cast<float>(b);
}

// Little-endian loads/stores through byte buffers (no aliasing, any alignment).
inline uint16_t load_u16(const unsigned char* p) {
  if constexpr (std::endian::native == std::endian::little) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  } else {
    return static_cast<uint16_t>(p[0] | (p[1] << 8));
  }
}

inline void store_u16(unsigned char* p, uint16_t v) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, 2);
  } else {
    p[0] = static_cast<unsigned char>(v & 0xFF);
    p[1] = static_cast<unsigned char>(v >> 8);
  }
}

inline uint32_t load_u32(const unsigned char* p) {
  if constexpr (std::endian::native == std::endian::little) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
  } else {
    return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
           (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
  }
}

inline void store_u32(unsigned char* p, uint32_t v) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, 4);
  } else {
    p[0] = static_cast<unsigned char>(v & 0xFF);
    p[1] = static_cast<unsigned char>((v >> 8) & 0xFF);
    p[2] = static_cast<unsigned char>((v >> 16) & 0xFF);
    p[3] = static_cast<unsigned char>(v >> 24);
  }
}

[[noreturn]] void not_float(DType t, const char* what) {
  throw std::invalid_argument(std::string(what) + ": dtype " + std::string(dtype_name(t)) +
                              " is not F32, F16 or BF16");
}

}  // namespace

size_t dtype_size(DType t) {
  return entry(t).size;
}

std::string_view dtype_name(DType t) {
  return entry(t).name;
}

std::optional<DType> parse_dtype(std::string_view s) {
  for (const auto& e : kDTypes) {
    if (e.name == s) return e.type;
  }
  return std::nullopt;
}

uint16_t f32_to_bf16(float x) {
  uint32_t b = f32_bits(x);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) {
    // NaN: keep the sign and the top payload bits, force the quiet bit so the result can
    // never collapse into an infinity.
    return static_cast<uint16_t>((b >> 16) | 0x0040u);
  }
  // Round to nearest, ties to even. Overflow carries into the exponent and yields Inf, which
  // is exactly the IEEE result; Inf itself has a zero low half and stays Inf.
  uint32_t lsb = (b >> 16) & 1u;
  b += 0x7FFFu + lsb;
  return static_cast<uint16_t>(b >> 16);
}

float bf16_to_f32(uint16_t h) {
  uint32_t b = static_cast<uint32_t>(h) << 16;
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) b |= 0x00400000u;  // quiet a signaling NaN
  return bits_f32(b);
}

uint16_t f32_to_f16(float x) {
  const uint32_t b = f32_bits(x);
  const auto sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  const uint32_t a = b & 0x7FFFFFFFu;

  if (a > 0x7F800000u) {  // NaN: quiet, sign and top payload bits kept
    return static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x03FFu));
  }
  if (a >= 0x477FF000u) {  // >= 65520 (halfway above 65504) rounds to Inf; Inf stays Inf
    return static_cast<uint16_t>(sign | 0x7C00u);
  }
  if (a >= 0x38800000u) {                   // >= 2^-14: normal f16
    uint32_t h = (a >> 13) - (112u << 10);  // rebias exponent 127 -> 15
    const uint32_t rest = a & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal f16 (or zero): the value in units of 2^-24 is m * 2^(e - 126).
  const uint32_t e = a >> 23;
  const int shift = 126 - static_cast<int>(e);  // >= 14 here
  if (shift > 24) return sign;  // below 2^-25 (f32 subnormals included): rounds to zero
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  uint32_t h = m >> shift;
  const uint32_t rest = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1u))) ++h;  // h == 0x400 is the smallest normal
  return static_cast<uint16_t>(sign | h);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) {
    if (mant == 0) return bits_f32(sign | 0x7F800000u);
    return bits_f32(sign | 0x7FC00000u | (mant << 13));  // quiet NaN, payload kept
  }
  if (exp == 0) {
    if (mant == 0) return bits_f32(sign);
    // Subnormal: normalize. value = mant * 2^-24.
    int e = -14;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    mant &= 0x3FFu;
    return bits_f32(sign | (static_cast<uint32_t>(e + 127) << 23) | (mant << 13));
  }
  return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

void to_f32(DType t, const void* src, float* dst, size_t n) {
  const auto* p = static_cast<const unsigned char*>(src);
  switch (t) {
    case DType::F32:
      if constexpr (std::endian::native == std::endian::little) {
        if (n) std::memcpy(dst, p, n * 4);
      } else {
        for (size_t i = 0; i < n; ++i) dst[i] = bits_f32(load_u32(p + 4 * i));
      }
      return;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load_u16(p + 2 * i));
      return;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load_u16(p + 2 * i));
      return;
    default:
      not_float(t, "to_f32");
  }
}

void from_f32(DType t, const float* src, void* dst, size_t n) {
  auto* p = static_cast<unsigned char*>(dst);
  switch (t) {
    case DType::F32:
      if constexpr (std::endian::native == std::endian::little) {
        if (n) std::memcpy(p, src, n * 4);
      } else {
        for (size_t i = 0; i < n; ++i) store_u32(p + 4 * i, f32_bits(src[i]));
      }
      return;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) store_u16(p + 2 * i, f32_to_f16(src[i]));
      return;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) store_u16(p + 2 * i, f32_to_bf16(src[i]));
      return;
    default:
      not_float(t, "from_f32");
  }
}

void round_to_dtype(DType t, float* x, size_t n) {
  switch (t) {
    case DType::F32:
      return;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) x[i] = f16_to_f32(f32_to_f16(x[i]));
      return;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
      return;
    default:
      not_float(t, "round_to_dtype");
  }
}

}  // namespace loftqd::model
