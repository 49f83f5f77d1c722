// The SIMD building blocks of the CPU backend, compiled for every x86/Arm
// target Highway supports and chosen at run time (HWY_DYNAMIC_DISPATCH).
// All operate on packed fp32 panels whose row lengths are multiples of
// kPanelAlign, so no kernel needs a scalar tail.
#pragma once

#include <stdint.h>

namespace fsdpa::cpu {

constexpr int kPanelAlign = 16;  // floats: one AVX-512 vector

inline int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

// C[M x N] (+)= A[M x K] * B[K x N]; row-major with leading dims in floats.
// N and ldb, ldc multiples of kPanelAlign; pointers 64-byte aligned.
void gemm(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
          int ldc, bool accumulate);

// C = diag(row_scale) C + A * B (the online softmax's rescale of O by
// exp(m_old - m_new) folded into P V's load of O).
void gemm_scale_c(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
                  int ldc, const float* row_scale);

// Same with A given transposed: At is [K x M] (leading dim ldat).
void gemm_at(int M, int N, int K, const float* At, int ldat, const float* B, int ldb, float* C,
             int ldc, bool accumulate);

// C[M x N] = A[M x K] * Bt^T, Bt [N x K] row-major (K multiple of
// kPanelAlign). Dot-product form for few rows of A.
void gemm_bt(int M, int N, int K, const float* A, int lda, const float* Bt, int ldbt, float* C,
             int ldc);

// Decode kernels that read K or V rows in place from the caller's tensor
// (fp32, or bf16 = true; K elements per row, contiguous; row r at element
// offset r * ld): no packed copy for the few query rows of a decode step.
// They do not check for NaN/Inf: a non-finite element makes the result
// non-finite (x * Inf and 0 * Inf are not finite), which the caller checks.
// C[M x N] = A[M x K] * Bt^T (A a zero-padded fp32 panel).
void dot_rows_src(int M, int N, int K, const float* A, int lda, const void* Bt, bool bf16,
                  int64_t ldbt, float* C, int ldc);
// O[M x K] += P[M x N] * B (O's rows padded to whole vectors).
void accum_rows_src(int M, int N, int K, const float* P, int ldp, const void* B, bool bf16,
                    int64_t ldb, float* O, int ldo);

// dst [cols x rows] (leading dim ld_dst) = src^T, src [rows x cols] (ld_src).
void transpose(const float* src, int64_t ld_src, int64_t rows, int64_t cols, float* dst,
               int64_t ld_dst);

// True if no x[i] (i < n) is NaN or Inf.
bool all_finite(const float* x, int64_t n);

// dst[i] = src[i] * mul for a contiguous fp32 or (bf16 = true) bfloat16
// row of any length n; false if an element is NaN or Inf.
bool convert_row(const void* src, bool bf16, int64_t n, float mul, float* dst);

// dst[i] = src[i] * mul for a contiguous fp32 or (bf16 = true) bfloat16 row
// of any length n; bf16 rounded to nearest even (as f32_to_bf16).
void store_row(const float* src, float mul, bool bf16, int64_t n, void* dst);

// dp[i] = p[i] * (dp[i] - delta): the softmax backward of one row.
void softmax_grad_row(const float* p, float* dp, float delta, int n);

// x[i] = exp(x[i] - m) for i < n (n multiple of kPanelAlign); -inf -> 0,
// NaN stays NaN (also x = m = +inf).
// Returns the sum of the results.
float exp_sub_sum(float* x, int n, float m);

// One online-softmax step over `rows` rows of a score tile (n a multiple of
// kPanelAlign, rows ld apart), for the fp32 products: per row, m_new =
// max(m, row max) (NaN kept); where m_new > -inf the row becomes
// exp(s - m_new) (as exp_sub_sum), alpha[r] = exp(m - m_new) (0 from
// m = -inf), l = l * alpha + the row's sum, m = m_new. Rows whose m_new is
// -inf are not touched (m stays -inf) and get alpha = NaN: the caller
// handles them.
void softmax_rows(float* S, int ld, int rows, int n, float* m, float* l, float* alpha);

// y[i] *= a for i < n (n multiple of kPanelAlign).
void scale_row(float* y, int n, float a);

// Name of the SIMD target chosen at run time (e.g. "AVX3"), for benchmarks.
const char* simd_target_name();

}  // namespace fsdpa::cpu
