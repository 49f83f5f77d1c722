// EXPECT: use_FSDPA_THREADGROUP_or_FSDPA_TG_PTR
// A plain threadgroup declaration would become per-thread storage in C++.
#include <metal_stdlib>
using namespace metal;
kernel void k(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  threadgroup float tile[64];
  tile[tid] = 1.0f;
  out[tid] = tile[tid];
}
