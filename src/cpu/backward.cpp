// CPU flash-attention backward (FlashAttention-2 order): recompute P from
// lse, one task per (batch, kv-head, key split) that owns the dK/dV of its
// key blocks (summed over the query heads of the GQA group) and adds dQ into
// its own split's fp32 buffer; the splits are summed in a fixed order at the
// end. No task shares an output with another, so the result is the same bit
// for bit whatever the thread timing: the backward is always deterministic.
#include <math.h>

#include <algorithm>

#include "cpu/amx_flash.h"
#include "cpu/cpu_backend.h"
#include "cpu/sparse_tiles.h"
#include "cpu/thread_pool.h"
#include "cpu/tiles.h"

namespace fsdpa::cpu {
namespace {

// Per (q-block, head) panels shared by all tasks: scaled Q, dO, lse, Delta
// (with AMX, Q and dO in bf16 only: the fp32 rows are per-task temporaries,
// which keeps the panels small enough to stay allocated between calls,
// kKeepPanelBytes). With AMX (bf16), bf16 copies of Q and dO per q-block,
// each both as is (q16 [kBlockQ x dk2], do16 [kBlockQ x dv2]) and
// transposed (qt16 [dp x kBlockQ], dot16 [dvp x kBlockQ]), tiled A panels
// (amx_flash.h, a_tiles): the A sides of S = Q K^T, dP = dO V^T, dK^T +=
// Q^T dS and dV^T += dO^T P. The scores are recomputed as the forward did.
struct QSide {
  int64_t dp, dvp, dk2, dv2;
  float *qs = nullptr, *dout = nullptr;  // fp32 paths only
  float *lse, *delta;
  uint16_t *q16 = nullptr, *qt16 = nullptr, *do16 = nullptr, *dot16 = nullptr;  // AMX only
  Buffer owned;  // their memory when too large to keep (kept_scratch)
  static const uint16_t* at(const uint16_t* b, int64_t r0, int64_t ld) { return b + r0 * ld; }
  const uint16_t* q16_rows(int64_t r0) const { return at(q16, r0, dk2); }
  const uint16_t* qt16_block(int64_t r0) const { return at(qt16, r0, dp); }
  const uint16_t* do16_rows(int64_t r0) const { return at(do16, r0, dv2); }
  const uint16_t* dot16_block(int64_t r0) const { return at(dot16, r0, dvp); }
  int64_t row0(int64_t gqb, int64_t h, int64_t heads_q) const {
    return (gqb * heads_q + h) * kBlockQ;
  }
};

QSide pack_q_side(const AttnParams& p, const BlockLayout& L, int64_t dp, int64_t dvp,
                  NonFiniteFlags& nf) {
  QSide qs;
  qs.dp = dp;
  qs.dvp = dvp;
  qs.dk2 = amx_pad(p.head_dim);
  qs.dv2 = amx_pad(p.head_dim_v);
  const int64_t rows = L.q_blocks() * p.heads_q * kBlockQ;
  // One block of memory: fp32 panels, then the bf16 ones (even counts).
  const bool amx = uses_amx(p);
  const int64_t f32 = rows * ((amx ? 0 : dp + dvp) + 2);
  const int64_t b16 = amx ? rows * (qs.dk2 + dp + qs.dv2 + dvp) : 0;
  float* mem = kept_scratch(3, f32 + b16 / 2, qs.owned);
  qs.lse = mem;
  qs.delta = qs.lse + rows;
  if (!amx) {
    qs.qs = qs.delta + rows;
    qs.dout = qs.qs + rows * dp;
  }
  if (amx) {
    qs.q16 = reinterpret_cast<uint16_t*>(mem + f32);
    qs.qt16 = qs.q16 + rows * qs.dk2;
    qs.do16 = qs.qt16 + rows * dp;
    qs.dot16 = qs.do16 + rows * qs.dv2;
  }
  parallel_for(p.batch * p.heads_q, [&](int64_t task) {
    const int64_t b = task / p.heads_q, h = task % p.heads_q;
    const SeqExtent& e = L.seq[b];
    // o: a row of out; with AMX also the q-block's fp32 Q and dO rows.
    Buffer o = alloc_floats(p.head_dim_v + (amx ? kBlockQ * (dp + dvp) : 0));
    float* q_tmp = o.get() + p.head_dim_v;
    float* do_tmp = q_tmp + kBlockQ * dp;
    for (int64_t gqb = L.q_block0[b]; gqb < L.q_block0[b + 1]; ++gqb) {
      const int64_t i0 = (gqb - L.q_block0[b]) * kBlockQ;
      const int64_t n = std::min<int64_t>(kBlockQ, e.sq - i0);
      const int64_t r0 = qs.row0(gqb, h, p.heads_q);
      // With AMX the products read the bf16 panels below, made from
      // unscaled fp32 rows (bf16 inputs stay exact; dK is scaled when stored).
      const float* q32 = amx ? q_tmp : qs.qs + r0 * dp;
      flag_if(pack_rows(p.q, p.q_stride, p.dtype, b, h, e.q_begin + i0, n, p.head_dim,
                        amx ? 1.0f : p.scale, const_cast<float*>(q32), dp, kBlockQ),
              nf.q);
      const float* dout = amx ? do_tmp : qs.dout + r0 * dvp;
      flag_if(pack_rows(p.dout, p.dout_stride, p.dtype, b, h, e.q_begin + i0, n, p.head_dim_v,
                        1.0f, const_cast<float*>(dout), dvp, kBlockQ),
              nf.dout);
      if (qs.q16) {
        const int idp = static_cast<int>(dp), idvp = static_cast<int>(dvp);
        fp32_to_a_tiles(q32, idp, kBlockQ, idp, static_cast<int>(qs.dk2),
                        const_cast<uint16_t*>(qs.q16_rows(r0)));
        fp32_to_a_tiles_transposed(q32, idp, kBlockQ, idp, const_cast<uint16_t*>(qs.qt16_block(r0)));
        fp32_to_a_tiles(dout, idvp, kBlockQ, idvp, static_cast<int>(qs.dv2),
                        const_cast<uint16_t*>(qs.do16_rows(r0)));
        fp32_to_a_tiles_transposed(dout, idvp, kBlockQ, idvp,
                                   const_cast<uint16_t*>(qs.dot16_block(r0)));
      }
      for (int64_t r = 0; r < kBlockQ; ++r) {
        float lse = kNegInf, delta = 0.0f;
        if (r < n) {
          const int64_t tok = e.q_begin + i0 + r;
          lse = p.lse[lse_offset(p, b, h, tok)];
          load_f32(p.out, offset4(p.out_stride, b, h, tok, 0), p.out_stride[3], p.head_dim_v,
                   p.dtype, 1.0f, o.get());
          const float* dor = dout + r * dvp;
          for (int64_t d = 0; d < p.head_dim_v; ++d) delta += dor[d] * o[d];
        }
        qs.lse[r0 + r] = lse;
        qs.delta[r0 + r] = delta;
      }
    }
  });
  return qs;
}

// Per-thread tiles of the main loop (in the thread's persistent scratch).
struct Tiles {
  float *kt, *krow, *vt, *dk, *dv, *s, *t, *dp, *pz;
  Tiles(int64_t dp_, int64_t dvp) {
    const int64_t kb = kBlockK, qb = kBlockQ;
    float* x = thread_scratch(0, 3 * kb * dp_ + 2 * kb * dvp + 4 * qb * kb);
    auto take = [&](int64_t n) { float* r = x; x += n; return r; };
    kt = take(dp_ * kb); krow = take(kb * dp_); vt = take(dvp * kb);
    dk = take(kb * dp_); dv = take(kb * dvp);
    s = take(qb * kb); t = take(qb * kb); dp = take(qb * kb); pz = take(qb * kb);
  }
};

// Per-thread tiles of the AMX path: the key block's K^T (kt), K (kp) and
// V^T (vt) as bf16 B panels, P or dS as a B panel (pairs) and dS as an A
// panel (a), all tiled (amx_flash.h), and the fp32 accumulators dK^T, dV^T: the
// products run transposed so that their A sides (Q^T, dO^T) are packed once
// per q-block, not per (q-block, key block).
struct AmxTiles {
  uint16_t *kt = nullptr, *kp = nullptr, *vt = nullptr, *pairs = nullptr, *a = nullptr;
  float *dkt = nullptr, *dvt = nullptr;
  static int64_t floats(const QSide& Q) {
    return (Q.dk2 * kBlockK + kBlockK * Q.dp + Q.dv2 * kBlockK + 2 * kBlockK * kBlockQ) / 2 +
           (Q.dp + Q.dvp) * kBlockK;
  }
  AmxTiles(float* mem, const QSide& Q) {
    if (!mem) return;
    dkt = mem;
    dvt = dkt + Q.dp * kBlockK;
    uint16_t* x = reinterpret_cast<uint16_t*>(dvt + Q.dvp * kBlockK);
    auto take = [&](int64_t n) { uint16_t* r = x; x += n; return r; };
    kt = take(Q.dk2 * kBlockK); kp = take(kBlockK * Q.dp); vt = take(Q.dv2 * kBlockK);
    pairs = take(kBlockK * kBlockQ); a = take(kBlockQ * kBlockK);
  }
};

}  // namespace

fsdpa_status backward(const AttnParams& p) {
  const BlockLayout L = make_layout(p);
  const int64_t dp = round_up(p.head_dim, kPanelAlign), dvp = round_up(p.head_dim_v, kPanelAlign);
  NonFiniteFlags nf;
  const QSide Q = pack_q_side(p, L, dp, dvp, nf);
  const int64_t group = p.heads_q / p.heads_k;

  const int64_t heads_tasks = p.batch * p.heads_k;
  const int64_t max_kblocks = (p.seqlen_k + kBlockK - 1) / kBlockK;
  const int splits = key_splits(heads_tasks, max_kblocks, pool_threads());
  const int64_t q_rows = L.q_blocks() * p.heads_q * kBlockQ;
  Buffer dq_owned;
  float* const dq_acc = kept_scratch(1, splits * q_rows * dp, dq_owned);
  std::fill(dq_acc, dq_acc + splits * q_rows * dp, 0.0f);

  parallel_for(heads_tasks * splits, [&](int64_t task) {
    const int64_t split = task % splits, bh = task / splits;
    const int64_t b = bh / p.heads_k, hk = bh % p.heads_k;
    const SeqExtent& e = L.seq[b];
    const Tiles T(dp, dvp);
    const AmxTiles A16(Q.q16 ? thread_scratch(2, AmxTiles::floats(Q)) : nullptr, Q);
    if (A16.kt) amx_tiles_begin();
    float* dq_split = dq_acc + split * q_rows * dp;
    // Block lists, transposed: per query head of the group, the query
    // blocks naming each key block; q_visit: the query tiles to visit.
    std::vector<SparseCols> cols(p.sparse ? group : 0);
    for (int64_t g = 0; g < int64_t(cols.size()); ++g)
      sparse_cols(p, b, hk * group + g, e.sq, &cols[g]);
    std::vector<uint8_t> q_visit;

    const int64_t nkb = L.k_block0[b + 1] - L.k_block0[b];
    for (int64_t kb = nkb * split / splits; kb < nkb * (split + 1) / splits; ++kb) {
      const int64_t j0 = kb * kBlockK, n = std::min<int64_t>(kBlockK, e.sk - j0);
      flag_if(pack_rows(p.k, p.k_stride, p.dtype, b, hk, e.k_begin + j0, n, p.head_dim, 1.0f,
                        T.krow, dp, kBlockK),
              nf.k);
      flag_if(pack_rows(p.v, p.v_stride, p.dtype, b, hk, e.k_begin + j0, n, p.head_dim_v, 1.0f,
                        T.dv, dvp, kBlockK),  // T.dv as scratch: zeroed below
              nf.v);
      if (A16.kt) {  // bf16 B panels: K^T, K, V^T
        const int idp = static_cast<int>(dp), idvp = static_cast<int>(dvp);
        fp32_to_b_tiles_transposed(T.krow, idp, kBlockK, idp, static_cast<int>(Q.dk2), A16.kt);
        fp32_to_b_tiles(T.krow, idp, kBlockK, idp, A16.kp);
        fp32_to_b_tiles_transposed(T.dv, idvp, kBlockK, idvp, static_cast<int>(Q.dv2), A16.vt);
      } else {
        transpose(T.krow, dp, kBlockK, dp, T.kt, kBlockK);
        transpose(T.dv, dvp, kBlockK, dvp, T.vt, kBlockK);
      }
      std::fill(T.dk, T.dk + kBlockK * dp, 0.0f);
      std::fill(T.dv, T.dv + kBlockK * dvp, 0.0f);
      if (A16.kt) {
        std::fill(A16.dkt, A16.dkt + dp * kBlockK, 0.0f);
        std::fill(A16.dvt, A16.dvt + dvp * kBlockK, 0.0f);
      }

      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const HeadCtx c = make_head_ctx(p, e, b, h);
        const SparseCols* sparse = p.sparse ? &cols[h - hk * group] : nullptr;
        if (sparse) query_tiles_of_key_tile(p, *sparse, e.sq, e.sk, kb, &q_visit);
        for (int64_t gqb = L.q_block0[b]; gqb < L.q_block0[b + 1]; ++gqb) {
          if (sparse && !q_visit[gqb - L.q_block0[b]]) continue;
          const int64_t i0 = (gqb - L.q_block0[b]) * kBlockQ;
          const int64_t rows = std::min<int64_t>(kBlockQ, e.sq - i0);
          int64_t kb_lo, kb_hi;
          visible_key_blocks(c, i0, i0 + rows, &kb_lo, &kb_hi);
          if (kb < kb_lo || kb >= kb_hi) continue;
          const int64_t r0 = Q.row0(gqb, h, p.heads_q);
          const float* qs = A16.kt ? nullptr : Q.qs + r0 * dp;  // fp32 paths only
          const float* dout = A16.kt ? nullptr : Q.dout + r0 * dvp;

          // P = exp(S - lse), masked entries 0; S computed as the forward did.
          switch (forward_score_gemm(p, rows)) {
            case ScoreGemm::packed_kt:
              gemm(rows, kBlockK, dp, qs, dp, T.kt, kBlockK, T.s, kBlockK, false);
              break;
            case ScoreGemm::packed_kt_amx:
              amx_gemm_tiled(kBlockQ, kBlockK, static_cast<int>(Q.dk2), Q.q16_rows(r0),
                             a_tiles(kBlockQ), A16.kt, b_tiles(static_cast<int>(Q.dk2)),
                             rows_c(T.s, kBlockK), false);
              scale_row(T.s, static_cast<int>(rows * kBlockK), p.scale);
              break;
            case ScoreGemm::rows_in_place:  // fp32 copies of the rows: the same FMAs
              dot_rows_src(rows, n, p.head_dim, qs, dp, T.krow, false, dp, T.s, kBlockK);
              for (int64_t r = 0; r < rows; ++r)
                std::fill(T.s + r * kBlockK + n, T.s + (r + 1) * kBlockK, 0.0f);
              break;
            case ScoreGemm::rows_copied:
              gemm_bt(rows, kBlockK, dp, qs, dp, T.krow, dp, T.s, kBlockK);
              break;
          }
          score_epilogue(c, i0, rows, j0, T.s, kBlockK, p.softcap > 0 ? T.t : nullptr);
          if (sparse) apply_block_sparse(c, i0, rows, j0, T.s, kBlockK, *sparse);
          if (A16.kt) {  // rounded to bf16 next: the forward's exp, a tile at once
            exp_rows_bf16(T.s, kBlockK, static_cast<int>(rows), kBlockK, Q.lse + r0);
          } else {
            for (int64_t r = 0; r < rows; ++r) {
              float* s = T.s + r * kBlockK;
              const float lse = Q.lse[r0 + r];
              if (lse == kNegInf) std::fill(s, s + kBlockK, 0.0f);
              else exp_sub_sum(s, kBlockK, lse);
            }
          }
          // dV += (P * Z)^T dO
          const float* pz = T.s;
          if (p.dropout_p > 0) {
            std::copy(T.s, T.s + kBlockQ * kBlockK, T.pz);  // with AMX's zero padding rows
            for (int64_t r = 0; r < rows; ++r) apply_dropout_row(c, i0 + r, j0, T.pz + r * kBlockK);
            pz = T.pz;
          }
          const int idp = static_cast<int>(dp), idvp = static_cast<int>(dvp);
          if (A16.kt) {
            // P's rows past `rows` are 0 (so are Q's and dO's bf16 rows there).
            fp32_to_b_tiles(pz, kBlockK, kBlockQ, kBlockK, A16.pairs);
            amx_gemm_tiled(idvp, kBlockK, kBlockQ, Q.dot16_block(r0), a_tiles(idvp), A16.pairs,
                           b_tiles(kBlockQ), rows_c(A16.dvt, kBlockK), true);
            amx_gemm_tiled(kBlockQ, kBlockK, static_cast<int>(Q.dv2), Q.do16_rows(r0),
                           a_tiles(kBlockQ), A16.vt, b_tiles(static_cast<int>(Q.dv2)),
                           rows_c(T.dp, kBlockK), false);
          } else {
            gemm_at(kBlockK, dvp, rows, pz, kBlockK, dout, dvp, T.dv, dvp, true);
            // dP = (dO V^T) * Z ; dS = P (dP - Delta) [* (1 - tanh^2)]
            gemm(rows, kBlockK, dvp, dout, dvp, T.vt, kBlockK, T.dp, kBlockK, false);
          }
          for (int64_t r = 0; r < rows; ++r) {
            float* dpr = T.dp + r * kBlockK;
            if (p.dropout_p > 0) apply_dropout_row(c, i0 + r, j0, dpr);
            softmax_grad_row(T.s + r * kBlockK, dpr, Q.delta[r0 + r], kBlockK);
            if (p.softcap > 0) {
              const float* tr = T.t + r * kBlockK;
              for (int64_t j = 0; j < kBlockK; ++j) dpr[j] *= 1.0f - tr[j] * tr[j];
            }
          }
          // dK += dS^T (scale Q) ; dQ += dS K  (scale applied when writing dQ)
          if (A16.kt) {  // dK^T += Q^T dS (scaled when written); dS's padding rows are 0
            fp32_to_b_tiles(T.dp, kBlockK, kBlockQ, kBlockK, A16.pairs);
            amx_gemm_tiled(idp, kBlockK, kBlockQ, Q.qt16_block(r0), a_tiles(idp), A16.pairs,
                           b_tiles(kBlockQ), rows_c(A16.dkt, kBlockK), true);
            fp32_to_a_tiles(T.dp, kBlockK, kBlockQ, kBlockK, kBlockK, A16.a);
            amx_gemm_tiled(kBlockQ, idp, kBlockK, A16.a, a_tiles(kBlockQ), A16.kp, b_tiles(kBlockK),
                           rows_c(dq_split + r0 * dp, idp), true);
          } else {
            gemm_at(kBlockK, dp, rows, T.dp, kBlockK, qs, dp, T.dk, dp, true);
            gemm(rows, dp, kBlockK, T.dp, kBlockK, T.krow, dp, dq_split + r0 * dp, dp, true);
          }
        }
      }
      if (A16.kt) {  // dK^T, dV^T back to rows
        transpose(A16.dkt, kBlockK, dp, kBlockK, T.dk, dp);
        transpose(A16.dvt, kBlockK, dvp, kBlockK, T.dv, dvp);
      }
      for (int64_t j = 0; j < n; ++j) {
        const int64_t tok = e.k_begin + j0 + j;
        store_f32(p.dk, offset4(p.dk_stride, b, hk, tok, 0), p.dk_stride[3], p.head_dim,
                  p.dtype, T.dk + j * dp, A16.kt ? p.scale : 1.0f);
        store_f32(p.dv, offset4(p.dv_stride, b, hk, tok, 0), p.dv_stride[3], p.head_dim_v,
                  p.dtype, T.dv + j * dvp, 1.0f);
      }
    }
    if (A16.kt) amx_tiles_end();
  });

  // Varlen: tokens outside every sequence get zero dK/dV; dQ likewise.
  if (p.cu_seqlens_q) {
    std::vector<float> zeros(std::max(dp, dvp), 0.0f);
    for (int64_t hk = 0; hk < p.heads_k; ++hk)
      for (int64_t tok = p.cu_seqlens_k[p.batch]; tok < p.total_k; ++tok) {
        store_f32(p.dk, offset4(p.dk_stride, 0, hk, tok, 0), p.dk_stride[3], p.head_dim, p.dtype,
                  zeros.data(), 1.0f);
        store_f32(p.dv, offset4(p.dv_stride, 0, hk, tok, 0), p.dv_stride[3], p.head_dim_v,
                  p.dtype, zeros.data(), 1.0f);
      }
    for (int64_t h = 0; h < p.heads_q; ++h)
      for (int64_t tok = p.cu_seqlens_q[p.batch]; tok < p.total_q; ++tok)
        store_f32(p.dq, offset4(p.dq_stride, 0, h, tok, 0), p.dq_stride[3], p.head_dim, p.dtype,
                  zeros.data(), 1.0f);
  }

  // dQ = scale * sum over splits, in split order.
  parallel_for(p.batch * p.heads_q, [&](int64_t task) {
    const int64_t b = task / p.heads_q, h = task % p.heads_q;
    const SeqExtent& e = L.seq[b];
    Buffer row = alloc_floats(dp);
    for (int64_t i = 0; i < e.sq; ++i) {
      const int64_t gqb = L.q_block0[b] + i / kBlockQ;
      const int64_t r = Q.row0(gqb, h, p.heads_q) + i % kBlockQ;
      std::copy(dq_acc + r * dp, dq_acc + (r + 1) * dp, row.get());
      for (int s = 1; s < splits; ++s) {
        const float* src = dq_acc + (s * q_rows + r) * dp;
        for (int64_t d = 0; d < dp; ++d) row[d] += src[d];
      }
      store_f32(p.dq, offset4(p.dq_stride, b, h, e.q_begin + i, 0), p.dq_stride[3], p.head_dim,
                p.dtype, row.get(), p.scale);
    }
  });
  return nf.status(p);
}

}  // namespace fsdpa::cpu
