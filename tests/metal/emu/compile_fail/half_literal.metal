// EXPECT: numeric literal operator
// The MSL `h` literal suffix has no C++ equivalent: write half(1.0f).
#include <metal_stdlib>
using namespace metal;
kernel void k(device half* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  out[i] = 1.0h;
}
