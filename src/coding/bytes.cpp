// IEEE binary16 conversion, bit-exact with torch's .half() / .float() (round-to-nearest-even,
// subnormals, +-inf; float NaN -> quiet NaN 0x7e00 with the sign kept; half NaN -> quiet float
// NaN with the payload kept). Written on integer bits so the result does
// not depend on the FPU or compiler flags.
#include "coding/bytes.h"

#include <cstring>

namespace bb {

namespace {
uint32_t float_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}
float bits_float(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
// Drops the low `shift` bits of v, rounding to nearest, ties to even.
uint32_t shift_round_even(uint32_t v, int shift) {
  uint32_t q = v >> shift;
  uint32_t rem = v & ((1u << shift) - 1);
  uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1))) ++q;
  return q;
}
}  // namespace

uint16_t float_to_half(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00;  // NaN (payload dropped, as torch does)
  // 65520 = 65504 + half an ulp: the tie rounds to the even neighbour, which is the infinity.
  if (ax >= 0x477ff000u) return sign | 0x7c00;
  if (ax >= 0x38800000u) {  // normal half (>= 2^-14): rebias exponent, round 23 -> 10 mantissa bits
    // A mantissa carry simply increments the exponent field, which is the correct result.
    return sign | (uint16_t)shift_round_even(ax - 0x38000000u, 13);
  }
  if (ax <= 0x33000000u) return sign;  // <= 2^-25: rounds to zero (2^-25 itself ties to even 0)
  // Subnormal half: value = m * 2^(e-150) = (m >> (126-e)) units of 2^-24.
  const uint32_t e = ax >> 23;
  const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
  return sign | (uint16_t)shift_round_even(m, (int)(126 - e));  // may carry into the first normal
}

float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  const uint32_t e = (h >> 10) & 0x1f;
  const uint32_t m = h & 0x3ff;
  if (e == 0) {
    // Subnormal (or zero): m * 2^-24 is exact in float.
    float v = (float)m * (1.0f / 16777216.0f);
    return bits_float(float_bits(v) | sign);
  }
  if (e == 31) {  // inf, or NaN: payload kept and the quiet bit set, as torch (F16C) does
    return bits_float(sign | 0x7f800000u | (m ? 0x400000u : 0u) | (m << 13));
  }
  return bits_float(sign | ((e + 112) << 23) | (m << 13));
}

}  // namespace bb
