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
  if (p.cu_seqlens_q == nullptr) return {0, 0, p.seqlen_q, p.seqlen_k};
  return {p.cu_seqlens_q[b], p.cu_seqlens_k[b], int64_t(p.cu_seqlens_q[b + 1]) - p.cu_seqlens_q[b],
          int64_t(p.cu_seqlens_k[b + 1]) - p.cu_seqlens_k[b]};
}

// Offset of element (b, h, token, d) given (b, h, s, d) strides.
inline int64_t offset4(const int64_t* st, int64_t b, int64_t h, int64_t tok, int64_t d) {
  return b * st[0] + h * st[1] + tok * st[2] + d * st[3];
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
