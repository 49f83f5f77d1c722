// Masks in the Hopper backward (bwd_kernel.cuh, MASK = true): the state of a
// (query block, key block) step from the 32x32 tile flags, and the
// per-element mask on the S^T fragment of a mixed step. Same semantics as
// score_of() in cuda/common.cuh: bool false -> -inf, additive: the value
// is added to the scaled score; mask strides may be 0 (broadcast).
#pragma once

#include "cuda/common.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {

// 0: every (query, key) of the step is masked (the step is skipped by the
// producer and the consumers alike), 1: the mask changes nothing there, 2:
// mixed (per-element mask). q0 < sq and n0 < sk.
// A warp's walk over the steps of a CTA (MASK): every lane calls next()
// with the same arguments. Lane l classifies step c0 + l of an aligned
// window of 32 steps and __ballot_sync gathers the window's live (state !=
// 0) and mixed (state 2) bits: one round of tile-flag loads per 32 steps,
// issued by all lanes at once. (A single thread walking step by step made
// 2-3 lookups per step, each a few dependent L2 loads, on a producer with
// 24 registers: with every step visible, the masked backward ran 1.19x the
// unmasked one's time on an H100.)
struct StepWalk {
  int c0 = -32;
  uint32_t live = 0, mixed = 0;
  // The first step >= itx that is not entirely masked (nit if none), and
  // in *st its state (1 or 2).
  template <typename F>
  __device__ __forceinline__ int next(int itx, int nit, const F& state_of, int lane, int* st) {
    while (itx < nit) {
      if (itx < c0 || itx >= c0 + 32) {
        c0 = itx & ~31;
        const int s = c0 + lane < nit ? state_of(c0 + lane) : 0;
        live = __ballot_sync(0xffffffffu, s != 0);
        mixed = __ballot_sync(0xffffffffu, s == 2);
      }
      const uint32_t bits = live >> (itx - c0);
      if (bits != 0) {
        itx += __ffs(bits) - 1;
        *st = (mixed >> (itx - c0)) & 1u ? 2 : 1;
        return itx;
      }
      itx = c0 + 32;
    }
    *st = 0;
    return nit;
  }
};

template <int BM, int BN>
__device__ __forceinline__ int bwd_step_state(const MaskTiles& mt, int64_t b, int h, int q0,
                                              int n0, const Seq& e) {
  return mask_state(mt, b, h, q0, min(BM, e.sq - q0), n0, min(BN, e.sk - n0));
}

// The S^T fragment of a consumer thread: element 4n + x is (query q0 + 8n
// + 2t + (x & 1), key keys[x >> 1]). Turns the raw dot products into the
// final scores times log2 e: sc = sc * sl2 + mask * log2 e (-inf where a
// bool mask is false). Elements past the sequence are left alone (the band
// test of the caller zeroes them).
template <int BM, typename M, bool BOOL>
__device__ __forceinline__ void mask_frag_t(float* sc, const AttnParams& p, int64_t b, int h,
                                            int q0, const int* keys, int t, const Seq& e,
                                            float sl2) {
  const M* m = static_cast<const M*>(p.mask) + b * p.mask_stride[0] + h * p.mask_stride[1];
  int64_t jo[2];
  bool jin[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    jin[r] = keys[r] < e.sk;
    jo[r] = int64_t(keys[r]) * p.mask_stride[3];
  }
#pragma unroll
  for (int n = 0; n < BM / 8; ++n)
#pragma unroll
    for (int y = 0; y < 2; ++y) {
      const int i = q0 + 8 * n + 2 * t + y;
      if (i >= e.sq) continue;
      const M* row = m + int64_t(i) * p.mask_stride[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (!jin[r]) continue;
        float& s = sc[4 * n + 2 * r + y];
        const M v = row[jo[r]];
        if constexpr (BOOL) {
          s = v != 0 ? s * sl2 : neg_inf();
        } else {
          // core/semantics.h add_mask_value: a masking value gives -inf, NaN s too.
          const float a = additive_mask_value(to_f(v));
          s = a == neg_inf() ? a : fmaf(s, sl2, a * kLog2e);
        }
      }
    }
}

template <int BM>
__device__ __forceinline__ void mask_frag(float* sc, const AttnParams& p, int64_t b, int h, int q0,
                                          const int* keys, int t, const Seq& e, float sl2) {
  if (p.mask_kind == MaskKind::boolean) {
    mask_frag_t<BM, uint8_t, true>(sc, p, b, h, q0, keys, t, e, sl2);
  } else {
    switch (p.mask_dtype) {
      case DType::f16: mask_frag_t<BM, __half, false>(sc, p, b, h, q0, keys, t, e, sl2); break;
      case DType::bf16:
        mask_frag_t<BM, __nv_bfloat16, false>(sc, p, b, h, q0, keys, t, e, sl2);
        break;
      default: mask_frag_t<BM, float, false>(sc, p, b, h, q0, keys, t, e, sl2); break;
    }
  }
}

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
