// CPU flash-attention forward: K/V packed once into fp32 panels, then one
// task per (batch, head, q-block[, key split]) runs the online softmax over
// the key blocks its rows can see. Extra memory: the packed K/V (O(N)) and
// per-thread tiles; never an Sq x Sk buffer.
#include <math.h>

#include <algorithm>

#include "cpu/amx_flash.h"
#include "cpu/cpu_backend.h"
#include "cpu/sparse_tiles.h"
#include "cpu/thread_pool.h"
#include "cpu/tiles.h"

namespace fsdpa::cpu {
namespace {

// Packs keys [tok0, tok0 + n) of kv-head hk of sequence b of K or V (strides
// st) into a row-major [rows_padded x ld] fp32 panel, zero padded, each row
// read where the cache addressing puts it (its cache row and page).
// Returns false if a packed element is NaN or Inf.
bool pack_kv_rows(const AttnParams& p, const void* base, const int64_t* st, int64_t b, int64_t hk,
                  int64_t tok0, int64_t n, int64_t dim, float* dst, int64_t ld,
                  int64_t rows_padded) {
  bool finite = true;
  for (int64_t r = 0; r < rows_padded; ++r) {
    float* row = dst + r * ld;
    int64_t written = 0;
    if (r < n) {
      finite &= load_f32(base, kv_offset(p, st, b, hk, tok0 + r, 0), st[3], dim, p.dtype, 1.0f,
                         row);
      written = dim;
    }
    std::fill(row + written, row + ld, 0.0f);
  }
  return finite;
}

// K^T [Dp x kBlockK] and V [kBlockK x Dvp] of key block kb of (b, hk), fp32;
// `tmp` holds kBlockK x Dp floats. A partial last block is written up to its
// keys rounded up to whole vectors (zero padded), the columns of K^T and
// rows of V that attend() reads (pv_keys); the rest is left as it is.
void pack_kv_tile(const AttnParams& p, const BlockLayout& L, int64_t b, int64_t hk, int64_t kb,
                  int64_t dp, int64_t dvp, float* kt, float* v, float* tmp, NonFiniteFlags& nf) {
  const SeqExtent& e = L.seq[b];
  const int64_t j0 = kb * kBlockK, n = std::min<int64_t>(kBlockK, e.sk - j0);
  const int64_t used = std::min<int64_t>(kBlockK, round_up(n, kPanelAlign));
  flag_if(pack_kv_rows(p, p.k, p.k_stride, b, hk, e.k_begin + j0, n, p.head_dim, tmp, dp, used),
          nf.k);
  transpose(tmp, dp, used, dp, kt, kBlockK);
  flag_if(pack_kv_rows(p, p.v, p.v_stride, b, hk, e.k_begin + j0, n, p.head_dim_v, v, dvp, used),
          nf.v);
}

// The same tile for the AMX products, bf16 in the tiled layouts of
// amx_flash.h: K^T [dk2 x kBlockK] (the B side of S = Q K^T) and V
// [kBlockK x dvp] (k-major, the B side of P V). Keys past the sequence end
// are zeros. Rows are read where they are when contiguous, else converted
// into `tmp` (kBlockK x max(Dp, Dvp) floats) first.
void pack_kv_tile_amx(const AttnParams& p, const BlockLayout& L, int64_t b, int64_t hk,
                      int64_t kb, int64_t dk2, int64_t dvp, uint16_t* kt, uint16_t* v, float* tmp,
                      NonFiniteFlags& nf) {
  const SeqExtent& e = L.seq[b];
  const int64_t j0 = kb * kBlockK, n = std::min<int64_t>(kBlockK, e.sk - j0);
  const int d = static_cast<int>(p.head_dim), dv = static_cast<int>(p.head_dim_v);
  const uint16_t* rows[kBlockK];
  // Row pointers of keys [0, n) of K or V (null past n); false if a row
  // converted here holds a NaN/Inf (contiguous rows are checked when packed).
  auto key_rows = [&](const void* base, const int64_t* st, int64_t dim) {
    bool finite = true;
    if (st[3] == 1) {
      for (int64_t r = 0; r < n; ++r)
        rows[r] = static_cast<const uint16_t*>(
            element_ptr(base, p.dtype, kv_offset(p, st, b, hk, e.k_begin + j0 + r, 0)));
    } else {
      finite = pack_kv_rows(p, base, st, b, hk, e.k_begin + j0, n, dim, tmp, dim, n);
      uint16_t* t16 = reinterpret_cast<uint16_t*>(tmp + n * dim);  // after the fp32 rows
      const int idim = static_cast<int>(dim);
      to_bf16_rows(tmp, idim, static_cast<int>(n), idim, idim, t16, idim);
      for (int64_t r = 0; r < n; ++r) rows[r] = t16 + r * dim;
    }
    for (int64_t r = n; r < kBlockK; ++r) rows[r] = nullptr;
    return finite;
  };
  bool k_ok = key_rows(p.k, p.k_stride, p.head_dim);
  for (int j = 0; j < kBlockK / 16; ++j)
    k_ok &= amx_pack_kt_tiles(rows + 16 * j, d, static_cast<int>(dk2), j, kt);
  bool v_ok = key_rows(p.v, p.v_stride, p.head_dim_v);
  for (int w = 0; w < kBlockK / 2; ++w)
    v_ok &= amx_pack_v_pair(rows[2 * w], rows[2 * w + 1], dv, w, static_cast<int>(dvp), v);
  flag_if(k_ok, nf.k);
  flag_if(v_ok, nf.v);
}

// The packed K/V tiles of every (k-block, kv-head), when several q-blocks
// share them (prefill); for one q-block per head (decode) each task packs
// the tiles it needs on the fly instead of making a pass over all of K/V.
// With AMX (bf16) the tiles are kept in bf16 only (kt16, v16), head by
// head: the tiles of a head's consecutive key blocks are one longer panel.
struct PackedKV {
  int64_t dp, dvp, dk2;
  int64_t k_blocks = 0;  // of all sequences
  float* kt = nullptr;  // fp32; null when packing on the fly or with AMX
  float* v = nullptr;
  uint16_t* kt16 = nullptr;  // bf16 for AMX, else null
  uint16_t* v16 = nullptr;
  Buffer owned;  // the panels' memory when too large to keep (kept_scratch)
  const uint16_t* kt16_block(int64_t kblock, int64_t hk) const {
    return kt16 + (hk * k_blocks + kblock) * dk2 * kBlockK;
  }
  const uint16_t* v16_block(int64_t kblock, int64_t hk) const {
    return v16 + (hk * k_blocks + kblock) * kBlockK * dvp;
  }
  // Head by head too: a head's consecutive V blocks are one [keys x dvp]
  // panel, which P V reads kFp32PassBlocks blocks at a time.
  const float* kt_block(int64_t kblock, int64_t hk) const {
    return kt + (hk * k_blocks + kblock) * dp * kBlockK;
  }
  const float* v_block(int64_t kblock, int64_t hk) const {
    return v + (hk * k_blocks + kblock) * kBlockK * dvp;
  }
};

PackedKV pack_kv(const AttnParams& p, const BlockLayout& L, bool pack_all, NonFiniteFlags& nf) {
  PackedKV pk;
  pk.dp = round_up(p.head_dim, kPanelAlign);
  pk.dvp = round_up(p.head_dim_v, kPanelAlign);
  pk.dk2 = amx_pad(p.head_dim);
  pk.k_blocks = L.k_blocks();
  if (!pack_all) return pk;
  const int64_t nblk = L.k_blocks() * p.heads_k;
  if (uses_amx(p)) {
    const int64_t kt_n = nblk * pk.dk2 * kBlockK / 2, v_n = nblk * kBlockK * pk.dvp / 2;
    float* mem = kept_scratch(3, kt_n + v_n, pk.owned);
    pk.kt16 = reinterpret_cast<uint16_t*>(mem);
    pk.v16 = reinterpret_cast<uint16_t*>(mem + kt_n);
    parallel_for(p.batch * p.heads_k, [&](int64_t task) {
      const int64_t b = task / p.heads_k, hk = task % p.heads_k;
      // (slot 2: the forward tasks that use it start after this pass)
      float* tmp = thread_scratch(2, 2 * kBlockK * std::max(p.head_dim, p.head_dim_v));
      for (int64_t kb = 0; kb < L.k_block0[b + 1] - L.k_block0[b]; ++kb) {
        const int64_t gb = L.k_block0[b] + kb;
        pack_kv_tile_amx(p, L, b, hk, kb, pk.dk2, pk.dvp,
                         const_cast<uint16_t*>(pk.kt16_block(gb, hk)),
                         const_cast<uint16_t*>(pk.v16_block(gb, hk)), tmp, nf);
      }
    });
    return pk;
  }
  const int64_t kt_n = nblk * pk.dp * kBlockK;
  pk.kt = kept_scratch(3, kt_n + nblk * kBlockK * pk.dvp, pk.owned);
  pk.v = pk.kt + kt_n;
  parallel_for(p.batch * p.heads_k, [&](int64_t task) {
    const int64_t b = task / p.heads_k, hk = task % p.heads_k;
    float* tmp = thread_scratch(2, kBlockK * pk.dp);  // as above
    for (int64_t kb = 0; kb < L.k_block0[b + 1] - L.k_block0[b]; ++kb) {
      const int64_t gb = L.k_block0[b] + kb;
      pack_kv_tile(p, L, b, hk, kb, pk.dp, pk.dvp, const_cast<float*>(pk.kt_block(gb, hk)),
                   const_cast<float*>(pk.v_block(gb, hk)), tmp, nf);
    }
  });
  return pk;
}

// False if rows [tok, tok + n) of kv-head hk of K or V hold a NaN/Inf
// (`tmp`: dim floats).
bool rows_finite(const AttnParams& p, const void* base, const int64_t* st, int64_t b, int64_t hk,
                 int64_t tok, int64_t n, int64_t dim, float* tmp) {
  bool finite = true;
  for (int64_t r = 0; r < n; ++r)
    finite &= load_f32(base, kv_offset(p, st, b, hk, tok + r, 0), st[3], dim, p.dtype, 1.0f, tmp);
  return finite;
}

// max(a, b) that is NaN if either is: a NaN score must reach the output
// (std::max and the SIMD row max may drop it).
inline float max_keep_nan(float a, float b) { return a != a || b != b ? NAN : std::max(a, b); }

// check_finite covers every element of K and V in the sequences, also keys
// the causal/window band hides from every row (a key hidden by a bool mask
// is checked too). The decode paths read only the key blocks some row can
// see: scan the rest here.
void check_unread_kv(const AttnParams& p, const BlockLayout& L, NonFiniteFlags& nf) {
  parallel_for(p.batch * p.heads_k, [&](int64_t task) {
    const int64_t b = task / p.heads_k, hk = task % p.heads_k;
    const SeqExtent& e = L.seq[b];
    int64_t kb_lo = 0, kb_hi = 0;
    if (e.sq > 0) visible_key_blocks(make_head_ctx(p, e, b, 0), 0, e.sq, &kb_lo, &kb_hi);
    const int64_t read_lo = std::min(kb_lo * kBlockK, e.sk);
    const int64_t read_hi = std::min(kb_hi * kBlockK, e.sk);
    std::vector<float> tmp(std::max(p.head_dim, p.head_dim_v));
    auto scan = [&](int64_t j0, int64_t j1) {
      if (j1 <= j0) return;
      flag_if(rows_finite(p, p.k, p.k_stride, b, hk, e.k_begin + j0, j1 - j0, p.head_dim,
                          tmp.data()),
              nf.k);
      flag_if(rows_finite(p, p.v, p.v_stride, b, hk, e.k_begin + j0, j1 - j0, p.head_dim_v,
                          tmp.data()),
              nf.v);
    };
    if (read_hi <= read_lo) {
      scan(0, e.sk);
    } else {
      scan(0, read_lo);
      scan(read_hi, e.sk);
    }
  });
}

// Running state of the online softmax for the rows of one q-block.
struct RowState {
  float* o;  // [kBlockQ x dvp], unnormalised
  float* m;  // running max
  float* l;  // running sum of exp (before dropout)
};

// A q-block of attend(): rows [i0, i0 + head_rows) of each of its heads,
// their scaled Q (dp apart), running state and the key blocks they see.
struct QBlock {
  const float* qs;
  int64_t i0, head_rows;
  RowState st;
  int64_t kb_lo, kb_hi;
};

// Online softmax of the rows of `nq` q-blocks of `heads` consecutive query
// heads (c: the first; more than one only without dropout, for GQA decode:
// their rows are stacked head after head and share each K/V read; more
// than one q-block only with one head, packed K/V and no block lists) over
// each q-block's key blocks [kb_lo, kb_hi), fp32 products (attend_amx below
// is the AMX path). With packed K/V (prefill) up to kFp32PassBlocks key
// blocks per softmax step, each step's blocks used by every q-block in
// turn. S: [rows x kFp32PassBlocks * kBlockK] scores. `tiles` is scratch
// for on-the-fly K/V tiles (kBlockK * (Dp + Dvp)).
// `sparse`: the block lists of these rows (one head), or null: key tiles they
// do not name are skipped.
void attend(const AttnParams& p, const PackedKV& pk, const BlockLayout& L, const HeadCtx& c,
            int64_t heads, const QBlock* qb, int nq, float* S, float* tiles, NonFiniteFlags& nf,
            const SparseRows* sparse) {
  const int64_t hk = kv_head(p, c.h);
  const int64_t kb0 = L.k_block0[c.b];
  int64_t kb_begin = qb[0].kb_lo, kb_end = qb[0].kb_hi;
  for (int q = 0; q < nq; ++q) {
    const RowState& st = qb[q].st;
    const int64_t rows = heads * qb[q].head_rows;
    std::fill(st.m, st.m + rows, kNegInf);
    std::fill(st.l, st.l + rows, 0.0f);
    std::fill(st.o, st.o + rows * pk.dvp, 0.0f);
    kb_begin = std::min(kb_begin, qb[q].kb_lo);
    kb_end = std::max(kb_end, qb[q].kb_hi);
  }
  const bool bf16 = p.dtype == DType::bf16;
  constexpr int64_t ld = kFp32PassBlocks * kBlockK;  // S's row stride
  // Key blocks [kb, kb + nb) for the rows of one q-block.
  auto step = [&](const QBlock& q, int64_t kb, int64_t nb) {
    const float* qs = q.qs;
    const int64_t i0 = q.i0, head_rows = q.head_rows, rows = heads * head_rows;
    const RowState& st = q.st;
    // Decode steps with few query rows read fp32/bf16 K and V in place
    // (contiguous rows) instead of copying each tile.
    const bool in_place = forward_score_gemm(p, rows) == ScoreGemm::rows_in_place;
    const int64_t j0 = kb * kBlockK, keys = nb * kBlockK;
    int64_t n = kBlockK;  // keys of this block (fewer at the sequence end)
    int64_t pv_keys = kBlockK;  // key columns the packed fp32 products use
    const float* v;
    if (pk.kt) {
      // A sequence's last, partial key block: only its keys' columns (whole
      // vectors) are multiplied; the epilogue sets the rest to -inf (keys
      // past the sequence end) and P V skips their zero rows, exactly. Each
      // score is the same dot product either way (the backward recomputes
      // all 64 columns bit for bit alike).
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t cols =
            std::min<int64_t>(kBlockK, round_up(c.e.sk - j0 - b * kBlockK, kPanelAlign));
        gemm(rows, static_cast<int>(cols), pk.dp, qs, pk.dp, pk.kt_block(kb0 + kb + b, hk),
             kBlockK, S + b * kBlockK, ld, false);
        pv_keys = b * kBlockK + cols;
      }
      v = pk.v_block(kb0 + kb, hk);
    } else if (in_place) {
      // Decode, fp32/bf16 with contiguous rows: K and V read where they are,
      // one run of equally spaced rows (a page, or the whole block) at a time.
      n = std::min<int64_t>(kBlockK, c.e.sk - j0);
      const int64_t tok = c.e.k_begin + j0;
      for (int64_t j = 0, run; j < n; j += run) {
        run = std::min(n - j, kv_contiguous_rows(p, tok + j));
        dot_rows_src(rows, run, p.head_dim, qs, pk.dp,
                     element_ptr(p.k, p.dtype, kv_offset(p, p.k_stride, c.b, hk, tok + j, 0)),
                     bf16, p.k_stride[2], S + j, ld);
      }
      for (int64_t r = 0; r < rows; ++r) std::fill(S + r * ld + n, S + r * ld + kBlockK, 0.0f);
      // A NaN/Inf in these K rows makes a score non-finite; only then scan
      // (unless q, which poisons every score, is already flagged).
      bool finite = true;
      for (int64_t r = 0; r < rows && finite; ++r) finite = all_finite(S + r * ld, kBlockK);
      if (p.check_finite && !nf.q && !nf.k && !finite)
        flag_if(rows_finite(p, p.k, p.k_stride, c.b, hk, tok, n, p.head_dim, tiles), nf.k);
      v = nullptr;
    } else {
      // Decode, other dtypes or strides: K rows copied (no transpose),
      // dot-product form.
      float* k_rows = tiles;
      float* v_tile = k_rows + kBlockK * pk.dp;
      const SeqExtent& e = c.e;
      n = std::min<int64_t>(kBlockK, e.sk - j0);
      flag_if(pack_kv_rows(p, p.k, p.k_stride, c.b, hk, e.k_begin + j0, n, p.head_dim, k_rows,
                           pk.dp, kBlockK),
              nf.k);
      flag_if(pack_kv_rows(p, p.v, p.v_stride, c.b, hk, e.k_begin + j0, n, p.head_dim_v, v_tile,
                           pk.dvp, kBlockK),
              nf.v);
      gemm_bt(rows, kBlockK, pk.dp, qs, pk.dp, k_rows, pk.dp, S, ld);
      v = v_tile;
    }
    for (int64_t g = 0; g < heads; ++g)
      for (int64_t b = 0; b < nb; ++b)
        score_epilogue(g == 0 ? c : make_head_ctx(p, c.e, c.b, c.h + g), i0, head_rows,
                       j0 + b * kBlockK, S + g * head_rows * ld + b * kBlockK, ld, nullptr);
    if (sparse) apply_block_sparse(c, i0, rows, j0, S, ld, *sparse);  // heads == 1 here
    // alpha_rows: the factors exp(m_old - m_new) by which O's rows are
    // rescaled before this block's P V is added.
    float alpha_rows[kBlockQ];
    // A row that sees nothing yet (m_new = -inf) gets P = 0, unless a score
    // is NaN (the SIMD max may skip it): then the row is NaN, through its
    // sum and, via P = NaN, its output. Returns that P value.
    auto nothing_visible = [&](int64_t r, float* s) {
      const bool nan_score = std::any_of(s, s + keys, [](float x) { return x != x; });
      std::fill(s, s + keys, nan_score ? NAN : 0.0f);
      if (nan_score) st.m[r] = st.l[r] = NAN;
      return nan_score ? NAN : 0.0f;
    };
    // fp32 products: the whole tile's softmax step in one SIMD pass.
    softmax_rows(S, ld, static_cast<int>(rows), static_cast<int>(keys), st.m, st.l, alpha_rows);
    for (int64_t r = 0; r < rows; ++r) {
      if (st.m[r] == kNegInf) {
        nothing_visible(r, S + r * ld);
        alpha_rows[r] = 1.0f;  // O is still 0 (or NaN)
      } else if (p.dropout_p > 0) {
        for (int64_t b = 0; b < nb; ++b)  // heads == 1 here
          apply_dropout_row(c, i0 + r, j0 + b * kBlockK, S + r * ld + b * kBlockK);
      }
    }
    if (v) {
      gemm_scale_c(rows, pk.dvp, static_cast<int>(pv_keys), S, ld, v, pk.dvp, st.o, pk.dvp,
                   alpha_rows);
    } else {
      for (int64_t r = 0; r < rows; ++r)
        if (alpha_rows[r] != 1.0f) scale_row(st.o + r * pk.dvp, pk.dvp, alpha_rows[r]);
      const int64_t tok = c.e.k_begin + j0;
      for (int64_t j = 0, run; j < n; j += run) {
        run = std::min(n - j, kv_contiguous_rows(p, tok + j));
        accum_rows_src(rows, run, p.head_dim_v, S + j, ld,
                       element_ptr(p.v, p.dtype, kv_offset(p, p.v_stride, c.b, hk, tok + j, 0)),
                       bf16, p.v_stride[2], st.o, pk.dvp);
      }
      // Likewise a NaN/Inf in these V rows (0 * Inf is NaN too) poisons O.
      if (p.check_finite && !nf.q && !nf.k && !nf.v && !all_finite(st.o, rows * pk.dvp))
        flag_if(rows_finite(p, p.v, p.v_stride, c.b, hk, tok, n, p.head_dim_v, tiles), nf.v);
    }
  };
  for (int64_t kb = kb_begin, nb = 1; kb < kb_end; kb += nb) {
    if (sparse && !sparse->visit[kb]) {
      nb = 1;
      continue;
    }
    // Blocks of this step: several only with packed K/V and no block lists.
    nb = pk.kt && !sparse ? std::min<int64_t>(kFp32PassBlocks, kb_end - kb) : 1;
    for (int q = 0; q < nq; ++q) {
      const int64_t lo = std::max(kb, qb[q].kb_lo), hi = std::min(kb + nb, qb[q].kb_hi);
      if (lo < hi) step(qb[q], lo, hi - lo);
    }
  }
}

// Per-thread panels of attend_amx (thread scratch slot 2): Q and P as
// tiled bf16 A panels, S and the tiled O in fp32, and the softmax state.
static_assert(kAmxPassBlocks == 1 || kAmxPassBlocks == 2 || kAmxPassBlocks == 4,
              "amx_softmax_step takes 64, 128 or 256 keys");
struct AmxPanels {
  uint16_t* q;  // [kBlockQ x dk2]
  uint16_t* p;  // [kBlockQ x keys of a pass]
  float* s;     // [kBlockQ x keys of a pass], row-major
  float* o;     // [kBlockQ x dvp], tiled (amx_flash.h)
  float *m, *l, *alpha;  // per row; l: 16 partial sums per row
  AmxPanels(int64_t dk2, int64_t dvp) {
    constexpr int64_t keys = kAmxPassBlocks * kBlockK;
    float* x = thread_scratch(2, kBlockQ * (dk2 / 2 + keys / 2 + keys + dvp + 18));
    o = x;
    s = o + kBlockQ * dvp;
    l = s + kBlockQ * keys;
    m = l + 16 * kBlockQ;
    alpha = m + kBlockQ;
    q = reinterpret_cast<uint16_t*>(alpha + kBlockQ);
    p = q + kBlockQ * dk2;
  }
};

// attend() for bf16 on AMX tiles (uses_amx), one query head: S = Q K^T and
// O += P V on the tiled bf16 panels (Q packed in w.q by the caller), the
// softmax step in one pass per block of scores (amx_softmax_step), up to
// kAmxPassBlocks key blocks at a time. Without softcap, ALiBi or a mask
// (and with scale > 0) the scores stay unscaled: the band and block lists
// only hide keys (-inf either way) and the scale rides on the exp; the max
// times scale is then the forward's score (fl(s * scale)) of that key, as
// the backward recomputes it. Writes st (o row-major) for finish_rows.
void attend_amx(const AttnParams& p, const PackedKV& pk, const BlockLayout& L, const HeadCtx& c,
                int64_t i0, int64_t rows, int64_t kb_begin, int64_t kb_end, const AmxPanels& w,
                RowState st, const SparseRows* sparse) {
  const int64_t hk = kv_head(p, c.h), kb0 = L.k_block0[c.b];
  const int dk2 = static_cast<int>(pk.dk2), dvp = static_cast<int>(pk.dvp);
  const int irows = static_cast<int>(rows);
  // The products run on whole 16-row tiles; rows past `rows` of Q, P and O
  // are never read back.
  const int m_rows = static_cast<int>(round_up(rows, 16));
  const bool unscaled =
      p.scale > 0 && p.softcap == 0 && !p.alibi && p.mask_kind == MaskKind::none;
  constexpr float kLog2e = 1.44269504088896341f;
  const float c2 = unscaled ? p.scale * kLog2e : kLog2e;
  std::fill(w.m, w.m + rows, kNegInf);
  std::fill(w.l, w.l + 16 * rows, 0.0f);
  bool first = true;  // the first P V sets O (no load, no rescale)
  const TileGrid q_grid{pk.dk2 / 32 * kTileValues, kTileValues};
  const TileGrid v_grid{kTileValues, pk.dvp / 16 * kTileValues};  // k-major
  const CTiles o_tiles{w.o, 16 * pk.dvp, 256, 16};
  amx_tiles_begin();
  for (int64_t kb = kb_begin; kb < kb_end;) {
    if (sparse && !sparse->visit[kb]) {
      ++kb;
      continue;
    }
    // (Block lists are per key block: one at a time; else a power of two
    // up to kAmxPassBlocks, the softmax step's sizes.)
    int64_t nb = sparse ? 1 : kAmxPassBlocks;
    while (nb > kb_end - kb) nb /= 2;
    const int keys = static_cast<int>(nb * kBlockK);
    const int64_t j0 = kb * kBlockK;
    amx_gemm_tiled(m_rows, keys, dk2, w.q, q_grid, pk.kt16_block(kb0 + kb, hk), q_grid,
                   CTiles{w.s, 16 * keys, 16, keys}, false);
    if (!unscaled) scale_row(w.s, irows * keys, p.scale);
    for (int64_t b = 0; b < nb; ++b)
      score_epilogue(c, i0, rows, j0 + b * kBlockK, w.s + b * kBlockK, keys, nullptr);
    if (sparse) apply_block_sparse(c, i0, rows, j0, w.s, keys, *sparse);
    const bool dropout = p.dropout_p > 0;
    const bool rescale = amx_softmax_step(w.s, keys, irows, c2, w.m, w.l, w.alpha, w.p, dropout);
    if (dropout) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < nb; ++b)
          apply_dropout_row(c, i0 + r, j0 + b * kBlockK, w.s + r * keys + b * kBlockK);
      amx_pack_p(w.s, keys, irows, w.p);
    }
    if (rescale && !first) amx_scale_tiled_rows(w.o, dvp, irows, w.alpha);
    amx_gemm_tiled(m_rows, dvp, keys, w.p, TileGrid{keys / 32 * kTileValues, kTileValues},
                   pk.v16_block(kb0 + kb, hk), v_grid, o_tiles, !first);
    first = false;
    kb += nb;
  }
  amx_tiles_end();
  if (first) std::fill(st.o, st.o + rows * pk.dvp, 0.0f);  // no key block: O = 0
  else amx_untile_rows(w.o, dvp, irows, st.o, pk.dvp);
  for (int64_t r = 0; r < rows; ++r) {
    st.m[r] = unscaled ? w.m[r] * p.scale : w.m[r];
    float l = 0.0f;
    for (int lane = 0; lane < 16; ++lane) l += w.l[16 * r + lane];
    st.l[r] = l;
  }
}

// Writes out = o / l and lse = m + log(l) (0 and -inf for empty rows; NaN
// where a score was NaN or +inf).
void finish_head_rows(const AttnParams& p, const HeadCtx& c, int64_t i0, int64_t rows,
                      int64_t dvp, RowState st) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t tok = c.e.q_begin + i0 + r;
    const bool empty = st.l[r] == 0.0f;
    // An empty row's o may hold 0 * NaN from a NaN in V of a masked key of
    // its tile: write exact zeros (semantics: never NaN).
    if (empty) std::fill(st.o + r * dvp, st.o + r * dvp + p.head_dim_v, 0.0f);
    const float inv = empty ? 0.0f : 1.0f / st.l[r];
    store_f32(p.out, offset4(p.out_stride, c.b, c.h, tok, 0), p.out_stride[3], p.head_dim_v,
              p.dtype, st.o + r * dvp, inv);
    if (p.lse) p.lse[lse_offset(p, c.b, c.h, tok)] = empty ? kNegInf : st.m[r] + logf(st.l[r]);
  }
}

// Writes out = o / l and lse = m + log(l) (0 and -inf for empty rows) of
// rows [i0, i0 + rows) of `heads` stacked query heads from c.h on.
void finish_rows(const AttnParams& p, const HeadCtx& c, int64_t heads, int64_t i0, int64_t rows,
                 int64_t dvp, RowState st) {
  for (int64_t g = 0; g < heads; ++g) {
    const HeadCtx cg = g == 0 ? c : make_head_ctx(p, c.e, c.b, c.h + g);
    finish_head_rows(p, cg, i0, rows, dvp,
                     RowState{st.o + g * rows * dvp, st.m + g * rows, st.l + g * rows});
  }
}

}  // namespace

fsdpa_status forward(const AttnParams& p) {
  const BlockLayout L = make_layout(p);
  if (p.cu_seqlens_q) {
    // Varlen tokens after the last sequence belong to no row: out 0, lse -inf.
    std::vector<float> zeros(p.head_dim_v, 0.0f);
    for (int64_t h = 0; h < p.heads_q; ++h)
      for (int64_t tok = p.cu_seqlens_q[p.batch]; tok < p.total_q; ++tok) {
        store_f32(p.out, offset4(p.out_stride, 0, h, tok, 0), p.out_stride[3], p.head_dim_v,
                  p.dtype, zeros.data(), 1.0f);
        if (p.lse) p.lse[lse_offset(p, 0, h, tok)] = kNegInf;
      }
  }
  if (L.q_blocks() == 0) return FSDPA_OK;
  // Packing all of K/V once pays off when more than one q-block reads it.
  NonFiniteFlags nf;
  const PackedKV pk = pack_kv(p, L, forward_packs_all_kv(p), nf);
  const int64_t dp = pk.dp, dvp = pk.dvp;

  // Tasks: (q-block, head) pairs, optionally split along the keys. GQA
  // decode: (q-block, kv-head) pairs, the group's query heads stacked as rows.
  const int64_t group = p.heads_q / p.heads_k;
  // (Block lists are per query head: no stacking with them.)
  const int64_t task_heads =
      !p.sparse && stack_gqa_heads(p.seqlen_q, group, p.dropout_p > 0) ? group : 1;
  const int64_t head_tasks = p.heads_q / task_heads;
  int64_t max_kblocks = 0;  // of any sequence (seqused_k may be below seqlen_k)
  for (int64_t b = 0; b < p.batch; ++b)
    max_kblocks = std::max(max_kblocks, L.k_block0[b + 1] - L.k_block0[b]);
  // q-blocks per task: two for the fp32 products on packed K/V when a
  // head's K/V panels are large (heuristics.h), else one.
  const int64_t qpt = pk.kt && !p.sparse && task_heads == 1 &&
                              fp32_pair_q_blocks(max_kblocks * kBlockK * (dp + dvp) * 4,
                                                 L.q_blocks() * head_tasks, pool_threads())
                          ? 2
                          : 1;
  // group0[b]: the first task group (qpt q-blocks of one head) of sequence b.
  std::vector<int64_t> group0(1, 0);
  for (int64_t b = 0; b < p.batch; ++b)
    group0.push_back(group0.back() + (L.q_block0[b + 1] - L.q_block0[b] + qpt - 1) / qpt);
  const int64_t tasks = group0.back() * head_tasks;
  const int splits = key_splits(tasks, max_kblocks, pool_threads());

  const int64_t per_thread = qpt * (kBlockQ * dp + kBlockQ * dvp + 2 * kBlockQ) +
                             kBlockQ * kFp32PassBlocks * kBlockK + kBlockK * (2 * dp + dvp);
  // Split partials: [tasks][splits] x (o, m, l); only allocated when splitting.
  const int64_t part_sz = kBlockQ * dvp + 2 * kBlockQ;
  float* partials = splits > 1 ? thread_scratch(1, tasks * splits * part_sz) : nullptr;

  // Tasks are numbered sequence by sequence, head by head, q-block by
  // q-block: consecutive tasks read the same K/V panels, which then stay in
  // the core's L2 for the next q-block (numbered q-block-major, every task
  // read another head's K/V from L3).
  struct TaskPos {
    int64_t b, h, i0;
  };
  auto task_pos = [&](int64_t task) {
    // The sequence: the last b with group0[b] * head_tasks <= task.
    int64_t b = std::upper_bound(group0.begin(), group0.end() - 1, task,
                                 [&](int64_t t, int64_t g0) { return t < g0 * head_tasks; }) -
                group0.begin() - 1;
    const int64_t ng = group0[b + 1] - group0[b];
    const int64_t local = task - group0[b] * head_tasks;
    return TaskPos{b, local / ng * task_heads, local % ng * qpt * kBlockQ};
  };

  parallel_for(tasks * splits, [&](int64_t order) {
    // Last tasks first: within a head the last q-blocks are the longest
    // under a causal mask, and the short ones left for the end even out the
    // threads' finish.
    const int64_t t = tasks * splits - 1 - order;
    const int64_t task = t / splits, split = t % splits;
    const auto [b, h, i0] = task_pos(task);
    const SeqExtent& e = L.seq[b];
    const int64_t rows = std::min<int64_t>(kBlockQ, e.sq - i0);
    const HeadCtx c = make_head_ctx(p, e, b, h);

    float* qs = thread_scratch(0, per_thread);
    float* S = qs + qpt * kBlockQ * dp;
    RowState st{S + kBlockQ * kFp32PassBlocks * kBlockK, nullptr, nullptr};
    st.m = st.o + kBlockQ * dvp;
    st.l = st.m + kBlockQ;
    if (splits > 1) {
      float* part = partials + t * part_sz;
      st = RowState{part, part + kBlockQ * dvp, part + kBlockQ * dvp + kBlockQ};
    }

    int64_t kb_lo, kb_hi;
    visible_key_blocks(c, i0, i0 + rows, &kb_lo, &kb_hi);
    const int64_t span = kb_hi - kb_lo;
    const int64_t s_lo = kb_lo + span * split / splits, s_hi = kb_lo + span * (split + 1) / splits;
    thread_local SparseRows sparse;
    if (p.sparse) sparse_rows(c, i0, rows, &sparse);
    if (pk.kt16) {  // unscaled bf16 Q (exact): the scale goes on the fp32 scores
      const AmxPanels w(pk.dk2, dvp);
      const int d = static_cast<int>(p.head_dim), dk2 = static_cast<int>(pk.dk2);
      bool ok = true;
      if (p.q_stride[3] == 1) {  // bf16 rows taken as they are
        for (int64_t r = 0; r < rows; ++r)
          ok &= amx_pack_a_row(static_cast<const uint16_t*>(element_ptr(
                                   p.q, p.dtype, offset4(p.q_stride, b, h, e.q_begin + i0 + r, 0))),
                               d, static_cast<int>(r), dk2, w.q);
      } else {  // through fp32 rows (exact), into S's memory
        ok = pack_rows(p.q, p.q_stride, p.dtype, b, h, e.q_begin + i0, rows, p.head_dim, 1.0f, qs,
                       dp, rows);
        uint16_t* row16 = reinterpret_cast<uint16_t*>(S);
        for (int64_t r = 0; r < rows; ++r) {
          to_bf16_rows(qs + r * dp, 0, 1, d, d, row16, 0);
          amx_pack_a_row(row16, d, static_cast<int>(r), dk2, w.q);
        }
      }
      flag_if(ok, nf.q);
      attend_amx(p, pk, L, c, i0, rows, s_lo, s_hi, w, st, p.sparse ? &sparse : nullptr);
    } else {
      for (int64_t g = 0; g < task_heads; ++g)
        flag_if(pack_rows(p.q, p.q_stride, p.dtype, b, h + g, e.q_begin + i0, rows, p.head_dim,
                          p.scale, qs + g * rows * dp, dp, rows),
                nf.q);
      QBlock qb[2] = {{qs, i0, rows, st, s_lo, s_hi}, {}};
      int nq = 1;
      if (qpt == 2 && splits == 1 && i0 + kBlockQ < e.sq) {  // the pair's second q-block
        QBlock& q2 = qb[nq++];
        const int64_t i1 = i0 + kBlockQ, rows1 = std::min<int64_t>(kBlockQ, e.sq - i1);
        float* q2s = qs + kBlockQ * dp;
        float* o2 = st.l + kBlockQ;
        q2 = QBlock{q2s, i1, rows1, RowState{o2, o2 + kBlockQ * dvp, o2 + kBlockQ * dvp + kBlockQ},
                    0, 0};
        visible_key_blocks(c, i1, i1 + rows1, &q2.kb_lo, &q2.kb_hi);
        flag_if(pack_rows(p.q, p.q_stride, p.dtype, b, h, e.q_begin + i1, rows1, p.head_dim,
                          p.scale, q2s, dp, rows1),
                nf.q);
      }
      attend(p, pk, L, c, task_heads, qb, nq, S, qs + per_thread - kBlockK * (2 * dp + dvp), nf,
             p.sparse ? &sparse : nullptr);
      if (nq == 2) finish_rows(p, c, 1, qb[1].i0, qb[1].head_rows, dvp, qb[1].st);
    }
    if (splits == 1) finish_rows(p, c, task_heads, i0, rows, dvp, st);
  });
  if (splits > 1) {
    // Merge the splits of each task in split order (deterministic).
    parallel_for(tasks, [&](int64_t task) {
      const auto [b, h, i0] = task_pos(task);
      const SeqExtent& e = L.seq[b];
      const int64_t rows = std::min<int64_t>(kBlockQ, e.sq - i0);
      const int64_t all_rows = task_heads * rows;
      float* first = partials + task * splits * part_sz;
      RowState acc{first, first + kBlockQ * dvp, first + kBlockQ * dvp + kBlockQ};
      for (int s = 1; s < splits; ++s) {
        float* part = first + s * part_sz;
        const RowState o{part, part + kBlockQ * dvp, part + kBlockQ * dvp + kBlockQ};
        for (int64_t r = 0; r < all_rows; ++r) {
          const float m = max_keep_nan(acc.m[r], o.m[r]);
          if (m == kNegInf) continue;
          const float a = expf(acc.m[r] - m), bw = expf(o.m[r] - m);
          for (int64_t d = 0; d < dvp; ++d)
            acc.o[r * dvp + d] = acc.o[r * dvp + d] * a + o.o[r * dvp + d] * bw;
          acc.l[r] = acc.l[r] * a + o.l[r] * bw;
          acc.m[r] = m;
        }
      }
      finish_rows(p, make_head_ctx(p, e, b, h), task_heads, i0, rows, dvp, acc);
    });
  }
  if (p.check_finite && !pk.kt && !pk.kt16 && !nf.q && !nf.k && !nf.v) check_unread_kv(p, L, nf);
  return nf.status(p);
}

}  // namespace fsdpa::cpu
