// One registry of attention test cases for every backend's test driver, in
// the manner of ggml's test-backend-ops: each case is a plain description
// (sizes, dtype, semantics, which check) tagged with the backends whose
// drivers must run it. The drivers take registry() and keep the cases
// runs_on() gives for their backend (tag + the backend's declared support,
// support_table.h); the README's support matrix is generated from the same
// two tables (tools/support_matrix.cpp), so the grids and the matrix cannot
// drift apart.
//
// Adding a case: append it to a section of case_registry.cc with its
// backends (and quick) tags. A backend taking on a feature (say Metal's KV
// cache): tag that feature's cases for it, make its driver run that kind of
// case, turn its cell in support_table.cc to yes (or pending), and
// regenerate the README (the readme_support_matrix test prints how).
//
// Drivers: tests/cpp (CPU: grid, block-sparse, KV cache, determinism),
// tests/cuda/test_cuda.cpp (CUDA), tests/metal/attention (Metal kernels on
// the MSL emulator). Plain C++ without the library or DLPack: the Metal
// tests also read it at configure time (tests/metal/attention/list_configs.cpp).
#pragma once

#include <stdint.h>

#include <cmath>
#include <string>
#include <vector>

namespace fsdpa_cases {

enum Backend : unsigned { kCpu = 1u, kCuda = 2u, kMetal = 4u };
constexpr Backend kBackends[] = {kCpu, kCuda, kMetal};
const char* backend_name(Backend b);  // "CPU", "CUDA", "Metal"

enum class DType { f32, f16, bf16 };
// finfo_min_rows: additive, every 5th row -FLT_MAX on every key (HF's
// padding value); additive_qdtype: additive, stored in q's dtype.
enum class Mask { none, boolean, additive, empty_rows, finfo_min_rows, additive_qdtype };
enum class KvCache { none, contiguous, paged };
// Block-sparse patterns (tests/cpp/block_sparse_case.h says what each is).
enum class Sparse { none, random, empty_rows, all_full, all_partial, partial_as_full, full_only };
// reference: forward (+ gradients) against the fp64 reference;
// determinism: three runs of forward + deterministic backward, bitwise equal.
enum class Check { reference, determinism };

struct Case {
  std::string name;  // the drivers' test names append the dtype
  int64_t B = 1, Hq = 1, Hk = 1, Sq = 1, Sk = 1, D = 32, Dv = 32;
  DType dtype = DType::f32;
  bool causal = false;
  int align = 0;  // FSDPA_ALIGN_TOP_LEFT (0) / FSDPA_ALIGN_BOTTOM_RIGHT (1)
  int64_t wl = -1, wr = -1;
  float softcap = 0;
  bool alibi = false;
  Mask mask = Mask::none;
  float dropout = 0;
  bool varlen = false;
  bool bshd = false;  // q/k/v/out stored as [B, S, H, D]
  float scale = NAN;
  bool backward = true;
  Check check = Check::reference;

  // KV cache (forward only): B sequences in a cache of Sk positions per
  // row, contiguous or in pages of kv_page rows; seqused_k always, cache
  // rows permuted (cache_batch_idx) and left padding (cache_leftpad) on
  // request (tests/cpp/kv_cache_case.h builds it).
  KvCache kv = KvCache::none;
  int64_t kv_page = 0;
  bool kv_batch_idx = false, kv_leftpad = false;

  // Block-sparse mask: pattern, block sizes, lists per batch / per head
  // (else broadcast), extra query blocks past ceil(Sq / bq).
  Sparse sparse = Sparse::none;
  int64_t sparse_bq = 128, sparse_bk = 128;
  bool sparse_per_batch = false, sparse_per_head = false;
  int64_t sparse_extra_q_blocks = 0;

  // Which backends' drivers must run it, and in whose small run it is
  // (CUDA's --quick, Metal's reduced grid for sanitizer builds; the CPU has
  // no small run).
  unsigned backends = 0;
  unsigned quick = 0;

  // Metal hints: the GPU family to plan for (7: M1, 9: M3/M4); split-KV
  // decode the planner must choose (metal_expect_split) or that the test
  // forces on a shape too small for the planner to split.
  int metal_family = 7;
  bool metal_expect_split = false;
  int metal_forced_splits = 0;
};

// Every case of every backend.
const std::vector<Case>& registry();

// Whether `b`'s driver runs `c`: tagged for `b`, and every feature the case
// uses is one `b` supports or is verifying (support_table.h).
bool runs_on(Backend b, const Case& c);

// The cases `b`'s driver runs; quick: only its small run's.
std::vector<Case> cases_for(Backend b, bool quick = false);

}  // namespace fsdpa_cases
