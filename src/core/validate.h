// Host-side checks of every argument of a call, and their translation into
// the AttnParams the backends receive. All messages name the argument.
#pragma once

#include "core/attn_params.h"
#include "core/merge.h"
#include "flashsdpa/flashsdpa.h"

namespace fsdpa {

enum class CallKind {
  forward,             // q, k, v -> out, lse?
  backward,            // dout, q, k, v, out, lse -> dq, dk, dv
  reference_forward,   // like forward; CPU only; float64 allowed
  reference_backward,  // like backward without out/lse; CPU only
  dropout_mask,        // q, k -> keep mask; CPU only
};

struct CallTensors {
  const DLTensor* q = nullptr;
  const DLTensor* k = nullptr;
  const DLTensor* v = nullptr;
  const DLTensor* out = nullptr;
  const DLTensor* lse = nullptr;
  const DLTensor* dout = nullptr;
  const DLTensor* dq = nullptr;
  const DLTensor* dk = nullptr;
  const DLTensor* dv = nullptr;
};

// Validates and fills *out. On failure returns the status and sets the
// thread's last error.
fsdpa_status make_attn_params(CallKind kind, const fsdpa_params* params,
                              const CallTensors& t, AttnParams* out);

// The values of the KV-cache parameters of a validated p (seqused_k,
// cache_leftpad, cache_batch_idx, every used block_table entry and, varlen,
// cu_seqlens_k), read through host pointers: the per-sequence rules of
// flashsdpa.h, with messages naming the argument. make_attn_params runs it
// for host-readable tensors; a GPU backend may run it on host copies.
fsdpa_status check_kv_cache_values(const AttnParams& p);
// The varlen offsets' values (host-readable copies): validate.cpp.
fsdpa_status check_varlen_offsets(const AttnParams& p, bool paged);

struct MergeTensors {
  const DLTensor* out_a = nullptr;
  const DLTensor* lse_a = nullptr;
  const DLTensor* out_b = nullptr;
  const DLTensor* lse_b = nullptr;
  const DLTensor* out = nullptr;
  const DLTensor* lse = nullptr;
};

// Validates the tensors of fsdpa_merge_attn_states and fills *m.
fsdpa_status make_merge_params(const MergeTensors& t, MergeParams* m);

}  // namespace fsdpa
