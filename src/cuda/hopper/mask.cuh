// Masks in the Hopper forward: which key blocks a tile loads (block
// skipping from the 32x32 tile flags of MaskTiles, cuda/launch.h) and the
// per-element mask on the S accumulator fragment of the blocks that need it.
//
// Key-block sequence: the producer's warp 0 walks the live blocks (tile
// state != 0) of a tile's band (BlockCursor: 32 blocks at a time, one per
// lane, then a ballot, so the flags of a chunk cost one memory latency)
// and loads only those. With each K block it writes to shared memory the
// block's index, whether it is the tile's last, and the state of every
// consumer warpgroup's 64 rows: 1 = the mask changes nothing there
// (today's band-only path), 0 = every score masked (the fragment is set
// to -inf, no loads), 2 = per element. The consumers read that after the
// K block's full barrier instead of walking the flags themselves (a cursor
// in the consumers' main loop cost them registers: ptxas spilled O and P).
// A tile with no live block gets its Q slot's full barrier without a load
// and a 0 in the slot's info word: the consumers write 0 / -inf.
#pragma once

#include "cuda/common.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {

// Template argument of the kernel: the mask and its element type.
enum MaskMode : int {
  kMaskNone = 0,
  kMaskBool = 1,     // u8, 0 = masked
  kMaskAddF32 = 2,   // additive, float32
  kMaskAddF16 = 3,   // additive, float16
  kMaskAddBF16 = 4,  // additive, bfloat16
};

// Element type of the mask of mode MK, and its value as a float (bool:
// 1 kept, 0 masked).
template <int MK> struct MaskElem { using type = uint8_t; };
template <> struct MaskElem<kMaskAddF32> { using type = float; };
template <> struct MaskElem<kMaskAddF16> { using type = __half; };
template <> struct MaskElem<kMaskAddBF16> { using type = __nv_bfloat16; };

template <int MK>
__device__ __forceinline__ float mask_load(const typename MaskElem<MK>::type* ptr) {
  if constexpr (MK == kMaskBool) return __ldg(ptr) != 0 ? 1.0f : 0.0f;
  else if constexpr (MK == kMaskAddF32) return __ldg(ptr);
  else if constexpr (MK == kMaskAddF16) return __half2float(__ldg(ptr));
  else return __bfloat162float(__ldg(ptr));
}

// The mask value v on raw score x (raw dot-product units, as the softmax
// keeps them): bool 0 -> -inf; additive x + v / scale (the softmax
// multiplies by scale * log2 e, so this adds v * log2 e in its exp2 domain).
template <int MK>
__device__ __forceinline__ float mask_apply(float x, float v, float inv_scale) {
  if constexpr (MK == kMaskBool) return v != 0.0f ? x : neg_inf();
  else {
    // A masking value gives -inf whatever x is (NaN too): core/semantics.h add_mask_value.
    const float a = additive_mask_value(v);
    return a == neg_inf() ? a : fmaf(a, inv_scale, x);
  }
}

// States of key block kb (BN keys) for the tile's rows [m0, m0 + mrows)
// (m0 a multiple of 32, at most BM rows): the tile's, returned, and, in
// *wsp, 2 bits per warpgroup w (rows 64 w.. of the tile; 1 when none of
// them is in the sequence). The same aggregation as mask_state()
// (common.cuh), with the loop bounds known at compile time so that every
// flag load is issued at once.
template <int BM, int BN>
__device__ __forceinline__ int block_states(const MaskTiles& mt, const uint8_t* f, int m0,
                                            int mrows, int kb, int sk, uint32_t* wsp) {
  constexpr int NW = BM / 64;
  const int ti0 = m0 / kMaskTile, nti = (mrows + kMaskTile - 1) / kMaskTile;
  const int tj0 = kb * (BN / kMaskTile);
  const int ntj = (min(BN, sk - kb * BN) + kMaskTile - 1) / kMaskTile;
  bool a0 = true, a1 = true, w0[NW], w1[NW];
#pragma unroll
  for (int w = 0; w < NW; ++w) w0[w] = w1[w] = true;
#pragma unroll
  for (int a = 0; a < BM / kMaskTile; ++a)
#pragma unroll
    for (int c = 0; c < BN / kMaskTile; ++c)
      if (a < nti && c < ntj) {
        const uint8_t v = __ldg(f + int64_t(ti0 + a) * mt.ntj + tj0 + c);
        a0 = a0 && v == 0;
        a1 = a1 && v == 1;
        w0[a / 2] = w0[a / 2] && v == 0;
        w1[a / 2] = w1[a / 2] && v == 1;
      }
  uint32_t pk = 0;
#pragma unroll
  for (int w = 0; w < NW; ++w) pk |= uint32_t(w1[w] ? 1 : w0[w] ? 0 : 2) << (2 * w);
  *wsp = pk;
  return a0 ? 0 : a1 ? 1 : 2;
}

// What BlockCursor needs to know of the tile.
struct CursorCtx {
  int64_t b;
  int h, m0, mrows, kb1, sk;
};

// The producer's walk over the live key blocks of one tile, warp-uniform
// (every lane of warp 0 calls it with the same arguments): the states of
// 32 blocks at a time, one block per lane, then a ballot; the warpgroup
// states of the lane's block stay in its register `wsp` until asked for.
// MK == kMaskNone: every block of the band, state 1 for every warpgroup.
template <int MK, int BM, int BN>
struct BlockCursor {
  int c0 = -64;       // first block of the loaded chunk
  uint32_t live = 0;  // bit k: block c0 + k is live
  uint32_t wsp = 0;   // this lane's block c0 + lane: block_states' *wsp

  __device__ __forceinline__ void load(const MaskTiles& mt, const CursorCtx& x, int c) {
    const int kb = c + static_cast<int>(threadIdx.x % 32);
    int ts = 0;
    wsp = 0xAAAAAAAAu;  // all mixed
    if (kb <= x.kb1) {
      if (mt.flags != nullptr) {
        const uint8_t* f = mt.flags + x.b * mt.stride_b + x.h * mt.stride_h;
        ts = block_states<BM, BN>(mt, f, x.m0, x.mrows, kb, x.sk, &wsp);
      } else {
        ts = 2;
      }
    }
    c0 = c;
    live = __ballot_sync(0xffffffffu, ts != 0);
  }

  // First live block >= kb (> kb1 when none) and, in *ws, its warpgroup
  // states (2 bits each: 0 all masked, 1 no effect, 2 mixed).
  __device__ __forceinline__ int next(const MaskTiles& mt, const CursorCtx& x, int kb,
                                      uint32_t* ws) {
    if constexpr (MK == kMaskNone) {
      *ws = 0x55555555u;
      return kb;
    } else {
      *ws = 0;
      while (kb <= x.kb1) {
        if (kb >= c0 + 32) load(mt, x, kb);
        const uint32_t bits = live >> (kb - c0);
        if (bits != 0) kb += __ffs(bits) - 1;
        const uint32_t w = __shfl_sync(0xffffffffu, wsp, (kb - c0) & 31);
        if (bits != 0) {
          *ws = w;
          return kb;
        }
        kb = c0 + 32;
      }
      return kb;
    }
  }
};

// The mask on the scores of one key block inside the row's band, as the
// elem argument of softmax_block (mode 2): row r's pointer (the mask at
// (b, h, row, key n0 + 2 * (lane % 4))) plus an immediate offset per score,
// so the loads take no address registers (the consumers have none to
// spare). Key stride 1 (hopper_fwd_supported). Rows past the sequence have
// an empty band: softmax_block loads nothing for them.
template <int MK>
struct MaskOp {
  const typename MaskElem<MK>::type* rp[2];
  float inv_scale;
  __device__ __forceinline__ float operator()(float v, int n, int x) const {
    return mask_apply<MK>(v, mask_load<MK>(rp[x >> 1] + 8 * n + (x & 1)), inv_scale);
  }
};

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
