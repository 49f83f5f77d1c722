// Tensor-core kernels (sm_80+): mma.sync m16n8k16 with fp32 accumulation,
// ldmatrix from padded shared-memory tiles, cp.async double buffering.
// Hand-written PTX (no CUTLASS dependency). Templates over the element type
// T (__half / __nv_bfloat16), the head-dim bucket DP (both D and Dv are
// zero-padded to it) and the tile sizes; instantiated in tc_*.cu from the
// one list in tc_buckets.h.
//
// Every warp owns 16 rows of the "M" side of each matrix product. Fragment
// layouts (PTX ISA, mma.m16n8k16): with g = lane / 4 and t = lane % 4, a C
// fragment holds (row g, cols 2t, 2t+1) in c[0..1] and (row g+8, same cols)
// in c[2..3]; two adjacent C tiles of 8 columns form one A fragment of k=16.
#pragma once

#include "cuda/common.cuh"
#include "cuda/launch.h"

namespace fsdpa {
namespace cuda {

// ---- PTX wrappers -------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
               "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

template <typename T>
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__half>(float* c, const uint32_t* a, uint32_t b0,
                                                 uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float* c, const uint32_t* a, uint32_t b0,
                                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// ---- tiles ----------------------------------------------------------------------
// Pitch of a shared-memory row: DP elements + 16 bytes against bank conflicts
// of ldmatrix.
template <int DP>
constexpr int pitch() { return DP + 8; }

// Loads rows [0, nrows) x cols [0, ncols) of a strided tile into smem rows of
// pitch DP + 8, zero-filling the rest of ROWS x DP.
template <typename T, int ROWS, int DP, int NT>
__device__ __forceinline__ void load_tile(T* sm, const T* g, int64_t ss, int64_t sd, int nrows,
                                          int ncols, bool vec) {
  constexpr int P = pitch<DP>();
  if (vec) {
    constexpr int CH = DP / 8;  // 16-byte chunks per row
    if constexpr (NT % CH == 0 && ROWS % (NT / CH) == 0) {
      // Each thread keeps one column chunk and walks rows NT / CH apart.
      constexpr int STEP = NT / CH;
      const int c = (threadIdx.x % CH) * 8, r0 = threadIdx.x / CH;
      const T* src = g + r0 * ss + c;
      T* dst = sm + r0 * P + c;
      const bool cok = c < ncols;
#pragma unroll
      for (int i = 0; i < ROWS / STEP; ++i) {
        const bool ok = cok && r0 + i * STEP < nrows;
        cp_async16(dst + i * STEP * P, ok ? src : g, ok);
        src += STEP * ss;
      }
    } else {
#pragma unroll 4
      for (int x = threadIdx.x; x < ROWS * CH; x += NT) {
        const int r = x / CH, c = (x % CH) * 8;
        const bool ok = r < nrows && c < ncols;
        cp_async16(sm + r * P + c, ok ? g + r * ss + c : g, ok);
      }
    }
  } else {
    for (int x = threadIdx.x; x < ROWS * DP; x += NT) {
      const int r = x / DP, c = x % DP;
      sm[r * P + c] = (r < nrows && c < ncols) ? g[r * ss + c * sd] : from_f<T>(0.0f);
    }
  }
}

// load_tile for K/V rows read through a page table (AttnParams::block_table):
// rows [0, nrows) are cache positions tok0.. of kv head hk in page-table row
// `row`, each at kv_row_off's address (pages of any size: a tile may span
// several pages, or one page many tiles); zero fill as load_tile.
template <typename T, int ROWS, int DP, int NT>
__device__ __forceinline__ void load_tile_paged(T* sm, const T* base, const AttnParams& p,
                                                const int64_t* st, int64_t row, int64_t hk,
                                                int tok0, int nrows, int ncols, bool vec) {
  constexpr int P = pitch<DP>();
  if (vec) {
    constexpr int CH = DP / 8;  // 16-byte chunks per row
#pragma unroll 4
    for (int x = threadIdx.x; x < ROWS * CH; x += NT) {
      const int r = x / CH, c = (x % CH) * 8;
      const bool ok = r < nrows && c < ncols;
      const T* src = ok ? base + kv_row_off(p, st, row, hk, tok0 + r) + c : base;
      cp_async16(sm + r * P + c, src, ok);
    }
  } else {
    for (int x = threadIdx.x; x < ROWS * DP; x += NT) {
      const int r = x / DP, c = x % DP;
      sm[r * P + c] = (r < nrows && c < ncols)
                          ? base[kv_row_off(p, st, row, hk, tok0 + r) + c * st[3]]
                          : from_f<T>(0.0f);
    }
  }
}

// A fragment (16 x 16) of rows [row0, row0+16), cols [k0, k0+16) of a tile.
template <int DP, typename T>
__device__ __forceinline__ void load_a(uint32_t* a, const T* sm, int row0, int k0, int lane) {
  ldsm_x4(a, sm + (row0 + (lane % 16)) * pitch<DP>() + k0 + (lane / 16) * 8);
}
// B fragments of two n-tiles (n0, n0+8) x k16 where B[k][n] = tile[n][k]
// (tile rows are n): b[0..1] for n0, b[2..3] for n0+8.
template <int DP, typename T>
__device__ __forceinline__ void load_b_rows_n(uint32_t* b, const T* sm, int n0, int k0, int lane) {
  ldsm_x4(b, sm + (n0 + (lane % 8) + (lane / 16) * 8) * pitch<DP>() + k0 + ((lane / 8) % 2) * 8);
}
// B fragments of two n-tiles where B[k][n] = tile[k][n] (tile rows are k).
template <int DP, typename T>
__device__ __forceinline__ void load_b_rows_k(uint32_t* b, const T* sm, int k0, int n0, int lane) {
  ldsm_x4_t(b, sm + (k0 + (lane % 8) + ((lane / 8) % 2) * 8) * pitch<DP>() + n0 + (lane / 16) * 8);
}

// A fragment (16 x 16, rows m, cols k) of a tile stored k-major (tile[k][m],
// row pitch PT elements): rows [m0, m0+16), cols [k0, k0+16).
template <int PT, typename T>
__device__ __forceinline__ void load_a_kmajor(uint32_t* a, const T* sm, int m0, int k0, int lane) {
  ldsm_x4_t(a, sm + (k0 + (lane % 8) + (lane / 16) * 8) * PT + m0 + ((lane / 8) % 2) * 8);
}

// Stores a pair (d, d+1) of row `row` of an output with strides.
template <typename T>
__device__ __forceinline__ void store_pair(T* base, int64_t off, int64_t sd, int d, int dmax,
                                           float x0, float x1, bool vec) {
  if (vec && d + 1 < dmax) {
    *reinterpret_cast<uint32_t*>(base + off + d) = pack2<T>(x0, x1);
    return;
  }
  if (d < dmax) base[off + d * sd] = from_f<T>(x0);
  if (d + 1 < dmax) base[off + (d + 1) * sd] = from_f<T>(x1);
}

// ================================================================================
// Forward. Block: NW warps x 16 query rows; loops over key blocks of BN.
// nsplit > 1: split-KV, the block handles its share of the key blocks and
// writes normalised fp32 partials + lse for splitkv_merge.
// KV: the call has KV-cache parameters (uses_kv_cache): per-sequence key
// ranges (get_kv_seq), cache rows, and with a block_table K/V tiles loaded
// row by row through the page table (load_tile_paged). A template flag, so
// that the kernels of every other call are the code they were.
// ================================================================================
template <typename T, int DP, int BN, int NW, int MFRAGS, bool GENERAL, bool KV = false>
__global__ void __launch_bounds__(NW * 32)
tc_fwd_kernel(AttnParams p, int vec, MaskTiles mt, int nsplit, float* opart, float* lsepart) {
  constexpr int BM = 16 * NW * MFRAGS, P = pitch<DP>(), NT = NW * 32, R = 2 * MFRAGS;
  extern __shared__ __align__(16) char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Ks = Qs + BM * P;
  T* Vs = Ks + 2 * BN * P;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.z / nsplit, h = blockIdx.y;
  const int split = blockIdx.z % nsplit;
  const int m0 = blockIdx.x * BM;
  const Seq e = KV ? get_kv_seq(p, b) : get_seq(p, b);
  if (m0 >= e.sq) return;
  const int64_t hk = h / (p.heads_q / p.heads_k);
  const int D = static_cast<int>(p.head_dim), Dv = static_cast<int>(p.head_dim_v);
  const ScoreCtx c = make_score_ctx(p, b, h, e);
  const DropCtx dc = make_drop_ctx(p);
  constexpr bool elem = GENERAL;  // softcap / ALiBi / mask / dropout
  const float sl2 = p.scale * kLog2e;

  // Key blocks of this (query block, split).
  const int mrows = min(BM, e.sq - m0);
  const KeyRange rfirst = row_range(p, c, m0), rlast = row_range(p, c, m0 + mrows - 1);
  int kb0 = 0, kb1 = -1;
  if (rlast.hi >= rfirst.lo && e.sk > 0) {
    kb0 = static_cast<int>(rfirst.lo / BN);
    kb1 = static_cast<int>(rlast.hi / BN);
  }
  if (nsplit > 1) {
    const int nkb = kb1 - kb0 + 1, per = (nkb + nsplit - 1) / nsplit;
    const int s0 = kb0 + split * per;
    kb1 = min(kb1, s0 + per - 1);
    kb0 = s0;
  }
  // Mask state of key block kb (general variant only): 0 = skip it.
  // (The band-only variant sees block lists only when no tile mixes
  // listed and unlisted keys: states 0 and 1, see sparse_band_only.)
  auto state_of = [&](int kb) -> int {
    if (!GENERAL && p.sparse_state == nullptr) return 2;
    return tile_state(p, mt, b, h, m0, mrows, kb * BN, min(BN, e.sk - kb * BN));
  };
  auto next_kb = [&](int kb) {
    while (kb <= kb1 && state_of(kb) == 0) ++kb;
    return kb;
  };
  int kb = next_kb(kb0);
  // Keys [band_lo_max, band_hi_min] are visible from every row of the block.
  const int band_lo_max = static_cast<int>(rlast.lo);
  const int band_hi_min = static_cast<int>(rfirst.hi);

  const T* qg = static_cast<const T*>(p.q) + off4(p.q_stride, b, h, e.q_begin + m0, 0);
  const T* kg = static_cast<const T*>(p.k) + off4(p.k_stride, b, hk, e.k_begin, 0);
  const T* vg = static_cast<const T*>(p.v) + off4(p.v_stride, b, hk, e.k_begin, 0);
  // KV cache: the sequence's cache row (cache_batch_idx) from k_begin on,
  // or, paged, row by row through its page-table row.
  const int64_t kvrow = KV ? kv_cache_row(p, b) : b;
  const bool paged = KV && p.block_table != nullptr;
  if constexpr (KV) {
    if (!paged) {
      kg = static_cast<const T*>(p.k) + kv_row_off(p, p.k_stride, kvrow, hk, int(e.k_begin));
      vg = static_cast<const T*>(p.v) + kv_row_off(p, p.v_stride, kvrow, hk, int(e.k_begin));
    }
  }
  auto load_kv = [&](int kb, int buf) {
    const int n0 = kb * BN, nr = min(BN, e.sk - n0);
    if constexpr (KV) {
      if (paged) {
        const int tok0 = static_cast<int>(e.k_begin) + n0;
        const T* kbase = static_cast<const T*>(p.k);
        const T* vbase = static_cast<const T*>(p.v);
        load_tile_paged<T, BN, DP, NT>(Ks + buf * BN * P, kbase, p, p.k_stride, kvrow, hk, tok0,
                                       nr, D, vec & kVecK);
        load_tile_paged<T, BN, DP, NT>(Vs + buf * BN * P, vbase, p, p.v_stride, kvrow, hk, tok0,
                                       nr, Dv, vec & kVecV);
        return;
      }
    }
    load_tile<T, BN, DP, NT>(Ks + buf * BN * P, kg + n0 * p.k_stride[2], p.k_stride[2],
                             p.k_stride[3], nr, D, vec & kVecK);
    load_tile<T, BN, DP, NT>(Vs + buf * BN * P, vg + n0 * p.v_stride[2], p.v_stride[2],
                             p.v_stride[3], nr, Dv, vec & kVecV);
  };
  if (kb <= kb1) {
    load_tile<T, BM, DP, NT>(Qs, qg, p.q_stride[2], p.q_stride[3], mrows, D, vec & kVecQ);
    load_kv(kb, 0);
    cp_async_commit();
  }

  // Per-thread rows: r = 2 * mi + (0 -> g, 1 -> g + 8) of the warp's
  // m-fragment mi (MFRAGS fragments of 16 rows per warp share each K/V fragment).
  int rows[R], rlo[R], rhi[R];
  KeyRange rr[R];
  uint32_t drow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    rows[r] = m0 + warp * 16 * MFRAGS + (r / 2) * 16 + lane / 4 + 8 * (r % 2);
    rr[r] = row_range(p, c, rows[r]);
    if (rows[r] >= e.sq) rr[r] = KeyRange{1, 0};
    rlo[r] = static_cast<int>(rr[r].lo);
    rhi[r] = static_cast<int>(rr[r].hi);
    drow[r] = dropout_row_id(b, h, rows[r], p.heads_q, p.seqlen_q);
  }
  float mrow[R], lrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) mrow[r] = neg_inf(), lrow[r] = 0.0f;
  float oacc[MFRAGS][DP / 8][4];
#pragma unroll
  for (int mi = 0; mi < MFRAGS; ++mi)
#pragma unroll
    for (int n = 0; n < DP / 8; ++n)
      oacc[mi][n][0] = oacc[mi][n][1] = oacc[mi][n][2] = oacc[mi][n][3] = 0.0f;

  for (int buf = 0; kb <= kb1; buf ^= 1) {
    const int n0 = kb * BN, kn = next_kb(kb + 1);
    // Mask state 1 without ALiBi/softcap: the band alone decides.
    const int mst = state_of(kb);
    const bool plain = !elem || (mst == 1 && p.alibi == nullptr && p.softcap <= 0.0f);
    cp_async_wait_all();
    __syncthreads();
    if (kn <= kb1) {
      load_kv(kn, buf ^ 1);
      cp_async_commit();
    }
    kb = kn;
    const T* Kb = Ks + buf * BN * P;
    const T* Vb = Vs + buf * BN * P;

    float s[MFRAGS][BN / 8][4];
#pragma unroll
    for (int mi = 0; mi < MFRAGS; ++mi)
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) s[mi][n][0] = s[mi][n][1] = s[mi][n][2] = s[mi][n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
      uint32_t a[MFRAGS][4];
#pragma unroll
      for (int mi = 0; mi < MFRAGS; ++mi) load_a<DP>(a[mi], Qs, (warp * MFRAGS + mi) * 16, kk * 16, lane);
#pragma unroll
      for (int n = 0; n < BN / 8; n += 2) {
        uint32_t bf[4];
        load_b_rows_n<DP>(bf, Kb, n * 8, kk * 16, lane);
#pragma unroll
        for (int mi = 0; mi < MFRAGS; ++mi) {
          mma16816<T>(s[mi][n], a[mi], bf[0], bf[1]);
          mma16816<T>(s[mi][n + 1], a[mi], bf[2], bf[3]);
        }
      }
    }

    // Scores (log2 domain), online softmax. A block inside every row's band
    // (and without mask work) needs no per-element test.
    float mx[R];
#pragma unroll
    for (int r = 0; r < R; ++r) mx[r] = neg_inf();
    if (plain && n0 >= band_lo_max && n0 + BN - 1 <= band_hi_min) {
#pragma unroll
      for (int mi = 0; mi < MFRAGS; ++mi)
#pragma unroll
        for (int n = 0; n < BN / 8; ++n)
#pragma unroll
          for (int x = 0; x < 4; ++x) {
            s[mi][n][x] *= sl2;
            mx[2 * mi + x / 2] = fmaxf(mx[2 * mi + x / 2], s[mi][n][x]);
          }
    } else {
#pragma unroll
      for (int mi = 0; mi < MFRAGS; ++mi)
#pragma unroll
        for (int n = 0; n < BN / 8; ++n)
#pragma unroll
          for (int x = 0; x < 4; ++x) {
            const int r = 2 * mi + x / 2, j = n0 + n * 8 + 2 * (lane % 4) + (x % 2);
            float v;
            if (plain) {
              v = (j >= rlo[r] && j <= rhi[r]) ? s[mi][n][x] * sl2 : neg_inf();
            } else {
              float t;
              v = score_of(p, c, s[mi][n][x], rows[r], j, rr[r], &t, mst != 1) * kLog2e;
            }
            s[mi][n][x] = v;
            mx[r] = fmaxf(mx[r], v);
          }
    }
    float alpha[R], muse[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mnew = fmaxf(mrow[r], mx[r]);
      muse[r] = mnew == neg_inf() ? 0.0f : mnew;
      alpha[r] = exp2f(mrow[r] - muse[r]);
      mrow[r] = mnew;
      lrow[r] *= alpha[r];
    }
#pragma unroll
    for (int mi = 0; mi < MFRAGS; ++mi)
#pragma unroll
      for (int n = 0; n < DP / 8; ++n) {
        oacc[mi][n][0] *= alpha[2 * mi];
        oacc[mi][n][1] *= alpha[2 * mi];
        oacc[mi][n][2] *= alpha[2 * mi + 1];
        oacc[mi][n][3] *= alpha[2 * mi + 1];
      }
#pragma unroll
    for (int mi = 0; mi < MFRAGS; ++mi)
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          const float pr = exp2f(s[mi][n][x] - muse[2 * mi + x / 2]);
          lrow[2 * mi + x / 2] += pr;
          s[mi][n][x] = pr;
        }
        if (GENERAL && dc.on) {
          const int j = n0 + n * 8 + 2 * (lane % 4);
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            float z0, z1;
            drop_factor2(dc, drow[2 * mi + r], j, &z0, &z1);
            s[mi][n][2 * r] *= z0;
            s[mi][n][2 * r + 1] *= z1;
          }
        }
      }
    // O += P V
#pragma unroll
    for (int ks = 0; ks < BN / 16; ++ks) {
      uint32_t a[MFRAGS][4];
#pragma unroll
      for (int mi = 0; mi < MFRAGS; ++mi) {
        a[mi][0] = pack2<T>(s[mi][2 * ks][0], s[mi][2 * ks][1]);
        a[mi][1] = pack2<T>(s[mi][2 * ks][2], s[mi][2 * ks][3]);
        a[mi][2] = pack2<T>(s[mi][2 * ks + 1][0], s[mi][2 * ks + 1][1]);
        a[mi][3] = pack2<T>(s[mi][2 * ks + 1][2], s[mi][2 * ks + 1][3]);
      }
#pragma unroll
      for (int n = 0; n < DP / 8; n += 2) {
        uint32_t bf[4];
        load_b_rows_k<DP>(bf, Vb, ks * 16, n * 8, lane);
#pragma unroll
        for (int mi = 0; mi < MFRAGS; ++mi) {
          mma16816<T>(oacc[mi][n], a[mi], bf[0], bf[1]);
          mma16816<T>(oacc[mi][n + 1], a[mi], bf[2], bf[3]);
        }
      }
    }
  }

  // Epilogue.
  const int64_t rows_total = p.total_q * p.heads_q;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int mi = r / 2, rr2 = r % 2;
    float l = lrow[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    // l == 0: nothing attended (out 0, never the 0 * NaN of a masked V).
    // A NaN or +inf score made l NaN (exp2 keeps NaN; fmaxf skipped it in
    // the max): inv and lse are NaN too, as in PyTorch.
    const bool empty = l == 0.0f;
    const float inv = empty ? 0.0f : 1.0f / l;
    const float lse = empty ? neg_inf() : (mrow[r] + log2f(l)) * kLn2;
    auto scaled = [empty, inv](float o) { return empty ? 0.0f : o * inv; };
    const int i = rows[r];
    if (i >= e.sq) continue;
    if (nsplit == 1) {
      T* og = static_cast<T*>(p.out);
      const int64_t off = off4(p.out_stride, b, h, e.q_begin + i, 0);
#pragma unroll
      for (int n = 0; n < DP / 8; ++n)
        store_pair<T>(og, off, p.out_stride[3], n * 8 + 2 * (lane % 4), Dv,
                      scaled(oacc[mi][n][2 * rr2]), scaled(oacc[mi][n][2 * rr2 + 1]), vec & kVecO);
      if (p.lse && lane % 4 == 0)
        p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + (e.q_begin + i) * p.lse_stride[2]] = lse;
    } else {
      const int64_t row = split * rows_total + q_token(p, b, e, i) * p.heads_q + h;
#pragma unroll
      for (int n = 0; n < DP / 8; ++n) {
        const int d = n * 8 + 2 * (lane % 4);
        *reinterpret_cast<float2*>(opart + row * DP + d) =
            make_float2(scaled(oacc[mi][n][2 * rr2]), scaled(oacc[mi][n][2 * rr2 + 1]));
      }
      if (lane % 4 == 0) lsepart[row] = lse;
    }
  }
}

// ================================================================================
// Backward, dQ: block of NW warps x 16 query rows loops over key blocks
// (deterministic, no atomics). Recomputes S and dP = dO V^T.
// ================================================================================
template <typename T, int DP, int BN, int NW, bool GENERAL>
__global__ void __launch_bounds__(NW * 32)
tc_dq_kernel(AttnParams p, int vec, MaskTiles mt, const float* dsum) {
  constexpr int BM = 16 * NW, P = pitch<DP>(), NT = NW * 32;
  extern __shared__ __align__(16) char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* dOs = Qs + BM * P;
  T* Ks = dOs + BM * P;
  T* Vs = Ks + 2 * BN * P;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int m0 = blockIdx.x * BM;
  const Seq e = get_seq(p, b);
  if (m0 >= e.sq) return;
  const int64_t hk = h / (p.heads_q / p.heads_k);
  const int D = static_cast<int>(p.head_dim), Dv = static_cast<int>(p.head_dim_v);
  const ScoreCtx c = make_score_ctx(p, b, h, e);
  const DropCtx dc = make_drop_ctx(p);
  constexpr bool elem = GENERAL;  // softcap / ALiBi / mask / dropout

  const int mrows = min(BM, e.sq - m0);
  const KeyRange rfirst = row_range(p, c, m0), rlast = row_range(p, c, m0 + mrows - 1);
  int kb0 = 0, kb1 = -1;
  if (rlast.hi >= rfirst.lo && e.sk > 0) {
    kb0 = static_cast<int>(rfirst.lo / BN);
    kb1 = static_cast<int>(rlast.hi / BN);
  }
  // (The band-only variant sees block lists only when no tile mixes
  // listed and unlisted keys: states 0 and 1, see sparse_band_only.)
  auto state_of = [&](int kb) -> int {
    if (!GENERAL && p.sparse_state == nullptr) return 2;
    return tile_state(p, mt, b, h, m0, mrows, kb * BN, min(BN, e.sk - kb * BN));
  };
  auto next_kb = [&](int kb) {
    while (kb <= kb1 && state_of(kb) == 0) ++kb;
    return kb;
  };
  int kb = next_kb(kb0);

  const T* qg = static_cast<const T*>(p.q) + off4(p.q_stride, b, h, e.q_begin + m0, 0);
  const T* dog = static_cast<const T*>(p.dout) + off4(p.dout_stride, b, h, e.q_begin + m0, 0);
  const T* kg = static_cast<const T*>(p.k) + off4(p.k_stride, b, hk, e.k_begin, 0);
  const T* vg = static_cast<const T*>(p.v) + off4(p.v_stride, b, hk, e.k_begin, 0);
  auto load_kv = [&](int kb, int buf) {
    const int n0 = kb * BN, nr = min(BN, e.sk - n0);
    load_tile<T, BN, DP, NT>(Ks + buf * BN * P, kg + n0 * p.k_stride[2], p.k_stride[2],
                             p.k_stride[3], nr, D, vec & kVecK);
    load_tile<T, BN, DP, NT>(Vs + buf * BN * P, vg + n0 * p.v_stride[2], p.v_stride[2],
                             p.v_stride[3], nr, Dv, vec & kVecV);
  };
  if (kb <= kb1) {
    load_tile<T, BM, DP, NT>(Qs, qg, p.q_stride[2], p.q_stride[3], mrows, D, vec & kVecQ);
    load_tile<T, BM, DP, NT>(dOs, dog, p.dout_stride[2], p.dout_stride[3], mrows, Dv,
                             vec & kVecDO);
    load_kv(kb, 0);
    cp_async_commit();
  }

  int rows[2], rlo[2], rhi[2];
  KeyRange rr[2];
  uint32_t drow[2];
  float lse2[2], Di[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    rows[r] = m0 + warp * 16 + lane / 4 + 8 * r;
    rr[r] = row_range(p, c, rows[r]);
    lse2[r] = neg_inf();
    Di[r] = 0.0f;
    if (rows[r] >= e.sq) {
      rr[r] = KeyRange{1, 0};
    } else {
      lse2[r] = p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] +
                      (e.q_begin + rows[r]) * p.lse_stride[2]] * kLog2e;
      Di[r] = dsum[q_token(p, b, e, rows[r]) * p.heads_q + h];
    }
    drow[r] = dropout_row_id(b, h, rows[r], p.heads_q, p.seqlen_q);
    rlo[r] = static_cast<int>(rr[r].lo);
    rhi[r] = static_cast<int>(rr[r].hi);
  }
  float dq[DP / 8][4];
#pragma unroll
  for (int n = 0; n < DP / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

  for (int buf = 0; kb <= kb1; buf ^= 1) {
    const int n0 = kb * BN, kn = next_kb(kb + 1);
    const int mst = state_of(kb);
    const bool plain = !elem || (mst == 1 && p.alibi == nullptr && p.softcap <= 0.0f);
    cp_async_wait_all();
    __syncthreads();
    if (kn <= kb1) {
      load_kv(kn, buf ^ 1);
      cp_async_commit();
    }
    kb = kn;
    const T* Kb = Ks + buf * BN * P;
    const T* Vb = Vs + buf * BN * P;

    float s[BN / 8][4], dp[BN / 8][4];
#pragma unroll
    for (int n = 0; n < BN / 8; ++n)
#pragma unroll
      for (int x = 0; x < 4; ++x) s[n][x] = dp[n][x] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
      uint32_t a[4], a2[4];
      load_a<DP>(a, Qs, warp * 16, kk * 16, lane);
      load_a<DP>(a2, dOs, warp * 16, kk * 16, lane);
#pragma unroll
      for (int n = 0; n < BN / 8; n += 2) {
        uint32_t bf[4];
        load_b_rows_n<DP>(bf, Kb, n * 8, kk * 16, lane);
        mma16816<T>(s[n], a, bf[0], bf[1]);
        mma16816<T>(s[n + 1], a, bf[2], bf[3]);
        load_b_rows_n<DP>(bf, Vb, n * 8, kk * 16, lane);
        mma16816<T>(dp[n], a2, bf[0], bf[1]);
        mma16816<T>(dp[n + 1], a2, bf[2], bf[3]);
      }
    }
    // dS = P * (dP * Z - D) * softcap' * scale, in place of s.
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) {
      float z[4] = {1.0f, 1.0f, 1.0f, 1.0f};
      if (GENERAL && dc.on) {
        const int j = n0 + n * 8 + 2 * (lane % 4);
        drop_factor2(dc, drow[0], j, &z[0], &z[1]);
        drop_factor2(dc, drow[1], j, &z[2], &z[3]);
      }
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int r = x / 2, j = n0 + n * 8 + 2 * (lane % 4) + (x % 2);
        float v, t = 0.0f;
        if (plain)
          v = (j >= rlo[r] && j <= rhi[r]) ? s[n][x] * p.scale : neg_inf();
        else
          v = score_of(p, c, s[n][x], rows[r], j, rr[r], &t, mst != 1);
        const float pr = (v == neg_inf() || lse2[r] == neg_inf()) ? 0.0f
                                                                   : exp2f(v * kLog2e - lse2[r]);
        float ds = pr * (dp[n][x] * z[x] - Di[r]);
        if (c.softcap > 0.0f) ds *= 1.0f - t * t;
        s[n][x] = ds * p.scale;
      }
    }
    // dQ += dS K
#pragma unroll
    for (int ks = 0; ks < BN / 16; ++ks) {
      uint32_t a[4];
      a[0] = pack2<T>(s[2 * ks][0], s[2 * ks][1]);
      a[1] = pack2<T>(s[2 * ks][2], s[2 * ks][3]);
      a[2] = pack2<T>(s[2 * ks + 1][0], s[2 * ks + 1][1]);
      a[3] = pack2<T>(s[2 * ks + 1][2], s[2 * ks + 1][3]);
#pragma unroll
      for (int n = 0; n < DP / 8; n += 2) {
        uint32_t bf[4];
        load_b_rows_k<DP>(bf, Kb, ks * 16, n * 8, lane);
        mma16816<T>(dq[n], a, bf[0], bf[1]);
        mma16816<T>(dq[n + 1], a, bf[2], bf[3]);
      }
    }
  }
  T* dqg = static_cast<T*>(p.dq);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = rows[r];
    if (i >= e.sq) continue;
    const int64_t off = off4(p.dq_stride, b, h, e.q_begin + i, 0);
#pragma unroll
    for (int n = 0; n < DP / 8; ++n)
      store_pair<T>(dqg, off, p.dq_stride[3], n * 8 + 2 * (lane % 4), D, dq[n][2 * r],
                    dq[n][2 * r + 1], false);
  }
}

// ================================================================================
// Backward, dK and dV: block of NW warps x 16 keys loops over the query heads
// of its GQA group and their query blocks of BM rows (deterministic).
// ATOMIC_DQ (non-deterministic backward): the block also adds dS K of its keys to
// the fp32 dQ workspace dqacc[(token * Hq + h) * DP + d] with atomics
// (5 matrix products instead of 7; no dQ kernel).
// ================================================================================
template <typename T, int DP, int BM, int NW, bool GENERAL, bool ATOMIC_DQ>
__global__ void __launch_bounds__(NW * 32)
tc_dkdv_kernel(AttnParams p, int vec, MaskTiles mt, const float* dsum, float* dqacc) {
  constexpr int BN = 16 * NW, P = pitch<DP>(), NT = NW * 32;
  extern __shared__ __align__(16) char smem_raw[];
  T* Ks = reinterpret_cast<T*>(smem_raw);
  T* Vs = Ks + BN * P;
  T* Qs = Vs + BN * P;
  T* dOs = Qs + 2 * BM * P;
  float* lse_s = reinterpret_cast<float*>(dOs + 2 * BM * P);
  float* D_s = lse_s + 2 * BM;
  constexpr int PS = BM + 8;  // pitch of dS^T in shared memory (ATOMIC_DQ)
  T* dSt = reinterpret_cast<T*>(D_s + 2 * BM);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.z, hk = blockIdx.y;
  const int n0 = blockIdx.x * BN;
  const Seq e = get_seq(p, b);
  if (n0 >= e.sk) return;
  const int group = static_cast<int>(p.heads_q / p.heads_k);
  const int D = static_cast<int>(p.head_dim), Dv = static_cast<int>(p.head_dim_v);
  const DropCtx dc = make_drop_ctx(p);
  constexpr bool elem = GENERAL;  // softcap / ALiBi / mask / dropout
  const int nrows_k = min(BN, e.sk - n0);

  int ilo, ihi;
  rows_for_keys(p, e, n0, n0 + nrows_k - 1, &ilo, &ihi);
  int qb0 = 0, nqb = 0;
  if (ihi >= ilo) {
    qb0 = ilo / BM;
    nqb = ihi / BM - qb0 + 1;
  }
  const int nit = nqb * group;
  auto state_of = [&](int itx) -> int {
    if (!GENERAL && p.sparse_state == nullptr) return 2;
    const int q0 = (qb0 + itx % nqb) * BM;
    return tile_state(p, mt, b, hk * group + itx / nqb, q0, min(BM, e.sq - q0), n0, nrows_k);
  };
  auto next_it = [&](int itx) {
    while (itx < nit && state_of(itx) == 0) ++itx;
    return itx;
  };
  int it = next_it(0);

  const T* kg = static_cast<const T*>(p.k) + off4(p.k_stride, b, hk, e.k_begin + n0, 0);
  const T* vg = static_cast<const T*>(p.v) + off4(p.v_stride, b, hk, e.k_begin + n0, 0);
  auto load_q = [&](int itx, int buf) {
    const int64_t h = hk * group + itx / nqb;
    const int q0 = (qb0 + itx % nqb) * BM, nr = min(BM, e.sq - q0);
    const T* qg = static_cast<const T*>(p.q) + off4(p.q_stride, b, h, e.q_begin + q0, 0);
    const T* dog = static_cast<const T*>(p.dout) + off4(p.dout_stride, b, h, e.q_begin + q0, 0);
    load_tile<T, BM, DP, NT>(Qs + buf * BM * P, qg, p.q_stride[2], p.q_stride[3], nr, D,
                             vec & kVecQ);
    load_tile<T, BM, DP, NT>(dOs + buf * BM * P, dog, p.dout_stride[2], p.dout_stride[3], nr, Dv,
                             vec & kVecDO);
    for (int r = threadIdx.x; r < BM; r += NT) {
      float l = neg_inf(), dd = 0.0f;
      if (r < nr) {
        l = p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] +
                  (e.q_begin + q0 + r) * p.lse_stride[2]] * kLog2e;
        dd = dsum[q_token(p, b, e, q0 + r) * p.heads_q + h];
      }
      lse_s[buf * BM + r] = l;
      D_s[buf * BM + r] = dd;
    }
  };
  if (it < nit) {
    load_tile<T, BN, DP, NT>(Ks, kg, p.k_stride[2], p.k_stride[3], nrows_k, D, vec & kVecK);
    load_tile<T, BN, DP, NT>(Vs, vg, p.v_stride[2], p.v_stride[3], nrows_k, Dv, vec & kVecV);
    load_q(it, 0);
    cp_async_commit();
  }

  int keys[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) keys[r] = n0 + warp * 16 + lane / 4 + 8 * r;
  // Band of the fast path in 32-bit arithmetic (sizes fit int32).
  const int off = static_cast<int>(diag_offset(p.bottom_right, e.sq, e.sk));
  const int wl = p.window_left < 0 ? -1 : static_cast<int>(min(p.window_left, int64_t(1) << 30));
  const int wr = p.window_right < 0 ? -1 : static_cast<int>(min(p.window_right, int64_t(1) << 30));
  float dk[DP / 8][4], dv[DP / 8][4];
#pragma unroll
  for (int n = 0; n < DP / 8; ++n)
#pragma unroll
    for (int x = 0; x < 4; ++x) dk[n][x] = dv[n][x] = 0.0f;

  for (int buf = 0; it < nit; buf ^= 1) {
    const int64_t h = hk * group + it / nqb;
    const int q0 = (qb0 + it % nqb) * BM;
    const int itn = next_it(it + 1);
    const int mst = state_of(it);
    const bool plain = !elem || (mst == 1 && p.alibi == nullptr && p.softcap <= 0.0f);

    cp_async_wait_all();
    __syncthreads();
    if (itn < nit) {
      load_q(itn, buf ^ 1);
      cp_async_commit();
    }
    it = itn;
    const T* Qb = Qs + buf * BM * P;
    const T* dOb = dOs + buf * BM * P;
    const ScoreCtx c = make_score_ctx(p, b, h, e);

    // S^T = K Q^T and dP^T = V dO^T (rows: keys, cols: queries).
    float s[BM / 8][4], dp[BM / 8][4];
#pragma unroll
    for (int n = 0; n < BM / 8; ++n)
#pragma unroll
      for (int x = 0; x < 4; ++x) s[n][x] = dp[n][x] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
      uint32_t a[4], a2[4];
      load_a<DP>(a, Ks, warp * 16, kk * 16, lane);
      load_a<DP>(a2, Vs, warp * 16, kk * 16, lane);
#pragma unroll
      for (int n = 0; n < BM / 8; n += 2) {
        uint32_t bf[4];
        load_b_rows_n<DP>(bf, Qb, n * 8, kk * 16, lane);
        mma16816<T>(s[n], a, bf[0], bf[1]);
        mma16816<T>(s[n + 1], a, bf[2], bf[3]);
        load_b_rows_n<DP>(bf, dOb, n * 8, kk * 16, lane);
        mma16816<T>(dp[n], a2, bf[0], bf[1]);
        mma16816<T>(dp[n + 1], a2, bf[2], bf[3]);
      }
    }
    // P^T * Z into s, dS^T into dp.
#pragma unroll
    for (int n = 0; n < BM / 8; ++n)
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int col = n * 8 + 2 * (lane % 4) + (x % 2);
        const int i = q0 + col, j = keys[x / 2];
        float pz = 0.0f, ds = 0.0f;
        if (i < e.sq && j < e.sk) {
          float v, t = 0.0f;
          if (plain) {
            const int d = i + off;
            const bool vis = (wl < 0 || j >= d - wl) && (wr < 0 || j <= d + wr);
            v = vis ? s[n][x] * p.scale : neg_inf();
          } else {
            v = score_of(p, c, s[n][x], i, j, row_range(p, c, i), &t, mst != 1);
          }
          const float l2 = lse_s[buf * BM + col];
          const float pr = (v == neg_inf() || l2 == neg_inf()) ? 0.0f : exp2f(v * kLog2e - l2);
          const float z =
              (GENERAL && dc.on) ? drop_factor(dc, dropout_row_id(b, h, i, p.heads_q, p.seqlen_q), j) : 1.0f;
          pz = pr * z;
          ds = pr * (dp[n][x] * z - D_s[buf * BM + col]);
          if (c.softcap > 0.0f) ds *= 1.0f - t * t;
          ds *= p.scale;
        }
        s[n][x] = pz;
        dp[n][x] = ds;
      }
    // dV += (P Z)^T dO ; dK += dS^T Q
#pragma unroll
    for (int ks = 0; ks < BM / 16; ++ks) {
      uint32_t a[4], a2[4];
      a[0] = pack2<T>(s[2 * ks][0], s[2 * ks][1]);
      a[1] = pack2<T>(s[2 * ks][2], s[2 * ks][3]);
      a[2] = pack2<T>(s[2 * ks + 1][0], s[2 * ks + 1][1]);
      a[3] = pack2<T>(s[2 * ks + 1][2], s[2 * ks + 1][3]);
      a2[0] = pack2<T>(dp[2 * ks][0], dp[2 * ks][1]);
      a2[1] = pack2<T>(dp[2 * ks][2], dp[2 * ks][3]);
      a2[2] = pack2<T>(dp[2 * ks + 1][0], dp[2 * ks + 1][1]);
      a2[3] = pack2<T>(dp[2 * ks + 1][2], dp[2 * ks + 1][3]);
#pragma unroll
      for (int n = 0; n < DP / 8; n += 2) {
        uint32_t bf[4];
        load_b_rows_k<DP>(bf, dOb, ks * 16, n * 8, lane);
        mma16816<T>(dv[n], a, bf[0], bf[1]);
        mma16816<T>(dv[n + 1], a, bf[2], bf[3]);
        load_b_rows_k<DP>(bf, Qb, ks * 16, n * 8, lane);
        mma16816<T>(dk[n], a2, bf[0], bf[1]);
        mma16816<T>(dk[n + 1], a2, bf[2], bf[3]);
      }
      if constexpr (ATOMIC_DQ) {
        // dS^T (keys x queries) to shared memory, rounded as in the products.
        uint32_t* r0 = reinterpret_cast<uint32_t*>(dSt + (warp * 16 + lane / 4) * PS +
                                                   ks * 16 + 2 * (lane % 4));
        r0[0] = a2[0];
        r0[4 * PS] = a2[1];  // row g + 8 (PS / 2 words per row)
        r0[4] = a2[2];
        r0[4 * PS + 4] = a2[3];
      }
    }
    if constexpr (ATOMIC_DQ) {
      // dQ[BM x DP] += dS K: warp -> 16 query rows x a share of the columns.
      __syncthreads();
      constexpr int RG = BM / 16, WPR = NW / RG, CWARP = DP / WPR;
      constexpr int CW = CWARP % 64 == 0 ? 64 : (CWARP % 32 == 0 ? 32 : 16);
      static_assert(NW % RG == 0 && DP % WPR == 0 && CWARP % 16 == 0, "dQ split");
      const int rg = warp % RG, cbase = (warp / RG) * CWARP;
      uint32_t af[BN / 16][4];
#pragma unroll
      for (int ks = 0; ks < BN / 16; ++ks) load_a_kmajor<PS>(af[ks], dSt, rg * 16, ks * 16, lane);
      int64_t rowoff[2];
      bool rok[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = q0 + rg * 16 + lane / 4 + 8 * r;
        rok[r] = i < e.sq;
        rowoff[r] = rok[r] ? (q_token(p, b, e, i) * p.heads_q + h) * DP : 0;
      }
#pragma unroll
      for (int c0 = 0; c0 < CWARP; c0 += CW) {
        if (cbase + c0 >= D) break;
        float acc[CW / 8][4];
#pragma unroll
        for (int n = 0; n < CW / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < BN / 16; ++ks)
#pragma unroll
          for (int n = 0; n < CW / 8; n += 2) {
            uint32_t bf[4];
            load_b_rows_k<DP>(bf, Ks, ks * 16, cbase + c0 + n * 8, lane);
            mma16816<T>(acc[n], af[ks], bf[0], bf[1]);
            mma16816<T>(acc[n + 1], af[ks], bf[2], bf[3]);
          }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if (!rok[r]) continue;
          float* dst = dqacc + rowoff[r] + cbase + c0 + 2 * (lane % 4);
#pragma unroll
          for (int n = 0; n < CW / 8; ++n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            atomicAdd(reinterpret_cast<float2*>(dst + n * 8),
                      make_float2(acc[n][2 * r], acc[n][2 * r + 1]));
#else
            atomicAdd(dst + n * 8, acc[n][2 * r]);
            atomicAdd(dst + n * 8 + 1, acc[n][2 * r + 1]);
#endif
          }
        }
      }
    }
  }
  T* dkg = static_cast<T*>(p.dk);
  T* dvg = static_cast<T*>(p.dv);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = keys[r];
    if (j >= e.sk) continue;
    const int64_t ok = off4(p.dk_stride, b, hk, e.k_begin + j, 0);
    const int64_t ov = off4(p.dv_stride, b, hk, e.k_begin + j, 0);
#pragma unroll
    for (int n = 0; n < DP / 8; ++n) {
      const int d = n * 8 + 2 * (lane % 4);
      store_pair<T>(dkg, ok, p.dk_stride[3], d, D, dk[n][2 * r], dk[n][2 * r + 1], false);
      store_pair<T>(dvg, ov, p.dv_stride[3], d, Dv, dv[n][2 * r], dv[n][2 * r + 1], false);
    }
  }
}

// dq = dqacc (fp32 [token * Hq + h][dp]) in the output dtype, rows of every
// sequence. Grid: (row blocks, Hq, B). VEC8 (dq_convert_vec8): 8 elements
// per thread, two 16-byte loads and one 16-byte store (H100, bf16, D 128,
// 32k tokens x 16 heads: 134 us, against 181 with a pair per thread);
// else a pair.
template <typename T, bool VEC8>
__global__ void dq_convert_kernel(AttnParams p, const float* dqacc, int dp) {
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const Seq e = get_seq(p, b);
  const int D = static_cast<int>(p.head_dim);
  constexpr int kPer = VEC8 ? 8 : 2;
  const int hd = (D + kPer - 1) / kPer;  // units per row
  T* dqg = static_cast<T*>(p.dq);
  for (int x = blockIdx.x * blockDim.x + threadIdx.x; x < e.sq * hd; x += gridDim.x * blockDim.x) {
    const int i = x / hd, d = (x % hd) * kPer;
    const float* src = dqacc + (q_token(p, b, e, i) * p.heads_q + h) * dp + d;
    const int64_t off = off4(p.dq_stride, b, h, e.q_begin + i, 0);
    if constexpr (VEC8) {
      const float4 u = *reinterpret_cast<const float4*>(src);
      const float4 w = *reinterpret_cast<const float4*>(src + 4);
      *reinterpret_cast<uint4*>(dqg + off + d) =
          make_uint4(pack2<T>(u.x, u.y), pack2<T>(u.z, u.w), pack2<T>(w.x, w.y), pack2<T>(w.z, w.w));
    } else {
      const bool vec = p.dq_stride[3] == 1 && D % 2 == 0;
      store_pair<T>(dqg, off, p.dq_stride[3], d, D, src[0], d + 1 < D ? src[1] : 0.0f,
                    vec && (reinterpret_cast<uintptr_t>(dqg + off) % 4 == 0));
    }
  }
}

// 16-byte dq rows and workspace rows.
inline bool dq_convert_vec8(const AttnParams& p, int dp) {
  return p.head_dim % 8 == 0 && dp % 4 == 0 && rows16(p.dq, p.dq_stride);
}

template <typename T>
void launch_dq_convert(const AttnParams& p, const float* dqacc, int dp, cudaStream_t s) {
  const bool v8 = dq_convert_vec8(p, dp);
  const int per = v8 ? 8 : 2;
  const int64_t work = (p.seqlen_q * ((p.head_dim + per - 1) / per) + 255) / 256;
  const dim3 grid(static_cast<unsigned>(work < 1024 ? work : 1024), p.heads_q, p.batch);
  if (grid.x == 0) return;
  if (v8)
    dq_convert_kernel<T, true><<<grid, 256, 0, s>>>(p, dqacc, dp);
  else
    dq_convert_kernel<T, false><<<grid, 256, 0, s>>>(p, dqacc, dp);
}

}  // namespace cuda
}  // namespace fsdpa
