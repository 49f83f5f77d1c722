// Test kernel compiled twice with different -D specialisations.
#include <metal_stdlib>
using namespace metal;

#ifndef SCALE
#error "SCALE must be defined"
#endif

kernel void affine(device const int* in [[buffer(0)]],
                   device int* out [[buffer(1)]],
                   uint i [[thread_position_in_grid]]) {
  out[i] = in[i] * SCALE + OFFSET;
}
