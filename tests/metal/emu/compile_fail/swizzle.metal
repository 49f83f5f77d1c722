// EXPECT: has no member named.*xy
// Swizzles are outside the emulated subset.
#include <metal_stdlib>
using namespace metal;
kernel void k(device float2* out [[buffer(0)]], device const float4* in [[buffer(1)]], uint i [[thread_position_in_grid]]) {
  out[i] = in[i].xy;
}
