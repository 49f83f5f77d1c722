// The CUDA backend decides a call's path before it runs anything: one pure
// function (make_plan) from the call's parameters, the device and the
// override to a Plan (kernel family, tiles, splits, workspace layout) with
// the reason for each choice. cuda_backend.cu runs the plan; explain()
// prints it (fsdpa_explain, flashsdpa.explain). The checks are named
// predicates that return why a family cannot take the call (nullptr: it
// can): hopper_fwd_scope / hopper_bwd_scope (hopper/host.cu), decode_scope
// (decode.cu), in the order of the families below. A family whose check
// passed never declines the call afterwards.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "core/attn_params.h"

namespace fsdpa {
namespace cuda {

enum class Family : int {
  simt,    // simt.cu: fp32 (or forced), one warp per row, plain fp32
  sm80,    // tc.cuh: mma.sync tensor-core kernels (any sm_80+ GPU), split-KV
  decode,  // decode.cu: flash-decoding for a few query rows per GQA group
  hopper,  // hopper/: wgmma + TMA kernels (sm_90a build on a 9.x GPU)
};
const char* family_name(Family f);

// The one override for A/B work and tests: FLASHSDPA_CUDA_FORCE =
// FAMILY[,splits=N][,mask_skip=0], FAMILY one of auto, simt, sm80 (no
// decode or Hopper kernels: the sm_80 tensor-core kernels for fp16/bf16,
// SIMT for fp32), decode, hopper. splits=N forces N key splits in the
// sm_80 and decode forwards; mask_skip=0 turns off the mask's tile
// classification (every block takes the per-element path). Read on every
// call (getenv), so a test can change it between calls. A value it cannot
// parse, or a forced family outside its scope for the call, is an error of
// the call (FSDPA_ERROR_INVALID_ARGUMENT / FSDPA_ERROR_UNSUPPORTED).
struct Override {
  Family family = Family::sm80;
  bool family_set = false;  // FAMILY given and not "auto"
  int splits = 0;         // > 0: forced
  bool mask_skip = true;
  const char* error = nullptr;  // the value does not parse
  char text[64] = {};     // the value, for explain
};
Override read_override();

// What make_plan needs of the device (device_info caches it per device).
struct DeviceInfo {
  int sms = 108;
  bool hopper = false;  // 9.x GPU and sm_90a code in this build
};
DeviceInfo device_info(int dev);

// A byte range of the workspace (offsets 256-byte aligned).
struct Slice {
  size_t off = 0, bytes = 0;
};

struct Plan {
  bool backward = false;
  Family family = Family::sm80;
  int head_bucket = 0;      // sm80/simt: max(D, Dv) rounded up to tc_buckets.h; else D
  int splits = 1;           // forward: key splits (1 = none)
  int hopper_warpgroups = 0;   // hopper forward: consumer warpgroups
  bool hopper_dynamic = false; // hopper forward: tiles from an atomic counter
  bool mask_tiles = false;  // the mask is classified per 32x32 tile (block skipping)
  bool dq_accumulate = false;  // backward: dQ added into the fp32 workspace
  int dq_cols = 0;          // its floats per (token, head) row
  int head_splits = 1;      // hopper backward: CTAs per (key block, kv head)
  // Workspace, one stream-ordered allocation carved into these slices.
  Slice dsum, flags, dq, dq_turns, dkv, opart, lsepart, counter;
  Slice sparse;             // the block lists' state table (block_sparse.cu)
  size_t workspace_bytes = 0;
  // Why: one line per decision ("family hopper: ...", "splits 1: ..."),
  // written only when make_plan is asked for reasons (explain), so that a
  // call does not format text it never shows.
  bool with_reasons = false;
  char why[1024] = {};
  // Set when the override forces something the call cannot run (the call
  // fails with this message and status).
  const char* error = nullptr;
  int error_status = 0;
};

// The plan for p (forward or backward) on a device with dev, under ov;
// with_reasons fills Plan::why. Pure: reads nothing but its arguments.
Plan make_plan(const AttnParams& p, bool backward, const DeviceInfo& dev, const Override& ov,
               bool with_reasons = false);

// Writes the plan as text (NUL-terminated, truncated to size).
void format_plan(const Plan& plan, const Override& ov, char* buf, size_t size);

}  // namespace cuda
}  // namespace fsdpa
