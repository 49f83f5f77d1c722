// Every tuning decision of the CPU backend, in one place.
#pragma once

#include <stdint.h>

namespace fsdpa::cpu {

// Query rows per tile and keys per tile. 64 x 64 fp32 score tiles (16 KiB)
// plus the Q/K/V panels of one tile stay in L2 for head dims up to 256.
constexpr int kBlockQ = 64;
constexpr int kBlockK = 64;

// The bf16 forward on AMX takes this many key blocks per softmax step: the
// P V product then runs kAmxPassBlocks * 2 k-steps per load and store of
// each O tile (its fixed cost per tile is about two products), and each
// row's max covers more keys per reduction. Measured (1 thread, B1 H32
// S1024 D128): 1 block 37.0 ms, 2 blocks 29.6-31.9, 4 blocks 28.4-29.7.
constexpr int kAmxPassBlocks = 4;

// The fp32 forward with packed K/V takes this many key blocks per softmax
// step: P V then loads, rescales and stores O once per kFp32PassBlocks
// blocks, and each row's max and rescale factor cover more keys. Measured
// (1 thread, CPU time, separate processes alternating, load 4-5): B1 H2
// S4096 D128 140.3 -> 133.0 ms (best of 4), B1 H8/4 S603 D176 15.5 -> 15.1;
// 4 blocks the same as 2 (133.2, 15.3), with twice the score tile.
constexpr int kFp32PassBlocks = 2;

// The fp32 forward on packed K/V takes two q-blocks per task, each pass of
// key blocks used by both in turn, when a head's K and V panels are larger
// than about a core's L2 (each q-block then reads them from L3): half the
// K/V traffic. Only with enough tasks left to share out (and never with
// key splits). Measured in an intrinsics copy of the forward's two gemms
// (1 thread): S 4096 D 128 138 -> 153 GFLOP/s; S 1024 (1 MiB a head) even.
inline bool fp32_pair_q_blocks(int64_t kv_bytes_per_head, int64_t q_block_tasks, int threads) {
  return kv_bytes_per_head > (int64_t{1} << 20) && q_block_tasks >= 4 * threads;
}

// Decode tasks with at most this many query rows read K/V rows in place
// (dot products per key) instead of packing tiles for the register-blocked
// gemm, which pays off only with more rows.
constexpr int kInPlaceMaxRows = 16;

// The in-place decode kernels stream K/V rows from memory (a decode step
// reads each once) and request the cache lines of the row this many rows
// ahead (in the same run of rows): the hardware's stream prefetch stops at
// each 4 KiB page, and a row's work (~20 cycles) is far shorter than a
// miss. Measured (fp32 Sq 1, Sk 32768, D 128, 1 thread, loaded machine):
// no prefetch 7.3-8.3 ms, 4 rows ahead 3.2-5.4, 16 rows 3.2-7.0, 32 rows
// 3.1-4.9.
constexpr int kPrefetchRows = 32;

// GQA decode: the query heads of a group read the same K/V, so one task
// takes all of them, stacked as rows (at most kInPlaceMaxRows in all), and
// reads each K/V row once instead of once per head: decode is bound by
// reading K/V. (Dropout keeps one head per task: its row ids are per head.)
inline bool stack_gqa_heads(int64_t seqlen_q, int64_t group, bool dropout) {
  return group > 1 && !dropout && seqlen_q * group <= kInPlaceMaxRows;
}

// Per-call panels (the forward's packed K/V, the backward's Q side and dQ
// sums) stay allocated on the calling thread between calls up to this size
// each: a fresh allocation of tens of MiB costs page faults and zeroing on
// every call; larger panels are freed after each call, so a long-context
// call leaves no large buffer behind.
constexpr int64_t kKeepPanelBytes = int64_t{64} << 20;

// How long idle pool threads (and a caller waiting for them) spin before
// sleeping: long enough to catch the next call of a decode loop, short
// enough not to hold a core from other work for long.
constexpr int kPoolSpinMicros = 200;

// Split the keys of each (batch, head, q-block) task into this many parts
// so that `tasks * splits` gives every thread at least ~2 tasks; used for
// decode shapes (few query rows, long keys). The partial results are merged
// in a fixed order, so the result does not depend on thread timing.
inline int key_splits(int64_t tasks, int64_t key_blocks, int threads) {
  if (tasks >= 2 * threads || key_blocks < 2) return 1;
  int64_t s = (2 * threads + tasks - 1) / tasks;
  if (s > key_blocks) s = key_blocks;
  return static_cast<int>(s);
}

}  // namespace fsdpa::cpu
