// Test kernel: tiled GEMM  C[N x N] (float) = A[N x N] (half) * B[N x N] (half)
// with simdgroup_matrix. One threadgroup of 4 simdgroups per 64x64 block of
// C; each simdgroup owns a 32x32 quadrant; K is walked in chunks of 32
// staged through threadgroup memory.
#include <metal_stdlib>
#include "fsdpa_metal_compat.h"
using namespace metal;

#ifndef GEMM_N
#error "GEMM_N must be defined"
#endif

constant uint BM = 64;
constant uint BN = 64;
constant uint BK = 32;
constant uint kThreads = 128;

kernel void gemm(device const half* A [[buffer(0)]],
                 device const half* B [[buffer(1)]],
                 device float* C [[buffer(2)]],
                 uint2 tgpos [[threadgroup_position_in_grid]],
                 ushort tid [[thread_index_in_threadgroup]],
                 ushort sg [[simdgroup_index_in_threadgroup]]) {
  FSDPA_THREADGROUP(half, As, BM * BK);
  FSDPA_THREADGROUP(half, Bs, BK * BN);
  const uint row0 = tgpos.y * BM;
  const uint col0 = tgpos.x * BN;
  const uint sr = (sg / 2) * 32;
  const uint sc = (sg % 2) * 32;

  simdgroup_float8x8 acc[4][4];
  for (uint i = 0; i < 4; ++i) {
    for (uint j = 0; j < 4; ++j) {
      acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
  }
  for (uint k0 = 0; k0 < GEMM_N; k0 += BK) {
    for (uint i = tid; i < BM * BK; i += kThreads) {
      As[i] = A[(row0 + i / BK) * GEMM_N + k0 + i % BK];
    }
    for (uint i = tid; i < BK * BN; i += kThreads) {
      Bs[i] = B[(k0 + i / BN) * GEMM_N + col0 + i % BN];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint kk = 0; kk < BK; kk += 8) {
      simdgroup_half8x8 a[4];
      simdgroup_half8x8 b[4];
      for (uint i = 0; i < 4; ++i) {
        simdgroup_load(a[i], As + (sr + i * 8) * BK + kk, BK);
      }
      for (uint j = 0; j < 4; ++j) {
        simdgroup_load(b[j], Bs + kk * BN + sc + j * 8, BN);
      }
      for (uint i = 0; i < 4; ++i) {
        for (uint j = 0; j < 4; ++j) {
          simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
        }
      }
    }
#ifndef GEMM_OMIT_BARRIER  // deliberate bug for the race-detection test
    threadgroup_barrier(mem_flags::mem_threadgroup);
#endif
  }
  for (uint i = 0; i < 4; ++i) {
    for (uint j = 0; j < 4; ++j) {
      simdgroup_store(acc[i][j], C + (row0 + sr + i * 8) * GEMM_N + col0 + sc + j * 8, GEMM_N);
    }
  }
}
