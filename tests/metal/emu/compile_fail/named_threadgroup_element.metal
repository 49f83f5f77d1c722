// EXPECT: tg_ref
// `auto` would keep a reference to threadgroup memory instead of a value.
#include <metal_stdlib>
#include "fsdpa_metal_compat.h"
using namespace metal;
kernel void k(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  FSDPA_THREADGROUP(float, tile, 64);
  tile[tid] = 1.0f;
  auto x = tile[tid];
  out[tid] = x;
}
