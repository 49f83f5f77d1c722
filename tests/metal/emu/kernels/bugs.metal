// Test kernels with deliberate bugs that the harness must report.
#include <metal_stdlib>
#include "fsdpa_metal_compat.h"
using namespace metal;

// Tree reduction whose steps are not separated by barriers: a thread may read
// partial[tid + s] before or after its owner updated it -> the result depends
// on the schedule (every element was written, so no uninitialised read).
kernel void reduce_missing_barrier(device const float* in [[buffer(0)]],
                                   device float* out [[buffer(1)]],
                                   uint tid [[thread_index_in_threadgroup]],
                                   uint tgsize [[threads_per_threadgroup]]) {
  FSDPA_THREADGROUP(float, partial, 256);
  partial[tid] = in[tid];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (uint s = tgsize / 2; s > 0; s >>= 1) {
    if (tid < s) {
      partial[tid] = partial[tid] + partial[tid + s];
    }
    // BUG: missing threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  if (tid == 0) {
    out[0] = partial[0];
  }
}

// Threadgroups racing on the same device element: the last writer wins, and
// which one is last depends on the (emulated) scheduling of threadgroups.
kernel void tg_write_race(device uint* out [[buffer(0)]],
                          uint tgid [[threadgroup_position_in_grid]],
                          uint tid [[thread_index_in_threadgroup]]) {
  if (tid == 0) {
    out[0] = tgid;
  }
}

// simd_sum executed by only half of the lanes.
kernel void divergent_simd_sum(device float* out [[buffer(0)]],
                               uint lane [[thread_index_in_simdgroup]],
                               uint gid [[thread_position_in_grid]]) {
  float x = float(lane);
  if (lane < 16) {
    x = simd_sum(x);
  }
  out[gid] = x;
}

// Barrier inside a branch taken by some threads only.
kernel void divergent_barrier(device float* out [[buffer(0)]],
                              uint tid [[thread_index_in_threadgroup]]) {
  if (tid < 32) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  out[tid] = 1.0f;
}

// Two different barriers in the two branches of an if.
kernel void mismatched_barriers(device float* out [[buffer(0)]],
                                uint tid [[thread_index_in_threadgroup]]) {
  if (tid % 2 == 0) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  } else {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  out[tid] = 1.0f;
}

// Lanes of one simdgroup wait in different collectives: deadlock.
kernel void simd_vs_barrier(device float* out [[buffer(0)]],
                            uint lane [[thread_index_in_simdgroup]],
                            uint tid [[thread_index_in_threadgroup]]) {
  float x = 1.0f;
  if (lane == 0) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  } else {
    x = simd_max(x);
  }
  out[tid] = x;
}

// Off-by-one store past the end of a threadgroup array.
kernel void oob_threadgroup_store(device float* out [[buffer(0)]],
                                  uint tid [[thread_index_in_threadgroup]]) {
  FSDPA_THREADGROUP(float, tile, 64);
  tile[tid + 1] = 1.0f;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[tid] = tile[tid];
}

// Negative index into a threadgroup array through a pointer.
kernel void oob_threadgroup_pointer_read(device float* out [[buffer(0)]],
                                         uint tid [[thread_index_in_threadgroup]]) {
  FSDPA_THREADGROUP(float, tile, 64);
  tile[tid] = float(tid);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  FSDPA_TG_PTR(const float) p = tile + 8;
  out[tid] = p[int(tid) - 16];
}

// Reads threadgroup memory that no thread wrote in this threadgroup.
kernel void uninitialised_threadgroup_read(device float* out [[buffer(0)]],
                                           uint tid [[thread_index_in_threadgroup]]) {
  FSDPA_THREADGROUP(float, tile, 64);
  if (tid < 32) {
    tile[tid] = 1.0f;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[tid] = tile[63 - tid];
}

// Off-by-one store past the end of a device buffer of n floats.
kernel void oob_device_store(device float* out [[buffer(0)]],
                             constant uint& n [[buffer(1)]],
                             uint gid [[thread_position_in_grid]]) {
  out[gid + 1] = 1.0f;  // BUG: thread n-1 writes out[n]
}

// More threadgroup memory than an Apple GPU has (32 KiB).
kernel void too_much_threadgroup_memory(device float* out [[buffer(0)]],
                                        uint tid [[thread_index_in_threadgroup]]) {
  FSDPA_THREADGROUP(float, big, 12 * 1024);
  big[tid] = 1.0f;
  out[tid] = big[tid];
}

// simdgroup_load with a lane-dependent pointer (must be uniform).
kernel void non_uniform_matrix_load(device const float* in [[buffer(0)]],
                                    device float* out [[buffer(1)]],
                                    uint lane [[thread_index_in_simdgroup]]) {
  simdgroup_float8x8 a;
  simdgroup_load(a, in + (lane == 3 ? 8 : 0), 8);
  simdgroup_store(a, out, 8);
}

// simd_shuffle reading a lane that does not exist in a partial simdgroup.
kernel void shuffle_inactive_lane(device float* out [[buffer(0)]],
                                  uint lane [[thread_index_in_simdgroup]],
                                  uint tid [[thread_index_in_threadgroup]]) {
  out[tid] = simd_shuffle(float(lane), ushort(31 - lane));
}

// Non-atomic read-modify-write of one threadgroup element by every thread
// (lost updates on a GPU). A thread that runs until it blocks never loses an
// update, so only preempting schedules expose it.
kernel void lost_update_race(device uint* out [[buffer(0)]],
                             uint tid [[thread_index_in_threadgroup]]) {
  FSDPA_THREADGROUP(uint, counter, 1);
  if (tid == 0) {
    counter[0] = 0u;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  counter[0] += 1u;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (tid == 0) {
    out[0] = counter[0];
  }
}

// A barrier that orders device memory only does not publish threadgroup
// memory (mem_flags::mem_threadgroup is missing).
kernel void barrier_without_threadgroup_flag(device float* out [[buffer(0)]],
                                             uint tid [[thread_index_in_threadgroup]],
                                             uint n [[threads_per_threadgroup]]) {
  FSDPA_THREADGROUP(float, tile, 64);
  tile[tid] = float(tid);
  threadgroup_barrier(mem_flags::mem_device);  // BUG
  out[tid] = tile[(tid + 1) % n];
}

// Exchange through threadgroup memory.
//  mode 0: between lanes of one simdgroup, no synchronisation      -> race
//  mode 1: between lanes of one simdgroup, after simdgroup_barrier -> fine
//  mode 2: between simdgroups, after simdgroup_barrier only        -> race
//  mode 3: between simdgroups, after threadgroup_barrier           -> fine
kernel void exchange(device float* out [[buffer(0)]],
                     constant uint& mode [[buffer(1)]],
                     uint tid [[thread_index_in_threadgroup]]) {
  FSDPA_THREADGROUP(float, tile, 64);
  tile[tid] = -1.0f;  // initialised and published first, so that every
  threadgroup_barrier(mem_flags::mem_threadgroup);  // interleaving is a race, not an uninitialised read
  tile[tid] = float(tid);
  if (mode == 1u || mode == 2u) {
    simdgroup_barrier(mem_flags::mem_threadgroup);
  } else if (mode == 3u) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  const uint other = mode >= 2u ? (tid ^ 32u) : (tid ^ 1u);
  out[tid] = tile[other];
}

// Off-by-one read past the end of a device buffer of n floats.
kernel void oob_device_read(device const float* in [[buffer(0)]],
                            device float* out [[buffer(1)]],
                            uint gid [[thread_position_in_grid]]) {
  out[gid] = in[gid + 1];  // BUG: thread n-1 reads in[n]
}

// A thread-local array far larger than the emulated thread's stack.
kernel void stack_hog(device float* out [[buffer(0)]],
                      constant uint& n [[buffer(1)]],
                      uint gid [[thread_position_in_grid]]) {
  float big[24 * 1024];  // 96 KiB; the default emulated stack is 64 KiB
  for (uint i = 0; i < n; ++i) {
    big[(i * 4099u) % (24u * 1024u)] = float(i);
  }
  out[gid] = big[gid % n];
}

// simd_shuffle_xor with a lane-dependent mask (must be uniform).
kernel void non_uniform_shuffle_mask(device float* out [[buffer(0)]],
                                     uint lane [[thread_index_in_simdgroup]]) {
  out[lane] = simd_shuffle_xor(float(lane), ushort(lane < 16 ? 1 : 2));
}
