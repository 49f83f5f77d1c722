// The bf16 forward's AMX kernels (see amx_flash.h). Tile and AVX-512
// instructions are enabled per function, so the file builds with the
// project's flags; callers run them only where amx_bf16_available().
#include "cpu/amx_flash.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/amx_kernels.h"
#include "cpu/heuristics.h"

#if defined(__x86_64__) && defined(__linux__) &&                     \
    ((defined(__clang__) && __clang_major__ >= 12) ||               \
     (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define FSDPA_AMX_FLASH 1
#include <immintrin.h>

#include "cpu/avx512_helpers.h"
#define FSDPA_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16")))
#else
#define FSDPA_AMX_FLASH 0
#define FSDPA_AMX_TARGET
#endif

namespace fsdpa::cpu {

#if FSDPA_AMX_FLASH
namespace {

// One register block: MR x NR C tiles (0..3), A tiles 4..5, B tiles 6..7.
// A k-step's four loads are issued before its products (the first product
// then waits for the first load only).
template <int MR, int NR>
FSDPA_AMX_TARGET inline void block(int ksteps, const uint16_t* a0, int64_t ak, const uint16_t* b0,
                                   int64_t bk, int64_t a_next, int64_t b_next, float* c00,
                                   float* c01, float* c10, float* c11, int sc, bool accumulate) {
  const uint16_t* a1 = a0 + a_next;
  const uint16_t* b1 = b0 + b_next;
  if (accumulate) {
    _tile_loadd(0, c00, sc);
    if (NR > 1) _tile_loadd(1, c01, sc);
    if (MR > 1) _tile_loadd(2, c10, sc);
    if (MR > 1 && NR > 1) _tile_loadd(3, c11, sc);
  } else {
    _tile_zero(0);
    if (NR > 1) _tile_zero(1);
    if (MR > 1) _tile_zero(2);
    if (MR > 1 && NR > 1) _tile_zero(3);
  }
  for (int k = 0; k < ksteps; ++k) {
    _tile_loadd(4, a0 + k * ak, 64);
    _tile_loadd(6, b0 + k * bk, 64);
    if (NR > 1) _tile_loadd(7, b1 + k * bk, 64);
    if (MR > 1) _tile_loadd(5, a1 + k * ak, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (NR > 1) _tile_dpbf16ps(1, 4, 7);
    if (MR > 1) {
      _tile_dpbf16ps(2, 5, 6);
      if (NR > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c00, sc);
  if (NR > 1) _tile_stored(1, c01, sc);
  if (MR > 1) _tile_stored(2, c10, sc);
  if (MR > 1 && NR > 1) _tile_stored(3, c11, sc);
}

template <int MR>
FSDPA_AMX_TARGET inline void block_row(int nt, int ksteps, const uint16_t* a, TileGrid ag,
                                       const uint16_t* B, TileGrid bg, CTiles c, int i,
                                       bool accumulate) {
  const int sc = static_cast<int>(c.ld * 4);
  float* row0 = c.base + i * c.step_i;
  float* row1 = row0 + c.step_i;
  int j = 0;
  for (; j + 2 <= nt; j += 2) {
    float* c0 = row0 + j * c.step_c;
    float* c1 = row1 + j * c.step_c;
    block<MR, 2>(ksteps, a, ag.step_c, B + j * bg.step_i, bg.step_c, ag.step_i, bg.step_i, c0,
                 c0 + c.step_c, c1, c1 + c.step_c, sc, accumulate);
  }
  if (j < nt) {
    float* c0 = row0 + j * c.step_c;
    block<MR, 1>(ksteps, a, ag.step_c, B + j * bg.step_i, bg.step_c, ag.step_i, bg.step_i, c0,
                 nullptr, row1 + j * c.step_c, nullptr, sc, accumulate);
  }
}

// GCC 12's unmasked forms of these read an "undefined" vector that
// -Wmaybe-uninitialized reports: the zero-masked forms with all lanes.
constexpr __mmask16 kAll = 0xFFFF;
FSDPA_AMX_TARGET inline __m512 max_ps(__m512 a, __m512 b) { return _mm512_maskz_max_ps(kAll, a, b); }

// Largest lane of v (a NaN lane may or may not win).
FSDPA_AMX_TARGET inline float max_lane(__m512 v) {
  v = max_ps(v, _mm512_maskz_shuffle_f32x4(kAll, v, v, 0x4E));  // 256-bit halves swapped
  v = max_ps(v, _mm512_maskz_shuffle_f32x4(kAll, v, v, 0xB1));  // 128-bit lanes swapped
  v = max_ps(v, _mm512_maskz_permute_ps(kAll, v, 0x4E));         // pairs swapped
  v = max_ps(v, _mm512_maskz_permute_ps(kAll, v, 0xB1));         // neighbours swapped
  return _mm512_cvtss_f32(v);
}

FSDPA_AMX_TARGET inline uint16_t* p_tile_row(uint16_t* P, int keys, int r, int chunk) {
  return P + ((r >> 4) * (keys / 32) + chunk) * kTileValues + (r & 15) * 32;
}

// NaN or Inf among the 32 bf16 values of v (exponent bits all set).
FSDPA_AMX_TARGET inline __mmask32 nonfinite_bf16(__m512i v) {
  const __m512i e = _mm512_set1_epi16(0x7F80);
  return _mm512_cmpeq_epi16_mask(_mm512_and_si512(v, e), e);
}

template <int KEYS>
FSDPA_AMX_TARGET bool softmax_step(float* S, int rows, float c, float* m, float* l, float* alpha,
                                   uint16_t* P, bool p_f32) {
  constexpr int V = KEYS / 16;
  float m_new[kBlockQ];
  for (int r = 0; r < rows; ++r) {
    const float* s = S + r * KEYS;
    __m512 mx = _mm512_loadu_ps(s);
    for (int v = 1; v < V; ++v) mx = max_ps(mx, _mm512_loadu_ps(s + 16 * v));
    const float bm = max_lane(mx);
    m_new[r] = m[r] != m[r] || bm != bm ? NAN : (bm > m[r] ? bm : m[r]);
  }
  const __m512 vc = _mm512_set1_ps(c);
  __mmask16 moved = 0;
  for (int r = 0; r < rows; r += 16) {
    const __mmask16 live = rows - r >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (rows - r)) - 1);
    const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(live, m + r), _mm512_maskz_loadu_ps(live, m_new + r));
    const __m512 a = exp2_nonpos(_mm512_mul_ps(d, vc));
    _mm512_mask_storeu_ps(alpha + r, live, a);
    // (NaN factors count as moved; rows that see nothing are set to 1 below)
    moved |= _mm512_mask_cmp_ps_mask(live, a, _mm512_set1_ps(1.0f), _CMP_NEQ_UQ) &
             _mm512_mask_cmp_ps_mask(live, _mm512_maskz_loadu_ps(live, m_new + r),
                                     _mm512_set1_ps(-INFINITY), _CMP_NEQ_UQ);
  }
  for (int r = 0; r < rows; ++r) {
    float* s = S + r * KEYS;
    float* lr = l + 16 * r;
    if (m_new[r] == -INFINITY) {  // nothing visible yet (rare: bands, masks)
      bool nan = false;
      for (int j = 0; j < KEYS; ++j) nan |= s[j] != s[j];
      const float pv = nan ? NAN : 0.0f;
      if (p_f32) {
        for (int j = 0; j < KEYS; ++j) s[j] = pv;
      } else {
        const __m512i bits = _mm512_set1_epi16(nan ? 0x7FC0 : 0);
        for (int q = 0; q < KEYS / 32; ++q) _mm512_storeu_si512(p_tile_row(P, KEYS, r, q), bits);
      }
      if (nan) {
        m[r] = NAN;
        _mm512_storeu_ps(lr, _mm512_set1_ps(NAN));
      }
      alpha[r] = 1.0f;
      continue;
    }
    const __m512 vm = _mm512_set1_ps(m_new[r]);
    __m512 sum = _mm512_mul_ps(_mm512_loadu_ps(lr), _mm512_set1_ps(alpha[r]));
    for (int q = 0; q < KEYS / 32; ++q) {
      const __m512 e0 = exp2_nonpos(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(s + 32 * q), vm), vc));
      const __m512 e1 = exp2_nonpos(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(s + 32 * q + 16), vm), vc));
      sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
      if (p_f32) {
        _mm512_storeu_ps(s + 32 * q, e0);
        _mm512_storeu_ps(s + 32 * q + 16, e1);
      } else {
        // Lanes 0-15 from the second operand: keys 32q .. 32q + 15 first.
        _mm512_storeu_si512(p_tile_row(P, KEYS, r, q), (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
      }
    }
    _mm512_storeu_ps(lr, sum);
    m[r] = m_new[r];
  }
  return moved != 0;
}

}  // namespace

FSDPA_AMX_TARGET void amx_gemm_tiled(int M, int N, int K, const uint16_t* A, TileGrid a,
                                     const uint16_t* B, TileGrid b, CTiles c, bool accumulate) {
  const int mt = M / 16, nt = N / 16, ksteps = K / 32;
  int i = 0;
  for (; i + 2 <= mt; i += 2) block_row<2>(nt, ksteps, A + i * a.step_i, a, B, b, c, i, accumulate);
  if (i < mt) block_row<1>(nt, ksteps, A + i * a.step_i, a, B, b, c, i, accumulate);
}

FSDPA_AMX_TARGET bool amx_pack_a_row(const uint16_t* src, int n, int r, int K, uint16_t* A) {
  __mmask32 bad = 0;
  uint16_t* row = A + (r >> 4) * (K / 32) * kTileValues + (r & 15) * 32;
  for (int k = 0; k < K; k += 32) {
    const int left = n - k;
    const __mmask32 mask = left >= 32 ? ~__mmask32{0} : left > 0 ? (__mmask32{1} << left) - 1 : 0;
    const __m512i v = _mm512_maskz_loadu_epi16(mask, src + k);
    bad |= nonfinite_bf16(v);
    _mm512_storeu_si512(row + (k / 32) * kTileValues, v);
  }
  return bad == 0;
}

FSDPA_AMX_TARGET bool amx_pack_kt_tiles(const uint16_t* const* keys, int d, int K, int j,
                                        uint16_t* B) {
  __mmask32 bad = 0;
  for (int k = 0; k < K; k += 32) {
    const int left = d - k;
    const __mmask32 mask = left >= 32 ? ~__mmask32{0} : left > 0 ? (__mmask32{1} << left) - 1 : 0;
    // Row n: key n's 16 pairs of this k-step; the tile wants them transposed
    // (pair row w holds pair w of every key): a 16 x 16 transpose of words.
    __m512i x[16];
    for (int n = 0; n < 16; ++n) {
      x[n] = keys[n] ? _mm512_maskz_loadu_epi16(mask, keys[n] + k) : _mm512_setzero_si512();
      bad |= nonfinite_bf16(x[n]);
    }
    transpose16x16_words(x);
    uint16_t* tile = B + (static_cast<int64_t>(j) * (K / 32) + k / 32) * kTileValues;
    for (int w = 0; w < 16; ++w) _mm512_storeu_si512(tile + w * 32, x[w]);
  }
  return bad == 0;
}

FSDPA_AMX_TARGET bool amx_pack_v_pair(const uint16_t* r0, const uint16_t* r1, int dv, int w,
                                      int N, uint16_t* B) {
  // Lane i: r0[i / 2] for even i, r1[i / 2] (index 32 + i / 2) for odd.
  alignas(64) static const uint16_t kInterleave[32] = {
      0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
      8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i idx = _mm512_load_si512(kInterleave);
  __mmask32 bad = 0;
  uint16_t* row = B + (w / 16) * (N / 16) * kTileValues + (w % 16) * 32;
  for (int n = 0; n < N; n += 16) {
    const int left = dv - n;
    const __mmask32 mask = left >= 16 ? 0xFFFF : left > 0 ? (__mmask32{1} << left) - 1 : 0;
    const __m512i a = r0 ? _mm512_maskz_loadu_epi16(mask, r0 + n) : _mm512_setzero_si512();
    const __m512i b = r1 ? _mm512_maskz_loadu_epi16(mask, r1 + n) : _mm512_setzero_si512();
    bad |= nonfinite_bf16(a) | nonfinite_bf16(b);
    _mm512_storeu_si512(row + (n / 16) * kTileValues, _mm512_permutex2var_epi16(a, idx, b));
  }
  return bad == 0;
}

bool amx_softmax_step(float* S, int keys, int rows, float c, float* m, float* l, float* alpha,
                      uint16_t* P, bool p_f32) {
  if (keys == 256) return softmax_step<256>(S, rows, c, m, l, alpha, P, p_f32);
  if (keys == 128) return softmax_step<128>(S, rows, c, m, l, alpha, P, p_f32);
  if (keys == 64) return softmax_step<64>(S, rows, c, m, l, alpha, P, p_f32);
  abort();  // no other sizes (amx_flash.h)
}

FSDPA_AMX_TARGET void amx_pack_p(const float* S, int keys, int rows, uint16_t* P) {
  for (int r = 0; r < rows; ++r)
    for (int q = 0; q < keys / 32; ++q) {
      const float* s = S + r * keys + 32 * q;
      _mm512_storeu_si512(p_tile_row(P, keys, r, q),
                          (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + 16), _mm512_loadu_ps(s)));
    }
}

FSDPA_AMX_TARGET void amx_scale_tiled_rows(float* O, int N, int rows, const float* alpha) {
  for (int r = 0; r < rows; ++r) {
    if (alpha[r] == 1.0f) continue;
    const __m512 a = _mm512_set1_ps(alpha[r]);
    float* row = O + (r >> 4) * 16 * N + (r & 15) * 16;
    for (int n = 0; n < N; n += 16) {
      float* x = row + n * 16;
      _mm512_storeu_ps(x, _mm512_mul_ps(_mm512_loadu_ps(x), a));
    }
  }
}

FSDPA_AMX_TARGET void amx_untile_rows(const float* O, int N, int rows, float* dst, int64_t ld) {
  for (int r = 0; r < rows; ++r) {
    const float* row = O + (r >> 4) * 16 * N + (r & 15) * 16;
    for (int n = 0; n < N; n += 16) _mm512_storeu_ps(dst + r * ld + n, _mm512_loadu_ps(row + n * 16));
  }
}

#else  // no AMX on this target or compiler: callers check amx_bf16_available()

void amx_gemm_tiled(int, int, int, const uint16_t*, TileGrid, const uint16_t*, TileGrid, CTiles,
                    bool) {
  abort();
}
bool amx_pack_a_row(const uint16_t*, int, int, int, uint16_t*) { abort(); }
bool amx_pack_kt_tiles(const uint16_t* const*, int, int, int, uint16_t*) { abort(); }
bool amx_pack_v_pair(const uint16_t*, const uint16_t*, int, int, int, uint16_t*) { abort(); }
bool amx_softmax_step(float*, int, int, float, float*, float*, float*, uint16_t*, bool) {
  abort();
}
void amx_pack_p(const float*, int, int, uint16_t*) { abort(); }
void amx_scale_tiled_rows(float*, int, int, const float*) { abort(); }
void amx_untile_rows(const float*, int, int, float*, int64_t) { abort(); }

#endif

// The backward's tiled panels: the row-major and pair-interleaved
// conversions of amx_kernels.h, one 32-value (A) or 16-column (B) slice at
// a time, each slice a panel with 64-byte rows.
void fp32_to_a_tiles(const float* src, int lds, int rows, int cols, int K, uint16_t* dst) {
  for (int c = 0; c < K; c += 32) {
    const int n = cols - c < 32 ? (cols > c ? cols - c : 0) : 32;
    to_bf16_rows(src + c, lds, rows, n, 32, dst + int64_t{c} * rows, 32);
  }
}

void fp32_to_a_tiles_transposed(const float* src, int lds, int rows, int cols, uint16_t* dst) {
  for (int r = 0; r < rows; r += 32)
    to_bf16_transposed(src + int64_t{r} * lds, lds, 32, cols, dst + int64_t{r} * cols, 32);
}

void fp32_to_b_tiles(const float* src, int lds, int k, int n, uint16_t* dst) {
  for (int j = 0; j < n; j += 16) to_bf16_pairs(src + j, lds, k, 16, dst + int64_t{j} * k, 32);
}

void fp32_to_b_tiles_transposed(const float* src, int lds, int n, int k, int k_pad, uint16_t* dst) {
  for (int j = 0; j < n; j += 16)
    to_bf16_pairs_transposed(src + int64_t{j} * lds, lds, 16, k, k_pad, dst + int64_t{j} * k_pad,
                             32);
}

}  // namespace fsdpa::cpu
