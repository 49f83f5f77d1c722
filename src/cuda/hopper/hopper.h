// Host API of the Hopper (sm_90a) forward: wgmma + TMA, warp-specialised.
// plan.cu decides with hopper_fwd_scope() / hopper_bwd_scope() and
// hopper_fwd_available(); cuda_backend.cu then calls hopper_fwd() /
// hopper_bwd(), which never decline a call in scope. Everything else keeps
// the sm_80 tensor-core path (tc.cuh).
#pragma once

#include <cuda_runtime.h>

#include "core/attn_params.h"
#include "cuda/launch.h"

namespace fsdpa {
namespace cuda {

// The kernel instantiation that serves head dim d (= Dv): 64, 128, 256, and
// for the multiples of 8 in between the next larger one (80, 96, 112:
// BERT-large, Phi, some ViTs, on the D 128 kernels; 160, 192, 224 on the
// D 256 ones). They run on zero columns: the tensor maps have d columns, so
// the TMA loads fill columns d.. with zeros (exact: they add 0 to every
// product) and the stores skip them; the wgmma work is D/d of a dedicated
// kernel's, still well ahead of the sm_80 kernels (an H100 ran D 96 at
// 0.33-0.48x cuDNN on those, 0.84-1.08x on the D 128 kernels).
// 0: no Hopper kernel.
constexpr int hopper_kernel_dim(int64_t d) {
  if (d == 64 || d == 128 || d == 256) return static_cast<int>(d);
  if (d % 8 != 0 || d < 64 || d > 256) return 0;
  return d < 128 ? 128 : 256;
}

// The kernel instantiation of a call: the larger of its two head dims'
// (Dv != D, e.g. DeepSeek's 192/128, pads both to 256; the tensor maps of
// q, k have D columns, those of v, dO Dv, and the stores of dK / O, dV stop
// at D / Dv). 0: no Hopper kernel.
inline int hopper_kernel_dim(const AttnParams& p) {
  const int d = hopper_kernel_dim(p.head_dim), dv = hopper_kernel_dim(p.head_dim_v);
  return d == 0 || dv == 0 ? 0 : (d > dv ? d : dv);
}

// The call is in the kernel's scope: fp16/bf16 (out in the same dtype),
// hopper_kernel_dim(p) != 0 (D and Dv multiples of 8 in [64, 256]), no ALiBi / softcap / dropout, scale > 0,
// stride_d == 1 and 16-byte aligned rows of q, k, v, out (TMA and 4-byte
// stores). Causal / windows (both alignments), GQA/MQA and varlen are in;
// so are bool and additive masks with key stride 1 (not with varlen), at
// D 64 / 128 only (D = 256: unmasked).
// nullptr when p is in scope, else why not.
const char* hopper_fwd_scope(const AttnParams& p);
// Consumer warpgroups of the forward for p (2, or 3 at D = 64 for long
// unmasked key ranges).
int hopper_fwd_warpgroups(const AttnParams& p);
// The build holds sm_90a code for the kernel and device `dev` is a 9.x GPU
// (checked once per device).
bool hopper_fwd_available(int dev);
// Runs the forward of a call in scope (an error is a failure, not a
// decline: the scope covers what the tensor maps and the grid need).
// mt: the mask's 32x32 tile flags (cuda/launch.h; flags == nullptr when there
// is no mask or no classification: then every key block is mixed), used to
// skip fully masked key blocks and to take the unmasked path where the mask
// changes nothing.
// tile_counter: a zeroed int in device memory when hopper_fwd_dynamic(p)
// (causal and windowed calls hand out their tiles longest first from it),
// else nullptr.
bool hopper_fwd_dynamic(const AttnParams& p);
cudaError_t hopper_fwd(const AttnParams& p, const MaskTiles& mt, int* tile_counter,
                       cudaStream_t s);

// The backward's scope: hopper_fwd_scope() for q, k, v (its mask rule
// aside), plus dout, dk, dv with the same dtype and alignment rules; bool
// and additive masks are in (ALiBi, softcap and dropout are not);
// deterministic = 1 is in: the dQ adds then take turns in a fixed order
// (bwd_dq.cuh). Also kernel dim 256 (hopper_kernel_dim(p)) without a mask
// (bwd256_kernel.cuh), the other
// rules as at D = 128. hopper_fwd_available() covers the device.
// nullptr when p is in scope, else why not.
const char* hopper_bwd_scope(const AttnParams& p);
// Bytes of the zeroed workspace that hopper_bwd takes: the fp32 dQ, and
// with deterministic = 1 the turn counters after it.
size_t hopper_bwd_workspace_bytes(const AttnParams& p);
// CTAs per (key block, kv head) of the backward: 1, or for GQA/MQA with
// too few key blocks for the device's sms, a divisor of the group; each
// takes a part of the group's query heads and adds its dK, dV into a
// zeroed fp32 workspace of hopper_bwd_dkv_bytes() (an H100 ran MQA at
// 0.47-0.74x cuDNN with a single CTA per kv head: the causal first key
// blocks, which see the most query blocks, ran alone at the end).
int hopper_bwd_head_splits(const AttnParams& p, int sms);
size_t hopper_bwd_dkv_bytes(const AttnParams& p, int head_splits);
// dK, dV and dQ (through dqacc: the zeroed workspace, dQ as fp32
// [(token * Hq + h) * D + d], then converted into dq). dsum: Delta =
// rowsum(dO * O) from bwd_preprocess. dQ goes to the workspace by TMA
// reduces (bwd_dq.cuh). head_splits > 1: dkvacc is the zeroed workspace of
// hopper_bwd_dkv_bytes(p, head_splits).
cudaError_t hopper_bwd(const AttnParams& p, const MaskTiles& mt, const float* dsum, float* dqacc,
                       float* dkvacc, int head_splits, cudaStream_t s);

}  // namespace cuda
}  // namespace fsdpa
