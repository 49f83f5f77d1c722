// The validated, normalised description of one attention call: what every
// backend kernel receives. A plain struct (no constructors, no std::) so it
// can be copied to a GPU kernel as an argument.
//
// Layout convention: every tensor is addressed through element strides in
// logical (batch, head, seq, dim) order. In the varlen form the batch stride
// is 0 and the sequence index is a token index: row i of sequence b lives at
// token seq_begin(b) + i.
#pragma once

#include <stdint.h>

namespace fsdpa {

enum class DType : int32_t { f32 = 0, f16 = 1, bf16 = 2, f64 = 3, u8 = 4, i32 = 5 };

enum class MaskKind : int32_t { none = 0, boolean = 1, additive = 2 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::f64: return "float64";
    case DType::u8: return "bool/uint8";
    case DType::i32: return "int32";
  }
  return "?";
}

struct AttnParams {
  // ---- sizes ---------------------------------------------------------
  int64_t batch;
  int64_t heads_q, heads_k;   // heads_q % heads_k == 0
  int64_t seqlen_q, seqlen_k; // padded sizes, or max_seqlen_* for varlen
  int64_t head_dim, head_dim_v;
  int64_t total_q, total_k;   // varlen token counts (= batch * seqlen otherwise)

  DType dtype;               // of q, k, v (and, for backends, of every tensor)
  DType out_dtype;           // of out / dq, dk, dv: == dtype except for the
  DType dout_dtype;          // reference, which may also read/write float64
  int32_t device_type;       // DLDeviceType
  int32_t device_id;

  // ---- tensors (pointers already include DLPack byte_offset) -----------
  const void* q;   int64_t q_stride[4];
  const void* k;   int64_t k_stride[4];
  const void* v;   int64_t v_stride[4];
  void* out;       int64_t out_stride[4];  // forward: written; backward: read
  float* lse;      int64_t lse_stride[3];  // (b, h, s); may be null in forward

  // Varlen: int32 prefix sums [batch + 1] (device pointers), or null.
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;

  // ---- semantics -------------------------------------------------------
  float scale;
  float softcap;              // 0 = off
  int64_t window_left;        // -1 = unbounded
  int64_t window_right;       // -1 = unbounded; causal already folded in (0)
  int32_t bottom_right;       // diagonal alignment: 1 = bottom-right

  MaskKind mask_kind;
  DType mask_dtype;           // u8 for boolean; f32/f16/bf16 for additive
  const void* mask;  int64_t mask_stride[4];  // stride 0 on broadcast dims

  const float* alibi;         // [Hq] or [B, Hq] slopes, or null
  int64_t alibi_stride_b;     // 0 for [Hq]

  float dropout_p;            // 0 = off
  uint64_t seed, offset;

  int32_t deterministic;
  int32_t check_finite;

  // ---- KV cache (forward only; int32 host or device pointers, or null) --
  const int32_t* seqused_k;        // [batch] keys used per sequence
  const int32_t* cache_batch_idx;  // [batch] cache row of each sequence
  const int32_t* cache_leftpad;    // [batch] first cache position used
  // Paged KV: k/v strides are (page, head, row in page, dim); cache position
  // t of sequence b is row t % page_size of page
  // block_table[row * block_table_stride + t / page_size].
  const int32_t* block_table;
  int64_t block_table_stride;      // elements between block_table rows
  int64_t page_size;
  int64_t num_pages;
  int64_t kv_rows;                 // rows of k/v (contiguous) or of block_table
  int64_t kv_capacity;             // cache positions per row (padded seqlen_k)

  // ---- block-sparse mask (flashsdpa.h; int32 host or device pointers) --
  // Strides are in elements, 0 on broadcast (batch, head) dims; a null
  // list has count 0 everywhere. The element mask of partial slot s of
  // (b, h, qb) is sparse_mask[b, h, qb, s, i % block_q, j % block_k].
  int32_t sparse;                   // 1: the block lists restrict the keys
  int64_t sparse_block_q, sparse_block_k;
  int64_t sparse_q_blocks;          // NQB: rows of the lists
  int64_t sparse_k_blocks;          // ceil(seqlen_k / sparse_block_k)
  const int32_t* kv_num;   int64_t kv_num_stride[3];
  const int32_t* kv_idx;   int64_t kv_idx_stride[4];
  const int32_t* full_num; int64_t full_num_stride[3];
  const int32_t* full_idx; int64_t full_idx_stride[4];
  const uint8_t* sparse_mask; int64_t sparse_mask_stride[6];  // or null: partial = full
  int64_t sparse_batches, sparse_heads;  // extent of the lists' batch / head dims (1 = broadcast)
  int64_t kv_idx_len, full_idx_len;      // entries per row of kv_indices / full_kv_indices
  // A backend's dense expansion of the lists, [batches][heads][q blocks of
  // Sq][sparse_k_blocks] of kSparseAbsent / kSparseFull / slot (strides in
  // elements for b and h, 0 on broadcast dims), when it wants O(1) lookups
  // in both directions (CUDA). Null from the core.
  const int32_t* sparse_state; int64_t sparse_state_stride[2];

  // ---- backward only ----------------------------------------------------
  const void* dout; int64_t dout_stride[4];
  void* dq;         int64_t dq_stride[4];
  void* dk;         int64_t dk_stride[4];
  void* dv;         int64_t dv_stride[4];
};

// True if any KV-cache parameter is set (backends without support refuse).
inline bool uses_kv_cache(const AttnParams& p) {
  return p.seqused_k || p.cache_batch_idx || p.cache_leftpad || p.block_table;
}

}  // namespace fsdpa
