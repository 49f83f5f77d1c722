// The Hopper forward kernel (sm_90a): persistent, warp-specialised, wgmma
// for both products, TMA loads into 128-byte-swizzled shared memory.
//
// CTA (one per SM) = warpgroup 0 (producer: one thread issues every TMA
// load; its registers go to the others through setmaxnreg) + NCW consumer
// warpgroups, each owning 64 query rows of the current tile of kBM rows.
// The producer hands the tiles to the consumers (TileRing below).
//
//   smem: Q [kQSlots][D/64 column blocks][kBM rows][64]
//         K, V rings: [kStages][D/64][kBN keys][64]
//   Every tile row is 128 bytes (64 elements); 16-byte chunk c of row r
//   sits at chunk c ^ (r % 8) (TMA's and wgmma's 128B swizzle).
//   mbarriers: Q full / empty per slot; K and V full (TMA transaction bytes) and
//   empty (one arrive per consumer warp once the wgmma reading the stage
//   is done). The K/V ring's stage and phase run on across tiles, and Q
//   alternates between two slots (one at D = 256: config.h), so the
//   producer loads the next tile's Q and first blocks while the consumers
//   finish the current one (at D = 256 the first K and V blocks, then Q
//   once the consumers' last S product of the tile is done).
//
// Consumer loop over the key blocks the tile's band reaches:
//   S = Q K^T   wgmma m64n{kBN}k16, A = Q and B = K from smem (K-major)
//   online softmax on the fp32 accumulators (band test only on blocks
//   that are not inside every row's band)
//   O += P V    wgmma m64n{D}k16, A = P from registers (bf16/fp16), B = V
//               from smem, MN-major (transpose bit)
// The S product of block j+1 is issued before P_j V_j, and the softmax of
// block j+1 runs while P_j V_j is in flight (FlashAttention-3's
// intra-warpgroup overlap).
#pragma once

#include "cuda/common.cuh"
#include "cuda/hopper/config.h"
#include "cuda/hopper/epilogue.cuh"
#include "cuda/hopper/mask.cuh"
#include "cuda/hopper/ptx.cuh"
#include "cuda/hopper/softmax.cuh"
#include "cuda/hopper/wgmma.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {

// One tile: query rows [m0, m0 + BM) of head h of sequence b, and the key
// blocks [kb0, kb0 + nblk) its band reaches. valid = false: no such rows
// (varlen sequence shorter than the longest).
struct Tile {
  Seq e;
  int64_t b;
  int h, hk, m0, kb0, nblk;
  bool valid;
};

template <int BM, int BN>
__device__ __forceinline__ Tile get_tile(const AttnParams& p, int mb, int h, int64_t b) {
  Tile x;
  x.m0 = mb * BM;
  x.h = h;
  x.b = b;
  x.hk = static_cast<int>(x.h / (p.heads_q / p.heads_k));
  x.e = get_seq(p, x.b);
  x.valid = x.m0 < x.e.sq;
  x.kb0 = 0;
  x.nblk = 0;
  if (!x.valid) return x;
  const int mrows = min(BM, x.e.sq - x.m0);
  const KeyRange rf =
      visible_keys(x.m0, x.e.sq, x.e.sk, p.window_left, p.window_right, p.bottom_right);
  const KeyRange rl = visible_keys(x.m0 + mrows - 1, x.e.sq, x.e.sk, p.window_left,
                                   p.window_right, p.bottom_right);
  if (rl.hi >= rf.lo && x.e.sk > 0) {
    x.kb0 = static_cast<int>(rf.lo / BN);
    x.nblk = static_cast<int>(rl.hi / BN) - x.kb0 + 1;
  }
  return x;
}

// Scheduling. The producer walks the CTA's units of work and hands each
// tile to the consumers through a ring in shared memory (TileRing).
// Static (a.tile_counter == nullptr): unit u = query blocks nmb-1-j and j
// of one (head, batch) (one block when they coincide), j fastest, then
// head, then batch (CTAs running at once share K/V in L2); a CTA takes
// u = blockIdx.x, + gridDim.x, ...
// Dynamic (causal and windowed calls, whose tiles differ in length): unit
// u = one tile, longest first, within sections of a.sched_heads (batch,
// head) pairs whose K/V share the L2, head fastest. A CTA's first unit is
// blockIdx.x, the next ones come from a.tile_counter, so the last tiles
// handed out are the shortest and fill in behind the long ones (with
// pairs, the last of 15.5 waves left half the SMs idle: 4% of the causal
// forward's time at S 4096 on an H100, by ncu's active cycles).

// The CTA's unit after u (its first is blockIdx.x). With a mask the whole
// warp 0 runs the producer (kWarp: the leader's number goes to every lane).
template <bool kWarp>
__device__ __forceinline__ int next_unit(const FwdArgs& a, int u, bool leader) {
  if (a.tile_counter == nullptr) return u + static_cast<int>(gridDim.x);
  if (leader) u = static_cast<int>(gridDim.x) + atomicAdd(a.tile_counter, 1);
  if constexpr (kWarp) u = __shfl_sync(0xffffffffu, u, 0);
  return u;
}

// Tiles in unit u (1 or 2), and tile t of it: query block *mb of
// (batch, head) pair *bh = b * heads_q + h.
__device__ __forceinline__ int unit_size(const FwdArgs& a, int u) {
  if (a.tile_counter != nullptr) return 1;
  const int np = (a.n_mblocks + 1) / 2, j = u % np;
  return j != a.n_mblocks - 1 - j ? 2 : 1;
}
__device__ __forceinline__ void unit_tile(const FwdArgs& a, int u, int t, int* mb, int* bh) {
  const int nmb = a.n_mblocks;
  if (a.tile_counter == nullptr) {
    const int np = (nmb + 1) / 2, j = u % np;
    *mb = t == 0 ? nmb - 1 - j : j;
    *bh = u / np;
    return;
  }
  const int g = a.sched_heads, sec = u / (g * nmb), r = u - sec * g * nmb;
  const int gs = min(g, static_cast<int>(a.p.batch * a.p.heads_q) - sec * g);
  *mb = nmb - 1 - r / gs;
  *bh = sec * g + r % gs;
}

// The consumers learn their tiles from the producer, so the unit
// arithmetic stays out of their registers: tile k of the CTA is (mb, bh) in
// words[2 * (k % 2)] with mbarriers full[k % 2], empty[k % 2] (8 bytes
// apart from bar0); mb = -1 ends the loop.
struct TileRing {
  int* words;     // [2 slots][mb, bh]
  uint32_t bar0;  // full[2], empty[2]
  __device__ uint32_t full(int k) const { return bar0 + 8u * (k & 1); }
  __device__ uint32_t empty(int k) const { return bar0 + 8u * (2 + (k & 1)); }
  __device__ void publish(int k, int mb, int bh, bool leader) const {
    mbar_wait(empty(k), ((k >> 1) & 1) ^ 1);
    if (leader) {
      words[2 * (k & 1)] = mb;
      words[2 * (k & 1) + 1] = bh;
      mbar_arrive(full(k));
    }
  }
};

template <int BM, int BN>
__device__ __forceinline__ Tile tile_of(const AttnParams& p, int mb, int bh) {
  const int hq = static_cast<int>(p.heads_q);
  return get_tile<BM, BN>(p, mb, bh % hq, bh / hq);
}

// A word the producer wrote to shared memory before its mbarrier arrive:
// lane 0 reads it and broadcasts it, so the only reader is the thread whose
// arrive later hands the slot back (the reads of the other lanes would be
// ordered before that arrive by nothing; compute-sanitizer racecheck
// reported them).
__device__ __forceinline__ uint32_t lane0_read(const uint32_t* w, int lane) {
  uint32_t v = 0;
  if (lane == 0) v = *static_cast<const volatile uint32_t*>(w);
  return __shfl_sync(0xffffffffu, v, 0);
}

// Consumer side: tile k of this CTA (mb = -1: no more); each warp hands
// the slot back.
__device__ __forceinline__ void take_tile(const TileRing& r, int k, int lane, int* mb, int* bh) {
  mbar_wait(r.full(k), (k >> 1) & 1);
  const uint32_t* w = reinterpret_cast<const uint32_t*>(r.words + 2 * (k & 1));
  *mb = static_cast<int>(lane0_read(w, lane));
  *bh = static_cast<int>(lane0_read(w + 1, lane));
  if (lane == 0) mbar_arrive(r.empty(k));
}

// MK: MaskMode (mask.cuh); kMaskNone is the unmasked kernel.
// BN: keys per block (config.h).
template <typename T, int D, int NCW, int MK, int BN_ = fwd_default_bn<D>()>
__global__ void __launch_bounds__(FwdCfg<D, NCW, BN_>::kThreads, 1)
fwd_kernel(const __grid_constant__ FwdArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = FwdCfg<D, NCW, BN_>;
  constexpr int BM = C::kBM, BN = C::kBN, ST = C::kStages, QS = C::kQSlots;
  constexpr uint32_t kQBytes = BM * D * 2, kKVBytes = BN * D * 2;
  const AttnParams& p = a.p;
  // setmaxnreg: with a mask (2 consumer warpgroups only, launch.cuh) the
  // consumers get 240 (the mask code spilled O and P at 232) and the
  // producer 24: 24 + 2 * 240 = 3 * 168, the registers the CTA starts with.
  static_assert(MK == kMaskNone || NCW == 2, "masked kernels have 2 consumer warpgroups");
  static_assert(MK == kMaskNone || (BN == 128 && QS == 2), "masks: 128-key blocks (mask.cuh)");
  constexpr int kProducerRegs = MK == kMaskNone ? C::kProducerRegs : 24;
  constexpr int kConsumerRegs = MK == kMaskNone ? C::kConsumerRegs : 240;

  extern __shared__ __align__(1024) uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t bars[8 + 4 * ST];
  __shared__ int ring_words[4];
  // Masked kernels: the producer's word per K stage (key block, last of
  // the tile, warpgroup states) and per Q slot (0: no live block); mask.cuh.
  __shared__ uint32_t kinfo[ST], qinfo[2];
  const uint32_t sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;  // QS Q slots
  const uint32_t sK = sQ + QS * kQBytes, sV = sK + ST * kKVBytes;
  const uint32_t b0 = smem_u32(&bars[0]);
  auto bQf = [&](int q) { return b0 + 8u * q; };
  auto bQe = [&](int q) { return b0 + 8u * (2 + q); };
  auto bKf = [&](int s) { return b0 + 8u * (4 + s); };
  auto bKe = [&](int s) { return b0 + 8u * (4 + ST + s); };
  auto bVf = [&](int s) { return b0 + 8u * (4 + 2 * ST + s); };
  auto bVe = [&](int s) { return b0 + 8u * (4 + 3 * ST + s); };
  const TileRing ring{ring_words, b0 + 8u * (4 + 4 * ST)};

  if (threadIdx.x == 0) {
    for (int q = 0; q < QS; ++q) {
      mbar_init(bQf(q), 1);
      mbar_init(bQe(q), 4 * NCW);
    }
    for (int s = 0; s < ST; ++s) {
      mbar_init(bKf(s), 1);
      mbar_init(bVf(s), 1);
      mbar_init(bKe(s), 4 * NCW);
      mbar_init(bVe(s), 4 * NCW);
    }
    for (int i = 0; i < 2; ++i) {
      mbar_init(ring.full(i), 1);
      mbar_init(ring.empty(i), 4 * NCW);
    }
    mbar_init_fence();
  }
  __syncthreads();

  const int wg = threadIdx.x / 128;
  const int lane = threadIdx.x % 32;
  if (wg == 0) {
    // ---------------- producer ----------------
    regs_dealloc<kProducerRegs>();
    // One thread issues every load. With a mask the whole warp 0 walks
    // the key blocks (BlockCursor's ballots) and lane 0 issues.
    if (MK == kMaskNone ? threadIdx.x == 0 : threadIdx.x < 32) {
      const bool leader = threadIdx.x == 0;
      if (leader) {
        tma_prefetch_desc(&a.tq);
        tma_prefetch_desc(&a.tk);
        tma_prefetch_desc(&a.tv);
      }
      const int bc_varlen = p.cu_seqlens_q != nullptr;
      uint32_t kv = 0, qn = 0;  // K/V blocks and Q tiles loaded so far
      auto tile = [&](const Tile& x) {
        if (x.nblk == 0) return;
        const int bc = bc_varlen ? 0 : static_cast<int>(x.b);
        const int kb1 = x.kb0 + x.nblk - 1;
        const CursorCtx cx{x.b, x.h, x.m0, min(BM, x.e.sq - x.m0), kb1, x.e.sk};
        BlockCursor<MK, BM, BN> cur;
        uint32_t ws;
        int kb = cur.next(a.mt, cx, x.kb0, &ws);
        // Q, into the slot the tile before last let go of.
        const int q = qn % QS;
        const uint32_t qph = ((qn / QS) & 1) ^ 1;
        ++qn;
        if constexpr (MK != kMaskNone) {
          if (kb > kb1) {  // no live block: an empty Q slot (mask.cuh)
            mbar_wait(bQe(q), qph);
            if (leader) {
              qinfo[q] = 0;
              mbar_arrive(bQf(q));
            }
            return;
          }
        }
        for (bool first = true; kb <= kb1; first = false, ++kv) {
          uint32_t wsn;
          const int kn = cur.next(a.mt, cx, kb + 1, &wsn);
          const int s = kv % ST;
          const uint32_t ph = (kv / ST) & 1;
          const int krow = static_cast<int>(x.e.k_begin) + kb * BN;
          mbar_wait(bKe(s), ph ^ 1);
          if (leader) {
            if constexpr (MK != kMaskNone)
              kinfo[s] = uint32_t(kb) | ((ws & 0xFu) << 24) | (kn > kb1 ? 1u << 31 : 0u);
            mbar_arrive_expect_tx(bKf(s), kKVBytes);
#pragma unroll
            for (int cb = 0; cb < D / 64; ++cb)
              tma_load_4d(sK + s * kKVBytes + cb * BN * 128, &a.tk, bKf(s), cb * 64, krow, x.hk,
                          bc);
          }
          auto load_q = [&] {
            mbar_wait(bQe(q), qph);
            if (leader) {
              if constexpr (MK != kMaskNone) qinfo[q] = 1;
              mbar_arrive_expect_tx(bQf(q), kQBytes);
#pragma unroll
              for (int cb = 0; cb < D / 64; ++cb)
                tma_load_4d(sQ + q * kQBytes + cb * BM * 128, &a.tq, bQf(q), cb * 64,
                            static_cast<int>(x.e.q_begin) + x.m0, x.h, bc);
            }
          };
          // One Q slot: its empty wait lasts until the previous tile's
          // epilogue is done, so V goes first (its stage is free earlier).
          if (QS > 1 && first) load_q();
          mbar_wait(bVe(s), ph ^ 1);
          if (leader) {
            mbar_arrive_expect_tx(bVf(s), kKVBytes);
#pragma unroll
            for (int cb = 0; cb < D / 64; ++cb)
              tma_load_4d(sV + s * kKVBytes + cb * BN * 128, &a.tv, bVf(s), cb * 64, krow, x.hk,
                          bc);
          }
          if (QS == 1 && first) load_q();
          kb = kn;
          ws = wsn;
        }
      };
      int k = 0;  // tiles handed to the consumers
      for (int u = blockIdx.x; u < a.n_units; u = next_unit<MK != kMaskNone>(a, u, leader)) {
        for (int t = 0; t < unit_size(a, u); ++t, ++k) {
          int mb, bh;
          unit_tile(a, u, t, &mb, &bh);
          ring.publish(k, mb, bh, leader);
          tile(tile_of<BM, BN>(p, mb, bh));
        }
      }
      ring.publish(k, -1, 0, leader);
    }
  } else {
    // ---------------- consumers ----------------
    regs_alloc<kConsumerRegs>();
    const int cw = wg - 1;
    const int wq = (threadIdx.x / 32) % 4;
    const float sl2 = p.scale * kLog2e;
    // Descriptors: Q rows of this warpgroup; K (K-major) and V (MN-major).
    uint64_t dq = 0;
    auto q_desc = [&](int kk) -> uint64_t {
      return dq + static_cast<uint64_t>(((kk / 4) * BM * 128 + (kk % 4) * 32) >> 4);
    };
    auto k_desc = [&](uint64_t base, int kk) -> uint64_t {
      return base + static_cast<uint64_t>(((kk / 4) * BN * 128 + (kk % 4) * 32) >> 4);
    };
    auto v_desc = [&](uint64_t base, int kk) -> uint64_t {
      return base + static_cast<uint64_t>((kk * 16 * 128) >> 4);
    };
    float o[D / 2];
    float s[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) s[i] = 0.0f;
    uint32_t pa[BN / 4];
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

    uint32_t kv = 0, qn = 0;  // as in the producer
    auto tile = [&](const Tile& x) {
      if (!x.valid) return;
      const int row0 = x.m0 + cw * 64 + wq * 16 + lane / 4;
      RowState st;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = row0 + 8 * r;
        KeyRange kr =
            visible_keys(i, x.e.sq, x.e.sk, p.window_left, p.window_right, p.bottom_right);
        if (i >= x.e.sq) kr = KeyRange{1, 0};
        st.lo[r] = static_cast<int>(kr.lo);
        st.hi[r] = static_cast<int>(kr.hi);
        st.m[r] = neg_inf();
        st.l[r] = 0.0f;
      }
      // Keys [band_lo, band_hi] are visible from every row of this
      // warpgroup: blocks inside need no per-element test.
      const int wrow0 = x.m0 + cw * 64, wrow1 = min(x.m0 + cw * 64 + 63, x.e.sq - 1);
      int band_lo = 0, band_hi = -1;
      if (wrow0 <= wrow1) {
        band_lo = static_cast<int>(
            visible_keys(wrow1, x.e.sq, x.e.sk, p.window_left, p.window_right, p.bottom_right).lo);
        band_hi = static_cast<int>(
            visible_keys(wrow0, x.e.sq, x.e.sk, p.window_left, p.window_right, p.bottom_right).hi);
      }
      auto is_full = [&](int kb) {
        const int n0 = kb * BN;
        return n0 >= band_lo && n0 + BN - 1 <= band_hi;
      };
#pragma unroll
      for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;

      // The softmax of key block kb (warpgroup state ws, mask.cuh): state 1
      // as without a mask (the band test only where the block is not
      // inside every row's band), 2 with the mask per score, 0 all -inf
      // (the band test with the block moved far left of every band).
      auto softmax = [&](int kb, int ws, float* al) {
        int mode = is_full(kb) ? 0 : 1, n0 = kb * BN;
        if constexpr (MK != kMaskNone) {
          if (ws == 0) {
            mode = 1;
            n0 = -(1 << 30);
          } else if (ws == 2) {
            mode = 2;
          }
          // The row pointers are rebuilt per block from (b, h, row0) passed
          // through an empty asm, which the compiler cannot hoist: else it
          // computes them once per tile and keeps them in registers the
          // consumers do not have (ptxas spilled O and P). The strides and
          // the pointer come from the constant bank.
          int64_t bb = x.b;
          int hh = x.h, r0 = row0;
          float sc = p.scale;
          asm volatile("" : "+l"(bb), "+r"(hh), "+r"(r0), "+f"(sc));
          MaskOp<MK> op;
          op.inv_scale = 1.0f / sc;
          const int64_t ro = bb * p.mask_stride[0] + hh * p.mask_stride[1] +
                             int64_t(r0) * p.mask_stride[2] + n0 + 2 * (lane % 4);
          op.rp[0] = static_cast<const typename MaskElem<MK>::type*>(p.mask) + ro;
          op.rp[1] = op.rp[0] + 8 * p.mask_stride[2];
          softmax_block<BN>(s, st, al, sl2, mode, n0, lane, op);
        } else {
          softmax_block<BN>(s, st, al, sl2, mode, n0, lane);
        }
      };
      // Key block of ring index c (after its K full barrier): without a
      // mask the band's blocks in order (kb_next), else the producer's word.
      const int kb1 = x.kb0 + x.nblk - 1;
      auto block_of = [&](uint32_t c, int kb_next, int* ws, bool* last) -> int {
        if constexpr (MK == kMaskNone) {
          *ws = 1;
          *last = kb_next == kb1;
          return kb_next;
        } else {
          const uint32_t ki = lane0_read(&kinfo[c % ST], lane);
          *ws = (ki >> (24 + 2 * cw)) & 3;
          *last = (ki >> 31) != 0;
          return static_cast<int>(ki & 0xFFFFFFu);
        }
      };

      if (x.nblk > 0) {
        const int qs = qn % QS;
        mbar_wait(bQf(qs), (qn / QS) & 1);
        bool any = true;
        if constexpr (MK != kMaskNone) any = lane0_read(&qinfo[qs], lane) != 0;
        if (!any) {  // every block of the tile masked (mask.cuh): out 0, lse -inf
          ++qn;
          store_out<T, D>(p, x.e, x.b, x.h, row0, o, st, sl2, lane);
          __syncwarp();
          if (lane == 0) mbar_arrive(bQe(qs));
          return;
        }
        dq = make_desc(sQ + qs * kQBytes + cw * 64 * 128, 16, 1024);
        uint32_t c = kv;  // ring index of the block in S
        int wst;
        bool last;
        // First block: S, softmax, P.
        mbar_wait(bKf(c % ST), (c / ST) & 1);
        int kb = block_of(c, x.kb0, &wst, &last);
        {
          const int stg = c % ST;
          issue_s(stg);
          wgmma_wait<0>();
          fence_regs<BN / 2>(s);
          if (lane == 0) mbar_arrive(bKe(stg));
          if (QS == 1 && last && lane == 0) mbar_arrive(bQe(qs));  // Q read for the last time
          float alpha0[2];
          softmax(kb, wst, alpha0);
          p_to_a<T, BN>(s, pa);
        }
        float alpha[2] = {1.0f, 1.0f};
        while (!last) {
          const uint32_t nx = c + 1;
          const int stg = nx % ST, pstg = c % ST;
          mbar_wait(bKf(stg), (nx / ST) & 1);
          kb = block_of(nx, kb + 1, &wst, &last);
          issue_s(stg);
          rescale_o<D>(o, alpha);  // by the max of the previous block
          mbar_wait(bVf(pstg), (c / ST) & 1);
          issue_pv(pstg);
          wgmma_wait<1>();  // S of block kb done; P V of the previous in flight
          fence_regs<BN / 2>(s);
          if (lane == 0) mbar_arrive(bKe(stg));
          if (QS == 1 && last && lane == 0) mbar_arrive(bQe(qs));  // Q read for the last time
          // The softmax must run before the wait, not after it: ptxas
          // hoists the wait to the top of the softmax's basic block, so the
          // softmax gets its own block (sl2 > 0 always holds here, but
          // ptxas cannot fold it).
          if (sl2 > 0.0f) {
            softmax(kb, wst, alpha);
            fence_regs<BN / 2>(s);
          }
          wgmma_wait<0>();
          fence_regs<D / 2>(o);
          fence_regs<BN / 4>(pa);
          if (lane == 0) mbar_arrive(bVe(pstg));
          p_to_a<T, BN>(s, pa);
          c = nx;
        }
        rescale_o<D>(o, alpha);
        mbar_wait(bVf(c % ST), (c / ST) & 1);
        issue_pv(c % ST);
        wgmma_wait<0>();
        fence_regs<D / 2>(o);
        if (lane == 0) mbar_arrive(bVe(c % ST));
        kv = c + 1;
        ++qn;
        if constexpr (QS == 1) {
          // The slot went back to the producer after the last S product
          // (the next tile's Q loads under this P V and epilogue): O from
          // the fragments straight to global memory.
          store_out<T, D>(p, x.e, x.b, x.h, row0, o, st, sl2, lane);
        } else {
          // O through the warpgroup's rows of the Q slot (its S products
          // are done), then the slot goes back to the producer.
          store_out_staged<T, D, BM>(p, x.e, x.b, x.h, x.m0 + cw * 64, o, st, sl2,
                                     sQ + qs * kQBytes + cw * 64 * 128, 1 + cw);
          __syncwarp();
          if (lane == 0) mbar_arrive(bQe(qs));
        }
      } else {
        store_out<T, D>(p, x.e, x.b, x.h, row0, o, st, sl2, lane);
      }
    };
    for (int k = 0;; ++k) {
      int mb, bh;
      take_tile(ring, k, lane, &mb, &bh);
      if (mb < 0) break;
      tile(tile_of<BM, BN>(p, mb, bh));
    }
  }
#endif
}

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
