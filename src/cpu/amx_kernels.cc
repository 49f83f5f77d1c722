// AMX-BF16 kernels (see amx_kernels.h). The tile instructions are enabled
// per function (target attributes), so the file builds with the project's
// ordinary flags and the kernels run only where amx_bf16_available() says.
#include "cpu/amx_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"

#if defined(__x86_64__) && defined(__linux__) &&                     \
    ((defined(__clang__) && __clang_major__ >= 12) ||               \
     (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define FSDPA_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cpu/avx512_helpers.h"
#else
#define FSDPA_AMX 0
#endif

namespace fsdpa::cpu {

#if FSDPA_AMX
namespace {

bool detect_amx() {
  // FLASHSDPA_CPU_AMX=0 keeps bf16 on the fp32 kernels: A/B runs, and the
  // test of that path on machines that have AMX (tests/cpp/CMakeLists.txt).
  if (const char* env = getenv("FLASHSDPA_CPU_AMX"); env && strcmp(env, "0") == 0) return false;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_tile = d & (1u << 24), amx_bf16 = d & (1u << 22);
  if (!amx_tile || !amx_bf16) return false;
  // Linux hands out the 8 KiB tile state only on request (per process).
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// Palette 1, all 8 tiles 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) {
      colsb[t] = 64;
      rows[t] = 16;
    }
  }
};

}  // namespace

bool amx_bf16_available() {
  static const bool ok = detect_amx();
  return ok;
}

__attribute__((target("amx-tile"))) void amx_tiles_begin() {
  static const TileConfig cfg;
  _tile_loadconfig(&cfg);
}

__attribute__((target("amx-tile"))) void amx_tiles_end() { _tile_release(); }

#else  // no AMX on this target or compiler

bool amx_bf16_available() { return false; }
void amx_tiles_begin() { abort(); }
void amx_tiles_end() { abort(); }

#endif

#if FSDPA_AMX
// Every CPU with AMX-BF16 has AVX512_BF16: vcvtneps2bf16 rounds 16 floats to
// nearest even at once (NaN stays NaN; like the tile products it treats
// denormals as zero, far below what a bf16 result can resolve here).
#define FSDPA_CVT_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
namespace {
FSDPA_CVT_TARGET inline __m256i cvt16(const float* src) {
  return (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src));
}
}  // namespace
#else
#define FSDPA_CVT_TARGET
#endif

FSDPA_CVT_TARGET void to_bf16_rows(const float* src, int lds, int rows, int cols, int cols_pad,
                                   uint16_t* dst, int ldd) {
  for (int r = 0; r < rows; ++r) {
    const float* s = src + r * lds;
    uint16_t* d = dst + r * ldd;
    int c = 0;
#if FSDPA_AMX
    for (; c + 16 <= cols; c += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + c), cvt16(s + c));
#endif
    for (; c < cols; ++c) d[c] = f32_to_bf16(s[c]);
    for (; c < cols_pad; ++c) d[c] = 0;
  }
}

void to_bf16_pairs_transposed(const float* src, int lds, int n, int k, int k_pad, uint16_t* dst,
                              int ldb) {
  // Row j of src in bf16 is k / 2 words of pairs; word kk / 2 of row j goes
  // to word j of pair row kk / 2.
  uint32_t* d32 = reinterpret_cast<uint32_t*>(dst);
  const int ldw = ldb / 2;
  uint16_t row[512];  // head dims <= 256 here; longer rows go in pieces
  for (int j = 0; j < n; ++j)
    for (int k0 = 0; k0 < k; k0 += 512) {
      const int len = k - k0 < 512 ? k - k0 : 512;
      to_bf16_rows(src + j * lds + k0, 0, 1, len, len, row, 0);
      uint32_t w;
      for (int kk = 0; kk < len; kk += 2) {
        memcpy(&w, row + kk, 4);
        d32[(k0 + kk) / 2 * ldw + j] = w;
      }
    }
  for (int kk = k; kk < k_pad; kk += 2) memset(dst + (kk / 2) * ldb, 0, 4 * n);
}

FSDPA_CVT_TARGET void to_bf16_pairs(const float* src, int lds, int k, int n, uint16_t* dst,
                                    int ldb) {
#if FSDPA_AMX
  // Lane i of the result: a[i / 2] for even i, b[i / 2] for odd.
  alignas(64) static const uint16_t kInterleave[32] = {
      0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kInterleave);
#endif
  for (int kk = 0; kk < k; kk += 2) {
    const float* r0 = src + kk * lds;
    const float* r1 = r0 + lds;
    uint16_t* d = dst + (kk / 2) * ldb;
    int j = 0;
#if FSDPA_AMX
    for (; j + 16 <= n; j += 16) {
      // Low half r0's 16 values, high half r1's.
      const __m512i ab = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(r1 + j), _mm512_loadu_ps(r0 + j));
      _mm512_storeu_si512(d + 2 * j, _mm512_permutexvar_epi16(idx, ab));
    }
#endif
    for (; j < n; ++j) {
      d[2 * j] = f32_to_bf16(r0[j]);
      d[2 * j + 1] = f32_to_bf16(r1[j]);
    }
  }
}

FSDPA_CVT_TARGET void exp_rows_bf16(float* S, int ld, int rows, int n, const float* lse) {
#if FSDPA_AMX
  const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
  for (int r = 0; r < rows; ++r) {
    float* s = S + r * ld;
    if (lse[r] == -INFINITY) {
      memset(s, 0, sizeof(float) * n);
      continue;
    }
    const __m512 m = _mm512_set1_ps(lse[r]);
    for (int j = 0; j < n; j += 16)
      _mm512_storeu_ps(s + j, exp2_nonpos(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), m), log2e)));
  }
#else
  (void)S, (void)ld, (void)rows, (void)n, (void)lse;
  abort();  // callers check amx_bf16_available()
#endif
}

FSDPA_CVT_TARGET void to_bf16_transposed(const float* src, int lds, int rows, int cols,
                                         uint16_t* dst, int ldd) {
#if FSDPA_AMX
  // 16 x 16 blocks: rows in, a word transpose, each column out in bf16.
  for (int r0 = 0; r0 < rows; r0 += 16)
    for (int c0 = 0; c0 < cols; c0 += 16) {
      const int nr = rows - r0 < 16 ? rows - r0 : 16, nc = cols - c0 < 16 ? cols - c0 : 16;
      const __mmask16 col_mask = static_cast<__mmask16>((1u << nc) - 1);
      const __mmask16 row_mask = static_cast<__mmask16>((1u << nr) - 1);
      __m512i x[16];
      for (int r = 0; r < 16; ++r)
        x[r] = r < nr ? _mm512_maskz_loadu_epi32(col_mask, src + (r0 + r) * lds + c0)
                      : _mm512_setzero_si512();
      transpose16x16_words(x);
      for (int c = 0; c < nc; ++c)
        _mm256_mask_storeu_epi16(dst + (c0 + c) * ldd + r0, row_mask,
                                 (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(x[c])));
    }
#else
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[c * ldd + r] = f32_to_bf16(src[r * lds + c]);
#endif
}

}  // namespace fsdpa::cpu
