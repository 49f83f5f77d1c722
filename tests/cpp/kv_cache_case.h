// A KV-cache problem (forward only) for the C++ tests: a cache of `rows`
// rows of `cap` positions, contiguous or paged, read through seqused_k and
// optionally cache_batch_idx / cache_leftpad / cu_seqlens, with every
// position no sequence uses (and every spare page) NaN. Shared by the CPU
// (tests/cpp/test_kv_cache.cpp) and CUDA (tests/cuda/test_cuda.cpp) drivers;
// the cases are the registry's (tests/common/case_registry.cc).
#pragma once

#include <math.h>
#include <stdio.h>

#include <algorithm>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "test_tensor.h"

namespace fsdpa_test {

// A cache of `rows` rows of `cap` positions, contiguous ([rows, cap, Hk, D],
// FlashAttention's layout) or paged (page > 0: a pool [num_pages, page, Hk,
// D] in a shuffled order with spare pages). Every position a sequence does
// not use, and every spare page, holds NaN: a kernel reading a wrong row
// gives a non-finite output. The fp64 reference reads the same host tensors
// through the same parameters (its paged reads are tested against dense
// caches in tests/cpp/test_kv_cache.cpp).
struct KvCase {
  std::string name;
  int64_t B = 3, Hq = 8, Hk = 2, Sq = 1, D = 128, Dv = 128, cap = 300, page = 0;
  DT dt = DT::bf16;
  bool batch_idx = false, leftpad = false, varlen = false, causal = true;
  int64_t wl = -1, wr = -1;
  float softcap = 0;
  bool alibi = false;
};

inline std::string kv_describe(const KvCase& c) {
  static const char* const kv_dt_names[] = {"f32", "f16", "bf16", "f64", "u8", "i32"};
  char buf[160];
  snprintf(buf, sizeof buf, "kv_%s_sq%lld_h%lld:%lld_d%lld:%lld_page%lld_%s", c.name.c_str(),
           (long long)c.Sq, (long long)c.Hq, (long long)c.Hk, (long long)c.D, (long long)c.Dv,
           (long long)c.page, kv_dt_names[static_cast<int>(c.dt)]);
  return buf;
}

// gtest prints parameters with this instead of a byte dump.
inline void PrintTo(const KvCase& c, std::ostream* os) { *os << kv_describe(c); }

struct KvProblem {
  KvCase c;
  int64_t rows, num_pages = 0, max_pages = 0, total_q = 0;
  Tensor q, k, v, table, used, pad, bidx, cu_q, cu_k, alibi;
  std::vector<int64_t> row_of, begin, end, lens_q;
  fsdpa_params p;

  explicit KvProblem(const KvCase& c_, uint32_t seed = 99) : c(c_) {
    std::mt19937 g(seed);
    rows = c.batch_idx ? c.B + 2 : c.B;
    // Sequence b uses cache positions [begin, end) of cache row row_of[b].
    for (int64_t b = 0; b < c.B; ++b) {
      row_of.push_back(b);
      const int64_t e = b == 0 ? std::min<int64_t>(c.cap, c.Sq + 3) : b == 1 ? c.cap : c.cap - 37;
      end.push_back(e);
      begin.push_back(c.leftpad ? (b == 1 ? 0 : std::min<int64_t>(e, 5 + 61 * b)) : 0);
      lens_q.push_back(c.varlen && b == 2 ? std::max<int64_t>(1, c.Sq - 3) : c.Sq);
    }
    if (c.batch_idx) {
      std::vector<int64_t> perm(rows);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), g);
      for (int64_t b = 0; b < c.B; ++b) row_of[b] = perm[b];
    }
    if (c.page > 0) {
      max_pages = (c.cap + c.page - 1) / c.page;
      num_pages = rows * max_pages + 3;
      k = Tensor({num_pages, c.Hk, c.page, c.D}, c.dt, {0, 2, 1, 3});
      v = Tensor({num_pages, c.Hk, c.page, c.Dv}, c.dt, {0, 2, 1, 3});
      std::vector<int64_t> perm(num_pages);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), g);
      table = Tensor({rows, max_pages}, DT::i32);
      for (int64_t i = 0; i < rows * max_pages; ++i) table.set(i, double(perm[i]));
    } else {
      k = Tensor({rows, c.Hk, c.cap, c.D}, c.dt, {0, 2, 1, 3});
      v = Tensor({rows, c.Hk, c.cap, c.Dv}, c.dt, {0, 2, 1, 3});
    }
    k.poison();
    v.poison();
    std::normal_distribution<double> n(0.0, 1.0);
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t hk = 0; hk < c.Hk; ++hk)
        for (int64_t t = begin[b]; t < end[b]; ++t) {
          for (int64_t d = 0; d < c.D; ++d) k.set(flat(row_of[b], hk, t, d, c.D), n(g));
          for (int64_t d = 0; d < c.Dv; ++d) v.set(flat(row_of[b], hk, t, d, c.Dv), n(g));
        }
    fsdpa_params_init(&p);
    p.causal = c.causal;
    p.align = FSDPA_ALIGN_BOTTOM_RIGHT;
    p.window_left = c.wl;
    p.window_right = c.wr;
    p.softcap = c.softcap;
    used = Tensor({c.B}, DT::i32);
    for (int64_t b = 0; b < c.B; ++b) used.set(b, double(end[b]));
    p.seqused_k = &used;
    if (c.page > 0) p.block_table = &table;
    if (c.varlen) {
      cu_q = Tensor({c.B + 1}, DT::i32);
      cu_k = Tensor({c.B + 1}, DT::i32);
      for (int64_t b = 0; b < c.B; ++b) {
        cu_q.set(b, double(total_q));
        cu_k.set(b, double(b * c.cap));  // lengths only (paged); seqused_k decides
        total_q += lens_q[b];
      }
      cu_q.set(c.B, double(total_q));
      cu_k.set(c.B, double(c.B * c.cap));
      p.cu_seqlens_q = &cu_q;
      p.cu_seqlens_k = &cu_k;
      p.max_seqlen_q = c.Sq;
      p.max_seqlen_k = c.cap;
      q = Tensor({total_q, c.Hq, c.D}, c.dt);
    } else {
      total_q = c.B * c.Sq;
      q = Tensor({c.B, c.Hq, c.Sq, c.D}, c.dt, {0, 2, 1, 3});
      if (c.leftpad) {
        pad = Tensor({c.B}, DT::i32);
        for (int64_t b = 0; b < c.B; ++b) pad.set(b, double(begin[b]));
        p.cache_leftpad = &pad;
      }
      if (c.batch_idx) {
        bidx = Tensor({c.B}, DT::i32);
        for (int64_t b = 0; b < c.B; ++b) bidx.set(b, double(row_of[b]));
        p.cache_batch_idx = &bidx;
      }
    }
    q.fill_normal(g);
    if (c.alibi) {
      alibi = Tensor({c.Hq}, DT::f32);
      for (int64_t h = 0; h < c.Hq; ++h) alibi.set(h, pow(2.0, -8.0 * (h + 1) / c.Hq));
      p.alibi_slopes = &alibi;
    }
  }
  // Flat logical index of (cache row, kv head, position, d) in k or v.
  int64_t flat(int64_t row, int64_t hk, int64_t t, int64_t d, int64_t dim) const {
    if (c.page == 0) return ((row * c.Hk + hk) * c.cap + t) * dim + d;
    const int64_t pg = static_cast<int64_t>(table.get(row * max_pages + t / c.page));
    return ((pg * c.Hk + hk) * c.page + t % c.page) * dim + d;
  }
  Tensor make_out(DT t) const {
    return c.varlen ? Tensor({total_q, c.Hq, c.Dv}, t)
                    : Tensor({c.B, c.Hq, c.Sq, c.Dv}, t, {0, 2, 1, 3});
  }
  Tensor make_lse() const {
    return c.varlen ? Tensor({c.Hq, total_q}, DT::f32) : Tensor({c.B, c.Hq, c.Sq}, DT::f32);
  }
};

}  // namespace fsdpa_test
