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
    // l == 0: nothing attended (out 0, never the 0 * NaN of a masked V); a
    // NaN or +inf score made l NaN (ex2 keeps NaN, fmaxf skipped it in the
    // max): out and lse NaN, as in PyTorch.
    const bool empty = l == 0.0f;
    const float inv = empty ? 0.0f : 1.0f / l;
    auto scaled = [empty, inv](float x) { return empty ? 0.0f : x * inv; };
    const int i = row0 + 8 * r;
    if (i >= e.sq) continue;
    T* dst = og + off4(p.out_stride, b, h, e.q_begin + i, 0) + 2 * (lane % 4);
    const int dv = static_cast<int>(p.head_dim_v);  // < D: zero columns (hopper_kernel_dim)
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      if (8 * n < dv)
        *reinterpret_cast<uint32_t*>(dst + 8 * n) =
            pack_pair<T>(scaled(o[4 * n + 2 * r]), scaled(o[4 * n + 2 * r + 1]));
    if (p.lse != nullptr && lane % 4 == 0)
      p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + (e.q_begin + i) * p.lse_stride[2]] =
          empty ? neg_inf() : (st.m[r] * sl2 + log2f(l)) * kLn2;
  }
}

// The same through shared memory: the warpgroup's 64 rows of O / l go to
// its rows of the tile's Q slot (free once its S products are done; layout
// of Q: [D/64][BM rows][64], 128B-swizzled, so the pair stores of the
// accumulator layout are conflict-free), then out to global memory in
// coalesced 16-byte stores. lse as in store_out. sq_base: smem address of
// the warpgroup's first row in column block 0; bar: named barrier id of
// the warpgroup. Ends with fence.proxy.async so the producer may TMA into
// the slot once the warps arrive on its empty barrier.
template <typename T, int D, int BM>
__device__ __forceinline__ void store_out_staged(const AttnParams& p, const Seq& e, int64_t b,
                                                 int h, int wrow0, const float* o, RowState& st,
                                                 float sl2, uint32_t sq_base, int bar) {
  const int tid = threadIdx.x % 128, lane = tid % 32, r0 = (tid / 32) * 16 + lane / 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = st.l[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    // l == 0: nothing attended (out 0, never the 0 * NaN of a masked V); a
    // NaN or +inf score made l NaN (ex2 keeps NaN, fmaxf skipped it in the
    // max): out and lse NaN, as in PyTorch.
    const bool empty = l == 0.0f;
    const float inv = empty ? 0.0f : 1.0f / l;
    auto scaled = [empty, inv](float x) { return empty ? 0.0f : x * inv; };
    const int rr = r0 + 8 * r;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const uint32_t addr = sq_base + (n / 8) * BM * 128 + rr * 128 +
                            (((n % 8) ^ (rr % 8)) << 4) + 4 * (lane % 4);
      const uint32_t v = pack_pair<T>(scaled(o[4 * n + 2 * r]), scaled(o[4 * n + 2 * r + 1]));
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
    }
    const int i = wrow0 + rr;
    if (p.lse != nullptr && lane % 4 == 0 && i < e.sq)
      p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + (e.q_begin + i) * p.lse_stride[2]] =
          empty ? neg_inf() : (st.m[r] * sl2 + log2f(l)) * kLn2;
  }
  named_bar_sync(bar, 128);
  T* og = static_cast<T*>(p.out);
  constexpr int CH = D / 8;  // 16-byte chunks per row
#pragma unroll
  for (int k = 0; k < 64 * CH / 128; ++k) {
    const int q = tid + 128 * k, rr = q / CH, cc = q % CH;
    const uint32_t addr =
        sq_base + (cc / 8) * BM * 128 + rr * 128 + (((cc % 8) ^ (rr % 8)) << 4);
    uint32_t v0, v1, v2, v3;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v0), "=r"(v1), "=r"(v2), "=r"(v3)
                 : "r"(addr)
                 : "memory");
    const int i = wrow0 + rr;
    if (i < e.sq && cc * 8 < p.head_dim_v)  // columns past Dv: hopper_kernel_dim
      *reinterpret_cast<uint4*>(og + off4(p.out_stride, b, h, e.q_begin + i, 0) + cc * 8) =
          make_uint4(v0, v1, v2, v3);
  }
  fence_proxy_async();
}

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
