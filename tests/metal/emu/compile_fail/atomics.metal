// EXPECT: (atomic_fetch_add_explicit|atomic_uint).*(not declared|does not name)
// Atomics are outside the emulated subset.
#include <metal_stdlib>
using namespace metal;
kernel void k(device atomic_uint* counter [[buffer(0)]]) {
  atomic_fetch_add_explicit(counter, 1u, memory_order_relaxed);
}
