// The block-sparse mask (flashsdpa.h) on the CPU's tiles of kBlockQ rows x
// kBlockK keys, whatever the caller's block sizes: which tiles to visit and
// which scores of a visited tile the lists hide. The forward reads the
// lists row-wise (per query block); the backward, which walks key tiles,
// builds the transposed lists (per key block, the query blocks naming it).
// Memory: O(key blocks) per forward task, O(listed blocks) per backward head.
#pragma once

#include <algorithm>
#include <vector>

#include "core/block_sparse.h"
#include "cpu/tiles.h"

namespace fsdpa::cpu {

// Masks (-inf) the scores of tile S [rows x kBlockK] (rows i0.., keys
// j0..) that the block lists hide. state(qb, kb) is the state of key block
// kb for query block qb. Keys past the sequence end are left to the band.
template <typename State>
void apply_block_sparse(const HeadCtx& c, int64_t i0, int64_t rows, int64_t j0, float* S,
                        int64_t ld, const State& state) {
  const AttnParams& p = *c.p;
  const int64_t ncols = std::min<int64_t>(kBlockK, c.e.sk - j0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = i0 + r, qb = i / p.sparse_block_q;
    float* s = S + r * ld;
    for (int64_t j = 0; j < ncols;) {
      const int64_t kb = (j0 + j) / p.sparse_block_k;
      const int64_t end = std::min<int64_t>(ncols, (kb + 1) * p.sparse_block_k - j0);
      const int32_t st = state(qb, kb);
      if (st == kSparseAbsent) {
        std::fill(s + j, s + end, kNegInf);
      } else if (st >= 0 && p.sparse_mask) {
        for (int64_t x = j; x < end; ++x)
          if (!sparse_element_visible(p, c.b, c.h, qb, st, i, j0 + x)) s[x] = kNegInf;
      }
      j = end;
    }
  }
}

// CPU key tiles [t_lo, t_hi] that key block kb overlaps (sk > 0).
inline void key_tiles_of_block(const AttnParams& p, int64_t sk, int64_t kb, int64_t* t_lo,
                               int64_t* t_hi) {
  const int64_t j0 = kb * p.sparse_block_k;
  const int64_t j1 = std::min<int64_t>(j0 + p.sparse_block_k, sk) - 1;
  *t_lo = j0 / kBlockK;
  *t_hi = j1 / kBlockK;
}

// Forward: the lists of the query blocks that rows [i0, i0 + rows) of one
// (b, h) belong to, and which key tiles they name.
struct SparseRows {
  int64_t qb0 = 0, nkb = 0;
  std::vector<int32_t> state;  // [qb - qb0][kb]
  std::vector<uint8_t> visit;  // per CPU key tile: some listed block overlaps it
  int32_t operator()(int64_t qb, int64_t kb) const { return state[(qb - qb0) * nkb + kb]; }
};

inline void sparse_rows(const HeadCtx& c, int64_t i0, int64_t rows, SparseRows* sr) {
  const AttnParams& p = *c.p;
  const int64_t sk = c.e.sk;
  sr->qb0 = i0 / p.sparse_block_q;
  sr->nkb = p.sparse_k_blocks;
  const int64_t nqb = (i0 + rows - 1) / p.sparse_block_q - sr->qb0 + 1;
  sr->state.resize(nqb * sr->nkb);
  sr->visit.assign((sk + kBlockK - 1) / kBlockK, 0);
  for (int64_t q = 0; q < nqb; ++q) {
    int32_t* st = sr->state.data() + q * sr->nkb;
    sparse_row_states(p, c.b, c.h, sr->qb0 + q, st);
    for (int64_t kb = 0; kb < sr->nkb; ++kb) {
      if (st[kb] == kSparseAbsent) continue;
      int64_t lo, hi;
      key_tiles_of_block(p, sk, kb, &lo, &hi);
      std::fill(sr->visit.begin() + lo, sr->visit.begin() + hi + 1, uint8_t{1});
    }
  }
}

// Backward: the transposed lists of one (b, h): for each key block, the
// query blocks (ascending) that list it and its state there.
struct SparseCols {
  std::vector<int64_t> start;  // [nkb + 1]
  std::vector<int32_t> qb, state;
  int32_t operator()(int64_t q, int64_t kb) const {
    const auto first = qb.begin() + start[kb], last = qb.begin() + start[kb + 1];
    const auto it = std::lower_bound(first, last, static_cast<int32_t>(q));
    return it != last && *it == q ? state[it - qb.begin()] : kSparseAbsent;
  }
};

inline void sparse_cols(const AttnParams& p, int64_t b, int64_t h, int64_t sq, SparseCols* sc) {
  const int64_t nkb = p.sparse_k_blocks, nqb = (sq + p.sparse_block_q - 1) / p.sparse_block_q;
  sc->start.assign(nkb + 1, 0);
  auto for_each_listed = [&](auto&& f) {
    for (int64_t q = 0; q < nqb; ++q) {
      const int32_t nf = sparse_count(p.full_num, p.full_num_stride, b, h, q);
      for (int32_t s = 0; s < nf; ++s) f(q, sparse_index(p.full_idx, p.full_idx_stride, b, h, q, s), kSparseFull);
      const int32_t np = sparse_count(p.kv_num, p.kv_num_stride, b, h, q);
      for (int32_t s = 0; s < np; ++s) f(q, sparse_index(p.kv_idx, p.kv_idx_stride, b, h, q, s), s);
    }
  };
  for_each_listed([&](int64_t, int32_t kb, int32_t) { ++sc->start[kb + 1]; });
  for (int64_t kb = 0; kb < nkb; ++kb) sc->start[kb + 1] += sc->start[kb];
  sc->qb.resize(sc->start[nkb]);
  sc->state.resize(sc->start[nkb]);
  std::vector<int64_t> fill(sc->start.begin(), sc->start.end() - 1);
  for_each_listed([&](int64_t q, int32_t kb, int32_t st) {  // q ascending: each column sorted
    sc->qb[fill[kb]] = static_cast<int32_t>(q);
    sc->state[fill[kb]++] = st;
  });
}

// Marks (visit[t] = 1, others 0) the CPU query tiles of a sequence of sq
// rows whose query blocks list a key block overlapping CPU key tile kt.
inline void query_tiles_of_key_tile(const AttnParams& p, const SparseCols& sc, int64_t sq,
                                    int64_t sk, int64_t kt, std::vector<uint8_t>* visit) {
  visit->assign((sq + kBlockQ - 1) / kBlockQ, 0);
  const int64_t j0 = kt * kBlockK, j1 = std::min<int64_t>(j0 + kBlockK, sk) - 1;
  for (int64_t kb = j0 / p.sparse_block_k; kb <= j1 / p.sparse_block_k; ++kb)
    for (int64_t e = sc.start[kb]; e < sc.start[kb + 1]; ++e) {
      const int64_t r0 = sc.qb[e] * p.sparse_block_q;
      const int64_t r1 = std::min<int64_t>(r0 + p.sparse_block_q, sq) - 1;
      std::fill(visit->begin() + r0 / kBlockQ, visit->begin() + r1 / kBlockQ + 1, uint8_t{1});
    }
}

}  // namespace fsdpa::cpu
