// Device-side helpers shared by every CUDA kernel of flashsdpa: element
// conversion, per-sequence extents, and the per-score semantics (band,
// softcap, ALiBi, masks, dropout) built on core/semantics.h so that the GPU
// computes exactly what the fp64 reference states.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "core/attn_params.h"
#include "core/block_sparse.h"
#include "core/semantics.h"
#include "cuda/launch.h"

namespace fsdpa {
namespace cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

// ---- element conversion ------------------------------------------------
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Loads element idx of a tensor of run-time dtype t as float.
__device__ __forceinline__ float load_dyn(const void* base, int64_t idx, DType t) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(base)[idx];
    case DType::f16: return __half2float(static_cast<const __half*>(base)[idx]);
    case DType::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[idx]);
    case DType::u8: return static_cast<const uint8_t*>(base)[idx] ? 1.0f : 0.0f;
    default: return 0.0f;
  }
}

// Host: the rows of a 4-d (b, h, s, d) 16-bit tensor can be moved with
// 16-byte accesses (aligned base, unit d stride, other strides a multiple
// of 8 elements).
inline bool rows16(const void* ptr, const int64_t* st) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && st[3] == 1 && st[0] % 8 == 0 &&
         st[1] % 8 == 0 && st[2] % 8 == 0;
}

__device__ __forceinline__ int64_t off4(const int64_t* st, int64_t b, int64_t h, int64_t t,
                                        int64_t d) {
  return b * st[0] + h * st[1] + t * st[2] + d * st[3];
}

// ---- sequences -----------------------------------------------------------
struct Seq {
  int64_t q_begin, k_begin;  // first token (varlen) or 0
  int sq, sk;                // lengths of this sequence
};

__device__ __forceinline__ Seq get_seq(const AttnParams& p, int64_t b) {
  if (p.cu_seqlens_q == nullptr)
    return Seq{0, 0, static_cast<int>(p.seqlen_q), static_cast<int>(p.seqlen_k)};
  const int q0 = p.cu_seqlens_q[b], q1 = p.cu_seqlens_q[b + 1];
  const int k0 = p.cu_seqlens_k[b], k1 = p.cu_seqlens_k[b + 1];
  return Seq{q0, k0, q1 - q0, k1 - k0};
}

// get_seq of a forward with the KV-cache parameters (uses_kv_cache): k_begin
// is then a cache position of the sequence's cache row (or page-table row),
// which cache_leftpad moves; seqused_k shortens the sequence
// (core/host_view.h states the same for the CPU and the reference), and
// kv_row_off turns a position into an address. The kernels take it in
// their KV instantiations only, so that the others stay as they were.
__device__ __forceinline__ Seq get_kv_seq(const AttnParams& p, int64_t b) {
  Seq e = get_seq(p, b);
  if (p.block_table != nullptr) e.k_begin = 0;  // paged: position 0 of its own page-table row
  if (p.seqused_k) e.sk = p.seqused_k[b];
  if (p.cache_leftpad) {
    const int lp = p.cache_leftpad[b];
    e.k_begin += lp;
    e.sk -= lp;
  }
  return e;
}

// ---- K/V addressing (contiguous, cache rows, pages) -------------------------
// Row of k/v (or of block_table) that sequence b reads: cache_batch_idx[b],
// else b (in the varlen form without pages the batch stride is 0).
__device__ __forceinline__ int64_t kv_cache_row(const AttnParams& p, int64_t b) {
  return p.cache_batch_idx ? p.cache_batch_idx[b] : b;
}

// Element offset of cache position `tok` (Seq::k_begin + key index), column
// 0, of kv head hk in cache row `row` of a K or V tensor with strides st.
// Paged: page block_table[row, tok / page_size], row tok % page_size of it.
// The page index is the caller's contract (flashsdpa.h); the backend's
// debug check (check_kv_cache_values) validates it before any kernel runs.
__device__ __forceinline__ int64_t kv_row_off(const AttnParams& p, const int64_t* st, int64_t row,
                                              int64_t hk, int tok) {
  if (p.block_table) {
    const int ps = static_cast<int>(p.page_size);
    const int pi = tok / ps;
    const int64_t page = p.block_table[row * p.block_table_stride + pi];
    return page * st[0] + hk * st[1] + int64_t(tok - pi * ps) * st[2];
  }
  return row * st[0] + hk * st[1] + int64_t(tok) * st[2];
}

// Token index used by the fp32 workspaces (D = rowsum(dO*O), split-KV
// partials): padded rows are b * Sq + i, varlen rows are their token.
__device__ __forceinline__ int64_t q_token(const AttnParams& p, int64_t b, const Seq& e, int i) {
  return p.cu_seqlens_q ? e.q_begin + i : b * p.seqlen_q + i;
}

// Rows [i_lo, i_hi] whose band can contain some key in [j_lo, j_hi]
// (inverse of visible_keys; used to skip query blocks in the backward).
__device__ __forceinline__ void rows_for_keys(const AttnParams& p, const Seq& e, int j_lo,
                                              int j_hi, int* i_lo, int* i_hi) {
  const int64_t off = diag_offset(p.bottom_right, e.sq, e.sk);
  int64_t lo = 0, hi = e.sq - 1;
  // key j visible from row i iff i+off-wl <= j <= i+off+wr
  if (p.window_right >= 0) lo = max(lo, int64_t(j_lo) - p.window_right - off);
  if (p.window_left >= 0) hi = min(hi, int64_t(j_hi) + p.window_left - off);
  *i_lo = static_cast<int>(max(lo, int64_t(0)));
  *i_hi = static_cast<int>(min(hi, int64_t(e.sq) - 1));
}

// ---- per-score semantics ---------------------------------------------------
// Everything a kernel needs to turn a raw dot product into the final score of
// (row i, key j) for one (b, h).
struct ScoreCtx {
  float scale, softcap, slope;
  int64_t off;   // diagonal offset (ALiBi distance)
  int64_t b, h;
  int sq, sk;
};

__device__ __forceinline__ ScoreCtx make_score_ctx(const AttnParams& p, int64_t b, int64_t h,
                                                   const Seq& e) {
  ScoreCtx c;
  c.scale = p.scale;
  c.softcap = p.softcap;
  c.slope = p.alibi ? p.alibi[b * p.alibi_stride_b + h] : 0.0f;
  c.off = diag_offset(p.bottom_right, e.sq, e.sk);
  c.b = b;
  c.h = h;
  c.sq = e.sq;
  c.sk = e.sk;
  return c;
}

__device__ __forceinline__ KeyRange row_range(const AttnParams& p, const ScoreCtx& c, int i) {
  return visible_keys(i, c.sq, c.sk, p.window_left, p.window_right, p.bottom_right);
}

// True when the scores need work beyond `scale * dot` inside the band.
__device__ __forceinline__ bool has_elementwise(const AttnParams& p) {
  return p.softcap > 0.0f || p.alibi != nullptr || p.mask_kind != MaskKind::none ||
         p.sparse_state != nullptr;
}

// ---- block-sparse mask (core/block_sparse.h, expanded by sparse_state) -----
// State of key block kb for query block qb of (b, h).
__device__ __forceinline__ int32_t sparse_state_at(const AttnParams& p, int64_t b, int64_t h,
                                                   int64_t qb, int64_t kb) {
  return p.sparse_state[b * p.sparse_state_stride[0] + h * p.sparse_state_stride[1] +
                        (qb * p.sparse_k_blocks + kb)];
}

// Whether the block lists let row i see key j of (b, h).
__device__ __forceinline__ bool sparse_visible(const AttnParams& p, int64_t b, int64_t h, int i,
                                               int j) {
  const int64_t qb = i / p.sparse_block_q;
  return sparse_element_visible(p, b, h, qb, sparse_state_at(p, b, h, qb, j / p.sparse_block_k),
                                i, j);
}

// Final score of (i, j) given the raw dot product, or -inf when masked.
// `tanh_out` receives tanh(scale*dot/softcap) (for the backward).
__device__ __forceinline__ float score_of(const AttnParams& p, const ScoreCtx& c, float dot,
                                          int i, int j, const KeyRange& r, float* tanh_out,
                                          bool use_mask = true) {
  if (j < r.lo || j > r.hi) return neg_inf();
  if (use_mask && p.sparse_state != nullptr && !sparse_visible(p, c.b, c.h, i, j))
    return neg_inf();
  float s = dot * c.scale;
  if (c.softcap > 0.0f) {
    const float t = tanhf(s / c.softcap);
    *tanh_out = t;
    s = c.softcap * t;
  }
  if (p.alibi) s += alibi_bias(c.slope, i, j, c.off);
  if (use_mask && p.mask_kind != MaskKind::none) {
    const int64_t mo = c.b * p.mask_stride[0] + c.h * p.mask_stride[1] +
                       int64_t(i) * p.mask_stride[2] + int64_t(j) * p.mask_stride[3];
    if (p.mask_kind == MaskKind::boolean) {
      if (static_cast<const uint8_t*>(p.mask)[mo] == 0) s = neg_inf();
    } else {
      s = add_mask_value(s, load_dyn(p.mask, mo, p.mask_dtype));
    }
  }
  return s;
}

// State of the mask over rows [r0, r0+nr) x keys [c0, c0+nc) of (b, h), from
// the 32x32 tile flags of MaskTiles (launch.h): 0 = every element masked
// (skip the block), 1 = the mask changes nothing there, 2 = mixed.
__device__ __forceinline__ int mask_state(const MaskTiles& mt, int64_t b, int64_t h, int r0,
                                          int nr, int c0, int nc) {
  if (mt.flags == nullptr || nr <= 0 || nc <= 0) return 2;
  const uint8_t* f = mt.flags + b * mt.stride_b + h * mt.stride_h;
  bool all0 = true, all1 = true;
  for (int ti = r0 / kMaskTile; ti <= (r0 + nr - 1) / kMaskTile; ++ti)
    for (int tj = c0 / kMaskTile; tj <= (c0 + nc - 1) / kMaskTile; ++tj) {
      const uint8_t v = f[int64_t(ti) * mt.ntj + tj];
      all0 = all0 && v == 0;
      all1 = all1 && v == 1;
    }
  return all0 ? 0 : all1 ? 1 : 2;
}

// State of the block lists over rows [r0, r0+nr) x keys [c0, c0+nc) of
// (b, h), as mask_state: 0 = no key listed (skip), 1 = all in full blocks
// (or partial blocks without an element mask), 2 = mixed.
__device__ __forceinline__ int sparse_tile_state(const AttnParams& p, int64_t b, int64_t h,
                                                 int r0, int nr, int c0, int nc) {
  if (p.sparse_state == nullptr || nr <= 0 || nc <= 0) return 1;
  bool none = true, all = true;
  for (int64_t qb = r0 / p.sparse_block_q; qb <= (r0 + nr - 1) / p.sparse_block_q; ++qb)
    for (int64_t kb = c0 / p.sparse_block_k; kb <= (c0 + nc - 1) / p.sparse_block_k; ++kb) {
      const int32_t st = sparse_state_at(p, b, h, qb, kb);
      none = none && st == kSparseAbsent;
      all = all && (st == kSparseFull || (st >= 0 && p.sparse_mask == nullptr));
    }
  return none ? 0 : all ? 1 : 2;
}

// The tile state of the dense mask (mask_state) and the block lists
// together: 0 if either hides everything, 1 if neither changes anything.
// Without block lists exactly mask_state.
__device__ __forceinline__ int tile_state(const AttnParams& p, const MaskTiles& mt, int64_t b,
                                          int64_t h, int r0, int nr, int c0, int nc) {
  if (p.sparse_state == nullptr) return mask_state(mt, b, h, r0, nr, c0, nc);
  const int m = p.mask_kind == MaskKind::none ? 1 : mask_state(mt, b, h, r0, nr, c0, nc);
  const int sp = sparse_tile_state(p, b, h, r0, nr, c0, nc);
  return m == 0 || sp == 0 ? 0 : m == 1 && sp == 1 ? 1 : 2;
}

// Dropout: multiplier (0 or 1/(1-p)) of elements (i, 2c) and (i, 2c+1).
struct DropCtx {
  bool on;
  uint32_t thr;
  float inv_keep;
  uint64_t seed, offset;
};

__device__ __forceinline__ DropCtx make_drop_ctx(const AttnParams& p) {
  DropCtx d;
  d.on = p.dropout_p > 0.0f;
  d.thr = dropout_threshold(p.dropout_p);
  d.inv_keep = 1.0f / (1.0f - p.dropout_p);
  d.seed = p.seed;
  d.offset = p.offset;
  return d;
}

__device__ __forceinline__ float drop_factor(const DropCtx& d, uint32_t row, int j) {
  return dropout_keep(d.seed, d.offset, row, j, d.thr) ? d.inv_keep : 0.0f;
}

// Pair (j, j+1) with j even: one Philox call.
__device__ __forceinline__ void drop_factor2(const DropCtx& d, uint32_t row, int j, float* z0,
                                             float* z1) {
  const Philox4 r = dropout_bits4(d.seed, d.offset, row, j >> 2);
  const int w = j & 3;
  const uint32_t a = w == 0 ? r.x[0] : r.x[2];
  const uint32_t b = w == 0 ? r.x[1] : r.x[3];
  *z0 = a >= d.thr ? d.inv_keep : 0.0f;
  *z1 = b >= d.thr ? d.inv_keep : 0.0f;
}

// ---- warp reductions --------------------------------------------------------
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

}  // namespace cuda
}  // namespace fsdpa
