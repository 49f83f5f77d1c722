// Online softmax of the Hopper forward on wgmma accumulator fragments, and
// the conversion of P to the register A operand of the P V product.
//
// Fragment (m64nN, fp32, per thread): s[4n + x], n < N / 8: row g (x < 2)
// or g + 8 (x >= 2), column 8n + 2t + (x & 1), with g = lane / 4 (+ 16 per
// warp of the group) and t = lane % 4. The 4 threads t = 0..3 of a quad
// hold one row pair; row statistics are reduced over the quad.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/hopper/ptx.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {

template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack_pair<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack_pair<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// Per-thread state of its two rows: running max m (raw dot-product units),
// partial row sum l (of this thread's columns; reduced in the epilogue),
// and the visible key interval [lo, hi] of each row.
struct RowState {
  float m[2], l[2];
  int lo[2], hi[2];
};

// One key block of N scores: optional per-element work (mode 1: band
// mask, keys outside [lo, hi] -> -inf; mode 2: band mask, then
// elem(s, n, x) on the scores inside the band, e.g. a user mask, mask.cuh),
// new max, alpha = exp(m_old - m_new) for the O rescale, and
// s <- exp2(s * sl2 - m_new * sl2) in place (fp32), added to l.
// sl2 = scale * log2(e) > 0, so the max of raw scores is the max of scaled.
struct NoElem {
  __device__ __forceinline__ float operator()(float v, int, int) const { return v; }
};
template <int N, typename F = NoElem>
__device__ __forceinline__ void softmax_block(float* s, RowState& st, float* alpha, float sl2,
                                              int mode, int n0, int lane, F&& elem = F()) {
  if (mode != 0) {
    const int c0 = n0 + 2 * (lane % 4);
#pragma unroll
    for (int n = 0; n < N / 8; ++n) {
      // elem may load (a mask): the memory clobber every 4 column tiles
      // keeps the compiler from hoisting all N / 2 loads at once (N / 2
      // more live registers next to S, O and P: the consumers spilled).
      if constexpr (!std::is_same_v<std::decay_t<F>, NoElem>)
        if (n % 4 == 0) asm volatile("" ::: "memory");
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int j = c0 + 8 * n + (x & 1), r = x >> 1;
        if (j < st.lo[r] || j > st.hi[r]) s[4 * n + x] = neg_inf();
        else if (mode == 2) s[4 * n + x] = elem(s[4 * n + x], n, x);
      }
    }
  }
  float mx[2] = {st.m[0], st.m[1]};
#pragma unroll
  for (int n = 0; n < N / 8; ++n) {
    mx[0] = fmaxf(mx[0], fmaxf(s[4 * n], s[4 * n + 1]));
    mx[1] = fmaxf(mx[1], fmaxf(s[4 * n + 2], s[4 * n + 3]));
  }
  float muse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    muse[r] = mx[r] == neg_inf() ? 0.0f : mx[r] * sl2;
    alpha[r] = ex2(st.m[r] * sl2 - muse[r]);
    st.m[r] = mx[r];
    st.l[r] *= alpha[r];
  }
#pragma unroll
  for (int n = 0; n < N / 8; ++n)
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const float pr = ex2(fmaf(s[4 * n + x], sl2, -muse[x >> 1]));
      st.l[x >> 1] += pr;
      s[4 * n + x] = pr;
    }
}

// O (m64nD fragment) *= alpha per row.
template <int D>
__device__ __forceinline__ void rescale_o(float* o, const float* alpha) {
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    o[4 * n] *= alpha[0];
    o[4 * n + 1] *= alpha[0];
    o[4 * n + 2] *= alpha[1];
    o[4 * n + 3] *= alpha[1];
  }
}

// P (fp32 m64nN accumulator fragment) -> N / 16 register A fragments of
// m64k16 (4 x b32 each: rows g / g + 8, keys 2t.. and 2t + 8..): the
// accumulator of two adjacent 8-column tiles is exactly one A fragment.
template <typename T, int N>
__device__ __forceinline__ void p_to_a(const float* s, uint32_t* a) {
#pragma unroll
  for (int k = 0; k < N / 16; ++k) {
    a[4 * k + 0] = pack_pair<T>(s[8 * k + 0], s[8 * k + 1]);
    a[4 * k + 1] = pack_pair<T>(s[8 * k + 2], s[8 * k + 3]);
    a[4 * k + 2] = pack_pair<T>(s[8 * k + 4], s[8 * k + 5]);
    a[4 * k + 3] = pack_pair<T>(s[8 * k + 6], s[8 * k + 7]);
  }
}

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
