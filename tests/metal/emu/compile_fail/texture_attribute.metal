// EXPECT: not in the emulated MSL subset
// Checked by the adapter generator: only [[buffer(n)]] and compute builtins.
#include <metal_stdlib>
using namespace metal;
kernel void k(texture2d<float> t [[texture(0)]], device float* out [[buffer(0)]]) {
}
