// The grid of attention problems the Metal kernels are tested on (on the MSL
// emulator): the case registry's Metal cases (tests/common/case_registry.cc)
// as MCase, shared by the test (test_metal_attention.cpp) and by the
// configure-time tool that asks the planner which kernel specialisations the
// grid needs (list_configs.cpp). Plain C++: no DLPack, no library.
#pragma once

#include <stdint.h>

#include <cmath>
#include <string>
#include <vector>

#include "case_registry.h"

namespace fsdpa_metal_test {

enum class Mask { none, boolean, additive, empty_rows, additive_qdtype, finfo_min_rows };  // additive_qdtype: mask in q's dtype; finfo_min_rows: attention_case.h

struct MCase {
  std::string name;
  int64_t B = 1, Hq = 1, Hk = 1, Sq = 1, Sk = 1, D = 32, Dv = 32;
  int dt = 0;  // 0 float32, 1 float16, 2 bfloat16
  bool causal = false;
  int align = 0;  // 0 top-left, 1 bottom-right
  int64_t wl = -1, wr = -1;
  float softcap = 0;
  bool alibi = false;
  Mask mask = Mask::none;
  float dropout = 0;
  bool varlen = false;
  bool bshd = false;
  float scale = NAN;
  int family = 7;  // MTLGPUFamilyApple7 (M1) / 9 (M3, M4)
  bool backward = true;
  // Split-KV decode: the planner must choose it (expect_split), or the test
  // forces this many splits on a shape too small for the planner to split.
  bool expect_split = false;
  int forced_splits = 0;
  // Block-sparse lists: a pattern of block_sparse_case.h (its SparseKind
  // as an int; -1 = none), block sizes, per-batch / per-head lists (else
  // broadcast), list rows past ceil(Sq / sbq).
  int sparse = -1;
  int64_t sbq = 64, sbk = 64;
  bool sp_per_batch = false, sp_per_head = false;
  int64_t sp_extra_q_blocks = 0;
};

inline MCase to_mcase(const fsdpa_cases::Case& r) {
  MCase c;
  c.name = r.name;
  c.B = r.B, c.Hq = r.Hq, c.Hk = r.Hk, c.Sq = r.Sq, c.Sk = r.Sk, c.D = r.D, c.Dv = r.Dv;
  c.dt = static_cast<int>(r.dtype);  // f32, f16, bf16 in that order in both
  c.causal = r.causal;
  c.align = r.align;
  c.wl = r.wl, c.wr = r.wr;
  c.softcap = r.softcap;
  c.alibi = r.alibi;
  using M = fsdpa_cases::Mask;
  c.mask = r.mask == M::none              ? Mask::none
           : r.mask == M::boolean         ? Mask::boolean
           : r.mask == M::additive        ? Mask::additive
           : r.mask == M::empty_rows      ? Mask::empty_rows
           : r.mask == M::additive_qdtype ? Mask::additive_qdtype
                                          : Mask::finfo_min_rows;
  c.dropout = r.dropout;
  c.varlen = r.varlen;
  c.bshd = r.bshd;
  c.scale = r.scale;
  c.family = r.metal_family;
  c.backward = r.backward;
  c.expect_split = r.metal_expect_split;
  c.forced_splits = r.metal_forced_splits;
  // Sparse (none first) and block_sparse_case.h's SparseKind (no none) list
  // the patterns in the same order.
  c.sparse = r.sparse == fsdpa_cases::Sparse::none ? -1 : static_cast<int>(r.sparse) - 1;
  c.sbq = r.sparse_bq, c.sbk = r.sparse_bk;
  c.sp_per_batch = r.sparse_per_batch, c.sp_per_head = r.sparse_per_head;
  c.sp_extra_q_blocks = r.sparse_extra_q_blocks;
  return c;
}

// reduced: the smaller grid registered for sanitizer builds (the registry's
// quick cases for Metal). Attention (block-sparse included) against the
// reference: the KV cache has its own driver (test_metal_kv_cache.cpp) and
// determinism is by construction (MCase has no fields for them).
inline std::vector<MCase> metal_grid(bool reduced) {
  std::vector<MCase> grid;
  for (const fsdpa_cases::Case& r : fsdpa_cases::cases_for(fsdpa_cases::kMetal, reduced))
    if (r.check == fsdpa_cases::Check::reference && r.kv == fsdpa_cases::KvCache::none)
      grid.push_back(to_mcase(r));
  return grid;
}

// KV cache (forward only, flashsdpa.h): queries against a cache of `cap`
// positions per cache row, contiguous ([rows, cap, Hk, D] storage) or paged
// (pages of `page` positions, [num_pages, page, Hk, D] storage, pages in a
// random order), with the optional cache_batch_idx (rows permuted, one
// spare), cache_leftpad and seqused_k (one sequence with no keys when both
// are on), or varlen queries over a paged cache.
struct KvCase {
  std::string name;
  int64_t B = 3, Hq = 4, Hk = 2, Sq = 1, cap = 150, D = 59, Dv = 59;
  int dt = 0;  // 0 float32, 1 float16, 2 bfloat16
  int64_t page = 0;  // 0: contiguous
  bool batch_idx = false, leftpad = false, seqused = false, varlen = false;
  bool causal = false;
  int align = 1;  // FlashAttention's bottom-right causal
  int64_t wl = -1, wr = -1;
  float softcap = 0;
  bool alibi = false;
  int family = 7;
  bool expect_split = false;  // the planner must choose the split-KV decode kernels
};

inline std::vector<KvCase> metal_kv_grid(bool reduced) {
  std::vector<KvCase> grid;
  for (int dt = 0; dt < 3; ++dt) {
    auto add = [&](const char* name, auto&& set) {
      KvCase c;
      c.name = name;
      c.dt = dt;
      set(c);
      grid.push_back(c);
    };
    add("contig_seqused_leftpad_bidx_sq1", [](KvCase& c) {
      c.seqused = c.leftpad = c.batch_idx = true; c.cap = 300; c.expect_split = true;
    });
    add("page1_seqused_sq3_causal", [](KvCase& c) { c.page = 1; c.seqused = true; c.Sq = 3; c.cap = 40; c.causal = true; });
    add("page16_bidx_leftpad_seqused_sq1", [](KvCase& c) {
      c.page = 16; c.batch_idx = c.leftpad = c.seqused = true; c.Hq = 8; c.Hk = 1; c.cap = 200; c.expect_split = true;
    });
    add("page64_seqused_sq7_combo", [](KvCase& c) {
      c.page = 64; c.seqused = true; c.Sq = 7; c.cap = 192; c.causal = true; c.wl = 50; c.alibi = true; c.softcap = 5.0f;
    });
    add("page5_varlen_seqused_causal", [](KvCase& c) {
      c.page = 5; c.varlen = c.seqused = true; c.Sq = 9; c.cap = 60; c.causal = true;
    });
    if (reduced) break;
  }
  {  // float32: Dv != D, a page size that is not a power of two with every parameter, a window
    KvCase c;
    c.name = "page13_all_sq5_window_dv40";
    c.page = 13, c.batch_idx = c.leftpad = c.seqused = true, c.Sq = 5, c.cap = 130, c.Dv = 40;
    c.wl = 20, c.wr = 3;
    grid.push_back(c);
    c = KvCase{};
    c.name = "contig_leftpad_sq4_causal";
    c.leftpad = true, c.Sq = 4, c.cap = 90, c.causal = true;
    grid.push_back(c);
  }
  return grid;
}

}  // namespace fsdpa_metal_test
