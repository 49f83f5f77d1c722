// 16 x 16 transpose of 32-bit words in AVX-512 registers, for the AMX
// files' packing (included inside their x86 AVX-512 sections only).
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

}  // namespace fsdpa::cpu
