// EXPECT: double-promotion
// float op unsuffixed literal would be computed in double by C++.
#include <metal_stdlib>
using namespace metal;
kernel void k(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  out[i] = out[i] * 0.1;
}
