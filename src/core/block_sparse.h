// Addressing of the block-sparse mask (FlexAttention's BlockMask, see
// flashsdpa.h): which key blocks a query block lists, and whether one
// element of a listed block is visible. Shared by the fp64 reference and
// the backends, so all read the lists identically.
#pragma once

#include <stdint.h>

#include "core/attn_params.h"
#include "core/semantics.h"

namespace fsdpa {

// State of a key block for one query block: not listed, listed as full, or
// listed as partial at slot s >= 0 of kv_indices.
constexpr int32_t kSparseAbsent = -2;
constexpr int32_t kSparseFull = -1;

FSDPA_HD int32_t sparse_count(const int32_t* num, const int64_t* st, int64_t b, int64_t h,
                              int64_t qb) {
  return num ? num[b * st[0] + h * st[1] + qb * st[2]] : 0;
}

FSDPA_HD int32_t sparse_index(const int32_t* idx, const int64_t* st, int64_t b, int64_t h,
                              int64_t qb, int64_t slot) {
  return idx[b * st[0] + h * st[1] + qb * st[2] + slot * st[3]];
}

// Writes the state of every key block (sparse_k_blocks entries) of query
// block qb of (b, h) into state[].
inline void sparse_row_states(const AttnParams& p, int64_t b, int64_t h, int64_t qb,
                              int32_t* state) {
  for (int64_t kb = 0; kb < p.sparse_k_blocks; ++kb) state[kb] = kSparseAbsent;
  const int32_t nf = sparse_count(p.full_num, p.full_num_stride, b, h, qb);
  for (int32_t s = 0; s < nf; ++s)
    state[sparse_index(p.full_idx, p.full_idx_stride, b, h, qb, s)] = kSparseFull;
  const int32_t np = sparse_count(p.kv_num, p.kv_num_stride, b, h, qb);
  for (int32_t s = 0; s < np; ++s) state[sparse_index(p.kv_idx, p.kv_idx_stride, b, h, qb, s)] = s;
}

// Whether key j is visible to row i (of query block qb) given the state of
// j's key block.
FSDPA_HD bool sparse_element_visible(const AttnParams& p, int64_t b, int64_t h, int64_t qb,
                                     int32_t state, int64_t i, int64_t j) {
  if (state == kSparseAbsent) return false;
  if (state == kSparseFull || p.sparse_mask == nullptr) return true;
  const int64_t* st = p.sparse_mask_stride;
  return p.sparse_mask[b * st[0] + h * st[1] + qb * st[2] + state * st[3] +
                       (i % p.sparse_block_q) * st[4] + (j % p.sparse_block_k) * st[5]] != 0;
}

}  // namespace fsdpa
