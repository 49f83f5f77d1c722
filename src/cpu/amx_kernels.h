// bf16 matrix products on Intel AMX tiles (Sapphire Rapids and later):
// 16 x 16 fp32 tiles accumulate 16 x 32 bf16 by 32 x 16 bf16 products in one
// instruction, fp32 accumulation. Measured on a Sapphire Rapids core
// (bench/bf16_peak.c, bench/fma_peak.c): ~1.5 TFLOP/s against ~90-170
// GFLOP/s of fp32 AVX-512 FMAs and ~70 GFLOP/s of AVX512_BF16 vdpbf16ps, so
// bf16 attention on such a CPU uses these kernels. Elsewhere amx_bf16_available() is false and the
// callers keep their fp32 kernels.
//
// This file: detection, the tile state, and conversions of fp32 panels
// into bf16 row-major (A) and pair-interleaved (B, AMX's VNNI layout)
// panels. The tile products (amx_gemm_tiled) and the tiled panels they read
// (fp32_to_a_tiles and the like, slices of these conversions) are in
// amx_flash.h. uint16_t holds a bf16.
#pragma once

#include <stdint.h>

namespace fsdpa::cpu {

// True if this CPU has AMX-BF16, the OS granted this process the tile state
// (Linux: arch_prctl(ARCH_REQ_XCOMP_PERM)) and FLASHSDPA_CPU_AMX is not "0".
// Decided once per process.
bool amx_bf16_available();

// Loads the tile configuration (all 8 tiles 16 rows x 64 bytes) on the
// calling thread / releases the tile state: the tile products of
// amx_flash.h run between the two, e.g. once per task (loading costs ~150
// cycles, ~1.5% of a bf16 backward when done per product).
void amx_tiles_begin();
void amx_tiles_end();

// The products' K step (tile width in bf16 values).
constexpr int kAmxK = 32;

// Round-to-nearest-even conversions of fp32 panels into the layouts above.
// dst[r * ldd + c] = bf16(src[r * lds + c]) for r < rows, c < cols; zeros
// for cols <= c < cols_pad.
void to_bf16_rows(const float* src, int lds, int rows, int cols, int cols_pad, uint16_t* dst,
                  int ldd);
// B = src^T pair-interleaved: src [N x K] row-major (K even), so that the
// product uses B[k][n] = src[n][k] (e.g. K^T from K's rows); zeros for
// k <= kk < k_pad.
void to_bf16_pairs_transposed(const float* src, int lds, int n, int k, int k_pad, uint16_t* dst,
                              int ldb);
// B = src pair-interleaved: src [K x N] row-major (K even).
void to_bf16_pairs(const float* src, int lds, int k, int n, uint16_t* dst, int ldb);
// The backward's P on AMX: S[r][j] = exp(S[r][j] - lse[r]) for r < rows,
// j < n (n a multiple of 16; rows ld apart), ~3e-6 relative (the forward's
// exp2, exp(0) = 1 exactly, NaN stays NaN); rows with lse = -inf become 0.
void exp_rows_bf16(float* S, int ld, int rows, int n, const float* lse);
// dst [cols x rows] = bf16(src^T), src [rows x cols] row-major.
void to_bf16_transposed(const float* src, int lds, int rows, int cols, uint16_t* dst, int ldd);

}  // namespace fsdpa::cpu
