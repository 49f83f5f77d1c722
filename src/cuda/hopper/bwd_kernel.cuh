// The Hopper backward kernel (sm_90a), FlashAttention-3 style: one CTA per
// block of kBN = 128 keys of one (kv head, sequence); K and V stay in shared
// memory; the CTA loops over the query blocks (of every query head of the
// GQA group) whose band reaches its keys. dQ goes
// to the fp32 workspace by TMA reduces (then dq_convert_kernel). The
// 16-byte atomics that came first ran 5-13% slower (bench/RESULTS.md) and
// are gone.
//
// CTA = warpgroup 0 (producer) + 2 consumer warpgroups of 64 keys each.
//   producer warp 0 (one thread): TMA loads of K, V (once) and of Q, dO
//     into a 2-stage ring (one `full` mbarrier per stage, transaction bytes);
//   producer warp 1: lse (times log2 e; +inf for rows past the sequence or
//     with no visible key, so that P = 0 there) and Delta = rowsum(dO * O)
//     of the stage's rows into shared memory (`lse full` mbarrier, 32
//     arrivals); both wait on the stage's `empty` mbarrier (one arrive per
//     consumer thread: each orders its own reads of lse/Delta, which
//     compute-sanitizer's racecheck can follow).
//   consumers, per query block of kBM rows (kBM = 64 at D = 128, 128 at
//   D = 64):
//     S^T  = K Q^T     wgmma m64n{kBM}k16, A = K, B = Q (smem, K-major)
//     dP^T = V dO^T    same with V, dO
//     P^T  = exp2(S^T * scale * log2 e - lse * log2 e) (band mask on
//            blocks not inside every row's band); dS^T = P^T (dP^T - Delta)
//            * scale; both rounded to the input dtype
//     dV  += P^T dO    wgmma rs: A = P^T (registers), B = dO MN-major
//     dK  += dS^T Q    same with dS^T, Q
//     dS^T -> smem [kBM/64][kBN keys][64 queries] (128B swizzle), named
//            barrier of the two consumer warpgroups, then
//     dQ   = dS K      wgmma m64n64k16 with both operands MN-major from
//            smem (warpgroup w: query rows 64w.. at kBM = 128, d columns
//            64w.. at kBM = 64), added to the fp32 workspace through
//            shared memory and a TMA reduce issued by producer warp 2
//            (bwd_dq.cuh).
//   dS^T has two buffers: a warpgroup writes buffer x again only after
//   the next iteration's barrier, which the other passes only once its dQ
//   product of buffer x is done.
#pragma once

#include <cuda.h>

#include "cuda/common.cuh"
#include "cuda/hopper/bwd_dq.cuh"
#include "cuda/hopper/bwd_mask.cuh"
#include "cuda/hopper/ptx.cuh"
#include "cuda/hopper/softmax.cuh"
#include "cuda/hopper/wgmma.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {

template <int D>
struct BwdCfg {
  static constexpr int kBN = 128;                // keys per CTA
  static constexpr int kBM = D == 64 ? 128 : 64;  // query rows per step
  static constexpr int kStages = 2;
  static constexpr int kThreads = 384;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  // K, V, the Q and dO rings, two dS^T buffers, + 1 KB for the alignment
  // (161 KB at D = 64 and 128).
  static constexpr int kSmem =
      1024 + 2 * kBN * D * 2 + 2 * kStages * kBM * D * 2 + 2 * kBN * kBM * 2;
  // + the two warpgroups' 64 x 64 fp32 dQ tiles (193 KB).
  static constexpr int kDqBytes = 2 * 64 * 64 * 4;
  static constexpr int kSmemTotal = kSmem + kDqBytes;
};

struct BwdArgs {
  CUtensorMap tq, tk, tv, tdo;  // 4-d (d, token, head, batch), 128B swizzle
  CUtensorMap tdq;  // dqacc as fp32 (d, head, token), box 32 x 1 x 64, 128B swizzle
  AttnParams p;
  const float* dsum;  // Delta, [token * Hq + h]
  float* dqacc;       // fp32 dQ workspace, [(token * Hq + h) * D + d], zeroed
  MaskTiles mt;       // tile flags of the mask (flags == nullptr: every step mixed)
  // Deterministic dQ: one zeroed turn counter per (sequence,
  // query head, query block of kBM rows), [(b * Hq + h) * sem_nqb + qb];
  // nullptr: the adds in any order.
  int* dq_sem;
  int sem_nqb;
  // Query heads of a GQA group split over head_splits CTAs per key block
  // (grid.y = Hk * head_splits; hopper_bwd_head_splits): each adds its dK,
  // dV into the zeroed fp32 dkvacc ([(token * Hk + hk) * D + d], dK, then
  // dV total_k * Hk * D floats later), converted by dkv_convert_kernel.
  // head_splits = 1: dkvacc nullptr, dK and dV stored directly.
  int head_splits;
  float* dkvacc;
};

// Producer warp 1's part of a step: lse * log2 e (+inf for rows past the
// sequence or with no visible key, so that P = 0 there without a test) and
// Delta of the step's BM rows q0.. of head h into shared memory.
template <int BM>
__device__ __forceinline__ void lse_delta_rows(float* sl, float* sdl, const AttnParams& p,
                                               const float* dsum, int64_t b, int h, int q0,
                                               const Seq& e, int lane) {
  for (int r = lane; r < BM; r += 32) {
    const int i = q0 + r;
    float l2 = __int_as_float(0x7f800000), dl = 0.0f;
    if (i < e.sq) {
      const float l =
          p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + (e.q_begin + i) * p.lse_stride[2]];
      if (l != neg_inf()) l2 = l * kLog2e;
      dl = dsum[q_token(p, b, e, i) * p.heads_q + h];
    }
    sl[r] = l2;
    sdl[r] = dl;
  }
}

// Deterministic dQ: the first key block (of BN keys) whose band reaches
// the query rows q0.. (off: diag_offset). Key block nb reaches rows up to
// nb * BN + BN - 1 + wl - off (rows_for_keys), and every key block between
// that one and a later one that reaches the rows reaches them as well (both
// ends of the band grow with the keys), so a CTA's rank among the CTAs
// adding to the rows is its key block minus this one.
template <int BN>
__device__ __forceinline__ int first_key_block(const AttnParams& p, int q0, int64_t off) {
  if (p.window_left < 0) return 0;
  const int64_t x = q0 + off - p.window_left - (BN - 1);
  return x <= 0 ? 0 : static_cast<int>((x + BN - 1) / BN);
}

// DV_UNDER_DP: dV += P^T dO is issued as soon as P^T is known, so that it runs
// under dP^T and the dS arithmetic. DV_UNDER_DP = false: dV and dK are issued
// together after dS (the first version, kept at D = 64, where P's 32 registers held across the dS
// arithmetic make ptxas serialise every wgmma, info C7512).
//
// MASK: bool or additive mask (bwd_mask.cuh). Steps whose mask state is 0
// are skipped by every role (the producer warps walk the same sequence of
// steps with next_it(), so the ring's stages and phases stay in lockstep:
// they count the steps done, not the step indices; the consumers read each
// step and its state from sStep, written by producer warp 0, instead of
// walking the tile flags between steps: +12% fwd+bwd with the bench's
// block-sparse mask); state 1 runs the unmasked code; state 2 adds the
// per-element mask to S^T before the exponential.
//
// dQ goes through shared memory and a TMA reduce (bwd_dq.cuh): consumer warpgroup w writes its tile, fences it for
// the async proxy and arrives on `dq full` w; producer warp 2 (one thread)
// waits for both, issues the reduces and, once they have read the tiles,
// arrives on `dq empty`, which a warpgroup waits on before writing its
// tile again (one step later). Rows past the sequence add zeros (P = 0
// there) to the next sequence's rows or fall outside the map.
//
// Overlap across steps (what the A/B kept; no longer a flag). Step k leaves its dQ product in
// flight (dV and dK are waited for, so their register operands and the
// stage go back); step k + 1 issues S^T first, then waits for both, writes
// that dQ to its tile and issues dP^T. The tensor pipe goes from one
// step's dQ straight to the next step's S^T instead of waiting for the dQ
// write-out, the loop and the barriers in between (H100, bf16, fwd+bwd:
// +4-18% on the dense D 64/128 cases, neutral with the bench's block-sparse
// mask). Only dq[] (defined by wgmma alone) stays in flight across the
// loop's back edge; issuing dP^T before the write-out as well needs more
// registers than there are (C7512).
template <typename T, int D, bool DV_UNDER_DP, bool MASK>
__global__ void __launch_bounds__(BwdCfg<D>::kThreads, 1)
bwd_kernel(const __grid_constant__ BwdArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = BwdCfg<D>;
  constexpr int BM = C::kBM, BN = C::kBN, ST = C::kStages;
  constexpr uint32_t kQBytes = BM * D * 2, kKBytes = BN * D * 2, kSBytes = BN * BM * 2;
  const AttnParams& p = a.p;

  extern __shared__ __align__(1024) uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t bars[1 + 3 * ST + 4];
  __shared__ float sL[ST][BM], sDl[ST][BM];
  // MASK: the stage's step and (mask state | 4 if it is the CTA's last
  // step), from producer warp 0 with the stage's loads, so that the
  // consumers do not walk the tile flags between their steps.
  __shared__ int sStep[ST][2];
  const uint32_t sK = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sV = sK + kKBytes, sQ = sV + kKBytes, sdO = sQ + ST * kQBytes;
  const uint32_t sS = sdO + ST * kQBytes;  // 2 dS^T buffers
  const uint32_t sDQ = sS + 2 * kSBytes;   // 2 fp32 dQ tiles of 16 KB
  const uint32_t b0 = smem_u32(&bars[0]);
  const uint32_t bKV = b0;
  auto bQf = [&](int s) { return b0 + 8u * (1 + s); };
  auto bLf = [&](int s) { return b0 + 8u * (1 + ST + s); };
  auto bE = [&](int s) { return b0 + 8u * (1 + 2 * ST + s); };
  auto bDqF = [&](int w) { return b0 + 8u * (1 + 3 * ST + w); };
  auto bDqE = [&](int w) { return b0 + 8u * (1 + 3 * ST + 2 + w); };

  const int64_t b = blockIdx.z;
  const int hk = blockIdx.y / a.head_splits;
  const int n0 = blockIdx.x * BN;
  const Seq e = get_seq(p, b);
  if (n0 >= e.sk) return;  // varlen: a shorter sequence (grads zeroed by the caller)
  // This CTA's query heads: h_first .. h_first + group - 1 (a part of the
  // GQA group when head_splits > 1).
  const int group = static_cast<int>(p.heads_q / p.heads_k) / a.head_splits;
  const int h_first = static_cast<int>(p.heads_q / p.heads_k) * hk + group * (blockIdx.y % a.head_splits);
  int ilo, ihi;
  rows_for_keys(p, e, n0, min(n0 + BN, e.sk) - 1, &ilo, &ihi);
  int qb0 = 0, nqb = 0;
  if (ihi >= ilo) {
    qb0 = ilo / BM;
    nqb = ihi / BM - qb0 + 1;
  }
  const int nit = nqb * group;
  const int bc = p.cu_seqlens_q != nullptr ? 0 : static_cast<int>(b);
  // Step it: query head h_first + it / nqb, query block qb0 + it % nqb.
  auto state_of = [&](int itx) -> int {
    if constexpr (!MASK) return 1;
    else
      return bwd_step_state<BM, BN>(a.mt, b, h_first + itx / nqb, (qb0 + itx % nqb) * BM, n0, e);
  };
  // The first step at or after itx that is not entirely masked (a serial
  // walk: for the first step; the producer warps walk with StepWalk).
  auto next_it = [&](int itx) -> int {
    if constexpr (MASK)
      while (itx < nit && state_of(itx) == 0) ++itx;
    return itx;
  };
  const int it0 = next_it(0);
  // The step after itx for a producer warp (every lane calls it), and in
  // *st its mask state.
  auto advance = [&](StepWalk& wk, int itx, int* st) -> int {
    if constexpr (MASK) return wk.next(itx + 1, nit, state_of, threadIdx.x % 32, st);
    *st = 1;
    return itx + 1;
  };

  if (threadIdx.x == 0) {
    mbar_init(bKV, 1);
    for (int s = 0; s < ST; ++s) {
      mbar_init(bQf(s), 1);
      mbar_init(bLf(s), 32);
      mbar_init(bE(s), 256);
    }
    for (int w = 0; w < 2; ++w) {
      mbar_init(bDqF(w), 128);
      mbar_init(bDqE(w), 1);
    }
    mbar_init_fence();
  }
  __syncthreads();

  const int wg = threadIdx.x / 128;
  const int lane = threadIdx.x % 32;
  // Producer warp 2: waits for the two warpgroups' dQ tiles of the
  // k-th step done (query head h, rows q0..) and issues their reduces.
  auto reduce_step = [&](int h, int q0, int k) {
    const int tok = static_cast<int>(q_token(p, b, e, q0));
#pragma unroll
    for (int w = 0; w < 2; ++w) {
      mbar_wait(bDqF(w), k & 1);
      // D = 128: warpgroup w holds d columns 64w.. of the kBM = 64 rows;
      // D = 64: rows 64w.. of the kBM = 128, all 64 columns.
      const int c0 = BM == 64 ? 64 * w : 0, r0 = BM == 64 ? 0 : 64 * w;
      tma_reduce_add_3d(&a.tdq, sDQ + w * 16384, c0, h, tok + r0);
      tma_reduce_add_3d(&a.tdq, sDQ + w * 16384 + 8192, c0 + 32, h, tok + r0);
      bulk_commit();
    }
  };
  if (wg == 0) {
    // ---------------- producer ----------------
    regs_dealloc<C::kProducerRegs>();
    const int warp = threadIdx.x / 32;
    // Warps 0, 1 and 2 walk the same steps, each with its whole
    // warp (StepWalk); one lane issues the TMA and barrier operations.
    if (warp == 0 && it0 < nit) {
      if (lane == 0) {
        tma_prefetch_desc(&a.tq);
        tma_prefetch_desc(&a.tdo);
        const int krow = static_cast<int>(e.k_begin) + n0;
        mbar_arrive_expect_tx(bKV, 2 * kKBytes);
#pragma unroll
        for (int cb = 0; cb < D / 64; ++cb) {
          tma_load_4d(sK + cb * BN * 128, &a.tk, bKV, cb * 64, krow, hk, bc);
          tma_load_4d(sV + cb * BN * 128, &a.tv, bKV, cb * 64, krow, hk, bc);
        }
      }
      StepWalk wk;
      int st = 1;
      if constexpr (MASK) wk.next(it0, nit, state_of, lane, &st);
      for (int it = it0, k = 0; it < nit; ++k) {
        const int s = k % ST;
        const uint32_t ph = (k / ST) & 1;
        const int h = h_first + it / nqb;
        const int qrow = static_cast<int>(e.q_begin) + (qb0 + it % nqb) * BM;
        int st_next;
        const int nxt = advance(wk, it, &st_next);
        mbar_wait(bE(s), ph ^ 1);
        if (lane == 0) {
          if constexpr (MASK) {  // read by the consumers after the stage's full barrier
            sStep[s][0] = it;
            sStep[s][1] = st | (nxt >= nit ? 4 : 0);
          }
          mbar_arrive_expect_tx(bQf(s), 2 * kQBytes);
#pragma unroll
          for (int cb = 0; cb < D / 64; ++cb) {
            tma_load_4d(sQ + s * kQBytes + cb * BM * 128, &a.tq, bQf(s), cb * 64, qrow, h, bc);
            tma_load_4d(sdO + s * kQBytes + cb * BM * 128, &a.tdo, bQf(s), cb * 64, qrow, h, bc);
          }
        }
        __syncwarp();
        it = nxt;
        st = st_next;
      }
    } else if (warp == 2 && it0 < nit && a.dq_sem == nullptr) {
      // dQ tiles to the workspace (bwd_dq.cuh).
      if (lane == 0) tma_prefetch_desc(&a.tdq);
      StepWalk wk;
      int st;
      for (int it = it0, k = 0; it < nit; it = advance(wk, it, &st), ++k) {
        if (lane == 0) {
          reduce_step(h_first + it / nqb, (qb0 + it % nqb) * BM, k);
          bulk_wait_read0();
          mbar_arrive(bDqE(0));
          mbar_arrive(bDqE(1));
        }
        __syncwarp();
      }
      if (lane == 0) bulk_wait0();
    } else if (warp == 2 && lane == 0 && nit > 0 && a.dq_sem != nullptr) {
      // Deterministic dQ: the same, in turns (bwd_dq.cuh, sem_wait_eq).
      // Every step of the band takes its turn, the masked ones too (they
      // only pass it on), so that the rank of this CTA in the block's turns
      // is its distance from first_key_block.
      tma_prefetch_desc(&a.tdq);
      const int64_t off = diag_offset(p.bottom_right, e.sq, e.sk);
      for (int it = 0, k = 0; it < nit; ++it) {
        const int h = h_first + it / nqb;
        const int qb = qb0 + it % nqb, q0 = qb * BM;
        int* sem = a.dq_sem + (b * p.heads_q + h) * a.sem_nqb + qb;
        sem_wait_eq(sem, static_cast<int>(blockIdx.x) - first_key_block<BN>(p, q0, off));
        if (state_of(it) != 0) {
          reduce_step(h, q0, k);
          bulk_wait0();  // the adds are done (not only read): then the next CTA's turn
          mbar_arrive(bDqE(0));
          mbar_arrive(bDqE(1));
          ++k;
        }
        sem_release_inc(sem);
      }
    } else if (warp == 1) {
      StepWalk wk;
      int st;
      for (int it = it0, k = 0; it < nit; it = advance(wk, it, &st), ++k) {
        const int s = k % ST;
        const uint32_t ph = (k / ST) & 1;
        const int h = h_first + it / nqb;
        const int q0 = (qb0 + it % nqb) * BM;
        mbar_wait(bE(s), ph ^ 1);
        lse_delta_rows<BM>(sL[s], sDl[s], p, a.dsum, b, h, q0, e, lane);
        mbar_arrive(bLf(s));
      }
    }
  } else {
    // ---------------- consumers ----------------
    regs_alloc<C::kConsumerRegs>();
    const int cw = wg - 1;
    const int wq = (threadIdx.x / 32) % 4;
    const int g = lane / 4, t = lane % 4;
    const float sl2 = p.scale * kLog2e;
    int keys[2];
    keys[0] = n0 + cw * 64 + wq * 16 + g;
    keys[1] = keys[0] + 8;
    const int off = static_cast<int>(diag_offset(p.bottom_right, e.sq, e.sk));
    const int wl = p.window_left < 0 ? -1 : static_cast<int>(min(p.window_left, int64_t(1) << 30));
    const int wr =
        p.window_right < 0 ? -1 : static_cast<int>(min(p.window_right, int64_t(1) << 30));

    // K-major tiles [D/64][rows][64]: k step kk of 16 columns.
    auto kmaj = [](uint64_t base, int rows, int kk) -> uint64_t {
      return base + static_cast<uint64_t>(((kk / 4) * rows * 128 + (kk % 4) * 32) >> 4);
    };
    // MN-major operands: k step of 16 rows.
    auto mnmaj = [](uint64_t base, int kk) -> uint64_t {
      return base + static_cast<uint64_t>((kk * 16 * 128) >> 4);
    };
    const uint64_t dK_a = make_desc(sK + cw * 64 * 128, 16, 1024);  // A of S^T
    const uint64_t dV_a = make_desc(sV + cw * 64 * 128, 16, 1024);  // A of dP^T
    // B of dQ: K MN-major, 64 d columns.
    const uint64_t dK_b = make_desc(sK + (BM == 64 ? cw * BN * 128 : 0), BN * 128, 1024);

    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.0f;

    float dq[32];
    // The dQ of the k-th step into this warpgroup's tile, then `dq
    // full`. Also called with k = -1 (before the first step), rather
    // than branch around the accesses of dq[]: ptxas serialises every wgmma
    // when they sit on a divergent path (info C7518). The warpgroup then
    // writes its idle tile and tells nobody.
    auto dq_to_tile = [&](int k) {
      if (k >= 0) mbar_wait(bDqE(cw), (k & 1) ^ 1);  // the reduce of step k - 1 has read it
      fence_regs<32>(dq);
      dq_frag_to_smem(sDQ + cw * 16384, dq, wq, g, t);
      fence_proxy_async();
      if (k >= 0) mbar_arrive(bDqF(cw));
    };

    if (it0 < nit) mbar_wait(bKV, 0);
    int k = 0;
    for (int it = it0; it < nit; ++k) {
      const int s = k % ST, buf = k & 1;
      const uint32_t ph = (k / ST) & 1;
      const uint64_t dQ_b = make_desc(sQ + s * kQBytes, 16, 1024);
      const uint64_t ddO_b = make_desc(sdO + s * kQBytes, 16, 1024);

      float sc[BM / 2], dp[BM / 2];
      // The step's query head h and rows q0.., its mask state, whether it is
      // the last, and whether every (query, key) of it is visible (no
      // per-element test). With a mask the step comes from sStep, read once
      // the stage is full and the S^T product issued; without one the step
      // is known and this runs before the wait (fewer registers live
      // there than after it, C7512).
      int h, q0, mst = 1;
      bool last = it + 1 >= nit, full;
      auto locate = [&] {
        if constexpr (MASK) {
          it = sStep[s][0];
          mst = sStep[s][1] & 3;
          last = sStep[s][1] >> 2;
        }
        h = h_first + it / nqb;
        q0 = (qb0 + it % nqb) * BM;
        full = q0 + BM <= e.sq && n0 + BN <= e.sk;
        if (full) {
          const KeyRange r0 =
              visible_keys(q0, e.sq, e.sk, p.window_left, p.window_right, p.bottom_right);
          const KeyRange r1 =
              visible_keys(q0 + BM - 1, e.sq, e.sk, p.window_left, p.window_right, p.bottom_right);
          full = r1.lo <= n0 && r0.hi >= n0 + BN - 1;
        }
      };
      if constexpr (!MASK) locate();
      mbar_wait(bQf(s), ph);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        Wgmma<T, BM>::ss(sc, kmaj(dK_a, BN, kk), kmaj(dQ_b, BM, kk), kk > 0);
      wgmma_commit();
      // EARLY_LSE: the step's lse values read into registers before the dQ
      // write-out, whose 16 stores per thread queued ahead of them (ncu:
      // 7% of the consumers' stall samples on the exponential's first
      // FMAs). H100 fwd+bwd, D 128, 12 cases: +3% geomean (+3-9% on ten,
      // -4/-6% at S 16384 causal). Not at D = 64: 32 more registers there.
      constexpr bool EARLY_LSE = BM == 64;
      float2 lse2[BM / 8];
      if constexpr (EARLY_LSE) {
        mbar_wait(bLf(s), ph);
#pragma unroll
        for (int n = 0; n < BM / 8; ++n) lse2[n] = *reinterpret_cast<const float2*>(&sL[s][8 * n + 2 * t]);
      }
      {  // S^T ran right after the last step's dQ
        wgmma_wait<0>();
        dq_to_tile(k - 1);
        wgmma_fence();
      }
      if constexpr (MASK) {
        locate();
        wgmma_fence();  // else ptxas injects one (info C7519)
      }
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        Wgmma<T, BM>::ss(dp, kmaj(dV_a, BN, kk), kmaj(ddO_b, BM, kk), kk > 0);
      wgmma_commit();
      if constexpr (!EARLY_LSE) mbar_wait(bLf(s), ph);
      wgmma_wait<1>();
      fence_regs<BM / 2>(sc);
      // Mixed mask step: sc becomes the final score times log2 e.
      float mul = sl2;
      if constexpr (MASK) {
        if (mst == 2) {
          mask_frag<BM>(sc, p, b, h, q0, keys, t, e, sl2);
          mul = 1.0f;
        }
      }
      // P^T
#pragma unroll
      for (int n = 0; n < BM / 8; ++n) {
        const float2 l2 = EARLY_LSE ? lse2[n] : *reinterpret_cast<const float2*>(&sL[s][8 * n + 2 * t]);
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          const float lv = (x & 1) ? l2.y : l2.x;
          float pr = ex2(fmaf(sc[4 * n + x], mul, -lv));
          if (!full) {
            const int i = q0 + 8 * n + 2 * t + (x & 1), j = keys[x >> 1];
            const int d = i + off;
            const bool vis = i < e.sq && j < e.sk && (wl < 0 || j >= d - wl) &&
                             (wr < 0 || j <= d + wr);
            if (!vis) pr = 0.0f;
          }
          sc[4 * n + x] = pr;
        }
      }
      uint32_t pa[BM / 4], da[BM / 4];
      if constexpr (DV_UNDER_DP) {
        // dV += P^T dO now, under dP^T and the dS arithmetic.
        p_to_a<T, BM>(sc, pa);
        fence_regs<BM / 4>(pa);
        wgmma_fence();
        const uint64_t b1 = make_desc(sdO + s * kQBytes, BM * 128, 1024);
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk) Wgmma<T, D>::rs(dv, pa + 4 * kk, mnmaj(b1, kk), 1);
        wgmma_commit();
        wgmma_wait<1>();  // dP^T done
      } else {
        wgmma_wait<0>();
      }
      fence_regs<BM / 2>(dp);
      fence_regs<BM / 2>(sc);
      // dS^T
#pragma unroll
      for (int n = 0; n < BM / 8; ++n) {
        const float2 d2 = *reinterpret_cast<const float2*>(&sDl[s][8 * n + 2 * t]);
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          const float dv_ = (x & 1) ? d2.y : d2.x;
          dp[4 * n + x] = sc[4 * n + x] * (dp[4 * n + x] - dv_) * p.scale;
        }
      }
      if constexpr (!DV_UNDER_DP) p_to_a<T, BM>(sc, pa);
      p_to_a<T, BM>(dp, da);
      wgmma_fence();
      {
        if constexpr (!DV_UNDER_DP) {
          const uint64_t b1 = make_desc(sdO + s * kQBytes, BM * 128, 1024);
#pragma unroll
          for (int kk = 0; kk < BM / 16; ++kk) Wgmma<T, D>::rs(dv, pa + 4 * kk, mnmaj(b1, kk), 1);
        }
        const uint64_t b2 = make_desc(sQ + s * kQBytes, BM * 128, 1024);
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk) Wgmma<T, D>::rs(dk, da + 4 * kk, mnmaj(b2, kk), 1);
      }
      wgmma_commit();
      // dS^T to shared memory: row kr = key, 128B-swizzled 16-byte chunks.
      {
        const uint32_t base = sS + buf * kSBytes;
#pragma unroll
        for (int c = 0; c < BM / 16; ++c)
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const int n = 2 * c + (q >> 1), kr = cw * 64 + wq * 16 + g + 8 * (q & 1);
            const uint32_t addr = base + (n / 8) * BN * 128 + kr * 128 +
                                  ((((n % 8) ^ g) & 7) << 4) + 4 * t;
            asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(da[4 * c + q]) : "memory");
          }
      }
      fence_proxy_async();
      named_bar_sync(1, 256);
      wgmma_fence();
      {
        const uint64_t a1 =
            make_desc(sS + buf * kSBytes + (BM == 128 ? cw * BN * 128 : 0), BN * 128, 1024);
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
          Wgmma<T, 64>::tt(dq, mnmaj(a1, kk), mnmaj(dK_b, kk), kk > 0);
      }
      wgmma_commit();
      wgmma_wait<1>();  // dV, dK done; dQ stays in flight into the next step
      fence_regs<D / 2>(dv);
      fence_regs<D / 2>(dk);
      fence_regs<BM / 4>(pa);
      fence_regs<BM / 4>(da);
      mbar_arrive(bE(s));
      it = last ? nit : it + 1;  // MASK: the next step's index comes with its stage
    }
    // The last step's dQ.
    wgmma_wait<0>();
    dq_to_tile(k - 1);
    // dK, dV (rows past the sequence are not written).
    T* dkg = static_cast<T*>(p.dk);
    T* dvg = static_cast<T*>(p.dv);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int j = keys[r];
      if (j >= e.sk) continue;
      if (a.dkvacc != nullptr) {  // a part of the group: add into the fp32 sums
        const int64_t tok = p.cu_seqlens_k ? e.k_begin + j : b * p.seqlen_k + j;
        float* ak = a.dkvacc + (tok * p.heads_k + hk) * D + 2 * t;
        float* av = ak + p.total_k * p.heads_k * D;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          if (8 * n < p.head_dim) {
            atomicAdd(ak + 8 * n, dk[4 * n + 2 * r]);
            atomicAdd(ak + 8 * n + 1, dk[4 * n + 2 * r + 1]);
          }
          if (8 * n < p.head_dim_v) {
            atomicAdd(av + 8 * n, dv[4 * n + 2 * r]);
            atomicAdd(av + 8 * n + 1, dv[4 * n + 2 * r + 1]);
          }
        }
        continue;
      }
      T* pk = dkg + off4(p.dk_stride, b, hk, e.k_begin + j, 0) + 2 * t;
      T* pv = dvg + off4(p.dv_stride, b, hk, e.k_begin + j, 0) + 2 * t;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {  // not the zero columns past D / Dv (hopper_kernel_dim)
        if (8 * n < p.head_dim)
          *reinterpret_cast<uint32_t*>(pk + 8 * n) = pack_pair<T>(dk[4 * n + 2 * r], dk[4 * n + 2 * r + 1]);
        if (8 * n < p.head_dim_v)
          *reinterpret_cast<uint32_t*>(pv + 8 * n) = pack_pair<T>(dv[4 * n + 2 * r], dv[4 * n + 2 * r + 1]);
      }
    }
  }
#endif
}

// bwd_f16.cu, bwd_bf16.cu: D in {64, 128} (bwd_launch.cuh: the variant run).
cudaError_t bwd_f16(const BwdArgs& a, cudaStream_t s);
cudaError_t bwd_bf16(const BwdArgs& a, cudaStream_t s);

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
