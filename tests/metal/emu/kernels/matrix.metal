// Test kernels: simdgroup_matrix layout, load/store (strided, transposed,
// threadgroup memory) and multiply-accumulate.
#include <metal_stdlib>
#include "fsdpa_metal_compat.h"
using namespace metal;

// Loads an 8x8 row-major matrix; each lane writes its thread_elements().
kernel void layout_probe(device const float* m [[buffer(0)]],
                         device float* out [[buffer(1)]],
                         uint lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 a;
  simdgroup_load(a, m, 8);
  out[lane * 2 + 0] = a.thread_elements()[0];
  out[lane * 2 + 1] = a.thread_elements()[1];
}

// Each lane puts (2 * lane + e) in its thread_elements(), then stores.
kernel void layout_store(device float* out [[buffer(0)]],
                         uint lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 a;
  a.thread_elements()[0] = float(lane * 2);
  a.thread_elements()[1] = float(lane * 2 + 1);
  simdgroup_store(a, out, 8);
}

// in: 16x16 half, row-major.
// out0 (8x8): transposed load of the block at rows 8..15, cols 0..7
//             (matrix_origin = (8, 0), transpose) stored plainly.
// out1 (8x8): the same matrix stored transposed into threadgroup memory,
//             loaded back and stored plainly (= the untransposed block).
// out2 (16x16, pre-filled by the host): block at rows 0..7, cols 8..15 of
//             `in` copied with strided load/store through matrix_origin.
kernel void transpose_roundtrip(device const half* in [[buffer(0)]],
                                device half* out0 [[buffer(1)]],
                                device half* out1 [[buffer(2)]],
                                device half* out2 [[buffer(3)]]) {
  simdgroup_half8x8 a;
  simdgroup_load(a, in, 16, ulong2(8, 0), true);
  simdgroup_store(a, out0, 8);

  FSDPA_THREADGROUP(half, tile, 64);
  simdgroup_store(a, tile, 8, ulong2(0, 0), true);
  simdgroup_half8x8 b;
  simdgroup_load(b, tile, 8);
  simdgroup_store(b, out1, 8);

  simdgroup_half8x8 c;
  simdgroup_load(c, in, 16, ulong2(8, 0));
  simdgroup_store(c, out2, 16, ulong2(8, 0));
}

// D = A * B + C with half A, B and float C, D; and E = A * B (float).
kernel void mma_small(device const half* A [[buffer(0)]],
                      device const half* B [[buffer(1)]],
                      device const float* C [[buffer(2)]],
                      device float* D [[buffer(3)]],
                      device float* E [[buffer(4)]]) {
  simdgroup_half8x8 a, b;
  simdgroup_float8x8 c, e;
  simdgroup_load(a, A, 8);
  simdgroup_load(b, B, 8);
  simdgroup_load(c, C, 8);
  simdgroup_multiply_accumulate(c, a, b, c);
  simdgroup_store(c, D, 8);
  simdgroup_multiply(e, a, b);
  simdgroup_store(e, E, 8);
  simdgroup_float8x8 f = make_filled_simdgroup_matrix<float, 8, 8>(2.5f);
  simdgroup_store(f, E + 64, 8);
}
