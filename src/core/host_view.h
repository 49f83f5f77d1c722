// Host-side addressing of an AttnParams: where sequence b starts, how long
// it is, and the element offset of (b, h, row, d) in each tensor. Shared by
// the CPU backend and the fp64 reference, so both read memory identically.
#pragma once

#include "core/attn_params.h"
#include "core/semantics.h"

namespace fsdpa {

struct SeqExtent {
  int64_t q_begin, k_begin;  // first token (varlen) or 0
  int64_t sq, sk;            // actual lengths of sequence b
};

inline SeqExtent seq_extent(const AttnParams& p, int64_t b) {
  SeqExtent e{0, 0, p.seqlen_q, p.seqlen_k};
  if (p.cu_seqlens_q != nullptr) {
    e.q_begin = p.cu_seqlens_q[b];
    e.sq = int64_t(p.cu_seqlens_q[b + 1]) - p.cu_seqlens_q[b];
    // Paged sequences start at position 0 of their own page table.
    e.k_begin = p.block_table ? 0 : p.cu_seqlens_k[b];
    e.sk = int64_t(p.cu_seqlens_k[b + 1]) - p.cu_seqlens_k[b];
  }
  if (p.seqused_k) e.sk = p.seqused_k[b];
  if (p.cache_leftpad) {
    e.k_begin += p.cache_leftpad[b];
    e.sk -= p.cache_leftpad[b];
  }
  return e;
}

// Offset of element (b, h, token, d) given (b, h, s, d) strides.
inline int64_t offset4(const int64_t* st, int64_t b, int64_t h, int64_t tok, int64_t d) {
  return b * st[0] + h * st[1] + tok * st[2] + d * st[3];
}

// Offset of element (b, hk, tok, d) of K or V (strides st): through the
// cache row of sequence b and, when paged, its page table. tok is a cache
// position (SeqExtent::k_begin + key index).
inline int64_t kv_offset(const AttnParams& p, const int64_t* st, int64_t b, int64_t hk,
                         int64_t tok, int64_t d) {
  const int64_t row = p.cache_batch_idx ? p.cache_batch_idx[b] : b;
  if (p.block_table) {
    const int64_t page = p.block_table[row * p.block_table_stride + tok / p.page_size];
    return offset4(st, page, hk, tok % p.page_size, d);
  }
  return offset4(st, row, hk, tok, d);
}

// Keys from cache position tok on that are stored at a constant row
// stride (the rest of tok's page; unbounded without pages).
inline int64_t kv_contiguous_rows(const AttnParams& p, int64_t tok) {
  return p.block_table ? p.page_size - tok % p.page_size : INT64_MAX;
}

inline int64_t lse_offset(const AttnParams& p, int64_t b, int64_t h, int64_t tok) {
  return b * p.lse_stride[0] + h * p.lse_stride[1] + tok * p.lse_stride[2];
}

inline int64_t kv_head(const AttnParams& p, int64_t h) { return h / (p.heads_q / p.heads_k); }

inline float alibi_slope(const AttnParams& p, int64_t b, int64_t h) {
  return p.alibi ? p.alibi[b * p.alibi_stride_b + h] : 0.0f;
}

inline KeyRange row_keys(const AttnParams& p, const SeqExtent& e, int64_t row) {
  return visible_keys(row, e.sq, e.sk, p.window_left, p.window_right, p.bottom_right);
}

}  // namespace fsdpa
