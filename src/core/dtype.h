// Bit-exact fp16/bf16 <-> fp32 conversions (round to nearest even), host and
// device. Used where no native half type exists (CPU packing, the reference).
#pragma once

#include <stdint.h>
#include <string.h>

#include "core/semantics.h"  // FSDPA_HD

namespace fsdpa {

FSDPA_HD float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
FSDPA_HD uint32_t bits_from_f32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

FSDPA_HD float bf16_to_f32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

FSDPA_HD uint16_t f32_to_bf16(float f) {
  uint32_t u = bits_from_f32(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

FSDPA_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0x1Fu) return f32_from_bits(sign | 0x7F800000u | (man << 13));  // inf/nan
  if (exp != 0) return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
  if (man == 0) return f32_from_bits(sign);
  // subnormal: value = man * 2^-24
  float v = static_cast<float>(man) * 5.9604644775390625e-8f;
  return sign ? -v : v;
}

FSDPA_HD uint16_t f32_to_f16(float f) {
  const uint32_t u = bits_from_f32(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);  // NaN
  if (a >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u); // overflow -> inf
  if (a < 0x38800000u) {  // result is subnormal or zero: round man*2^-24
    const float af = f32_from_bits(a);
    // af / 2^-24 rounded to nearest even; exact since af < 2^-14.
    float scaled = af * 16777216.0f;
    uint32_t m = static_cast<uint32_t>(scaled);
    const float rem = scaled - static_cast<float>(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return static_cast<uint16_t>(sign | m);
  }
  // normal: rebias exponent, round mantissa 23 -> 10 bits, nearest even
  uint32_t r = a - 0x38000000u;  // exponent 127 -> 15
  r += 0xFFFu + ((r >> 13) & 1u);
  return static_cast<uint16_t>(sign | (r >> 13));
}

// Host-side element access by dtype, for the reference and slow paths.
inline double load_as_double(const void* base, int64_t idx, DType t) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(base)[idx];
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(base)[idx]);
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(base)[idx]);
    case DType::f64: return static_cast<const double*>(base)[idx];
    case DType::u8: return static_cast<const uint8_t*>(base)[idx] ? 1.0 : 0.0;
    case DType::i32: return static_cast<const int32_t*>(base)[idx];
  }
  return 0.0;
}

inline void store_from_double(void* base, int64_t idx, DType t, double x) {
  switch (t) {
    case DType::f32: static_cast<float*>(base)[idx] = static_cast<float>(x); break;
    case DType::f16: static_cast<uint16_t*>(base)[idx] = f32_to_f16(static_cast<float>(x)); break;
    case DType::bf16: static_cast<uint16_t*>(base)[idx] = f32_to_bf16(static_cast<float>(x)); break;
    case DType::f64: static_cast<double*>(base)[idx] = x; break;
    case DType::u8: static_cast<uint8_t*>(base)[idx] = x != 0.0; break;
    case DType::i32: static_cast<int32_t*>(base)[idx] = static_cast<int32_t>(x); break;
  }
}

}  // namespace fsdpa
