// dQ of the Hopper backward through a TMA reduce (bwd_kernel.cuh,
// bwd256_kernel.cuh): each consumer warpgroup writes its 64 x 64 fp32 dQ tile into
// shared memory (two 64-row x 32-column boxes, 128B swizzle) and one
// producer thread adds the boxes to the fp32 workspace with
// `cp.reduce.async.bulk.tensor` (the add happens in L2, one bulk request
// per box) instead of 8 16-byte atomics per consumer thread and step.
#pragma once

#include <stdint.h>

namespace fsdpa {
namespace cuda {
namespace hopper {

// Adds the shared-memory box at `src` to the 3-d (d, head, token) fp32 map
// at coordinates (c0, c1, c2); elements outside the map are dropped.
__device__ __forceinline__ void tma_reduce_add_3d(const void* tmap, uint32_t src, int c0, int c1,
                                                  int c2) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group"
      " [%0, {%2, %3, %4}], [%1];\n" ::"l"(reinterpret_cast<uint64_t>(tmap)),
      "r"(src), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// The bulk groups of this thread have finished reading shared memory.
__device__ __forceinline__ void bulk_wait_read0() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
// ... and their writes are done.
__device__ __forceinline__ void bulk_wait0() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// Deterministic dQ (BwdArgs::dq_sem != nullptr): the CTAs that add to one
// (sequence, head, query block) of the workspace take turns in the order
// of their key blocks. A CTA waits until the block's counter equals its
// rank among them, adds its tile, waits until the adds are done and
// increments the counter (release); the next one acquires it. The counter
// is read and written by the generic proxy, the adds are async-proxy
// operations: proxy fences order the two (after the acquire, before the
// release). Lower key blocks are lower block indices, so they are resident
// or done when a CTA waits on them (no deadlock), as in FlashAttention-3.
__device__ __forceinline__ void sem_wait_eq(const int* ptr, int v) {
  int cur;
  do {
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(cur) : "l"(ptr) : "memory");
  } while (cur != v);
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}
__device__ __forceinline__ void sem_release_inc(int* ptr) {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
  asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" ::"l"(ptr) : "memory");
}

// The wgmma m64n64 fp32 accumulator fragment dq[32] of thread (warp wq of
// the warpgroup, g = lane / 4, t = lane % 4) -- element 4n + x is row wq *
// 16 + g + 8 (x >> 1), column 8n + 2t + (x & 1) -- into the warpgroup's
// tile at `base` (1024-byte aligned): box n / 4 (columns 32 (n / 4) ..),
// rows of 128 bytes, 16-byte chunk c of row r at chunk c ^ (r % 8) (the
// TMA's 128B swizzle). For a fixed register pair the warp's 32 8-byte
// stores cover every bank twice: 2 wavefronts, no conflict.
__device__ __forceinline__ void dq_frag_to_smem(uint32_t base, const float* dq, int wq, int g,
                                                int t) {
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int row = wq * 16 + g + 8 * hr;
      const int chunk = 2 * (n & 3) + (t >> 1);
      const uint32_t addr =
          base + (n >> 2) * 8192 + row * 128 + ((chunk ^ g) << 4) + (t & 1) * 8;
      asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(dq[4 * n + 2 * hr]),
                   "f"(dq[4 * n + 2 * hr + 1])
                   : "memory");
    }
}

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
