// EXPECT: only 8x8 simdgroup matrices
#include <metal_stdlib>
using namespace metal;
kernel void k(device float* out [[buffer(0)]]) {
  simdgroup_matrix<float, 4, 4> m;
  (void)m;
}
