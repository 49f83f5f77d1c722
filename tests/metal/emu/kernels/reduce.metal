// Test kernel: sum of a float array, one partial sum per threadgroup, with a
// threadgroup-memory tree reduction (barriers between the steps).
#include <metal_stdlib>
#include "fsdpa_metal_compat.h"
using namespace metal;

struct ReduceParams {
  uint n;
};

kernel void reduce_sum(device const float* in [[buffer(0)]],
                       device float* out [[buffer(1)]],
                       constant ReduceParams& p [[buffer(2)]],
                       uint tgid [[threadgroup_position_in_grid]],
                       uint tid [[thread_index_in_threadgroup]],
                       uint tgsize [[threads_per_threadgroup]],
                       uint ngroups [[threadgroups_per_grid]]) {
  FSDPA_THREADGROUP(float, partial, 256);
  // grid-stride loop over this threadgroup's share
  float acc = 0.0f;
  for (uint i = tgid * tgsize + tid; i < p.n; i += tgsize * ngroups) {
    acc += in[i];
  }
  partial[tid] = acc;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (uint s = tgsize / 2; s > 0; s >>= 1) {
    if (tid < s) {
      partial[tid] = partial[tid] + partial[tid + s];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  if (tid == 0) {
    out[tgid] = partial[0];
  }
}

// 2D dispatch: writes every builtin of every thread (for the builtin test).
kernel void builtins(device uint* out [[buffer(0)]],
                     uint3 tgpos [[threadgroup_position_in_grid]],
                     uint3 tpos [[thread_position_in_threadgroup]],
                     uint3 gpos [[thread_position_in_grid]],
                     ushort tindex [[thread_index_in_threadgroup]],
                     uint lane [[thread_index_in_simdgroup]],
                     uint sg [[simdgroup_index_in_threadgroup]],
                     uint2 tgsize [[threads_per_threadgroup]],
                     uint3 ngroups [[threadgroups_per_grid]],
                     uint nsg [[simdgroups_per_threadgroup]],
                     uint width [[threads_per_simdgroup]]) {
  uint tg_linear = tgpos.x + tgpos.y * ngroups.x;
  uint global = tg_linear * (tgsize.x * tgsize.y) + tindex;
  device uint* o = out + global * 10;
  o[0] = tgpos.x;
  o[1] = tgpos.y;
  o[2] = tpos.x;
  o[3] = tpos.y;
  o[4] = gpos.x;
  o[5] = gpos.y;
  o[6] = lane;
  o[7] = sg;
  o[8] = nsg;
  o[9] = width;
}
