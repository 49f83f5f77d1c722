// The interface every backend implements, and the registry that picks one
// by the tensors' DLPack device. Adding a backend = one folder that defines
// a `Backend` + one line in registry.cpp.
#pragma once

#include "core/attn_params.h"
#include "core/merge.h"
#include "flashsdpa/flashsdpa.h"

namespace fsdpa {

struct Backend {
  const char* name;           // "cpu", "cuda", "metal"
  int32_t device_type;        // DLDeviceType served (also kDLCUDAHost etc.)
  // Whether a device is present at run time (e.g. a CUDA GPU).
  bool (*available)();
  // Both receive params already validated by the core (shapes, strides,
  // dtypes, devices). They write out/lse resp. dq/dk/dv and report failures
  // through set_error(). p.check_finite (NaN/Inf in q, k, v, dout is
  // FSDPA_ERROR_NONFINITE_INPUT) is theirs to do, ideally fused with reading.
  fsdpa_status (*forward)(const AttnParams& p, void* stream);
  fsdpa_status (*backward)(const AttnParams& p, void* stream);
  // fsdpa_merge_attn_states on this device (null: not supported here yet).
  fsdpa_status (*merge)(const MergeParams& m, void* stream);
  // The plan the backend would run for p (forward or backward) as text,
  // with the reason for each choice, written into buf (NUL-terminated,
  // truncated to size); launches nothing. Null: the backend has no plan
  // to tell (fsdpa_explain says so).
  fsdpa_status (*explain)(const AttnParams& p, bool backward, char* buf, size_t size);
  // Whether forward/backward read the block-sparse lists (p.sparse). A
  // backend that leaves it false (the default of an aggregate without it)
  // never sees such a call: the core refuses it with FSDPA_ERROR_UNSUPPORTED.
  bool block_sparse;
};

// FSDPA_OK, or the UNSUPPORTED error for a call `be` cannot serve for a
// reason every backend shares (today: the block-sparse mask).
fsdpa_status backend_supports(const Backend& be, const AttnParams& p);

// The compiled-in backend serving `device_type`, or null.
const Backend* find_backend(int32_t device_type);
// "cpu,cuda,..." of every compiled-in backend.
const char* backend_names();

}  // namespace fsdpa
