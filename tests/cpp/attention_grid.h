// The part of the test grid every backend's test shares (tests/cpp for the
// CPU, tests/cuda for CUDA): the first shapes, the "all features combined" variant of
// a case, and every feature alone on one shape. Each test adds its own
// backend-specific shapes and cases on top. (The Metal emulator tests keep
// their own grid in tests/metal/attention/metal_grid.h: it is also read at
// configure time, without the library.)
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "attention_case.h"

namespace fsdpa_test {

struct Shape {
  const char* name;
  int64_t B, Hq, Hk, Sq, Sk, D, Dv;
};

// The shapes every backend's grid starts with (odd sizes, head dims from 16
// to 256, Dv != D, GQA and MQA); each test appends its own.
inline std::vector<Shape> shared_shapes() {
  return {
      {"s1x1", 1, 1, 1, 1, 1, 32, 32},
      {"s113x203_d59_gqa", 2, 4, 2, 113, 203, 59, 59},
      {"s128x217_d64", 1, 2, 2, 128, 217, 64, 64},
      {"s256x512_d32_mqa", 2, 3, 1, 256, 512, 32, 32},
      {"s512x256_d111", 1, 2, 1, 512, 256, 111, 111},
      {"s1023x1024_d32", 1, 1, 1, 1023, 1024, 32, 32},
      {"s113x203_d128", 1, 2, 2, 113, 203, 128, 128},
      {"s77x90_d256", 1, 1, 1, 77, 90, 256, 256},
      {"s100x150_d64_dv40", 2, 3, 3, 100, 150, 64, 40},
      {"s65x64_d16_dv96", 1, 2, 1, 65, 64, 16, 96},
  };
}

inline Case case_of(const Shape& s, DT dt) {
  Case c;
  c.name = s.name;
  c.B = s.B; c.Hq = s.Hq; c.Hk = s.Hk; c.Sq = s.Sq; c.Sk = s.Sk; c.D = s.D; c.Dv = s.Dv;
  c.dt = dt;
  return c;
}

// Bottom-right causal, window, ALiBi, softcap, bool mask and a scale at once.
inline Case with_all_features(Case c) {
  c.name += "_combo";
  c.causal = true;
  c.align = FSDPA_ALIGN_BOTTOM_RIGHT;
  c.wl = 37;
  c.alibi = true;
  c.softcap = 5.0f;
  c.mask = MaskKind::boolean;
  c.scale = 0.3f;
  return c;
}

// Every feature alone (and a few pairs) on `base`, named base.name + "_" + feature.
inline void add_feature_cases(std::vector<Case>& grid, const Case& base) {
  auto add = [&](const char* name, auto&& set) {
    Case c = base;
    c.name += std::string("_") + name;
    set(c);
    grid.push_back(c);
  };
  add("causal_tl", [](Case& c) { c.causal = true; });
  add("causal_br", [](Case& c) { c.causal = true; c.align = FSDPA_ALIGN_BOTTOM_RIGHT; });
  add("window_br", [](Case& c) { c.wl = 16; c.wr = 8; c.align = FSDPA_ALIGN_BOTTOM_RIGHT; });
  add("window_tl_left", [](Case& c) { c.wl = 50; });
  add("window_tl_right", [](Case& c) { c.wr = 3; });
  add("bool_mask", [](Case& c) { c.mask = MaskKind::boolean; });
  add("additive_mask", [](Case& c) { c.mask = MaskKind::additive; });
  add("empty_rows", [](Case& c) { c.mask = MaskKind::empty_rows; });
  add("finfo_min_rows", [](Case& c) { c.mask = MaskKind::finfo_min_rows; });
  add("alibi", [](Case& c) { c.alibi = true; });
  add("alibi_causal_br", [](Case& c) { c.alibi = true; c.causal = true; c.align = FSDPA_ALIGN_BOTTOM_RIGHT; });
  add("softcap", [](Case& c) { c.softcap = 2.0f; c.scale = 1.0f; });
  add("dropout", [](Case& c) { c.dropout = 0.2f; });
  add("dropout_causal", [](Case& c) { c.dropout = 0.5f; c.causal = true; });
  add("bshd", [](Case& c) { c.bshd = true; });
  add("bshd_causal_additive", [](Case& c) { c.bshd = true; c.causal = true; c.mask = MaskKind::additive; });
  add("varlen", [](Case& c) { c.varlen = true; c.B = 3; });
  add("varlen_causal_br", [](Case& c) { c.varlen = true; c.B = 3; c.causal = true; c.align = FSDPA_ALIGN_BOTTOM_RIGHT; });
  add("varlen_window_dropout", [](Case& c) { c.varlen = true; c.B = 3; c.wl = 20; c.wr = 5; c.dropout = 0.1f; });
  add("causal_br_sq_gt_sk", [](Case& c) { std::swap(c.Sq, c.Sk); c.causal = true; c.align = FSDPA_ALIGN_BOTTOM_RIGHT; });
}

}  // namespace fsdpa_test
