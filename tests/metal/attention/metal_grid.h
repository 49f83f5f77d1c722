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
};

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
  return grid;
}

}  // namespace fsdpa_metal_test
