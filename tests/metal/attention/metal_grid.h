// The grid of attention problems the Metal kernels are tested on (on the MSL
// emulator), shared by the test (test_metal_attention.cpp) and by the
// configure-time tool that asks the planner which kernel specialisations the
// grid needs (list_configs.cpp). Plain C++: no DLPack, no library.
#pragma once

#include <stdint.h>

#include <cmath>
#include <string>
#include <vector>

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

// SparseKind of block_sparse_case.h, in its order.
enum SparsePattern { sp_random = 0, sp_empty_rows, sp_all_full, sp_all_partial, sp_partial_as_full, sp_full_only };

// reduced: the smaller grid registered for sanitizer builds.
inline std::vector<MCase> metal_grid(bool reduced) {
  std::vector<MCase> grid;
  struct Shape {
    const char* n;
    int64_t B, Hq, Hk, Sq, Sk, D, Dv;
  };
  const Shape shapes[] = {
      {"s1x1_d32", 1, 1, 1, 1, 1, 32, 32},
      {"s37x45_d59_gqa", 2, 4, 2, 37, 45, 59, 59},
      {"s64x129_d64_mqa", 1, 3, 1, 64, 129, 64, 64},
      {"s33x70_d128", 1, 2, 2, 33, 70, 128, 128},
      {"s20x27_d256", 1, 1, 1, 20, 27, 256, 256},
      {"s50x41_d64_dv40", 2, 2, 2, 50, 41, 64, 40},
      {"s300x257_d32", 1, 1, 1, 300, 257, 32, 32},
  };
  auto base = [](const Shape& s, int dt) {
    MCase c;
    c.name = s.n;
    c.B = s.B, c.Hq = s.Hq, c.Hk = s.Hk, c.Sq = s.Sq, c.Sk = s.Sk, c.D = s.D, c.Dv = s.Dv;
    c.dt = dt;
    return c;
  };
  // reduced: every head dim for float32, the first three shapes for the
  // 16-bit types, never the 300x257 shape.
  const int n_all = static_cast<int>(sizeof(shapes) / sizeof(shapes[0]));
  for (int dt = 0; dt < 3; ++dt)
    for (int si = 0; si < (reduced ? (dt == 0 ? n_all - 1 : 3) : n_all); ++si) {
      MCase c = base(shapes[si], dt);
      grid.push_back(c);
      c.name += "_combo";
      c.causal = true;
      c.align = 1;
      c.wl = 23;
      c.alibi = true;
      c.softcap = 5.0f;
      c.mask = Mask::boolean;
      c.scale = 0.3f;
      grid.push_back(c);
    }
  // Every feature alone on an odd GQA shape, each dtype.
  const Shape f = shapes[1];
  for (int dt = 0; dt < 3; ++dt) {
    auto add = [&](const char* name, auto&& set) {
      MCase c = base(f, dt);
      c.name = std::string(f.n) + "_" + name;
      set(c);
      grid.push_back(c);
    };
    add("causal_tl", [](MCase& c) { c.causal = true; });
    add("causal_br", [](MCase& c) { c.causal = true; c.align = 1; });
    add("window_br", [](MCase& c) { c.wl = 16; c.wr = 8; c.align = 1; });
    add("window_tl_left", [](MCase& c) { c.wl = 20; });
    add("window_tl_right", [](MCase& c) { c.wr = 3; });
    add("bool_mask", [](MCase& c) { c.mask = Mask::boolean; });
    add("additive_mask", [](MCase& c) { c.mask = Mask::additive; });
    if (dt > 0) add("additive_mask_qdtype", [](MCase& c) { c.mask = Mask::additive_qdtype; });
    add("empty_rows", [](MCase& c) { c.mask = Mask::empty_rows; });
    add("finfo_min_rows", [](MCase& c) { c.mask = Mask::finfo_min_rows; });
    add("alibi", [](MCase& c) { c.alibi = true; });
    add("alibi_causal_br", [](MCase& c) { c.alibi = true; c.causal = true; c.align = 1; });
    add("softcap", [](MCase& c) { c.softcap = 2.0f; c.scale = 1.0f; });
    add("dropout", [](MCase& c) { c.dropout = 0.2f; });
    add("dropout_causal", [](MCase& c) { c.dropout = 0.5f; c.causal = true; });
    add("bshd", [](MCase& c) { c.bshd = true; });
    add("bshd_causal_additive", [](MCase& c) { c.bshd = true; c.causal = true; c.mask = Mask::additive; });
    // varlen lengths (attention_case.h): q {Sq, 0, Sq - 34}, k {Sk, Sk - 29, Sk - 58}
    add("varlen", [](MCase& c) { c.varlen = true; c.B = 3; c.Sq = 70; c.Sk = 80; });
    add("varlen_causal_br", [](MCase& c) { c.varlen = true; c.B = 3; c.Sq = 70; c.Sk = 80; c.causal = true; c.align = 1; });
    add("varlen_window_dropout", [](MCase& c) {
      c.varlen = true; c.B = 3; c.Sq = 70; c.Sk = 80; c.wl = 20; c.wr = 5; c.dropout = 0.1f;
    });
    add("causal_br_sq_gt_sk", [](MCase& c) { std::swap(c.Sq, c.Sk); c.causal = true; c.align = 1; });
    if (reduced && dt > 0) break;
  }
  // Bands against block boundaries: several key blocks per row block, so
  // block skipping (key_range / query_range) decides what is computed;
  // window_right = 1 puts a row block's last visible key on a block's first.
  for (int dt = 0; dt < 3; ++dt) {
    if (reduced && dt > 0) break;
    const Shape w = {"s193x250_d32_mqa", 1, 2, 1, 193, 250, 32, 32};
    auto add = [&](const char* name, auto&& set) {
      MCase c = base(w, dt);
      c.name = std::string(w.n) + "_" + name;
      set(c);
      grid.push_back(c);
    };
    add("causal_tl", [](MCase& c) { c.causal = true; });
    add("causal_br", [](MCase& c) { c.causal = true; c.align = 1; });
    add("window_br", [](MCase& c) { c.wl = 50; c.wr = 17; c.align = 1; });
    add("window_right1", [](MCase& c) { c.wr = 1; });
    add("diagonal_only", [](MCase& c) { c.wl = 0; c.wr = 0; c.align = 1; });
  }
  // Split-KV decode (forward only: the backward of these shapes is the
  // normal one): GQA 8:1, head dim 59, so every case reuses a kernel key of
  // the feature cases above. The planner's own choice where the shape is
  // long enough, forced splits on small shapes (empty splits, one key per
  // split). Reduced grid: float32, Sk < 1000.
  for (int dt = 0; dt < (reduced ? 1 : 3); ++dt) {
    const Shape d = {"decode_gqa8", 1, 8, 1, 1, 1000, 59, 59};
    auto add = [&](const char* name, int64_t sq, int64_t sk, int forced, auto&& set) {
      if (reduced && sk >= 1000) return;
      MCase c = base(d, dt);
      c.name = std::string(d.n) + "_" + name;
      c.Sq = sq, c.Sk = sk;
      c.backward = false;
      c.forced_splits = forced;
      c.expect_split = forced == 0;
      set(c);
      grid.push_back(c);
    };
    auto none = [](MCase&) {};
    add("sq1_sk1000_b2", 1, 1000, 0, [](MCase& c) { c.B = 2; });
    add("sq4_sk3000_causal_br", 4, 3000, 0, [](MCase& c) { c.causal = true; c.align = 1; });
    add("sq1_sk1000_causal_tl", 1, 1000, 0, [](MCase& c) { c.causal = true; });  // one visible key
    add("sq3_sk2000_combo", 3, 2000, 0, [](MCase& c) {
      c.causal = true; c.align = 1; c.wl = 23; c.alibi = true; c.softcap = 5.0f; c.mask = Mask::boolean; c.scale = 0.3f;
    });
    add("sq2_sk257_additive", 2, 257, 0, [](MCase& c) { c.mask = Mask::additive; });
    add("sq4_sk300_empty_rows", 4, 300, 0, [](MCase& c) { c.mask = Mask::empty_rows; });
    add("sq3_sk333_finfo_min_rows", 3, 333, 0, [](MCase& c) { c.mask = Mask::finfo_min_rows; });
    add("sq1_sk200_dropout", 1, 200, 0, [](MCase& c) { c.dropout = 0.2f; });
    add("sq3_sk7_split7", 3, 7, 7, none);
    add("sq2_sk100_window_split6", 2, 100, 6, [](MCase& c) { c.wl = 20; c.wr = 5; c.align = 1; });
    add("sq4_sk45_causal_tl_split5", 4, 45, 5, [](MCase& c) { c.causal = true; });
    add("sq1_sk1_split1", 1, 1, 1, none);
  }
  // Block-sparse lists, forward and gradients: every pattern kind, block
  // sizes below, across and above the kernels' tiles (not dividing the
  // sequence lengths), broadcast and per-(batch, head) lists, GQA, every
  // dtype, and the other features on top; decode rows through the split
  // kernels. Reduced grid: float32 only.
  {
    const Shape sp = {"sparse_s75x93_d40_gqa", 2, 4, 2, 75, 93, 40, 40};
    auto add = [&](const char* name, int dt, int kind, int64_t bq, int64_t bk, auto&& set) {
      if (reduced && dt > 0) return;
      MCase c = base(sp, dt);
      c.name = std::string(sp.n) + "_" + name;
      c.sparse = kind, c.sbq = bq, c.sbk = bk;
      set(c);
      grid.push_back(c);
    };
    auto none = [](MCase&) {};
    for (int dt = 0; dt < 3; ++dt)
      add("random_b16x16_perh", dt, sp_random, 16, 16, [](MCase& c) { c.sp_per_head = true; });
    add("empty_rows_b8x24_perb", 0, sp_empty_rows, 8, 24, [](MCase& c) { c.sp_per_batch = true; });
    add("all_full_b32x32", 0, sp_all_full, 32, 32, none);
    add("all_partial_b7x13_perh", 0, sp_all_partial, 7, 13, [](MCase& c) { c.sp_per_head = true; });
    add("partial_as_full_b64x48", 0, sp_partial_as_full, 64, 48, none);
    add("full_only_b20x40_extra2", 0, sp_full_only, 20, 40, [](MCase& c) { c.sp_extra_q_blocks = 2; });
    add("random_b100x37_causal_br", 0, sp_random, 100, 37, [](MCase& c) {
      c.sp_per_batch = c.sp_per_head = true; c.causal = true; c.align = 1;
    });
    for (int dt : {0, 2})
      add("random_b24x16_combo", dt, sp_random, 24, 16, [](MCase& c) {
        c.sp_per_head = true; c.wl = 30; c.wr = 5; c.align = 1; c.alibi = true; c.softcap = 5.0f; c.scale = 0.3f;
      });
    add("empty_rows_b16x64_bool_mask", 0, sp_empty_rows, 16, 64, [](MCase& c) { c.mask = Mask::boolean; });
    add("random_b32x16_dropout_causal", 0, sp_random, 32, 16, [](MCase& c) { c.dropout = 0.2f; c.causal = true; });
    add("random_b1x5_decode_split", 0, sp_random, 1, 5, [](MCase& c) {
      c.Sq = 3, c.Sk = 700, c.sp_per_head = true, c.backward = false, c.expect_split = true;
    });
  }
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
