// The Hopper forward kernel (sm_90a): warp-specialised, wgmma for both
// products, TMA loads into 128-byte-swizzled shared memory.
//
// CTA = warpgroup 0 (producer: one thread issues every TMA load; its
// registers are given to the others with setmaxnreg) + kConsumers
// warpgroups, each owning 64 query rows of the CTA's block of kBM rows.
//
//   smem: Q [D/64 column blocks][kBM rows][64]  (loaded once)
//         K, V rings: [kStages][D/64][kBN keys][64]
//   Every tile row is 128 bytes (64 elements); 16-byte chunk c of row r
//   sits at chunk c ^ (r % 8) (TMA's and wgmma's 128B swizzle).
//   mbarriers: Q full; K/V full (TMA transaction bytes) and empty (one
//   arrive per consumer warp once its wgmma reading the stage is done).
//
// Consumer loop over the key blocks the CTA's band reaches:
//   S = Q K^T   wgmma m64n{kBN}k16, A = Q and B = K from smem (K-major)
//   online softmax on the fp32 accumulators (band test only on blocks
//   that are not inside every row's band)
//   O += P V    wgmma m64n{D}k16, A = P from registers (bf16/fp16), B = V
//               from smem, MN-major (transpose bit)
// PIPE: the S product of block j+1 is issued before P_j V_j and the
// softmax of block j+1 runs while P_j V_j is in flight (FlashAttention-3's
// intra-warpgroup overlap); without it each product is waited for at once.
#pragma once

#include "cuda/common.cuh"
#include "cuda/hopper/config.h"
#include "cuda/hopper/epilogue.cuh"
#include "cuda/hopper/ptx.cuh"
#include "cuda/hopper/softmax.cuh"
#include "cuda/hopper/wgmma.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {

template <typename T, int D, bool PIPE>
__global__ void __launch_bounds__(FwdCfg<D>::kThreads, 1)
fwd_kernel(const __grid_constant__ FwdArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = FwdCfg<D>;
  constexpr int BM = C::kBM, BN = C::kBN, ST = C::kStages, NCW = C::kConsumers;
  constexpr uint32_t kQBytes = BM * D * 2, kKVBytes = BN * D * 2;
  const AttnParams& p = a.p;

  extern __shared__ __align__(1024) uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t bars[1 + 4 * ST];
  const uint32_t sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sK = sQ + kQBytes, sV = sK + ST * kKVBytes;
  const uint32_t bQ = smem_u32(&bars[0]);
  auto bKf = [&](int s) { return bQ + 8u * (1 + s); };
  auto bKe = [&](int s) { return bQ + 8u * (1 + ST + s); };
  auto bVf = [&](int s) { return bQ + 8u * (1 + 2 * ST + s); };
  auto bVe = [&](int s) { return bQ + 8u * (1 + 3 * ST + s); };

  // Heaviest query blocks (causal: the last ones) first.
  const int mb = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const Seq e = get_seq(p, b);
  const int m0 = mb * BM;
  if (m0 >= e.sq) return;
  const int hk = static_cast<int>(h / (p.heads_q / p.heads_k));

  // Key blocks [kb0, kb0 + nblk) reached by the band of rows [m0, m0 + mrows).
  const int mrows = min(BM, e.sq - m0);
  const KeyRange rf = visible_keys(m0, e.sq, e.sk, p.window_left, p.window_right, p.bottom_right);
  const KeyRange rl =
      visible_keys(m0 + mrows - 1, e.sq, e.sk, p.window_left, p.window_right, p.bottom_right);
  int kb0 = 0, nblk = 0;
  if (rl.hi >= rf.lo && e.sk > 0) {
    kb0 = static_cast<int>(rf.lo / BN);
    nblk = static_cast<int>(rl.hi / BN) - kb0 + 1;
  }

  if (threadIdx.x == 0) {
    mbar_init(bQ, 1);
    for (int s = 0; s < ST; ++s) {
      mbar_init(bKf(s), 1);
      mbar_init(bVf(s), 1);
      mbar_init(bKe(s), 4 * NCW);
      mbar_init(bVe(s), 4 * NCW);
    }
    mbar_init_fence();
  }
  __syncthreads();

  const int wg = threadIdx.x / 128;
  const int lane = threadIdx.x % 32;
  if (wg == 0) {
    // ---------------- producer ----------------
    regs_dealloc<C::kProducerRegs>();
    if (threadIdx.x == 0 && nblk > 0) {
      const int bc = p.cu_seqlens_q != nullptr ? 0 : static_cast<int>(b);
      tma_prefetch_desc(&a.tk);
      tma_prefetch_desc(&a.tv);
      mbar_arrive_expect_tx(bQ, kQBytes);
#pragma unroll
      for (int cb = 0; cb < D / 64; ++cb)
        tma_load_4d(sQ + cb * BM * 128, &a.tq, bQ, cb * 64, static_cast<int>(e.q_begin) + m0, h,
                    bc);
      for (int it = 0; it < nblk; ++it) {
        const int s = it % ST;
        const uint32_t ph = (it / ST) & 1;
        const int krow = static_cast<int>(e.k_begin) + (kb0 + it) * BN;
        mbar_wait(bKe(s), ph ^ 1);
        mbar_arrive_expect_tx(bKf(s), kKVBytes);
#pragma unroll
        for (int cb = 0; cb < D / 64; ++cb)
          tma_load_4d(sK + s * kKVBytes + cb * BN * 128, &a.tk, bKf(s), cb * 64, krow, hk, bc);
        mbar_wait(bVe(s), ph ^ 1);
        mbar_arrive_expect_tx(bVf(s), kKVBytes);
#pragma unroll
        for (int cb = 0; cb < D / 64; ++cb)
          tma_load_4d(sV + s * kKVBytes + cb * BN * 128, &a.tv, bVf(s), cb * 64, krow, hk, bc);
      }
    }
  } else {
    // ---------------- consumers ----------------
    regs_alloc<C::kConsumerRegs>();
    const int cw = wg - 1;
    const int wq = (threadIdx.x / 32) % 4;
    const int row0 = m0 + cw * 64 + wq * 16 + lane / 4;
    RowState st;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = row0 + 8 * r;
      KeyRange kr = visible_keys(i, e.sq, e.sk, p.window_left, p.window_right, p.bottom_right);
      if (i >= e.sq) kr = KeyRange{1, 0};
      st.lo[r] = static_cast<int>(kr.lo);
      st.hi[r] = static_cast<int>(kr.hi);
      st.m[r] = neg_inf();
      st.l[r] = 0.0f;
    }
    // Keys [band_lo, band_hi] are visible from every row of this warpgroup:
    // blocks inside need no per-element test.
    const int wrow0 = m0 + cw * 64, wrow1 = min(m0 + cw * 64 + 63, e.sq - 1);
    int band_lo = 0, band_hi = -1;
    if (wrow0 <= wrow1) {
      band_lo = static_cast<int>(
          visible_keys(wrow1, e.sq, e.sk, p.window_left, p.window_right, p.bottom_right).lo);
      band_hi = static_cast<int>(
          visible_keys(wrow0, e.sq, e.sk, p.window_left, p.window_right, p.bottom_right).hi);
    }
    const float sl2 = p.scale * kLog2e;

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
    float s[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) s[i] = 0.0f;
    uint32_t pa[BN / 4];

    // Descriptors: Q rows of this warpgroup; K (K-major) and V (MN-major).
    const uint64_t dq = make_desc(sQ + cw * 64 * 128, 16, 1024);
    auto q_desc = [&](int kk) -> uint64_t {
      return dq + static_cast<uint64_t>(((kk / 4) * BM * 128 + (kk % 4) * 32) >> 4);
    };
    auto k_desc = [&](uint64_t base, int kk) -> uint64_t {
      return base + static_cast<uint64_t>(((kk / 4) * BN * 128 + (kk % 4) * 32) >> 4);
    };
    auto v_desc = [&](uint64_t base, int kk) -> uint64_t {
      return base + static_cast<uint64_t>((kk * 16 * 128) >> 4);
    };
    auto issue_s = [&](int stage) {
      const uint64_t kd = make_desc(sK + stage * kKVBytes, 16, 1024);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) Wgmma<T, BN>::ss(s, q_desc(kk), k_desc(kd, kk), kk > 0);
      wgmma_commit();
    };
    auto issue_pv = [&](int stage) {
      const uint64_t vd = make_desc(sV + stage * kKVBytes, BN * 128, 1024);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) Wgmma<T, D>::rs(o, pa + 4 * kk, v_desc(vd, kk), 1);
      wgmma_commit();
    };
    auto is_full = [&](int it) {
      const int n0 = (kb0 + it) * BN;
      return n0 >= band_lo && n0 + BN - 1 <= band_hi;
    };

    if (nblk > 0) {
      mbar_wait(bQ, 0);
      if constexpr (!PIPE) {
        for (int it = 0; it < nblk; ++it) {
          const int stg = it % ST;
          const uint32_t ph = (it / ST) & 1;
          mbar_wait(bKf(stg), ph);
          issue_s(stg);
          wgmma_wait<0>();
          fence_regs<BN / 2>(s);
          if (lane == 0) mbar_arrive(bKe(stg));
          float alpha[2];
          softmax_block<BN>(s, st, alpha, sl2, !is_full(it), (kb0 + it) * BN, lane);
          rescale_o<D>(o, alpha);
          p_to_a<T, BN>(s, pa);
          mbar_wait(bVf(stg), ph);
          issue_pv(stg);
          wgmma_wait<0>();
          fence_regs<D / 2>(o);
          if (lane == 0) mbar_arrive(bVe(stg));
        }
      } else {
        // Block 0: S, softmax, P.
        {
          mbar_wait(bKf(0), 0);
          issue_s(0);
          wgmma_wait<0>();
          fence_regs<BN / 2>(s);
          if (lane == 0) mbar_arrive(bKe(0));
          float alpha[2];
          softmax_block<BN>(s, st, alpha, sl2, !is_full(0), kb0 * BN, lane);
          p_to_a<T, BN>(s, pa);
        }
        float alpha[2] = {1.0f, 1.0f};
        for (int it = 1; it < nblk; ++it) {
          const int stg = it % ST, prev = (it - 1) % ST;
          const uint32_t ph = (it / ST) & 1, pph = ((it - 1) / ST) & 1;
          mbar_wait(bKf(stg), ph);
          issue_s(stg);
          rescale_o<D>(o, alpha);  // by the max of block it - 1
          mbar_wait(bVf(prev), pph);
          issue_pv(prev);
          wgmma_wait<1>();  // S of block it done; P_{it-1} V_{it-1} in flight
          fence_regs<BN / 2>(s);
          if (lane == 0) mbar_arrive(bKe(stg));
          // The softmax must run before the wait, not after it: ptxas
          // hoists the wait to the top of the softmax's basic block, so the
          // softmax gets its own block (sl2 > 0 always holds here, but
          // ptxas cannot fold it).
          if (sl2 > 0.0f) {
            softmax_block<BN>(s, st, alpha, sl2, !is_full(it), (kb0 + it) * BN, lane);
            fence_regs<BN / 2>(s);
          }
          wgmma_wait<0>();
          fence_regs<D / 2>(o);
          fence_regs<BN / 4>(pa);
          if (lane == 0) mbar_arrive(bVe(prev));
          p_to_a<T, BN>(s, pa);
        }
        rescale_o<D>(o, alpha);
        const int last = (nblk - 1) % ST;
        mbar_wait(bVf(last), ((nblk - 1) / ST) & 1);
        issue_pv(last);
        wgmma_wait<0>();
        fence_regs<D / 2>(o);
        if (lane == 0) mbar_arrive(bVe(last));
      }
    }
    store_out<T, D>(p, e, b, h, row0, o, st, sl2, lane);
  }
#endif
}

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
