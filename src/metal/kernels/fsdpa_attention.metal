// flashsdpa Metal kernels: attention forward (O, lse) and backward
// (FlashAttention-2 order: Delta = rowsum(dO * O), a dQ kernel, a dK/dV
// kernel that owns its key block and loops over the GQA group's query heads,
// so no float atomics are needed).
//
// Every value that shapes the code is a preprocessor define chosen by the
// host planner (src/metal/plan.cpp, kernel_defines()) and compiled once per
// specialisation key:
//   FSDPA_DTYPE        0 float32, 1 float16, 2 bfloat16 (q, k, v, out, dout, dq, dk, dv)
//   FSDPA_DP/DVP       head dims D / Dv rounded up to a multiple of 8
//   FSDPA_MASK         0 none, 1 boolean (uint8), 2 additive
//   FSDPA_MASK_DTYPE   additive mask dtype (same codes as FSDPA_DTYPE)
//   FSDPA_BAND FSDPA_ALIBI FSDPA_SOFTCAP FSDPA_DROPOUT FSDPA_VARLEN   0/1
//   FSDPA_KVCACHE      0/1: keys through the KV-cache parameters (forward
//                      kernels only): seqused_k, cache_batch_idx,
//                      cache_leftpad, and pages of any size read in place
//   FSDPA_SPARSE       0/1: the block-sparse lists restrict the keys
//   FSDPA_FWD_BQ/BK FSDPA_DQ_BQ/BK FSDPA_DKV_BQ/BK  tile rows (queries / keys), multiples of 8
//   FSDPA_PRE_ROWS     rows (= simdgroups) per threadgroup of the Delta pass
//   FSDPA_THREADS_<K>  threads per threadgroup the host dispatches kernel fsdpa_<k> with,
//                      declared as its [[max_total_threads_per_threadgroup]]
//
// Kernels: fsdpa_forward; split-KV decode fsdpa_decode_split +
// fsdpa_decode_merge (few query rows, long keys: partial (out, lse) per key
// split in a float32 scratch, merged by log-sum-exp); the backward
// fsdpa_backward_preprocess, fsdpa_backward_dq, fsdpa_backward_dkdv; and
// fsdpa_sparse_expand, which runs first in a block-sparse call.
//
// Structure: each simdgroup owns 8 rows of its threadgroup's tile (query
// rows in the forward and dQ kernels, key rows in the dK/dV kernel). Tiles
// of the streamed operands are staged in threadgroup memory (zero padded
// beyond the sequence end and the head dimension, so head dims that are not
// a multiple of 8 need no special path) and multiplied with 8x8
// simdgroup_matrix tiles accumulating in float32. The score epilogue (scale,
// softcap, ALiBi, masks, causal/window band, dropout) works on each lane's
// two elements of the 8x8 accumulator tiles (thread_elements()); softmax row
// reductions combine the four lanes that hold one row.
//
// The semantics restate src/core/semantics.h (band rule, ALiBi, Philox
// dropout stream); the tests hold them to the fp64 reference. The code
// relies on IEEE infinities: compile with fast math disabled.
#include <metal_stdlib>
#include "fsdpa_metal_compat.h"
#include "fsdpa_metal_args.h"
using namespace metal;

#if !defined(FSDPA_DTYPE) || !defined(FSDPA_DP) || !defined(FSDPA_DVP) || !defined(FSDPA_THREADS_FORWARD)
#error "flashsdpa Metal kernels need the planner's defines (FSDPA_DTYPE, FSDPA_DP, FSDPA_DVP, ...)"
#endif
#if !defined(FSDPA_KVCACHE) || !defined(FSDPA_SPARSE) || !defined(FSDPA_THREADS_SPARSE_EXPAND)
#error "flashsdpa Metal kernels need the planner's defines FSDPA_KVCACHE, FSDPA_SPARSE, FSDPA_THREADS_SPARSE_EXPAND"
#endif

// ---------------------------------------------------------------- types
// Staged tiles keep the inputs' 16-bit formats (half, or bfloat16 bit
// patterns converted exactly to float in tile_load): half the threadgroup
// memory of float staging. bfloat16 stays ushort rather than MSL's bfloat,
// which needs MSL 3.1; the conversion is a shift, so numerics are the same.
#if FSDPA_DTYPE == 0
typedef float io_t;   // element type in device memory
typedef float tg_t;   // element type of the staged tiles
#elif FSDPA_DTYPE == 1
typedef half io_t;
typedef half tg_t;
#elif FSDPA_DTYPE == 2
typedef ushort io_t;  // bfloat16 bit patterns (portable to GPUs without bfloat)
typedef ushort tg_t;
#else
#error "FSDPA_DTYPE must be 0, 1 or 2"
#endif

#if FSDPA_MASK == 1
typedef uchar mask_t;
#elif FSDPA_MASK == 2 && FSDPA_MASK_DTYPE == 1
typedef half mask_t;
#elif FSDPA_MASK == 2 && FSDPA_MASK_DTYPE == 2
typedef ushort mask_t;
#else
typedef float mask_t;
#endif

#define FSDPA_DKV_MAX (FSDPA_DP > FSDPA_DVP ? FSDPA_DP : FSDPA_DVP)

typedef simdgroup_matrix<tg_t, 8, 8> tg_mat;

// ---------------------------------------------------------------- conversions
inline float bf16_bits_to_float(ushort x) { return as_type<float>(uint(x) << 16); }

inline ushort float_to_bf16_bits(float f) {  // round to nearest even, NaN stays NaN
  uint u = as_type<uint>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return ushort((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return ushort(u >> 16);
}

inline float ld_io(device const io_t* p, long i) {
#if FSDPA_DTYPE == 2
  return bf16_bits_to_float(p[i]);
#else
  return float(p[i]);
#endif
}

inline io_t to_io(float x) {
#if FSDPA_DTYPE == 2
  return float_to_bf16_bits(x);
#else
  return io_t(x);
#endif
}

inline float ld_mask(device const mask_t* m, long i) {
#if FSDPA_MASK == 2 && FSDPA_MASK_DTYPE == 2
  return bf16_bits_to_float(m[i]);
#else
  return float(m[i]);
#endif
}

// ---------------------------------------------------------------- simdgroup tiles
// (row, column) of element 0 of this lane's thread_elements(); element 1 is
// the next column. Apple GPU layout as published by metal-flash-attention
// (simdgroup_matrix_storage offset()).
inline ushort2 lane_rc(ushort lane) {
  const ushort quad = lane / 4;
  return ushort2(ushort((quad / 4) * 4 + (lane / 2) % 4), ushort((quad & 2) * 2 + (lane % 2) * 2));
}

// Writes this lane's two elements (element-wise, the form MLX's steel
// kernels also use).
inline void set_elems(thread simdgroup_float8x8& m, float2 e) {
  m.thread_elements()[0] = e.x;
  m.thread_elements()[1] = e.y;
}

// 8x8 tile at p (leading dimension ld) as float; transposed: the tile is
// read from memory as its transpose (element (r, c) from p[c * ld + r]).
// rc = lane_rc(lane). bfloat16 tiles are read lane by lane (each lane its
// two elements), the others with simdgroup_load.
inline simdgroup_float8x8 tile_load(FSDPA_TG_PTR(const tg_t) p, uint ld, bool transposed, ushort2 rc) {
#if FSDPA_DTYPE == 2
  const uint r = rc.x, c = rc.y;
  const uint i0 = transposed ? c * ld + r : r * ld + c;
  const uint i1 = transposed ? (c + 1) * ld + r : r * ld + c + 1;
  simdgroup_float8x8 f;
  const ushort b0 = p[i0], b1 = p[i1];
  set_elems(f, float2(bf16_bits_to_float(b0), bf16_bits_to_float(b1)));
  return f;
#else
  tg_mat m;
  simdgroup_load(m, p, ulong(ld), ulong2(0, 0), transposed);
#if FSDPA_DTYPE == 1
  simdgroup_float8x8 f;
  set_elems(f, float2(m.thread_elements()));
  return f;
#else
  return m;
#endif
#endif
}

inline simdgroup_float8x8 tile_zero() { return make_filled_simdgroup_matrix<float, 8, 8>(0.0f); }

// Sum / max over the four lanes holding one row of an 8x8 tile (lanes l,
// l^1, l^8, l^9 in the layout above).
inline float row_sum4(float x) {
  x += simd_shuffle_xor(x, ushort(1));
  x += simd_shuffle_xor(x, ushort(8));
  return x;
}
inline float row_max4(float x) {
  x = max(x, simd_shuffle_xor(x, ushort(1)));
  x = max(x, simd_shuffle_xor(x, ushort(8)));
  return x;
}

// Stages rows [0, R) x dims [0, DPAD) of a tile into threadgroup memory
// (row-major, leading dimension DPAD): element (r, d) from
// src[base + r * srow + d * sdim] for r < nrows and d < dim, else 0.
inline void stage_tile(FSDPA_TG_PTR(tg_t) dst, uint R, uint DPAD, device const io_t* src, long base, long srow,
                       long sdim, int nrows, int dim, uint tid, uint nthreads) {
  for (uint idx = tid; idx < R * DPAD; idx += nthreads) {
    const uint r = idx / DPAD, d = idx % DPAD;
    tg_t x = tg_t(0);  // io_t == tg_t: a copy (bfloat16 0 bits = +0)
    if (int(r) < nrows && int(d) < dim) x = src[base + long(r) * srow + long(d) * sdim];
    dst[idx] = x;
  }
}

// ---------------------------------------------------------------- semantics
// Philox-4x32-10 (src/core/semantics.h), 32x32 -> 64-bit products.
inline uint4 philox4x32_10(uint4 c, uint2 key) {
  for (int round = 0; round < 10; ++round) {
    const ulong p0 = ulong(0xD2511F53u) * ulong(c.x);
    const ulong p1 = ulong(0xCD9E8D57u) * ulong(c.z);
    const uint hi0 = uint(p0 >> 32), lo0 = uint(p0);
    const uint hi1 = uint(p1 >> 32), lo1 = uint(p1);
    c = uint4(hi1 ^ c.y ^ key.x, lo1, hi0 ^ c.w ^ key.y, lo0);
    key.x += 0x9E3779B9u;
    key.y += 0xBB67AE85u;
  }
  return c;
}

// The four draws of columns [4 * col4, 4 * col4 + 4) of dropout row `row`.
inline uint4 dropout_bits4(constant FsdpaMetalArgs& a, uint row, uint col4) {
  return philox4x32_10(uint4(col4, row, a.offset_lo, a.offset_hi), uint2(a.seed_lo, a.seed_hi));
}

// One sequence of the batch (or, with varlen, the pseudo-sequence b == batch
// made of the tokens after the last sequence: rows without keys and keys
// without rows, so its outputs are written as empty rows / zero gradients).
struct Seq {
  int q_begin, k_begin;  // first token (varlen) or 0
  int sq, sk;
  bool tail;
};

inline Seq seq_of(constant FsdpaMetalArgs& a, device const int* cu_q, device const int* cu_k, uint b) {
  Seq s;
#if FSDPA_VARLEN
  s.q_begin = cu_q[b];
  s.k_begin = cu_k[b];
  s.tail = int(b) == a.batch;
  s.sq = (s.tail ? a.total_q : cu_q[b + 1]) - s.q_begin;
  s.sk = (s.tail ? a.total_k : cu_k[b + 1]) - s.k_begin;
#else
  s.q_begin = 0;
  s.k_begin = 0;
  s.sq = a.seqlen_q;
  s.sk = a.seqlen_k;
  s.tail = false;
#endif
  return s;
}

// ---------------------------------------------------------------- KV cache
// (forward only; core/host_view.h seq_extent and kv_offset restated.)
// Sequence b uses the first seqused_k[b] cache positions (else its varlen
// keys or the cache length), from cache position cache_leftpad[b] on: key j
// is cache position k_begin + j and sk shrinks by the left padding. A
// paged sequence starts at position 0 of its own block_table row.
inline Seq kv_cache_seq(constant FsdpaMetalArgs& a, device const int* used, device const int* leftpad, Seq s,
                        uint b) {
#if FSDPA_KVCACHE
  if (s.tail) return s;  // tokens after the last varlen sequence: no cache row
  if (a.page_size > 0) s.k_begin = 0;
  if ((a.kv_flags & FSDPA_KV_SEQUSED) != 0) s.sk = used[b];
  if ((a.kv_flags & FSDPA_KV_LEFTPAD) != 0) {
    s.k_begin += leftpad[b];
    s.sk -= leftpad[b];
  }
#endif
  return s;
}

// Where the rows (keys) of one (sequence, kv head) of K or V live: key j at
// base + j * srow, or, paged, at row (k_begin + j) % page_size of page
// table[(k_begin + j) / page_size].
struct KvRows {
  long base;
  long srow;
#if FSDPA_KVCACHE
  long spage;
  int page_size;  // 0: not paged
  int k_begin;
  device const int* table;  // the sequence's block_table row
#endif
};

inline KvRows kv_rows(constant FsdpaMetalArgs& a, constant FSDPA_I64* st, device const int* batch_idx,
                      device const int* table, Seq s, uint b, uint hk) {
  KvRows r;
  r.srow = st[2];
  long row = long(b);
#if FSDPA_KVCACHE
  if ((a.kv_flags & FSDPA_KV_BATCH_IDX) != 0 && !s.tail) row = long(batch_idx[b]);
  r.spage = st[0];
  r.page_size = a.page_size;
  r.k_begin = s.k_begin;
  r.table = table;
  if (a.page_size > 0) {
    r.table = table + row * a.block_table_stride;
    r.base = long(hk) * st[1];
    return r;
  }
#endif
  r.base = row * st[0] + long(hk) * st[1] + long(s.k_begin) * st[2];
  return r;
}

inline long kv_row(KvRows r, int j) {
#if FSDPA_KVCACHE
  if (r.page_size > 0) {
    const int t = r.k_begin + j;
    return r.base + long(r.table[t / r.page_size]) * r.spage + long(t % r.page_size) * r.srow;
  }
#endif
  return r.base + long(j) * r.srow;
}

// stage_tile for K or V rows [j0, j0 + R) of one (sequence, kv head)
// (rows at nrows and beyond are zero: never a page lookup past the keys).
inline void stage_kv_tile(FSDPA_TG_PTR(tg_t) dst, uint R, uint DPAD, device const io_t* src, KvRows kr, int j0,
                          long sdim, int nrows, int dim, uint tid, uint nthreads) {
  for (uint idx = tid; idx < R * DPAD; idx += nthreads) {
    const uint r = idx / DPAD, d = idx % DPAD;
    tg_t x = tg_t(0);
    if (int(r) < nrows && int(d) < dim) x = src[kv_row(kr, j0 + int(r)) + long(d) * sdim];
    dst[idx] = x;
  }
}

inline long diag_off(constant FsdpaMetalArgs& a, Seq s) { return a.bottom_right ? long(s.sk - s.sq) : 0L; }

// Keys visible to rows [r0, r1]: [x, y] (empty if x > y). Rows' bands grow
// with the row, so the first row bounds the low end, the last the high end.
inline int2 key_range(constant FsdpaMetalArgs& a, Seq s, int r0, int r1) {
  if (s.tail || s.sk <= 0 || s.sq <= 0) return int2(0, -1);
  long lo = 0, hi = long(s.sk) - 1;
#if FSDPA_BAND
  const long off = diag_off(a, s);
  if (a.window_left >= 0) {
    const long x = long(r0) + off - a.window_left;
    lo = x > lo ? x : lo;
  }
  if (a.window_right >= 0) {
    const long y = long(r1) + off + a.window_right;
    hi = y < hi ? y : hi;
  }
#endif
  return int2(int(lo), int(hi));
}

// Query rows that see at least one key of [j0, j1].
inline int2 query_range(constant FsdpaMetalArgs& a, Seq s, int j0, int j1) {
  if (s.tail || s.sk <= 0 || s.sq <= 0) return int2(0, -1);
  long lo = 0, hi = long(s.sq) - 1;
#if FSDPA_BAND
  const long off = diag_off(a, s);
  if (a.window_right >= 0) {  // i + off + wr >= j0
    const long x = long(j0) - off - a.window_right;
    lo = x > lo ? x : lo;
  }
  if (a.window_left >= 0) {  // i + off - wl <= j1
    const long y = long(j1) - off + a.window_left;
    hi = y < hi ? y : hi;
  }
#endif
  return int2(int(lo), int(hi));
}

// Everything the score epilogue needs about one (sequence, query head).
struct HeadCtx {
  Seq s;
  uint b, h;
  long off;       // diagonal offset
  float slope;    // ALiBi
  uint row_base;  // dropout row id of row 0: (b * Hq + h) * seqlen_q
#if FSDPA_SPARSE
  device const int* sp_state;   // expanded lists of (b, h): [query block][key block]
  device const uchar* sp_mask;  // element mask of partial blocks
  long sp_mask_base;            // offset of (b, h) in sp_mask
#endif
};

inline HeadCtx head_ctx(constant FsdpaMetalArgs& a, device const float* alibi, device const int* sp_state,
                        device const uchar* sp_mask, Seq s, uint b, uint h) {
  HeadCtx c;
#if FSDPA_SPARSE
  const long bm = a.sparse_batches == 1 ? 0L : long(b), hm = a.sparse_heads == 1 ? 0L : long(h);
  c.sp_state = sp_state + (bm * a.sparse_heads + hm) * long(a.sparse_q_blocks) * a.sparse_k_blocks;
  c.sp_mask = sp_mask;
  c.sp_mask_base = bm * a.sparse_mask_stride[0] + hm * a.sparse_mask_stride[1];
#endif
  c.s = s;
  c.b = b;
  c.h = h;
  c.off = diag_off(a, s);
  c.slope = 0.0f;
#if FSDPA_ALIBI
  if (!s.tail) c.slope = alibi[long(b) * a.alibi_stride_b + long(h)];
#endif
  c.row_base = (b * uint(a.heads_q) + h) * uint(a.seqlen_q);
  return c;
}

// ---------------------------------------------------------------- block-sparse
// (core/block_sparse.h restated.) The fsdpa_sparse_expand pass has written
// the state of every (query block, key block) of every (list batch, list
// head): FSDPA_SPARSE_ABSENT, FSDPA_SPARSE_FULL or the partial slot, so
// both directions -- key blocks of a query block (forward, dQ) and query
// blocks of a key block (dK/dV, the transposed lists) -- are O(1) lookups.
#if FSDPA_SPARSE
inline int sparse_state(constant FsdpaMetalArgs& a, HeadCtx c, int qb, int kb) {
  return c.sp_state[long(qb) * a.sparse_k_blocks + kb];
}

inline bool sparse_visible(constant FsdpaMetalArgs& a, HeadCtx c, int i, int j) {
  const int qb = i / a.sparse_block_q;
  const int st = sparse_state(a, c, qb, j / a.sparse_block_k);
  if (st == FSDPA_SPARSE_ABSENT) return false;
  if (st == FSDPA_SPARSE_FULL || (a.sparse_lists & 4) == 0) return true;
  constant FSDPA_I64* ms = a.sparse_mask_stride;
  return c.sp_mask[c.sp_mask_base + long(qb) * ms[2] + long(st) * ms[3] + long(i % a.sparse_block_q) * ms[4] +
                   long(j % a.sparse_block_k) * ms[5]] != 0;
}
#endif

// Whether any key block of keys [j0, j1] is listed for a query block of
// rows [i0, i1] (all within the sequence): a tile of rows x keys no list
// names is masked everywhere and skipped. Uniform over the threadgroup.
inline bool sparse_tile_listed(constant FsdpaMetalArgs& a, HeadCtx c, int i0, int i1, int j0, int j1) {
#if FSDPA_SPARSE
  for (int qb = i0 / a.sparse_block_q; qb <= i1 / a.sparse_block_q; ++qb)
    for (int kb = j0 / a.sparse_block_k; kb <= j1 / a.sparse_block_k; ++kb)
      if (sparse_state(a, c, qb, kb) != FSDPA_SPARSE_ABSENT) return true;
  return false;
#else
  return true;
#endif
}

// Final score of (row i, key j) from the raw dot product x; -inf when the
// key is invisible. *t receives tanh(scale * x / softcap) (softcap only).
inline float score(constant FsdpaMetalArgs& a, device const mask_t* mask, HeadCtx c, int i, int j, float x,
                   thread float* t) {
  *t = 0.0f;
  if (c.s.tail || i >= c.s.sq || j >= c.s.sk) return -INFINITY;
#if FSDPA_BAND
  const long d = long(i) + c.off;
  if (a.window_left >= 0 && long(j) < d - a.window_left) return -INFINITY;
  if (a.window_right >= 0 && long(j) > d + a.window_right) return -INFINITY;
#endif
#if FSDPA_SPARSE
  if (!sparse_visible(a, c, i, j)) return -INFINITY;
#endif
  float v = x * a.scale;
#if FSDPA_SOFTCAP
  const float th = tanh(v / a.softcap);
  *t = th;
  v = a.softcap * th;
#endif
#if FSDPA_ALIBI
  long dist = long(i) + c.off - long(j);
  if (dist < 0) dist = -dist;
  v += -c.slope * float(dist);
#endif
#if FSDPA_MASK != 0
  const long mo = long(c.b) * a.mask_stride[0] + long(c.h) * a.mask_stride[1] + long(i) * a.mask_stride[2] +
                  long(j) * a.mask_stride[3];
#if FSDPA_MASK == 1
  if (mask[mo] == 0) return -INFINITY;
#else
  // core/semantics.h add_mask_value: at or below -FLT_MAX / 2 masks the key
  // (-inf whatever v is, NaN included).
  const float mv = ld_mask(mask, mo);
  v = mv <= -1.7014117331926443e38f ? -INFINITY : v + mv;
#endif
#endif
  return v;
}

// Dropout keep factor of (row i, key j): 0 or 1 / (1 - p).
inline float dropout_factor(constant FsdpaMetalArgs& a, HeadCtx c, int i, int j) {
  const uint4 w = dropout_bits4(a, c.row_base + uint(i), uint(j) >> 2);
  return w[j & 3] >= a.dropout_threshold ? a.dropout_scale : 0.0f;
}

inline long row_offset(constant FSDPA_I64* st, uint b, uint h, long tok) {
  return long(b) * st[0] + long(h) * st[1] + tok * st[2];
}

// ====================================================================== forward
#define F_BQ FSDPA_FWD_BQ
#define F_BK FSDPA_FWD_BK
#define F_NT FSDPA_THREADS_FORWARD  // one simdgroup per 8 rows
#if F_NT != (F_BQ / 8) * 32
#error "FSDPA_THREADS_FORWARD must be 32 threads per 8 rows"
#endif

[[max_total_threads_per_threadgroup(FSDPA_THREADS_FORWARD)]]
kernel void fsdpa_forward(constant FsdpaMetalArgs& a [[buffer(FSDPA_BUF_ARGS)]],
                          device const io_t* q [[buffer(FSDPA_BUF_Q)]],
                          device const io_t* k [[buffer(FSDPA_BUF_K)]],
                          device const io_t* v [[buffer(FSDPA_BUF_V)]],
                          device io_t* out [[buffer(FSDPA_BUF_OUT)]],
                          device float* lse [[buffer(FSDPA_BUF_LSE)]],
                          device const mask_t* mask [[buffer(FSDPA_BUF_MASK)]],
                          device const float* alibi [[buffer(FSDPA_BUF_ALIBI)]],
                          device const int* cu_q [[buffer(FSDPA_BUF_CU_Q)]],
                          device const int* cu_k [[buffer(FSDPA_BUF_CU_K)]],
                          device const int* kv_used [[buffer(FSDPA_BUF_SEQUSED_K)]],
                          device const int* kv_batch [[buffer(FSDPA_BUF_CACHE_BATCH_IDX)]],
                          device const int* kv_leftpad [[buffer(FSDPA_BUF_CACHE_LEFTPAD)]],
                          device const int* kv_table [[buffer(FSDPA_BUF_BLOCK_TABLE)]],
                          device const int* sp_state [[buffer(FSDPA_BUF_SPARSE_STATE)]],
                          device const uchar* sp_mask [[buffer(FSDPA_BUF_SPARSE_MASK)]],
                          uint3 tgp [[threadgroup_position_in_grid]],
                          uint3 ngroups [[threadgroups_per_grid]],
                          ushort tid [[thread_index_in_threadgroup]],
                          ushort sg [[simdgroup_index_in_threadgroup]],
                          ushort lane [[thread_index_in_simdgroup]]) {
  FSDPA_THREADGROUP(tg_t, f_q, F_BQ * FSDPA_DP);
  FSDPA_THREADGROUP(tg_t, f_kv, F_BK * FSDPA_DKV_MAX);
  const uint b = tgp.z, h = tgp.y;
  const uint hk = h / uint(a.heads_q / a.heads_k);
  const Seq s = kv_cache_seq(a, kv_used, kv_leftpad, seq_of(a, cu_q, cu_k, b), b);
  const HeadCtx c = head_ctx(a, alibi, sp_state, sp_mask, s, b, h);
  const ushort2 rc = lane_rc(lane);
  const KvRows krow = kv_rows(a, a.k_stride, kv_batch, kv_table, s, b, hk);
  const KvRows vrow = kv_rows(a, a.v_stride, kv_batch, kv_table, s, b, hk);

  // One q-block per threadgroup; the varlen tail pseudo-sequence (any
  // length) is walked grid-stride.
  for (int i0 = int(tgp.x) * F_BQ; i0 < s.sq; i0 += int(ngroups.x) * F_BQ) {
    const int nrows = min(F_BQ, s.sq - i0);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    stage_tile(f_q, F_BQ, FSDPA_DP, q, row_offset(a.q_stride, b, h, long(s.q_begin + i0)), a.q_stride[2],
               a.q_stride[3], nrows, a.head_dim, tid, F_NT);

    simdgroup_float8x8 acc[FSDPA_DVP / 8];
    for (int t = 0; t < FSDPA_DVP / 8; ++t) acc[t] = tile_zero();
    float m = -INFINITY, l = 0.0f;  // running max / sum of this lane's row
    const int i = i0 + int(sg) * 8 + int(rc.x);

    const int2 kr = key_range(a, s, i0, i0 + nrows - 1);
    for (int j0 = kr.x / F_BK * F_BK; j0 <= kr.y; j0 += F_BK) {
      const int nk = min(F_BK, s.sk - j0);
      if (!sparse_tile_listed(a, c, i0, i0 + nrows - 1, j0, j0 + nk - 1)) continue;
      threadgroup_barrier(mem_flags::mem_threadgroup);
      stage_kv_tile(f_kv, F_BK, FSDPA_DP, k, krow, j0, a.k_stride[3], nk, a.head_dim, tid, F_NT);
      threadgroup_barrier(mem_flags::mem_threadgroup);

      // S = Q K^T for this simdgroup's 8 rows
      simdgroup_float8x8 sc[F_BK / 8];
      for (int n = 0; n < F_BK / 8; ++n) sc[n] = tile_zero();
      for (int kd = 0; kd < FSDPA_DP / 8; ++kd) {
        const simdgroup_float8x8 qa = tile_load(f_q + (int(sg) * 8 * FSDPA_DP + kd * 8), FSDPA_DP, false, rc);
        for (int n = 0; n < F_BK / 8; ++n) {
          const simdgroup_float8x8 kb = tile_load(f_kv + (n * 8 * FSDPA_DP + kd * 8), FSDPA_DP, true, rc);
          simdgroup_multiply_accumulate(sc[n], qa, kb, sc[n]);
        }
      }

      // scores, online softmax
      float rmax = -INFINITY;
      for (int n = 0; n < F_BK / 8; ++n) {
        float2 e = sc[n].thread_elements();
        for (int u = 0; u < 2; ++u) {
          float th;
          e[u] = score(a, mask, c, i, j0 + n * 8 + int(rc.y) + u, e[u], &th);
          rmax = max(rmax, e[u]);
        }
        set_elems(sc[n], e);
      }
      rmax = row_max4(rmax);
      const float m_new = max(m, rmax);
      float alpha = 1.0f, psum = 0.0f;
      if (m_new != -INFINITY) {
        alpha = exp(m - m_new);  // 0 while m is -inf
        for (int n = 0; n < F_BK / 8; ++n) {
          float2 e = sc[n].thread_elements();
          for (int u = 0; u < 2; ++u) {
            e[u] = exp(e[u] - m_new);  // -inf -> 0
            psum += e[u];
          }
#if FSDPA_DROPOUT
          const int j = j0 + n * 8 + int(rc.y);  // even: both columns share one Philox call
          if (i < s.sq && (e[0] != 0.0f || e[1] != 0.0f)) {
            const uint4 w = dropout_bits4(a, c.row_base + uint(i), uint(j) >> 2);
            for (int u = 0; u < 2; ++u) e[u] *= w[(j & 3) + u] >= a.dropout_threshold ? a.dropout_scale : 0.0f;
          }
#endif
          set_elems(sc[n], e);
        }
      } else {
        // Nothing attended yet, unless a score is NaN (max skips NaN): then
        // the row is NaN (l stays NaN, as in PyTorch). A NaN in this lane's
        // psum reaches the whole row through row_sum4 below (no shuffle
        // here: lanes of other rows may take the other branch).
        for (int n = 0; n < F_BK / 8; ++n) {
          const float2 e = sc[n].thread_elements();
          if (isnan(e[0]) || isnan(e[1])) psum = NAN;
          set_elems(sc[n], float2(0.0f, 0.0f));
        }
      }
      psum = row_sum4(psum);
      l = l * alpha + psum;
      m = m_new;
      for (int t = 0; t < FSDPA_DVP / 8; ++t) set_elems(acc[t], acc[t].thread_elements() * alpha);

      // O += P V
      threadgroup_barrier(mem_flags::mem_threadgroup);
      stage_kv_tile(f_kv, F_BK, FSDPA_DVP, v, vrow, j0, a.v_stride[3], nk, a.head_dim_v, tid, F_NT);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int t = 0; t < FSDPA_DVP / 8; ++t)
        for (int n = 0; n < F_BK / 8; ++n) {
          const simdgroup_float8x8 vb = tile_load(f_kv + (n * 8 * FSDPA_DVP + t * 8), FSDPA_DVP, false, rc);
          simdgroup_multiply_accumulate(acc[t], sc[n], vb, acc[t]);
        }
    }

    // out = O / l, lse = m + log(l); empty rows (l == 0): 0 and -inf; a NaN
    // or +inf score made l NaN: out and lse NaN.
    if (i < s.sq) {
      const bool empty = l == 0.0f;
      const float inv = empty ? 0.0f : 1.0f / l;
      const long ob = row_offset(a.out_stride, b, h, long(s.q_begin + i));
      for (int t = 0; t < FSDPA_DVP / 8; ++t) {
        const float2 e = acc[t].thread_elements();
        for (int u = 0; u < 2; ++u) {
          const int d = t * 8 + int(rc.y) + u;
          if (d < a.head_dim_v) out[ob + long(d) * a.out_stride[3]] = to_io(empty ? 0.0f : e[u] * inv);
        }
      }
      if (a.has_lse != 0 && rc.y == 0)
        lse[row_offset(a.lse_stride, b, h, long(s.q_begin + i))] = empty ? -INFINITY : m + log(l);
    }
  }
}

// ====================================================================== split-KV decode
// Few query rows, long keys (the planner's choose_decode_split). Pass 1:
// each simdgroup takes one work item (row r of its kv head's query rows --
// the GQA group's heads times seqlen_q -- and key split sp); the lanes split
// the head dims, keys are visited one at a time (dot product by simd_sum)
// with the online softmax in registers, as the forward does per lane. It
// writes the split's partial out (normalised, float32) and lse (m + log l;
// -inf when it saw no visible key) to the scratch. Pass 2 merges a row's
// splits by log-sum-exp: a split with lse = -inf contributes nothing; all
// -inf gives out = 0, lse = -inf. Same semantics as fsdpa_forward (score(),
// dropout_factor()); the planner never chooses it for varlen calls.
//
// Scratch (float32), with R = batch * heads_q * seqlen_q rows, row id
// rid = (b * heads_q + h) * seqlen_q + i and S = num_splits:
//   lse of (rid, sp) at rid * S + sp; out of (rid, sp, d) at R * S + (rid * S + sp) * head_dim_v + d.
#define SPLIT_QPL ((FSDPA_DP + 31) / 32)   // q elements per lane
#define SPLIT_OPL ((FSDPA_DVP + 31) / 32)  // out elements per lane
#if FSDPA_THREADS_DECODE_SPLIT % 32 != 0 || FSDPA_THREADS_DECODE_MERGE % 32 != 0
#error "the decode kernels work in whole simdgroups"
#endif

inline long decode_row(constant FsdpaMetalArgs& a, uint b, uint h, int i) {
  return (long(b) * a.heads_q + long(h)) * a.seqlen_q + i;
}
inline long decode_out_base(constant FsdpaMetalArgs& a) {
  return long(a.batch) * a.heads_q * a.seqlen_q * a.num_splits;
}

[[max_total_threads_per_threadgroup(FSDPA_THREADS_DECODE_SPLIT)]]
kernel void fsdpa_decode_split(constant FsdpaMetalArgs& a [[buffer(FSDPA_BUF_ARGS)]],
                               device const io_t* q [[buffer(FSDPA_BUF_Q)]],
                               device const io_t* k [[buffer(FSDPA_BUF_K)]],
                               device const io_t* v [[buffer(FSDPA_BUF_V)]],
                               device const mask_t* mask [[buffer(FSDPA_BUF_MASK)]],
                               device const float* alibi [[buffer(FSDPA_BUF_ALIBI)]],
                               device const int* cu_q [[buffer(FSDPA_BUF_CU_Q)]],
                               device const int* cu_k [[buffer(FSDPA_BUF_CU_K)]],
                               device const int* kv_used [[buffer(FSDPA_BUF_SEQUSED_K)]],
                               device const int* kv_batch [[buffer(FSDPA_BUF_CACHE_BATCH_IDX)]],
                               device const int* kv_leftpad [[buffer(FSDPA_BUF_CACHE_LEFTPAD)]],
                               device const int* kv_table [[buffer(FSDPA_BUF_BLOCK_TABLE)]],
                               device const int* sp_state [[buffer(FSDPA_BUF_SPARSE_STATE)]],
                               device const uchar* sp_mask [[buffer(FSDPA_BUF_SPARSE_MASK)]],
                               device float* part [[buffer(FSDPA_BUF_SCRATCH)]],
                               uint3 tgp [[threadgroup_position_in_grid]],
                               ushort sg [[simdgroup_index_in_threadgroup]],
                               ushort lane [[thread_index_in_simdgroup]]) {
  const uint b = tgp.z, hk = tgp.y;
  const int group = a.heads_q / a.heads_k;
  const int rows = group * a.seqlen_q;
  // Work item w: consecutive simdgroups take consecutive rows of one split,
  // so a threadgroup's simdgroups mostly read the same keys.
  const int w = int(tgp.x) * (FSDPA_THREADS_DECODE_SPLIT / 32) + int(sg);
  if (w >= rows * a.num_splits) return;  // whole simdgroup; this kernel has no barriers
  const int sp = w / rows, r = w % rows;
  const uint h = hk * uint(group) + uint(r / a.seqlen_q);
  const int i = r % a.seqlen_q;
  const Seq s = kv_cache_seq(a, kv_used, kv_leftpad, seq_of(a, cu_q, cu_k, b), b);
  const HeadCtx c = head_ctx(a, alibi, sp_state, sp_mask, s, b, h);

  float qr[SPLIT_QPL];
  const long qb = row_offset(a.q_stride, b, h, long(i));
  for (int t = 0; t < SPLIT_QPL; ++t) {
    const int d = int(lane) + 32 * t;
    qr[t] = d < a.head_dim ? ld_io(q, qb + long(d) * a.q_stride[3]) : 0.0f;
  }
  float o[SPLIT_OPL];
  for (int t = 0; t < SPLIT_OPL; ++t) o[t] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  const int2 kr = key_range(a, s, i, i);
  const int j_end = min(kr.y + 1, (sp + 1) * a.keys_per_split);
  const KvRows krow = kv_rows(a, a.k_stride, kv_batch, kv_table, s, b, hk);
  const KvRows vrow = kv_rows(a, a.v_stride, kv_batch, kv_table, s, b, hk);
  for (int j = max(kr.x, sp * a.keys_per_split); j < j_end; ++j) {
    const long kb = kv_row(krow, j);
    float x = 0.0f;
    for (int t = 0; t < SPLIT_QPL; ++t) {
      const int d = int(lane) + 32 * t;
      if (d < a.head_dim) x += qr[t] * ld_io(k, kb + long(d) * a.k_stride[3]);
    }
    x = simd_sum(x);  // the same in every lane, so the branches below are uniform
    float th;
    const float sc = score(a, mask, c, i, j, x, &th);
    if (sc == -INFINITY) continue;
    const float m_new = max(m, sc);
    const float alpha = exp(m - m_new);  // 0 while m is -inf
    const float p = exp(sc - m_new);
    l = l * alpha + p;
    float pz = p;
#if FSDPA_DROPOUT
    pz *= dropout_factor(a, c, i, j);
#endif
    const long vb = kv_row(vrow, j);
    for (int t = 0; t < SPLIT_OPL; ++t) {
      const int d = int(lane) + 32 * t;
      const float vv = d < a.head_dim_v ? ld_io(v, vb + long(d) * a.v_stride[3]) : 0.0f;
      o[t] = o[t] * alpha + pz * vv;
    }
    m = m_new;
  }

  const long slot = decode_row(a, b, h, i) * a.num_splits + sp;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int t = 0; t < SPLIT_OPL; ++t) {
    const int d = int(lane) + 32 * t;
    if (d < a.head_dim_v) part[decode_out_base(a) + slot * a.head_dim_v + d] = o[t] * inv;
  }
  if (lane == 0) part[slot] = l > 0.0f ? m + log(l) : -INFINITY;
}

// One simdgroup per output row (b, h, i): lanes over the splits for the
// lse, then over the head dims for out.
[[max_total_threads_per_threadgroup(FSDPA_THREADS_DECODE_MERGE)]]
kernel void fsdpa_decode_merge(constant FsdpaMetalArgs& a [[buffer(FSDPA_BUF_ARGS)]],
                               device io_t* out [[buffer(FSDPA_BUF_OUT)]],
                               device float* lse [[buffer(FSDPA_BUF_LSE)]],
                               device const float* part [[buffer(FSDPA_BUF_SCRATCH)]],
                               uint3 tgp [[threadgroup_position_in_grid]],
                               ushort sg [[simdgroup_index_in_threadgroup]],
                               ushort lane [[thread_index_in_simdgroup]]) {
  const uint b = tgp.z, h = tgp.y;
  const int i = int(tgp.x) * (FSDPA_THREADS_DECODE_MERGE / 32) + int(sg);
  if (i >= a.seqlen_q) return;  // whole simdgroup
  const int S = a.num_splits;
  const long row = decode_row(a, b, h, i) * S;
  float mx = -INFINITY;
  for (int sp = int(lane); sp < S; sp += 32) mx = max(mx, part[row + sp]);
  mx = simd_max(mx);
  float wsum = 0.0f;
  if (mx != -INFINITY)
    for (int sp = int(lane); sp < S; sp += 32) {
      const float ls = part[row + sp];
      if (ls != -INFINITY) wsum += exp(ls - mx);
    }
  wsum = simd_sum(wsum);
  const float total = mx == -INFINITY ? -INFINITY : mx + log(wsum);

  const long ob = row_offset(a.out_stride, b, h, long(i));
  for (int d = int(lane); d < a.head_dim_v; d += 32) {
    float acc = 0.0f;
    if (total != -INFINITY)
      for (int sp = 0; sp < S; ++sp) {
        const float ls = part[row + sp];
        if (ls != -INFINITY) acc += exp(ls - total) * part[decode_out_base(a) + (row + sp) * a.head_dim_v + d];
      }
    out[ob + long(d) * a.out_stride[3]] = to_io(acc);
  }
  if (a.has_lse != 0 && lane == 0) lse[row_offset(a.lse_stride, b, h, long(i))] = total;
}

// ====================================================================== backward: Delta
#if FSDPA_THREADS_BACKWARD_PREPROCESS != FSDPA_PRE_ROWS * 32
#error "FSDPA_THREADS_BACKWARD_PREPROCESS must be one simdgroup per row"
#endif
[[max_total_threads_per_threadgroup(FSDPA_THREADS_BACKWARD_PREPROCESS)]]
kernel void fsdpa_backward_preprocess(constant FsdpaMetalArgs& a [[buffer(FSDPA_BUF_ARGS)]],
                                      device const io_t* out [[buffer(FSDPA_BUF_OUT)]],
                                      device const io_t* dout [[buffer(FSDPA_BUF_DOUT)]],
                                      device float* delta [[buffer(FSDPA_BUF_SCRATCH)]],
                                      device const int* cu_q [[buffer(FSDPA_BUF_CU_Q)]],
                                      device const int* cu_k [[buffer(FSDPA_BUF_CU_K)]],
                                      uint3 tgp [[threadgroup_position_in_grid]],
                                      uint3 ngroups [[threadgroups_per_grid]],
                                      ushort sg [[simdgroup_index_in_threadgroup]],
                                      ushort lane [[thread_index_in_simdgroup]]) {
  const uint b = tgp.z, h = tgp.y;
  const Seq s = seq_of(a, cu_q, cu_k, b);
  if (s.tail) return;  // rows without keys: Delta is never read
  for (int r0 = int(tgp.x) * FSDPA_PRE_ROWS; r0 < s.sq; r0 += int(ngroups.x) * FSDPA_PRE_ROWS) {
    const int i = r0 + int(sg);
    if (i < s.sq) {  // uniform within the simdgroup
      const long tok = long(s.q_begin + i);
      const long ob = row_offset(a.out_stride, b, h, tok), db = row_offset(a.dout_stride, b, h, tok);
      float x = 0.0f;
      for (int d = int(lane); d < a.head_dim_v; d += 32)
        x += ld_io(dout, db + long(d) * a.dout_stride[3]) * ld_io(out, ob + long(d) * a.out_stride[3]);
      x = simd_sum(x);
      if (lane == 0) delta[row_offset(a.delta_stride, b, h, tok)] = x;
    }
  }
}

// ====================================================================== backward: dQ
#define Q_BQ FSDPA_DQ_BQ
#define Q_BK FSDPA_DQ_BK
#define Q_NT FSDPA_THREADS_BACKWARD_DQ  // one simdgroup per 8 rows
#if Q_NT != (Q_BQ / 8) * 32
#error "FSDPA_THREADS_BACKWARD_DQ must be 32 threads per 8 rows"
#endif

[[max_total_threads_per_threadgroup(FSDPA_THREADS_BACKWARD_DQ)]]
kernel void fsdpa_backward_dq(constant FsdpaMetalArgs& a [[buffer(FSDPA_BUF_ARGS)]],
                              device const io_t* q [[buffer(FSDPA_BUF_Q)]],
                              device const io_t* k [[buffer(FSDPA_BUF_K)]],
                              device const io_t* v [[buffer(FSDPA_BUF_V)]],
                              device const float* lse [[buffer(FSDPA_BUF_LSE)]],
                              device const mask_t* mask [[buffer(FSDPA_BUF_MASK)]],
                              device const float* alibi [[buffer(FSDPA_BUF_ALIBI)]],
                              device const int* cu_q [[buffer(FSDPA_BUF_CU_Q)]],
                              device const int* cu_k [[buffer(FSDPA_BUF_CU_K)]],
                              device const io_t* dout [[buffer(FSDPA_BUF_DOUT)]],
                              device const float* delta [[buffer(FSDPA_BUF_SCRATCH)]],
                              device io_t* dq [[buffer(FSDPA_BUF_DQ)]],
                              device const int* sp_state [[buffer(FSDPA_BUF_SPARSE_STATE)]],
                              device const uchar* sp_mask [[buffer(FSDPA_BUF_SPARSE_MASK)]],
                              uint3 tgp [[threadgroup_position_in_grid]],
                              uint3 ngroups [[threadgroups_per_grid]],
                              ushort tid [[thread_index_in_threadgroup]],
                              ushort sg [[simdgroup_index_in_threadgroup]],
                              ushort lane [[thread_index_in_simdgroup]]) {
  FSDPA_THREADGROUP(tg_t, q_q, Q_BQ * FSDPA_DP);
  FSDPA_THREADGROUP(tg_t, q_do, Q_BQ * FSDPA_DVP);
  FSDPA_THREADGROUP(tg_t, q_kv, Q_BK * FSDPA_DKV_MAX);  // V (for dP), then K (for S and dQ)
  const uint b = tgp.z, h = tgp.y;
  const uint hk = h / uint(a.heads_q / a.heads_k);
  const Seq s = seq_of(a, cu_q, cu_k, b);
  const HeadCtx c = head_ctx(a, alibi, sp_state, sp_mask, s, b, h);
  const ushort2 rc = lane_rc(lane);
  const long kbase = long(b) * a.k_stride[0] + long(hk) * a.k_stride[1] + long(s.k_begin) * a.k_stride[2];
  const long vbase = long(b) * a.v_stride[0] + long(hk) * a.v_stride[1] + long(s.k_begin) * a.v_stride[2];

  for (int i0 = int(tgp.x) * Q_BQ; i0 < s.sq; i0 += int(ngroups.x) * Q_BQ) {
    const int nrows = min(Q_BQ, s.sq - i0);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    stage_tile(q_q, Q_BQ, FSDPA_DP, q, row_offset(a.q_stride, b, h, long(s.q_begin + i0)), a.q_stride[2],
               a.q_stride[3], nrows, a.head_dim, tid, Q_NT);
    stage_tile(q_do, Q_BQ, FSDPA_DVP, dout, row_offset(a.dout_stride, b, h, long(s.q_begin + i0)),
               a.dout_stride[2], a.dout_stride[3], nrows, a.head_dim_v, tid, Q_NT);

    const int i = i0 + int(sg) * 8 + int(rc.x);
    float lse_i = -INFINITY, delta_i = 0.0f;
    if (i < s.sq && !s.tail) {
      lse_i = lse[row_offset(a.lse_stride, b, h, long(s.q_begin + i))];
      delta_i = delta[row_offset(a.delta_stride, b, h, long(s.q_begin + i))];
    }
    simdgroup_float8x8 acc[FSDPA_DP / 8];
    for (int t = 0; t < FSDPA_DP / 8; ++t) acc[t] = tile_zero();

    const int2 kr = key_range(a, s, i0, i0 + nrows - 1);
    for (int j0 = kr.x / Q_BK * Q_BK; j0 <= kr.y; j0 += Q_BK) {
      const int nk = min(Q_BK, s.sk - j0);
      if (!sparse_tile_listed(a, c, i0, i0 + nrows - 1, j0, j0 + nk - 1)) continue;
      simdgroup_float8x8 sc[Q_BK / 8], dp[Q_BK / 8];
      for (int n = 0; n < Q_BK / 8; ++n) {
        sc[n] = tile_zero();
        dp[n] = tile_zero();
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      stage_tile(q_kv, Q_BK, FSDPA_DVP, v, vbase + long(j0) * a.v_stride[2], a.v_stride[2], a.v_stride[3], nk,
                 a.head_dim_v, tid, Q_NT);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int kd = 0; kd < FSDPA_DVP / 8; ++kd) {  // dP = dO V^T
        const simdgroup_float8x8 da = tile_load(q_do + (int(sg) * 8 * FSDPA_DVP + kd * 8), FSDPA_DVP, false, rc);
        for (int n = 0; n < Q_BK / 8; ++n)
          simdgroup_multiply_accumulate(dp[n], da,
                                        tile_load(q_kv + (n * 8 * FSDPA_DVP + kd * 8), FSDPA_DVP, true, rc), dp[n]);
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      stage_tile(q_kv, Q_BK, FSDPA_DP, k, kbase + long(j0) * a.k_stride[2], a.k_stride[2], a.k_stride[3], nk,
                 a.head_dim, tid, Q_NT);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int kd = 0; kd < FSDPA_DP / 8; ++kd) {  // S = Q K^T
        const simdgroup_float8x8 qa = tile_load(q_q + (int(sg) * 8 * FSDPA_DP + kd * 8), FSDPA_DP, false, rc);
        for (int n = 0; n < Q_BK / 8; ++n)
          simdgroup_multiply_accumulate(sc[n], qa, tile_load(q_kv + (n * 8 * FSDPA_DP + kd * 8), FSDPA_DP, true, rc),
                                        sc[n]);
      }
      // dS = P * (dP * Z - Delta) [* (1 - tanh^2)], P = exp(S - lse)
      for (int n = 0; n < Q_BK / 8; ++n) {
        float2 e = sc[n].thread_elements();
        const float2 g = dp[n].thread_elements();
        for (int u = 0; u < 2; ++u) {
          const int j = j0 + n * 8 + int(rc.y) + u;
          float th;
          const float x = score(a, mask, c, i, j, e[u], &th);
          const float p = (x == -INFINITY || lse_i == -INFINITY) ? 0.0f : exp(x - lse_i);
          float gz = g[u];
#if FSDPA_DROPOUT
          if (p != 0.0f) gz *= dropout_factor(a, c, i, j);
#endif
          float ds = p * (gz - delta_i);
#if FSDPA_SOFTCAP
          ds *= 1.0f - th * th;
#endif
          e[u] = ds;
        }
        set_elems(sc[n], e);
      }
      for (int t = 0; t < FSDPA_DP / 8; ++t)  // dQ += dS K
        for (int n = 0; n < Q_BK / 8; ++n)
          simdgroup_multiply_accumulate(acc[t], sc[n], tile_load(q_kv + (n * 8 * FSDPA_DP + t * 8), FSDPA_DP, false, rc),
                                        acc[t]);
    }

    if (i < s.sq) {
      const long qb = row_offset(a.dq_stride, b, h, long(s.q_begin + i));
      for (int t = 0; t < FSDPA_DP / 8; ++t) {
        const float2 e = acc[t].thread_elements();
        for (int u = 0; u < 2; ++u) {
          const int d = t * 8 + int(rc.y) + u;
          if (d < a.head_dim) dq[qb + long(d) * a.dq_stride[3]] = to_io(e[u] * a.scale);
        }
      }
    }
  }
}

// ====================================================================== backward: dK, dV
// One threadgroup per (key block, kv head, sequence); each simdgroup owns 8
// keys and accumulates their dK, dV over every query head of the GQA group
// and every query block that sees them. Scores are computed transposed
// (keys x queries): element (r, c) of a tile is (key r, query c).
#define K_BQ FSDPA_DKV_BQ
#define K_BK FSDPA_DKV_BK
#define K_NT FSDPA_THREADS_BACKWARD_DKDV  // one simdgroup per 8 rows
#if K_NT != (K_BK / 8) * 32
#error "FSDPA_THREADS_BACKWARD_DKDV must be 32 threads per 8 rows"
#endif

[[max_total_threads_per_threadgroup(FSDPA_THREADS_BACKWARD_DKDV)]]
kernel void fsdpa_backward_dkdv(constant FsdpaMetalArgs& a [[buffer(FSDPA_BUF_ARGS)]],
                                device const io_t* q [[buffer(FSDPA_BUF_Q)]],
                                device const io_t* k [[buffer(FSDPA_BUF_K)]],
                                device const io_t* v [[buffer(FSDPA_BUF_V)]],
                                device const float* lse [[buffer(FSDPA_BUF_LSE)]],
                                device const mask_t* mask [[buffer(FSDPA_BUF_MASK)]],
                                device const float* alibi [[buffer(FSDPA_BUF_ALIBI)]],
                                device const int* cu_q [[buffer(FSDPA_BUF_CU_Q)]],
                                device const int* cu_k [[buffer(FSDPA_BUF_CU_K)]],
                                device const io_t* dout [[buffer(FSDPA_BUF_DOUT)]],
                                device const float* delta [[buffer(FSDPA_BUF_SCRATCH)]],
                                device io_t* dk [[buffer(FSDPA_BUF_DK)]],
                                device io_t* dv [[buffer(FSDPA_BUF_DV)]],
                                device const int* sp_state [[buffer(FSDPA_BUF_SPARSE_STATE)]],
                                device const uchar* sp_mask [[buffer(FSDPA_BUF_SPARSE_MASK)]],
                                uint3 tgp [[threadgroup_position_in_grid]],
                                uint3 ngroups [[threadgroups_per_grid]],
                                ushort tid [[thread_index_in_threadgroup]],
                                ushort sg [[simdgroup_index_in_threadgroup]],
                                ushort lane [[thread_index_in_simdgroup]]) {
  FSDPA_THREADGROUP(tg_t, d_k, K_BK * FSDPA_DP);
  FSDPA_THREADGROUP(tg_t, d_v, K_BK * FSDPA_DVP);
  FSDPA_THREADGROUP(tg_t, d_q, K_BQ * FSDPA_DP);
  FSDPA_THREADGROUP(tg_t, d_do, K_BQ * FSDPA_DVP);
  const uint b = tgp.z, hk = tgp.y;
  const int group = a.heads_q / a.heads_k;
  const Seq s = seq_of(a, cu_q, cu_k, b);
  const ushort2 rc = lane_rc(lane);

  for (int j0 = int(tgp.x) * K_BK; j0 < s.sk; j0 += int(ngroups.x) * K_BK) {
    const int nk = min(K_BK, s.sk - j0);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    stage_tile(d_k, K_BK, FSDPA_DP, k, row_offset(a.k_stride, b, hk, long(s.k_begin + j0)), a.k_stride[2],
               a.k_stride[3], nk, a.head_dim, tid, K_NT);
    stage_tile(d_v, K_BK, FSDPA_DVP, v, row_offset(a.v_stride, b, hk, long(s.k_begin + j0)), a.v_stride[2],
               a.v_stride[3], nk, a.head_dim_v, tid, K_NT);

    const int j = j0 + int(sg) * 8 + int(rc.x);  // this lane's key
    simdgroup_float8x8 acc_k[FSDPA_DP / 8], acc_v[FSDPA_DVP / 8];
    for (int t = 0; t < FSDPA_DP / 8; ++t) acc_k[t] = tile_zero();
    for (int t = 0; t < FSDPA_DVP / 8; ++t) acc_v[t] = tile_zero();

    const int2 qr = query_range(a, s, j0, j0 + nk - 1);
    for (int hh = 0; hh < group; ++hh) {
      const uint h = hk * uint(group) + uint(hh);
      const HeadCtx c = head_ctx(a, alibi, sp_state, sp_mask, s, b, h);
      for (int i0 = qr.x / K_BQ * K_BQ; i0 <= qr.y; i0 += K_BQ) {
        const int nq = min(K_BQ, s.sq - i0);
        if (!sparse_tile_listed(a, c, i0, i0 + nq - 1, j0, j0 + nk - 1)) continue;  // the transposed lists
        threadgroup_barrier(mem_flags::mem_threadgroup);
        stage_tile(d_q, K_BQ, FSDPA_DP, q, row_offset(a.q_stride, b, h, long(s.q_begin + i0)), a.q_stride[2],
                   a.q_stride[3], nq, a.head_dim, tid, K_NT);
        stage_tile(d_do, K_BQ, FSDPA_DVP, dout, row_offset(a.dout_stride, b, h, long(s.q_begin + i0)),
                   a.dout_stride[2], a.dout_stride[3], nq, a.head_dim_v, tid, K_NT);
        threadgroup_barrier(mem_flags::mem_threadgroup);

        simdgroup_float8x8 st[K_BQ / 8], dpt[K_BQ / 8];
        for (int n = 0; n < K_BQ / 8; ++n) {
          st[n] = tile_zero();
          dpt[n] = tile_zero();
        }
        for (int kd = 0; kd < FSDPA_DP / 8; ++kd) {  // S^T = K Q^T
          const simdgroup_float8x8 ka = tile_load(d_k + (int(sg) * 8 * FSDPA_DP + kd * 8), FSDPA_DP, false, rc);
          for (int n = 0; n < K_BQ / 8; ++n)
            simdgroup_multiply_accumulate(st[n], ka, tile_load(d_q + (n * 8 * FSDPA_DP + kd * 8), FSDPA_DP, true, rc),
                                          st[n]);
        }
        for (int kd = 0; kd < FSDPA_DVP / 8; ++kd) {  // dP^T = V dO^T
          const simdgroup_float8x8 va = tile_load(d_v + (int(sg) * 8 * FSDPA_DVP + kd * 8), FSDPA_DVP, false, rc);
          for (int n = 0; n < K_BQ / 8; ++n)
            simdgroup_multiply_accumulate(dpt[n], va,
                                          tile_load(d_do + (n * 8 * FSDPA_DVP + kd * 8), FSDPA_DVP, true, rc), dpt[n]);
        }
        for (int n = 0; n < K_BQ / 8; ++n) {
          float2 e = st[n].thread_elements();
          float2 g = dpt[n].thread_elements();
          for (int u = 0; u < 2; ++u) {
            const int i = i0 + n * 8 + int(rc.y) + u;
            float th;
            const float x = score(a, mask, c, i, j, e[u], &th);
            float p = 0.0f, delta_i = 0.0f;
            if (x != -INFINITY) {
              const long tok = long(s.q_begin + i);
              const float lse_i = lse[row_offset(a.lse_stride, b, h, tok)];
              delta_i = delta[row_offset(a.delta_stride, b, h, tok)];
              p = lse_i == -INFINITY ? 0.0f : exp(x - lse_i);
            }
            float z = 1.0f;
#if FSDPA_DROPOUT
            if (p != 0.0f) z = dropout_factor(a, c, i, j);
#endif
            float ds = p * (g[u] * z - delta_i);
#if FSDPA_SOFTCAP
            ds *= 1.0f - th * th;
#endif
            e[u] = p * z;  // dropped-out P^T, for dV
            g[u] = ds;
          }
          set_elems(st[n], e);
          set_elems(dpt[n], g);
        }
        for (int t = 0; t < FSDPA_DVP / 8; ++t)  // dV += (P Z)^T dO
          for (int n = 0; n < K_BQ / 8; ++n)
            simdgroup_multiply_accumulate(acc_v[t], st[n],
                                          tile_load(d_do + (n * 8 * FSDPA_DVP + t * 8), FSDPA_DVP, false, rc), acc_v[t]);
        for (int t = 0; t < FSDPA_DP / 8; ++t)  // dK += dS^T Q
          for (int n = 0; n < K_BQ / 8; ++n)
            simdgroup_multiply_accumulate(acc_k[t], dpt[n],
                                          tile_load(d_q + (n * 8 * FSDPA_DP + t * 8), FSDPA_DP, false, rc), acc_k[t]);
      }
    }

    if (j < s.sk) {
      const long kb = row_offset(a.dk_stride, b, hk, long(s.k_begin + j));
      const long vb = row_offset(a.dv_stride, b, hk, long(s.k_begin + j));
      for (int t = 0; t < FSDPA_DP / 8; ++t) {
        const float2 e = acc_k[t].thread_elements();
        for (int u = 0; u < 2; ++u) {
          const int d = t * 8 + int(rc.y) + u;
          if (d < a.head_dim) dk[kb + long(d) * a.dk_stride[3]] = to_io(e[u] * a.scale);
        }
      }
      for (int t = 0; t < FSDPA_DVP / 8; ++t) {
        const float2 e = acc_v[t].thread_elements();
        for (int u = 0; u < 2; ++u) {
          const int d = t * 8 + int(rc.y) + u;
          if (d < a.head_dim_v) dv[vb + long(d) * a.dv_stride[3]] = to_io(e[u]);
        }
      }
    }
  }
}

// ====================================================================== block-sparse: expand the lists
// One thread per row (list batch bm, list head hm, query block qb) of the
// caller's lists: writes the state of each of the row's key blocks into
// state[((bm * sparse_heads + hm) * sparse_q_blocks + qb) * sparse_k_blocks
// + kb]: FSDPA_SPARSE_ABSENT, then FSDPA_SPARSE_FULL for the full list's
// entries, then the slot for the partial list's (entries past a count are
// never read; an index outside the key blocks, a broken contract on GPUs,
// is dropped rather than written out of bounds). The other kernels read
// the states (sparse_state()).
#if FSDPA_THREADS_SPARSE_EXPAND % 32 != 0
#error "FSDPA_THREADS_SPARSE_EXPAND must be whole simdgroups"
#endif
[[max_total_threads_per_threadgroup(FSDPA_THREADS_SPARSE_EXPAND)]]
kernel void fsdpa_sparse_expand(constant FsdpaMetalArgs& a [[buffer(FSDPA_BUF_ARGS)]],
                                device const int* kv_num [[buffer(FSDPA_BUF_KV_NUM)]],
                                device const int* kv_idx [[buffer(FSDPA_BUF_KV_IDX)]],
                                device const int* full_num [[buffer(FSDPA_BUF_FULL_NUM)]],
                                device const int* full_idx [[buffer(FSDPA_BUF_FULL_IDX)]],
                                device int* state [[buffer(FSDPA_BUF_SPARSE_STATE)]],
                                uint3 tgp [[threadgroup_position_in_grid]],
                                ushort tid [[thread_index_in_threadgroup]]) {
  const int nqb = a.sparse_q_blocks, nkb = a.sparse_k_blocks;
  const long r = long(tgp.x) * FSDPA_THREADS_SPARSE_EXPAND + long(tid);
  if (r >= long(a.sparse_batches) * a.sparse_heads * nqb) return;  // this kernel has no barriers
  const long qb = r % nqb, hm = (r / nqb) % a.sparse_heads, bm = r / (long(nqb) * a.sparse_heads);
  device int* st = state + r * nkb;
  for (int kb = 0; kb < nkb; ++kb) st[kb] = FSDPA_SPARSE_ABSENT;
  if ((a.sparse_lists & 2) != 0) {
    constant FSDPA_I64* ns = a.full_num_stride;
    constant FSDPA_I64* is = a.full_idx_stride;
    const int n = full_num[bm * ns[0] + hm * ns[1] + qb * ns[2]];
    for (int e = 0; e < n; ++e) {
      const int kb = full_idx[bm * is[0] + hm * is[1] + qb * is[2] + long(e) * is[3]];
      if (kb >= 0 && kb < nkb) st[kb] = FSDPA_SPARSE_FULL;
    }
  }
  if ((a.sparse_lists & 1) != 0) {
    constant FSDPA_I64* ns = a.kv_num_stride;
    constant FSDPA_I64* is = a.kv_idx_stride;
    const int n = kv_num[bm * ns[0] + hm * ns[1] + qb * ns[2]];
    for (int e = 0; e < n; ++e) {
      const int kb = kv_idx[bm * is[0] + hm * is[1] + qb * is[2] + long(e) * is[3]];
      if (kb >= 0 && kb < nkb) st[kb] = e;
    }
  }
}
