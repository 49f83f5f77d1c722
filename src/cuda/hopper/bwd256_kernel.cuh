// The Hopper backward for D = Dv = 256 (sm_90a). bwd_kernel.cuh's layout
// (a consumer warpgroup owns 64 keys and holds their dK and dV, 64 x D
// fp32 each) needs 2 x 128 accumulator registers per thread at D = 256, so
// here the two consumer warpgroups split the head dim instead:
//
// CTA = producer warpgroup + 2 consumer warpgroups, kBN = 64 keys of one
// (kv head, sequence); the CTA loops over the query blocks of kBM = 64 rows
// (of every query head of the GQA group) whose band reaches its keys, like
// bwd_kernel.cuh. K, V (32 KB each) stay in shared memory; Q and dO come
// through a 2-stage ring (4 x 32 KB).
//
// Consumer warpgroup w (0, 1), per step:
//   S^T_w  = K Q_w^T    wgmma m64n32k16 ss, 16 k steps: all 64 keys x the
//                       warpgroup's 32 queries (rows 32w.. of the block)
//   dP^T_w = V dO_w^T   same
//   P^T, dS^T = P^T (dP^T - Delta) * scale, rounded to the input dtype,
//          to shared memory ([64 keys][64 queries], 128B swizzle: the two
//          warpgroups write one half each; two buffers), fence.proxy.async,
//          named barrier of the two warpgroups, then
//   dQ[:, 128w..] = dS K[:, 128w..]  wgmma m64n128k16 `tt` (A = dS^T's
//          buffer read MN-major), then
//   dV_w += P^T dO[:, 128w..]   wgmma m64n128k16 `st`: A = P^T K-major
//   dK_w += dS^T Q[:, 128w..]   and B MN-major, both from smem (4 k steps);
//   dQ goes to the fp32 workspace by a TMA reduce (below; the 16-byte
//   atomics issued while dV and dK ran, the first version, were 18-25%
//   slower and are gone).
// Accumulators per thread: dK_w, dV_w 64 + 64, dQ 64, S^T/dP^T 16 + 16
// (not live together with dQ).
// The P^T/dS^T buffer of step k is written again at step k + 2, after the
// barrier of step k + 1, which the other warpgroup passes only after its
// products of step k have completed (wgmma wait 0 at the end of each step).
//
// Producer (as bwd_kernel.cuh): warp 0 lane 0 loads K, V once and Q, dO per
// step; warp 1 writes lse * log2 e (+inf past the sequence / no visible
// key: P = 0) and Delta of the step's rows to shared memory.
//
// Shared memory: 1 KB alignment + 64 KB K, V + 128 KB ring + 32 KB P^T/dS^T
// (2 buffers) = 225 KB dynamic, + 2 KB static (ptxas): the 227 KB limit.
// No masks (bool/additive masks at D = 256 stay on the sm_80 kernels).
// deterministic = 1: the reduces of a query block take turns in
// key-block order (bwd_kernel.cuh, bwd_dq.cuh).
#pragma once

#include <cuda.h>

#include "cuda/common.cuh"
#include "cuda/hopper/bwd_kernel.cuh"
#include "cuda/hopper/ptx.cuh"
#include "cuda/hopper/softmax.cuh"
#include "cuda/hopper/wgmma.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {

struct Bwd256Cfg {
  static constexpr int D = 256;
  static constexpr int kBN = 64;  // keys per CTA
  static constexpr int kBM = 64;  // query rows per step
  static constexpr int kStages = 2;
  static constexpr int kThreads = 384;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;
  static constexpr uint32_t kTile = 64 * D * 2;  // K, V, one Q or dO stage
  static constexpr uint32_t kPS = kBN * kBM * 2;  // one P^T or dS^T tile
  static constexpr int kSmem = 1024 + 2 * kTile + 2 * kStages * kTile + 2 * 2 * kPS;
};

// dQ goes through shared memory and a TMA reduce (bwd_dq.cuh's box
// layout). There is no free shared memory for a separate dQ
// tile, so warpgroup w stages its 64 x 128 fp32 dQ in the step's Q and dO
// blocks of d columns 128w.. (16 KB each), which after its own dK and dV
// products nobody reads any more (the other warpgroup's S^T / dP^T reads
// of them finished before the named barrier): dQ columns 64.. go to the dO
// blocks once dV is done (under dK), columns 0..63 to the Q blocks once dK
// is done. Producer warp 2 (one thread) waits on the stage's `dq full`
// barrier (256 arrivals), issues 8 reduces (64 rows x 32 columns each),
// and arrives on the stage's `empty` barrier once they have read shared
// memory (257 arrivals), so the next loads into the stage wait
// for them. Rows past the sequence add zeros (P = 0 there).
template <typename T>
__global__ void __launch_bounds__(Bwd256Cfg::kThreads, 1)
bwd256_kernel(const __grid_constant__ BwdArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = Bwd256Cfg;
  constexpr int D = C::D, BM = C::kBM, BN = C::kBN, ST = C::kStages;
  constexpr uint32_t kT = C::kTile, kP = C::kPS;
  const AttnParams& p = a.p;

  extern __shared__ __align__(1024) uint8_t smem_raw[];
  __shared__ __align__(8) uint64_t bars[1 + 4 * ST];
  __shared__ float sL[ST][BM], sDl[ST][BM];
  const uint32_t sK = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sV = sK + kT, sQ = sV + kT, sdO = sQ + ST * kT;
  const uint32_t sP = sdO + ST * kT;  // [2 buffers][P^T, dS^T]
  const uint32_t b0 = smem_u32(&bars[0]);
  const uint32_t bKV = b0;
  auto bQf = [&](int s) { return b0 + 8u * (1 + s); };
  auto bLf = [&](int s) { return b0 + 8u * (1 + ST + s); };
  auto bE = [&](int s) { return b0 + 8u * (1 + 2 * ST + s); };
  auto bDqF = [&](int s) { return b0 + 8u * (1 + 3 * ST + s); };

  const int64_t b = blockIdx.z;
  const int hk = blockIdx.y;
  const int n0 = blockIdx.x * BN;
  const Seq e = get_seq(p, b);
  if (n0 >= e.sk) return;  // varlen: a shorter sequence (grads zeroed by the caller)
  const int group = static_cast<int>(p.heads_q / p.heads_k);
  int ilo, ihi;
  rows_for_keys(p, e, n0, min(n0 + BN, e.sk) - 1, &ilo, &ihi);
  int qb0 = 0, nqb = 0;
  if (ihi >= ilo) {
    qb0 = ilo / BM;
    nqb = ihi / BM - qb0 + 1;
  }
  const int nit = nqb * group;
  const int bc = p.cu_seqlens_q != nullptr ? 0 : static_cast<int>(b);

  if (threadIdx.x == 0) {
    mbar_init(bKV, 1);
    for (int s = 0; s < ST; ++s) {
      mbar_init(bQf(s), 1);
      mbar_init(bLf(s), 32);
      mbar_init(bE(s), 257);
      mbar_init(bDqF(s), 256);
    }
    mbar_init_fence();
  }
  __syncthreads();

  const int wg = threadIdx.x / 128;
  const int lane = threadIdx.x % 32;
  if (wg == 0) {
    // ---------------- producer ----------------
    regs_dealloc<C::kProducerRegs>();
    const int warp = threadIdx.x / 32;
    if (warp == 0 && lane == 0 && nit > 0) {
      tma_prefetch_desc(&a.tq);
      tma_prefetch_desc(&a.tdo);
      const int krow = static_cast<int>(e.k_begin) + n0;
      mbar_arrive_expect_tx(bKV, 2 * kT);
#pragma unroll
      for (int cb = 0; cb < D / 64; ++cb) {
        tma_load_4d(sK + cb * BN * 128, &a.tk, bKV, cb * 64, krow, hk, bc);
        tma_load_4d(sV + cb * BN * 128, &a.tv, bKV, cb * 64, krow, hk, bc);
      }
      for (int it = 0; it < nit; ++it) {
        const int s = it % ST;
        const uint32_t ph = (it / ST) & 1;
        const int h = hk * group + it / nqb;
        const int qrow = static_cast<int>(e.q_begin) + (qb0 + it % nqb) * BM;
        mbar_wait(bE(s), ph ^ 1);
        mbar_arrive_expect_tx(bQf(s), 2 * kT);
#pragma unroll
        for (int cb = 0; cb < D / 64; ++cb) {
          tma_load_4d(sQ + s * kT + cb * BM * 128, &a.tq, bQf(s), cb * 64, qrow, h, bc);
          tma_load_4d(sdO + s * kT + cb * BM * 128, &a.tdo, bQf(s), cb * 64, qrow, h, bc);
        }
      }
    } else if (warp == 2 && lane == 0 && nit > 0) {
      // dQ tiles (staged in the stage's Q and dO blocks) to the workspace;
      // with dq_sem (deterministic) in key-block turns, as in bwd_kernel.cuh
      // (no step is skipped here: every step takes its turn).
      tma_prefetch_desc(&a.tdq);
      const int64_t off = diag_offset(p.bottom_right, e.sq, e.sk);
      for (int it = 0; it < nit; ++it) {
        const int s = it % ST;
        const uint32_t ph = (it / ST) & 1;
        const int h = hk * group + it / nqb;
        const int qb = qb0 + it % nqb;
        const int tok = static_cast<int>(q_token(p, b, e, qb * BM));
        int* sem = nullptr;
        if (a.dq_sem != nullptr) {
          sem = a.dq_sem + (b * p.heads_q + h) * a.sem_nqb + qb;
          sem_wait_eq(sem, static_cast<int>(blockIdx.x) - first_key_block<BN>(p, qb * BM, off));
        }
        mbar_wait(bDqF(s), ph);
#pragma unroll
        for (int w = 0; w < 2; ++w) {
          const uint32_t rq = sQ + s * kT + 2 * w * 8192, ro = sdO + s * kT + 2 * w * 8192;
          tma_reduce_add_3d(&a.tdq, rq, 128 * w, h, tok);
          tma_reduce_add_3d(&a.tdq, rq + 8192, 128 * w + 32, h, tok);
          tma_reduce_add_3d(&a.tdq, ro, 128 * w + 64, h, tok);
          tma_reduce_add_3d(&a.tdq, ro + 8192, 128 * w + 96, h, tok);
        }
        bulk_commit();
        if (sem != nullptr) {
          bulk_wait0();  // the adds are done (not only read): then the next CTA's turn
          sem_release_inc(sem);
        } else {
          bulk_wait_read0();
        }
        mbar_arrive(bE(s));
      }
      bulk_wait0();
    } else if (warp == 1) {
      for (int it = 0; it < nit; ++it) {
        const int s = it % ST;
        const uint32_t ph = (it / ST) & 1;
        const int h = hk * group + it / nqb;
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
    keys[0] = n0 + wq * 16 + g;
    keys[1] = keys[0] + 8;
    const int off = static_cast<int>(diag_offset(p.bottom_right, e.sq, e.sk));
    const int wl = p.window_left < 0 ? -1 : static_cast<int>(min(p.window_left, int64_t(1) << 30));
    const int wr =
        p.window_right < 0 ? -1 : static_cast<int>(min(p.window_right, int64_t(1) << 30));

    // K-major tiles [D/64][64 rows][64]: k step kk of 16 columns.
    auto kmaj = [](uint64_t base, int kk) -> uint64_t {
      return base + static_cast<uint64_t>(((kk / 4) * 64 * 128 + (kk % 4) * 32) >> 4);
    };
    // MN-major operands: k step of 16 rows.
    auto mnmaj = [](uint64_t base, int kk) -> uint64_t {
      return base + static_cast<uint64_t>((kk * 16 * 128) >> 4);
    };
    const uint64_t dK_a = make_desc(sK, 16, 1024);  // A of S^T
    const uint64_t dV_a = make_desc(sV, 16, 1024);  // A of dP^T
    // B of dQ: K MN-major, d columns 128 cw .. + 128 (two 64-column blocks).
    const uint64_t dK_b = make_desc(sK + 2 * cw * BN * 128, BN * 128, 1024);

    float dk[64], dv[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) dk[i] = dv[i] = 0.0f;
    float dq[64];

    if (nit > 0) mbar_wait(bKV, 0);
    for (int it = 0; it < nit; ++it) {
      const int s = it % ST, buf = it & 1;
      const uint32_t ph = (it / ST) & 1;
      const int q0 = (qb0 + it % nqb) * BM;
      // Every (query, key) of the step visible: no per-element test.
      bool full = q0 + BM <= e.sq && n0 + BN <= e.sk;
      if (full) {
        const KeyRange r0 =
            visible_keys(q0, e.sq, e.sk, p.window_left, p.window_right, p.bottom_right);
        const KeyRange r1 =
            visible_keys(q0 + BM - 1, e.sq, e.sk, p.window_left, p.window_right, p.bottom_right);
        full = r1.lo <= n0 && r0.hi >= n0 + BN - 1;
      }
      // B of S^T / dP^T: the warpgroup's 32 query rows, K-major.
      const uint64_t dQ_b = make_desc(sQ + s * kT + cw * 32 * 128, 16, 1024);
      const uint64_t ddO_b = make_desc(sdO + s * kT + cw * 32 * 128, 16, 1024);

      float sc[16], dp[16];
      mbar_wait(bQf(s), ph);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        Wgmma<T, 32>::ss(sc, kmaj(dK_a, kk), kmaj(dQ_b, kk), kk > 0);
      wgmma_commit();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        Wgmma<T, 32>::ss(dp, kmaj(dV_a, kk), kmaj(ddO_b, kk), kk > 0);
      wgmma_commit();
      mbar_wait(bLf(s), ph);
      wgmma_wait<1>();
      fence_regs<16>(sc);
      // P^T: element 4n + x is key keys[x >> 1], query q0 + 32 cw + 8n + 2t + (x & 1).
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        const float2 l2 = *reinterpret_cast<const float2*>(&sL[s][32 * cw + 8 * n + 2 * t]);
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          const float lv = (x & 1) ? l2.y : l2.x;
          float pr = ex2(fmaf(sc[4 * n + x], sl2, -lv));
          if (!full) {
            const int i = q0 + 32 * cw + 8 * n + 2 * t + (x & 1), j = keys[x >> 1];
            const int d = i + off;
            const bool vis = i < e.sq && j < e.sk && (wl < 0 || j >= d - wl) &&
                             (wr < 0 || j <= d + wr);
            if (!vis) pr = 0.0f;
          }
          sc[4 * n + x] = pr;
        }
      }
      wgmma_wait<0>();
      fence_regs<16>(dp);
      fence_regs<16>(sc);
      // dS^T
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        const float2 d2 = *reinterpret_cast<const float2*>(&sDl[s][32 * cw + 8 * n + 2 * t]);
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          const float dv_ = (x & 1) ? d2.y : d2.x;
          dp[4 * n + x] = sc[4 * n + x] * (dp[4 * n + x] - dv_) * p.scale;
        }
      }
      // P^T and dS^T to shared memory: row = key (128 bytes), 16-byte chunk
      // c = query / 8 stored at c ^ (row % 8) (128B swizzle); conflict-free.
      const uint32_t pbase = sP + buf * 2 * kP;
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = wq * 16 + g + 8 * r, chunk = 4 * cw + n;
          const uint32_t addr = pbase + row * 128 + (((chunk ^ g) & 7) << 4) + 4 * t;
          const uint32_t pv = pack_pair<T>(sc[4 * n + 2 * r], sc[4 * n + 2 * r + 1]);
          const uint32_t dsv = pack_pair<T>(dp[4 * n + 2 * r], dp[4 * n + 2 * r + 1]);
          asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(pv) : "memory");
          asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr + kP), "r"(dsv) : "memory");
        }
      fence_proxy_async();
      named_bar_sync(1, 256);
      wgmma_fence();
      {
        // dQ = dS K first (its atomics then run under dV and dK): A = dS
        // (queries x keys) read MN-major from dS^T's buffer, B = K MN-major.
        const uint64_t aSt = make_desc(pbase + kP, BN * 128, 1024);
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
          Wgmma<T, 128>::tt(dq, mnmaj(aSt, kk), mnmaj(dK_b, kk), kk > 0);
        wgmma_commit();
        const uint64_t aP = make_desc(pbase, 16, 1024);
        const uint64_t aS = make_desc(pbase + kP, 16, 1024);
        // B: dO and Q MN-major, d columns 128 cw .. + 128 (LBO: 64-column blocks).
        const uint64_t bdO = make_desc(sdO + s * kT + 2 * cw * BM * 128, BM * 128, 1024);
        const uint64_t bQ = make_desc(sQ + s * kT + 2 * cw * BM * 128, BM * 128, 1024);
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk)
          Wgmma<T, 128>::st(dv, aP + ((kk * 32) >> 4), mnmaj(bdO, kk), 1);
        wgmma_commit();  // dV alone: its dO blocks free first
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk)
          Wgmma<T, 128>::st(dk, aS + ((kk * 32) >> 4), mnmaj(bQ, kk), 1);
        wgmma_commit();
      }
      wgmma_wait<1>();  // dQ and dV done
      fence_regs<64>(dq);
      fence_regs<64>(dv);
      dq_frag_to_smem(sdO + s * kT + 2 * cw * 8192, dq + 32, wq, g, t);
      wgmma_wait<0>();
      fence_regs<64>(dk);
      fence_regs<64>(dq);
      dq_frag_to_smem(sQ + s * kT + 2 * cw * 8192, dq, wq, g, t);
      fence_proxy_async();
      mbar_arrive(bDqF(s));
      mbar_arrive(bE(s));
    }
    // dK, dV: element 4n + x is key keys[x >> 1], d column 128 cw + 8n + 2t
    // + (x & 1); rows past the sequence are not written.
    T* dkg = static_cast<T*>(p.dk);
    T* dvg = static_cast<T*>(p.dv);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int j = keys[r];
      if (j >= e.sk) continue;
      T* pk = dkg + off4(p.dk_stride, b, hk, e.k_begin + j, 0) + 128 * cw + 2 * t;
      T* pv = dvg + off4(p.dv_stride, b, hk, e.k_begin + j, 0) + 128 * cw + 2 * t;
#pragma unroll
      for (int n = 0; n < 16; ++n) {  // not the zero columns past D / Dv (hopper_kernel_dim)
        const int c = 128 * cw + 8 * n;
        if (c < p.head_dim)
          *reinterpret_cast<uint32_t*>(pk + 8 * n) =
              pack_pair<T>(dk[4 * n + 2 * r], dk[4 * n + 2 * r + 1]);
        if (c < p.head_dim_v)
          *reinterpret_cast<uint32_t*>(pv + 8 * n) =
              pack_pair<T>(dv[4 * n + 2 * r], dv[4 * n + 2 * r + 1]);
      }
    }
  }
#endif
}

// bwd256_{f16,bf16}.cu (bwd256_launch.cuh): the kernel, then
// dq_convert_kernel. dqr: dQ by the TMA reduce (a.tdq set), else atomics.
cudaError_t bwd256_f16(const BwdArgs& a, cudaStream_t s);
cudaError_t bwd256_bf16(const BwdArgs& a, cudaStream_t s);

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
