// AVX-512 pieces shared by the AMX files (included inside their x86
// AVX-512 sections only): a 16 x 16 word transpose for packing, and the
// exp2 of the probabilities that are rounded to bf16 next.
#pragma once

#include <immintrin.h>

namespace fsdpa::cpu {

// x[w] lane n = (before) x[n] lane w. GCC 12's unmasked forms of these
// shuffles read an "undefined" vector that -Wmaybe-uninitialized reports:
// the zero-masked forms with all lanes.
__attribute__((target("avx512f"))) inline void transpose16x16_words(__m512i x[16]) {
  constexpr __mmask16 kAll = 0xFFFF;
  __m512i t[16];
  for (int n = 0; n < 16; n += 2) {  // per 128-bit lane: a0 b0 a1 b1 / a2 b2 a3 b3
    t[n] = _mm512_maskz_unpacklo_epi32(kAll, x[n], x[n + 1]);
    t[n + 1] = _mm512_maskz_unpackhi_epi32(kAll, x[n], x[n + 1]);
  }
  for (int n = 0; n < 16; n += 4) {  // lane L of x[n + s]: rows n..n+3 at word 4L + s
    x[n] = _mm512_maskz_unpacklo_epi64(0xFF, t[n], t[n + 2]);
    x[n + 1] = _mm512_maskz_unpackhi_epi64(0xFF, t[n], t[n + 2]);
    x[n + 2] = _mm512_maskz_unpacklo_epi64(0xFF, t[n + 1], t[n + 3]);
    x[n + 3] = _mm512_maskz_unpackhi_epi64(0xFF, t[n + 1], t[n + 3]);
  }
  for (int s = 0; s < 4; ++s) {  // 4 x 4 transpose of 128-bit lanes
    const __m512i v0 = _mm512_maskz_shuffle_i32x4(kAll, x[s], x[4 + s], 0x44);
    const __m512i v1 = _mm512_maskz_shuffle_i32x4(kAll, x[s], x[4 + s], 0xEE);
    const __m512i v2 = _mm512_maskz_shuffle_i32x4(kAll, x[8 + s], x[12 + s], 0x44);
    const __m512i v3 = _mm512_maskz_shuffle_i32x4(kAll, x[8 + s], x[12 + s], 0xEE);
    t[0 + s] = _mm512_maskz_shuffle_i32x4(kAll, v0, v2, 0x88);
    t[4 + s] = _mm512_maskz_shuffle_i32x4(kAll, v0, v2, 0xDD);
    t[8 + s] = _mm512_maskz_shuffle_i32x4(kAll, v1, v3, 0x88);
    t[12 + s] = _mm512_maskz_shuffle_i32x4(kAll, v1, v3, 0xDD);
  }
  for (int w = 0; w < 16; ++w) x[w] = t[w];
}

// 2^t for t <= 0 or NaN: 2^round(t) (exponent bits from the rounding's
// magic number) times a degree-4 minimax polynomial of 2^f, |f| <= 1/2
// (~3e-6 relative; p(0) = 1, so 2^0 = 1 exactly). t <= -127 gives 0.
__attribute__((target("avx512f"))) inline __m512 exp2_nonpos(__m512 t) {
  // vmaxps returns its second operand when either is NaN: NaN stays NaN.
  // (Zero-masked forms with all lanes: see transpose16x16_words.)
  t = _mm512_maskz_max_ps(0xFFFF, _mm512_set1_ps(-127.0f), t);
  // 1.5 * 2^23 + 127: t + magic rounds t to an integer in the low mantissa
  // bits, biased by 127, so they shifted into the exponent are 2^round(t).
  const __m512 magic = _mm512_set1_ps(12583039.0f);
  const __m512 shifted = _mm512_add_ps(t, magic);
  const __m512 f = _mm512_sub_ps(t, _mm512_sub_ps(shifted, magic));
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(9.5825763e-3f), f, _mm512_set1_ps(5.5906828e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4024107e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9312412e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512i two_k = _mm512_maskz_slli_epi32(0xFFFF, _mm512_castps_si512(shifted), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(two_k));
}

}  // namespace fsdpa::cpu
