// Test kernels: SIMD-group functions.
#include <metal_stdlib>
using namespace metal;

constant uint kOut = 16;  // outputs per thread

kernel void simd_ops(device const float* in [[buffer(0)]],
                     device float* out [[buffer(1)]],
                     uint gid [[thread_position_in_grid]],
                     ushort lane [[thread_index_in_simdgroup]]) {
  const float x = in[gid];
  device float* o = out + gid * kOut;
  o[0] = simd_sum(x);
  o[1] = simd_max(x);
  o[2] = simd_min(x);
  o[3] = simd_prefix_exclusive_sum(x);
  o[4] = simd_prefix_inclusive_sum(x);
  o[5] = simd_shuffle(x, ushort((lane * 7) % 32));
  o[6] = simd_shuffle_xor(x, ushort(5));
  o[7] = simd_shuffle_down(x, ushort(3));
  o[8] = simd_shuffle_up(x, ushort(2));
  o[9] = simd_broadcast(x, ushort(9));
  // butterfly all-reduce through shuffles, the usual softmax-row pattern
  float m = x;
  for (ushort d = 16; d > 0; d >>= 1) {
    m = max(m, simd_shuffle_xor(m, d));
  }
  o[10] = m;
  o[11] = simd_all(x > -1000.0f) ? 1.0f : 0.0f;
  o[12] = simd_any(x > 40.0f) ? 1.0f : 0.0f;
  // vector and half collectives
  const float4 v = float4(x, 2.0f * x, -x, 1.0f);
  const float4 vs = simd_sum(v);
  o[13] = vs.y;
  o[14] = vs.w;
  const half h = simd_sum(half(x));
  o[15] = float(h);
}

// Threadgroups whose size is not a multiple of 32: the last simdgroup is
// partial and its collectives span only the active lanes.
kernel void simd_partial(device const int* in [[buffer(0)]],
                         device int* out [[buffer(1)]],
                         uint tid [[thread_index_in_threadgroup]],
                         uint gid [[thread_position_in_grid]]) {
  const int x = in[gid];
  out[gid * 2] = simd_sum(x);
  out[gid * 2 + 1] = simd_prefix_exclusive_sum(x);
}

// Reduction of a whole threadgroup: simd_sum per simdgroup, then the
// per-simdgroup partials through threadgroup memory.
#include "fsdpa_metal_compat.h"
kernel void tg_sum_via_simd(device const float* in [[buffer(0)]],
                            device float* out [[buffer(1)]],
                            uint tid [[thread_index_in_threadgroup]],
                            uint sg [[simdgroup_index_in_threadgroup]],
                            uint lane [[thread_index_in_simdgroup]],
                            uint nsg [[simdgroups_per_threadgroup]],
                            uint tgid [[threadgroup_position_in_grid]],
                            uint tgsize [[threads_per_threadgroup]]) {
  FSDPA_THREADGROUP(float, partial, 32);
  const float s = simd_sum(in[tgid * tgsize + tid]);
  if (lane == 0) {
    partial[sg] = s;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    const float v = lane < nsg ? float(partial[lane]) : 0.0f;
    const float t = simd_sum(v);
    if (lane == 0) {
      out[tgid] = t;
    }
  }
}
