// A block-sparse mask (flashsdpa.h's block lists) for a test Problem, built
// from a pattern kind, with its equivalent dense bool mask [B, Hq, Sq, Sk]
// (the oracle's view of the same keys). Shared by the CPU and CUDA tests.
#pragma once

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "attention_case.h"

namespace fsdpa_test {

enum class SparseKind {
  random,        // each key block absent / full / partial (element mask) at random
  empty_rows,    // random, and every third query block lists nothing
  all_full,      // every key block full (= dense attention)
  all_partial,   // every key block partial with a random element mask
  partial_as_full,  // partial lists without an element mask (= full)
  full_only,     // only the full lists
};

inline const char* sparse_kind_name(SparseKind k) {
  switch (k) {
    case SparseKind::random: return "random";
    case SparseKind::empty_rows: return "empty_rows";
    case SparseKind::all_full: return "all_full";
    case SparseKind::all_partial: return "all_partial";
    case SparseKind::partial_as_full: return "partial_as_full";
    case SparseKind::full_only: return "full_only";
  }
  return "?";
}

struct SparseSpec {
  SparseKind kind = SparseKind::random;
  int64_t bq = 128, bk = 128;
  bool per_batch = false, per_head = false;  // else broadcast (size 1)
  int64_t extra_q_blocks = 0;                // NQB beyond ceil(Sq / bq)
};

struct BlockSparse {
  Tensor kv_num, kv_idx, kv_mask, full_num, full_idx, dense;
  bool has_partial = false, has_full = false, has_mask = false;

  BlockSparse(const Case& c, const SparseSpec& s, uint32_t seed = 77) {
    std::mt19937 g(seed);
    const int64_t Bm = s.per_batch ? c.B : 1, Hm = s.per_head ? c.Hq : 1;
    const int64_t nqb = (c.Sq + s.bq - 1) / s.bq + s.extra_q_blocks;
    const int64_t nkb = (c.Sk + s.bk - 1) / s.bk;
    has_full = s.kind != SparseKind::all_partial && s.kind != SparseKind::partial_as_full;
    has_partial = s.kind != SparseKind::all_full && s.kind != SparseKind::full_only;
    has_mask = has_partial && s.kind != SparseKind::partial_as_full;
    const int64_t len = std::max<int64_t>(nkb, 1);  // list capacity (FlexAttention's layout)
    kv_num = Tensor({Bm, Hm, nqb}, DT::i32);
    kv_idx = Tensor({Bm, Hm, nqb, len}, DT::i32);
    full_num = Tensor({Bm, Hm, nqb}, DT::i32);
    full_idx = Tensor({Bm, Hm, nqb, len}, DT::i32);
    kv_mask = Tensor({Bm, Hm, nqb, len, s.bq, s.bk}, DT::u8);
    // state[(bm * Hm + hm) * nqb + qb][kb]: -2 absent, -1 full, slot
    std::vector<std::vector<int32_t>> state(Bm * Hm * nqb, std::vector<int32_t>(nkb, -2));
    std::uniform_int_distribution<int> pick(0, 3);
    std::bernoulli_distribution keep(0.7);
    for (int64_t row = 0; row < Bm * Hm * nqb; ++row) {
      const int64_t qb = row % nqb;
      std::vector<int32_t> full, part;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        int kind;  // 0 absent, 1 full, 2 partial
        switch (s.kind) {
          case SparseKind::all_full: kind = 1; break;
          case SparseKind::full_only: kind = pick(g) < 2 ? 0 : 1; break;
          case SparseKind::all_partial: kind = 2; break;
          case SparseKind::partial_as_full: kind = pick(g) < 2 ? 0 : 2; break;
          default: kind = pick(g) < 2 ? 0 : pick(g) < 2 ? 1 : 2;
        }
        if (s.kind == SparseKind::empty_rows && qb % 3 == 1) kind = 0;
        if (kind == 1) full.push_back(int32_t(kb));
        if (kind == 2) part.push_back(int32_t(kb));
      }
      std::shuffle(full.begin(), full.end(), g);  // any order
      std::shuffle(part.begin(), part.end(), g);
      full_num.set(row, double(full.size()));
      kv_num.set(row, double(part.size()));
      for (int64_t t = 0; t < len; ++t) {
        // Entries past the count hold garbage: they must not be read.
        full_idx.set(row * len + t, t < int64_t(full.size()) ? full[t] : 1000000);
        kv_idx.set(row * len + t, t < int64_t(part.size()) ? part[t] : -5);
      }
      for (size_t t = 0; t < full.size(); ++t) state[row][full[t]] = -1;
      for (size_t t = 0; t < part.size(); ++t) state[row][part[t]] = int32_t(t);
    }
    for (int64_t i = 0; i < kv_mask.numel(); ++i) kv_mask.set(i, keep(g));
    dense = Tensor({c.B, c.Hq, c.Sq, c.Sk}, DT::u8);
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.Hq; ++h)
        for (int64_t i = 0; i < c.Sq; ++i)
          for (int64_t j = 0; j < c.Sk; ++j) {
            const int64_t bm = Bm == 1 ? 0 : b, hm = Hm == 1 ? 0 : h, qb = i / s.bq;
            const int32_t st = state[(bm * Hm + hm) * nqb + qb][j / s.bk];
            bool vis = st == -1 || (st >= 0 && !has_mask);
            if (st >= 0 && has_mask)
              vis = kv_mask.get(((((bm * Hm + hm) * nqb + qb) * len + st) * s.bq + i % s.bq) * s.bk +
                                j % s.bk) != 0;
            dense.set(((b * c.Hq + h) * c.Sq + i) * c.Sk + j, vis);
          }
  }

  void attach(fsdpa_params* p, const SparseSpec& s) {
    p->sparse_block_q = s.bq;
    p->sparse_block_k = s.bk;
    if (has_partial) {
      p->kv_num_blocks = &kv_num;
      p->kv_indices = &kv_idx;
      if (has_mask) p->kv_block_mask = &kv_mask;
    }
    if (has_full) {
      p->full_kv_num_blocks = &full_num;
      p->full_kv_indices = &full_idx;
    }
  }
};

}  // namespace fsdpa_test
