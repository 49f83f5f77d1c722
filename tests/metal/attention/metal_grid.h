// The grid of attention problems the Metal kernels are tested on (on the MSL
// emulator): the case registry's Metal cases (tests/common/case_registry.cc)
// shared by the test (test_metal_attention.cpp) and by the
// configure-time tool that asks the planner which kernel specialisations the
// grid needs (list_configs.cpp). Plain C++: no DLPack, no library.
#pragma once

#include <stdint.h>

#include <cmath>
#include <string>
#include <vector>

#include "case_registry.h"

namespace fsdpa_metal_test {

// reduced: the smaller grid registered for sanitizer builds (the registry's
// quick cases for Metal). Attention (block-sparse included) against the
// reference: the KV cache has its own driver (test_metal_kv_cache.cpp) and
// determinism is by construction.
inline std::vector<fsdpa_cases::Case> metal_grid(bool reduced) {
  std::vector<fsdpa_cases::Case> grid;
  for (const fsdpa_cases::Case& r : fsdpa_cases::cases_for(fsdpa_cases::kMetal, reduced))
    if (r.check == fsdpa_cases::Check::reference && r.kv == fsdpa_cases::KvCache::none)
      grid.push_back(r);
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
