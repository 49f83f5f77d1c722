// The bf16 forward's AMX kernels (Sapphire Rapids and later; callers check
// amx_bf16_available()): its panels in "tiled" layouts, the tile products
// over them, and the online-softmax step that turns a block of scores into
// the bf16 probabilities of P V.
//
// Tiled panels: every 16 x 64-byte operand tile of a product is one
// contiguous KiB (the tile loads then read 64-byte strides; row-major
// panels with 512-byte rows, as V's, loaded ~40% slower on the product
// side, bench/RESULTS.md). A panel is a grid of such tiles, tile (i, c) at
// base + i * step_i + c * step_c (elements):
//   A [M x K] row-major: tile (m / 16, k / 32) holds 16 rows x 32 values;
//     element (m, k) at row m % 16, value k % 32.
//   B [K x N] pair-interleaved (AMX's layout): tile (n / 16, k / 32) holds
//     16 pair rows x 16 columns x 2: element (k, n) at pair row (k % 32) / 2,
//     word n % 16, half k % 2.
//   C [M x N] fp32: 16 x 16 tiles at base + i * step_i + j * step_c, rows
//     `ld` floats apart (row-major S: step_i = 16 ld, step_c = 16; tiled O:
//     ld = 16, step_c = 256).
// The backward's panels are made from fp32 rows (fp32_to_a_tiles and the
// others below) in k-major orders of the same tiles: A [M x K] as K / 32
// row-major [M x 32] panels one after another (grid a_tiles(M)), B [K x N]
// as N / 16 pair-interleaved [K x 16] panels (grid b_tiles(K)).
// Every kernel here runs between amx_tiles_begin() and amx_tiles_end()
// (amx_kernels.h) on the calling thread.
#pragma once

#include <stdint.h>

namespace fsdpa::cpu {

struct TileGrid {
  int64_t step_i, step_c;
};
struct CTiles {
  float* base;
  int64_t step_i, step_c, ld;
};

// The forward's tile sizes: 16 x 32 bf16 operand tiles (512 values).
constexpr int kTileValues = 512;

// The k-major grids of the backward's panels (see above).
inline TileGrid a_tiles(int M) { return TileGrid{kTileValues, 32 * int64_t{M}}; }
inline TileGrid b_tiles(int K) { return TileGrid{16 * int64_t{K}, kTileValues}; }
// C [M x N] row-major fp32, rows ldc floats apart.
inline CTiles rows_c(float* C, int ldc) { return CTiles{C, 16 * int64_t{ldc}, 16, ldc}; }

// C (+)= A B: M, N multiples of 16, K of 32, tiled A and B, C as above.
void amx_gemm_tiled(int M, int N, int K, const uint16_t* A, TileGrid a, const uint16_t* B,
                    TileGrid b, CTiles c, bool accumulate);

// Row r of a tiled A panel [. x K] (step_i = K / 32 tiles) from n bf16
// values (n <= K), zeros up to K. False if a value is NaN or Inf.
bool amx_pack_a_row(const uint16_t* src, int n, int r, int K, uint16_t* A);

// Tiles (j, 0 .. K / 32) of a B panel K^T [K x keys] from key rows
// keys[0..16) of d values each (d <= K; a null row: zeros): the B side of
// S = Q K^T, tile (j, c) at B + (j * K / 32 + c) * kTileValues. False if a
// value is NaN or Inf.
bool amx_pack_kt_tiles(const uint16_t* const* keys, int d, int K, int j, uint16_t* B);

// Pair row w of a B panel V [keys x N] in k-major order (tile (n / 16, k /
// 32) at B + ((k / 32) * N / 16 + n / 16) * kTileValues, so the panels of
// consecutive key blocks form one longer panel) from value rows r0 and r1
// (keys 2w, 2w + 1; a null row: zeros) of dv values (dv <= N). False if a
// value is NaN or Inf.
bool amx_pack_v_pair(const uint16_t* r0, const uint16_t* r1, int dv, int w, int N, uint16_t* B);

// One step of the online softmax over `keys` (64, 128 or 256) columns of
// scores S [kBlockQ x keys] (row-major, ld = keys), for rows r < rows, in
// units where the probabilities are 2^((x - m) * c) (c = scale * log2(e)
// on unscaled scores, log2(e) on scaled ones; -inf is a hidden key):
//   m_new = max(m[r], max_j S[r][j]) (NaN if either is NaN)
//   alpha[r] = 2^((m[r] - m_new) * c), by which O's row is rescaled
//   p_j = 2^((S[r][j] - m_new) * c), ~3e-6 relative (degree-4 polynomial,
//         p = 1 exactly where S = m_new); NaN stays NaN
//   l[r] (16 partial sums per row, lanes summed at the end) = l[r] * alpha + sum_j p_j
// then m[r] = m_new. p goes to P, a tiled A panel [kBlockQ x keys] in bf16
// (round to nearest even), or, if p_f32, back into S in fp32 (for dropout:
// then amx_pack_p packs it). A row that sees no key yet (m_new = -inf)
// gets p = 0, alpha = 1, unless a score is NaN: then p, m and l are NaN.
// Returns false if every alpha[r] is 1 (O needs no rescaling).
// (The max is exact, not FlashAttention-4's lazy one that moves only by
// more than a threshold: the largest p of a row is then 1 with no bf16
// rounding; the lazy max, p up to 2^8, failed the 2x error rule on
// peaked rows of the bf16 grid, e.g. 0.00635 against 0.00533.)
bool amx_softmax_step(float* S, int keys, int rows, float c, float* m, float* l, float* alpha,
                      uint16_t* P, bool p_f32);

// P (tiled A panel [kBlockQ x keys]) = bf16(S) for rows r < rows.
void amx_pack_p(const float* S, int keys, int rows, uint16_t* P);

// Rows r < rows of a tiled fp32 C panel [. x N] (ld 16, step_c 256,
// step_i = N * 16) times alpha[r] where alpha[r] != 1.
void amx_scale_tiled_rows(float* O, int N, int rows, const float* alpha);

// dst[r * ld + n] = O's element (r, n) for r < rows, n < N (O as above).
void amx_untile_rows(const float* O, int N, int rows, float* dst, int64_t ld);

// The backward's panels in bf16 (round to nearest even) from fp32 rows:
// A [rows x K] (grid a_tiles(rows)) from src [rows x cols] (cols <= K,
// zeros up to K; rows a multiple of 16).
void fp32_to_a_tiles(const float* src, int lds, int rows, int cols, int K, uint16_t* dst);
// A = src^T [cols x rows] (grid a_tiles(cols)) from src [rows x cols]
// (rows a multiple of 32, cols of 16).
void fp32_to_a_tiles_transposed(const float* src, int lds, int rows, int cols, uint16_t* dst);
// B [k x n] (grid b_tiles(k)) from src [k x n] (k a multiple of 32, n of 16).
void fp32_to_b_tiles(const float* src, int lds, int k, int n, uint16_t* dst);
// B = src^T [k_pad x n] (grid b_tiles(k_pad)) from src [n x k] (n a
// multiple of 16, k even; zeros for k <= kk < k_pad, k_pad of 32).
void fp32_to_b_tiles_transposed(const float* src, int lds, int n, int k, int k_pad, uint16_t* dst);

}  // namespace fsdpa::cpu
