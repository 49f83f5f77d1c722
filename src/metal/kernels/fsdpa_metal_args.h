// The argument block of every flashsdpa Metal kernel: one plain struct,
// included by the host planner (C++, src/metal/plan.h) and by the kernels
// (MSL, fsdpa_attention.metal), bound with setBytes at [[buffer(0)]].
//
// Only 8-byte and 4-byte scalars, 8-byte fields first, so C++ and MSL lay it
// out identically (checked by static_asserts on the host side).
#ifndef FSDPA_METAL_ARGS_H
#define FSDPA_METAL_ARGS_H

#if defined(__METAL_VERSION__)
#define FSDPA_I64 long
#define FSDPA_I32 int
#define FSDPA_U32 uint
#else
#include <stdint.h>
#define FSDPA_I64 int64_t
#define FSDPA_I32 int32_t
#define FSDPA_U32 uint32_t
#endif

// [[buffer(n)]] indices; every kernel uses the same numbering and the host
// binds every index the kernel declares (unused optional tensors get a
// small dummy buffer).
#define FSDPA_BUF_ARGS 0
#define FSDPA_BUF_Q 1
#define FSDPA_BUF_K 2
#define FSDPA_BUF_V 3
#define FSDPA_BUF_OUT 4
#define FSDPA_BUF_LSE 5
#define FSDPA_BUF_MASK 6
#define FSDPA_BUF_ALIBI 7
#define FSDPA_BUF_CU_Q 8
#define FSDPA_BUF_CU_K 9
#define FSDPA_BUF_DOUT 10
#define FSDPA_BUF_SCRATCH 11  // float32 scratch: Delta (backward), decode partials (split forward)
#define FSDPA_BUF_DQ 12
#define FSDPA_BUF_DK 13
#define FSDPA_BUF_DV 14
// KV cache (forward only): int32 [batch] vectors and the page table.
#define FSDPA_BUF_SEQUSED_K 15
#define FSDPA_BUF_CACHE_BATCH_IDX 16
#define FSDPA_BUF_CACHE_LEFTPAD 17
#define FSDPA_BUF_BLOCK_TABLE 18
// Block-sparse mask: the caller's lists, its element mask of partial
// blocks, and the int32 scratch the fsdpa_sparse_expand pass fills with the
// state of every (query block, key block).
#define FSDPA_BUF_KV_NUM 19
#define FSDPA_BUF_KV_IDX 20
#define FSDPA_BUF_FULL_NUM 21
#define FSDPA_BUF_FULL_IDX 22
#define FSDPA_BUF_SPARSE_MASK 23
#define FSDPA_BUF_SPARSE_STATE 24
#define FSDPA_NUM_BUFFERS 25

// KV-cache flags (FsdpaMetalArgs::kv_flags): which optional vectors are bound.
#define FSDPA_KV_SEQUSED 1
#define FSDPA_KV_BATCH_IDX 2
#define FSDPA_KV_LEFTPAD 4

// State of a key block for a query block in the expanded block-sparse
// lists (as src/core/block_sparse.h): absent, full, or a partial slot >= 0.
#define FSDPA_SPARSE_ABSENT (-2)
#define FSDPA_SPARSE_FULL (-1)

struct FsdpaMetalArgs {
  // Element strides in (batch, head, seq, dim) order; batch stride 0 for
  // varlen (seq is then a token index). lse/delta use the first three.
  FSDPA_I64 q_stride[4];
  FSDPA_I64 k_stride[4];
  FSDPA_I64 v_stride[4];
  FSDPA_I64 out_stride[4];
  FSDPA_I64 dout_stride[4];
  FSDPA_I64 dq_stride[4];
  FSDPA_I64 dk_stride[4];
  FSDPA_I64 dv_stride[4];
  FSDPA_I64 mask_stride[4];
  FSDPA_I64 lse_stride[4];
  FSDPA_I64 delta_stride[4];  // the backward's fp32 Delta = rowsum(dO * O) in the scratch
  FSDPA_I64 alibi_stride_b;   // 0 for [Hq] slopes
  FSDPA_I64 window_left;      // -1 = unbounded
  FSDPA_I64 window_right;     // -1 = unbounded (causal already folded in: 0)
  // KV cache: elements between block_table rows. When paged, k/v strides
  // are (page, head, row in page, dim).
  FSDPA_I64 block_table_stride;
  // Block-sparse lists (0 on broadcast dims): counts (b, h, query block),
  // indices (b, h, query block, slot), element mask (b, h, query block,
  // slot, row in block, key in block).
  FSDPA_I64 kv_num_stride[4];
  FSDPA_I64 kv_idx_stride[4];
  FSDPA_I64 full_num_stride[4];
  FSDPA_I64 full_idx_stride[4];
  FSDPA_I64 sparse_mask_stride[6];

  FSDPA_I32 batch;            // sequences (the grid adds one for the varlen tail)
  FSDPA_I32 heads_q, heads_k;
  FSDPA_I32 seqlen_q, seqlen_k;  // padded lengths, or max_seqlen_* for varlen
  FSDPA_I32 total_q, total_k;    // varlen token counts
  FSDPA_I32 head_dim, head_dim_v;
  FSDPA_I32 bottom_right;
  FSDPA_I32 has_lse;          // forward: write lse
  FSDPA_U32 seed_lo, seed_hi, offset_lo, offset_hi;  // Philox key / counter words
  FSDPA_U32 dropout_threshold;  // keep iff draw >= threshold
  float scale;
  float softcap;              // 0 = off
  float dropout_scale;        // 1 / (1 - p)
  FSDPA_I32 num_splits;       // split-KV decode: key splits (0 otherwise)
  FSDPA_I32 keys_per_split;   // split-KV decode: keys per split
  FSDPA_I32 kv_flags;         // FSDPA_KV_* bits
  FSDPA_I32 page_size;        // paged KV: rows per page; 0 = not paged
  FSDPA_I32 sparse_block_q, sparse_block_k;  // the caller's block sizes
  FSDPA_I32 sparse_batches, sparse_heads;    // extent of the lists' (b, h) dims (1 = broadcast)
  FSDPA_I32 sparse_q_blocks;  // query blocks expanded: ceil(seqlen_q / sparse_block_q)
  FSDPA_I32 sparse_k_blocks;  // ceil(seqlen_k / sparse_block_k)
  FSDPA_I32 sparse_lists;     // bit 0: partial lists bound, bit 1: full lists, bit 2: element mask
};

#endif  // FSDPA_METAL_ARGS_H
