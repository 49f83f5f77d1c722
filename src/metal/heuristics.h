// THE tuning constants of the Metal backend (the only place tile sizes and
// the decode split are chosen from): rows per threadgroup ("parallel", a
// multiple of 8 = 8 rows per simdgroup), rows streamed per loop step
// ("traversal"), the threadgroup-memory budget, and the split-KV decode
// thresholds. plan.cpp applies them; test_metal_plan.cpp checks the budget
// over every configuration the planner can emit.
//
// Tiles follow the design of Apple's MLX steel attention kernels
// (https://github.com/ml-explore/mlx, mlx/backend/metal/kernels/steel/attn,
// and mlx/backend/metal/scaled_dot_product_attention.cpp): 32-row query
// blocks = 4 simdgroups of 8 rows, 32-key blocks below head dim 128 and 16
// from 128 on, whole head dims staged in threadgroup memory, K and V sharing
// one buffer where the kernel can, 16-bit inputs staged as 16 bits. That
// lands at about 8-16 KiB of threadgroup memory, so several threadgroups
// stay resident per GPU core. Our backward passes (which MLX does not have)
// take the same starting tiles. Where a tile exceeds the target budget the
// planner shrinks it (plan.cpp fit_tile). Unmeasured on Apple hardware:
// to be tuned there (docs/metal.md, bench/bench_metal.py).
#pragma once

namespace fsdpa::metal {

// Threadgroup memory of Apple GPUs (all families): the hard limit.
constexpr int kThreadgroupMemoryBytes = 32 * 1024;
// What the planner aims for, so that two or more threadgroups can share a
// GPU core (MLX's tiles at head dim 128, 16-bit: 12-16 KiB).
constexpr int kTargetThreadgroupBytes = 16 * 1024;

// Preferred tile of a pass by the larger head dim (MLX: bq = 32,
// bk = head dim < 128 ? 32 : 16). Same for every GPU family until measured.
constexpr int kPreferredParallel = 32;
inline int preferred_traversal(int max_head_dim) { return max_head_dim < 128 ? 32 : 16; }

// Smallest tiles the planner shrinks to: 2 simdgroups (64 threads) while
// they fit the hard limit; 1 simdgroup only where even (16, 8) does not
// (float32 backward at head dims above about 170, see plan.cpp).
constexpr int kMinParallel = 16;
constexpr int kMinTraversal = 8;

constexpr int kPreprocessRows = 4;  // rows (simdgroups) per threadgroup of the Delta pass
constexpr int kMergeRows = 4;       // rows (simdgroups) per threadgroup of the decode merge pass
constexpr int kSplitSimdgroups = 4; // (row, split) work items per threadgroup of the decode split pass
constexpr int kSparseExpandThreads = 64;  // list rows (one per thread) per threadgroup of the block-sparse expansion

// Split-KV decode (few query rows, many keys): one pass splits the keys of
// every (batch, kv head) over threadgroups writing partial (out, lse) in
// float32, a second merges them by log-sum-exp. Chosen when the normal
// forward would run too few threadgroups, each streaming all keys.
constexpr int kDecodeMaxQueryRows = 4;      // seqlen_q at most this
constexpr int kDecodeMinKeysPerSplit = 64;  // never split finer than this
constexpr int kDecodeTargetWorkItems = 512; // (row, split) simdgroups to aim for (several per core on M-Max)
constexpr int kDecodeMaxSplits = 128;

}  // namespace fsdpa::metal
