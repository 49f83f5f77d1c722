// The case registry (tests/common/case_registry.h) in the C++ tests' types:
// a backend's cases of each kind (reference grid, block-sparse, KV cache,
// determinism) as Case / SparseSpec / KvCase. Shared by the CPU tests and
// the CUDA driver.
#pragma once

#include <utility>
#include <vector>

#include "attention_case.h"
#include "block_sparse_case.h"
#include "case_registry.h"
#include "kv_cache_case.h"

namespace fsdpa_test {

inline DT dt_of(fsdpa_cases::DType d) {
  return d == fsdpa_cases::DType::f32 ? DT::f32 : d == fsdpa_cases::DType::f16 ? DT::f16 : DT::bf16;
}

inline Case to_case(const fsdpa_cases::Case& r) {
  using fsdpa_cases::Mask;
  Case c;
  c.name = r.name;
  c.B = r.B, c.Hq = r.Hq, c.Hk = r.Hk, c.Sq = r.Sq, c.Sk = r.Sk, c.D = r.D, c.Dv = r.Dv;
  c.dt = dt_of(r.dtype);
  c.causal = r.causal;
  c.align = r.align;
  c.wl = r.wl, c.wr = r.wr;
  c.softcap = r.softcap;
  c.alibi = r.alibi;
  c.mask = r.mask == Mask::none              ? MaskKind::none
           : r.mask == Mask::boolean         ? MaskKind::boolean
           : r.mask == Mask::additive        ? MaskKind::additive
           : r.mask == Mask::empty_rows      ? MaskKind::empty_rows
           : r.mask == Mask::finfo_min_rows  ? MaskKind::finfo_min_rows
                                             : MaskKind::additive_qdtype;
  c.dropout = r.dropout;
  c.varlen = r.varlen;
  c.bshd = r.bshd;
  c.scale = r.scale;
  return c;
}

inline SparseSpec sparse_spec(const fsdpa_cases::Case& r) {
  using fsdpa_cases::Sparse;
  SparseSpec s;
  s.kind = r.sparse == Sparse::empty_rows        ? SparseKind::empty_rows
           : r.sparse == Sparse::all_full        ? SparseKind::all_full
           : r.sparse == Sparse::all_partial     ? SparseKind::all_partial
           : r.sparse == Sparse::partial_as_full ? SparseKind::partial_as_full
           : r.sparse == Sparse::full_only       ? SparseKind::full_only
                                                 : SparseKind::random;
  s.bq = r.sparse_bq;
  s.bk = r.sparse_bk;
  s.per_batch = r.sparse_per_batch;
  s.per_head = r.sparse_per_head;
  s.extra_q_blocks = r.sparse_extra_q_blocks;
  return s;
}

inline KvCase kv_case(const fsdpa_cases::Case& r) {
  KvCase c;
  c.name = r.name;
  c.B = r.B, c.Hq = r.Hq, c.Hk = r.Hk, c.Sq = r.Sq, c.D = r.D, c.Dv = r.Dv;
  c.cap = r.Sk;
  c.page = r.kv == fsdpa_cases::KvCache::paged ? r.kv_page : 0;
  c.dt = dt_of(r.dtype);
  c.batch_idx = r.kv_batch_idx;
  c.leftpad = r.kv_leftpad;
  c.varlen = r.varlen;
  c.causal = r.causal;  // bottom-right (KvProblem)
  c.wl = r.wl, c.wr = r.wr;
  c.softcap = r.softcap;
  c.alibi = r.alibi;
  return c;
}

// The cases of backend b (quick: its small run's) of one kind.
inline bool is_plain(const fsdpa_cases::Case& r) {
  return r.check == fsdpa_cases::Check::reference && r.kv == fsdpa_cases::KvCache::none &&
         r.sparse == fsdpa_cases::Sparse::none;
}

// Forward (+ gradients) against the fp64 reference: no KV cache, no block lists.
inline std::vector<Case> registry_reference_cases(fsdpa_cases::Backend b, bool quick = false) {
  std::vector<Case> out;
  for (const fsdpa_cases::Case& r : fsdpa_cases::cases_for(b, quick))
    if (is_plain(r)) out.push_back(to_case(r));
  return out;
}

inline std::vector<std::pair<Case, SparseSpec>> registry_sparse_cases(fsdpa_cases::Backend b, bool quick = false) {
  std::vector<std::pair<Case, SparseSpec>> out;
  for (const fsdpa_cases::Case& r : fsdpa_cases::cases_for(b, quick))
    if (r.check == fsdpa_cases::Check::reference && r.sparse != fsdpa_cases::Sparse::none)
      out.push_back({to_case(r), sparse_spec(r)});
  return out;
}

inline std::vector<KvCase> registry_kv_cases(fsdpa_cases::Backend b, bool quick = false) {
  std::vector<KvCase> out;
  for (const fsdpa_cases::Case& r : fsdpa_cases::cases_for(b, quick))
    if (r.check == fsdpa_cases::Check::reference && r.kv != fsdpa_cases::KvCache::none) out.push_back(kv_case(r));
  return out;
}

// Three runs of forward + deterministic backward, bitwise equal.
inline std::vector<Case> registry_determinism_cases(fsdpa_cases::Backend b, bool quick = false) {
  std::vector<Case> out;
  for (const fsdpa_cases::Case& r : fsdpa_cases::cases_for(b, quick))
    if (r.check == fsdpa_cases::Check::determinism) out.push_back(to_case(r));
  return out;
}

}  // namespace fsdpa_test
