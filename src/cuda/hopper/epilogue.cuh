// Epilogue of the Hopper forward: O / l and lse from the accumulator
// fragments to global memory (rows past the sequence are not written; rows
// that saw no key get out 0, lse -inf).
#pragma once

#include "cuda/common.cuh"
#include "cuda/hopper/softmax.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {

// row0: this thread's first row (the second is row0 + 8) within the sequence.
template <typename T, int D>
__device__ __forceinline__ void store_out(const AttnParams& p, const Seq& e, int64_t b, int h,
                                          int row0, const float* o, RowState& st, float sl2,
                                          int lane) {
  T* og = static_cast<T*>(p.out);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = st.l[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const int i = row0 + 8 * r;
    if (i >= e.sq) continue;
    T* dst = og + off4(p.out_stride, b, h, e.q_begin + i, 0) + 2 * (lane % 4);
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<uint32_t*>(dst + 8 * n) =
          pack_pair<T>(o[4 * n + 2 * r] * inv, o[4 * n + 2 * r + 1] * inv);
    if (p.lse != nullptr && lane % 4 == 0)
      p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + (e.q_begin + i) * p.lse_stride[2]] =
          l > 0.0f ? (st.m[r] * sl2 + log2f(l)) * kLn2 : neg_inf();
  }
}

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
