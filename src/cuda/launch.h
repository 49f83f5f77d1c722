// Host-side launchers of the CUDA kernels (defined in the .cu files of this
// folder), called by cuda_backend.cu after it has chosen a path.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "core/attn_params.h"

namespace fsdpa {
namespace cuda {

// ---- SIMT path (fp32 inputs; any dtype when FLASHSDPA_CUDA_FORCE=simt) --------
// T is float, __half or __nv_bfloat16 (tag types, instantiated in simt.cu).
void simt_forward(const AttnParams& p, cudaStream_t s);
// dsum: fp32 [total_q * Hq] (row token * Hq + h) from bwd_preprocess.
void simt_backward(const AttnParams& p, const float* dsum, cudaStream_t s);

// ---- shared pieces -----------------------------------------------------------
// dsum[t * Hq + h] = sum_d dO * O over the rows of every sequence; dqacc
// != nullptr: also zeroes row t * Hq + h of the fp32 dQ workspace (dp
// floats per row) for each of those rows, in the same pass (the rows of
// tokens no sequence covers are left as they are: nothing reads them).
void bwd_preprocess(const AttnParams& p, float* dsum, float* dqacc, int dp, cudaStream_t s);
// Varlen: out = 0 and lse = -inf for query tokens after the last sequence.
void varlen_uncovered(const AttnParams& p, cudaStream_t s);
// Varlen: zero dq, dk, dv everywhere (tokens no sequence covers stay 0).
void zero_grads(const AttnParams& p, cudaStream_t s);
// Sets *flag (device int, pre-zeroed) to 1 + the first linear index of a
// non-finite element of a strided 4-d tensor of dtype t.
void check_finite(const void* data, DType t, const int64_t shape[4], const int64_t stride[4],
                  unsigned long long* flag, cudaStream_t s);

// The same for the K (values = false) or V rows a KV-cache call reads; the
// flag's index is of the logical shape [B, Hk, seqlen_k, dim] (sequence,
// kv head, key, column). The page indices must have been validated.
void check_finite_kv(const AttnParams& p, bool values, unsigned long long* flag, cudaStream_t s);

// Block skipping for masks: the mask classified per 32x32 tile of
// (query, key) into 0 = all masked, 1 = no effect (bool true / additive 0),
// 2 = mixed. flags: [MB, MH, nti, ntj] with MB/MH 1 where the mask
// broadcasts over batch/heads. flags == nullptr: no classification.
constexpr int kMaskTile = 32;
struct MaskTiles {
  const uint8_t* flags;
  int nti, ntj;
  int64_t stride_b, stride_h;  // in flags, 0 on broadcast dims
};
// Sizes the flags array for p's mask (0 when there is no mask).
int64_t mask_tiles_bytes(const AttnParams& p);
// Fills flags (mask_tiles_bytes(p) bytes) and returns the descriptor.
MaskTiles mask_tiles(const AttnParams& p, uint8_t* flags, cudaStream_t s);

// Block-sparse mask: bytes of the expanded state table of p's block lists
// (0 without them), and the expansion (block_sparse.cu), which also points
// p->sparse_state at the table.
int64_t sparse_state_bytes(const AttnParams& p);
void sparse_state(AttnParams* p, int32_t* table, cudaStream_t s);
// Block lists the band-only tensor-core variant can take: no element masks
// (every listed block attended entirely) and blocks that are multiples of
// 128, so each of its tiles (powers of two <= 128, at multiples of their
// size) lies in one block: listed (band only) or not (skipped), never mixed.
inline bool sparse_band_only(const AttnParams& p) {
  return p.sparse && p.sparse_mask == nullptr && p.sparse_block_q % 128 == 0 &&
         p.sparse_block_k % 128 == 0;
}

// Bits of the tensor-core kernels' `vec` argument: the tensor can be read
// (written) with 16-byte accesses (stride_d == 1, dim % 8 == 0, 16-byte
// aligned rows).
enum VecBits { kVecQ = 1, kVecK = 2, kVecV = 4, kVecO = 8, kVecDO = 16 };

// ---- tensor-core path (fp16 / bf16, sm_80+; tc_*.cu) -------------------------
// dp: head-dim bucket from tc_buckets.h. vec: VecBits (tc.cuh).
// nsplit > 1: split-KV; opart/lsepart are fp32 workspaces of
// nsplit * total_q * Hq * dp and nsplit * total_q * Hq floats.
cudaError_t tc_fwd_f16(const AttnParams& p, int dp, int vec, const MaskTiles& mt, int nsplit,
                       float* opart, float* lsepart, cudaStream_t s);
cudaError_t tc_fwd_bf16(const AttnParams& p, int dp, int vec, const MaskTiles& mt, int nsplit,
                        float* opart, float* lsepart, cudaStream_t s);
// dqacc: nullptr (deterministic: dQ kernel + dK/dV kernel) or a zeroed fp32
// workspace of total_q * Hq * dp floats (dQ by atomics in the dK/dV kernel).
cudaError_t tc_bwd_f16(const AttnParams& p, int dp, int vec, const MaskTiles& mt,
                       const float* dsum, float* dqacc, cudaStream_t s);
cudaError_t tc_bwd_bf16(const AttnParams& p, int dp, int vec, const MaskTiles& mt,
                        const float* dsum, float* dqacc, cudaStream_t s);
void splitkv_merge(const AttnParams& p, int nsplit, const float* opart, const float* lsepart,
                   int dv_stride, cudaStream_t s);

// ---- decode (flash-decoding; decode.cu) ------------------------------------------
// Small query ranges over long keys: one CTA per (16 packed rows of a GQA
// group, key split, kv head, batch), K/V streamed once per group.
// Scope: fp16/bf16, D == Dv in {64, 128}, 16-byte loadable q/k/v, band-only
// semantics (no mask/ALiBi/softcap/dropout), Sq <= 16, Sq * Hq/Hk <= 64;
// any KV-cache parameters (pages of any size read in place).
// nullptr when p is in scope, else why not.
const char* decode_scope(const AttnParams& p);
// Key splits for p on a GPU of `sms` multiprocessors (the wave model).
int decode_splits(const AttnParams& p, int sms);
// nsplit == 1: writes out and lse. nsplit > 1: opart/lsepart as for
// tc_fwd_* with dp = head_dim, to be combined by splitkv_merge.
cudaError_t decode_fwd(const AttnParams& p, int nsplit, float* opart, float* lsepart,
                       cudaStream_t s);

}  // namespace cuda
}  // namespace fsdpa
