// Tile configuration and kernel arguments of the Hopper forward (host and
// device).
#pragma once

#include <cuda.h>  // CUtensorMap (a 128-byte, 64-byte aligned opaque struct)

#include "core/attn_params.h"
#include "cuda/hopper/hopper.h"  // hopper_kernel_dim
#include "cuda/launch.h"  // MaskTiles

namespace fsdpa {
namespace cuda {
namespace hopper {

// CTA: 1 producer warpgroup (one thread issues TMA) + NCW consumer
// warpgroups of 64 query rows each; K/V in a kStages-deep ring of kBN-key
// tiles; Q in kQSlots slots. Persistent: one CTA per SM walks the (query
// block, head, batch) tiles.
//   D 64 / 128: 128 keys per block, 2 Q slots (the next tile's Q loads
//   under the current tile).
//   D 256 (2 consumer warpgroups, unmasked only): 80 keys per block (64
//   measured 3-9% slower), 1 Q slot: Q 64 KB + K, V
//   2 x 2 x 40 KB = 224 KB of the 227 KB opt-in. O is 128 fp32 registers per
//   consumer thread, S 40, P 20.
template <int D>
constexpr int fwd_default_bn() { return D == 256 ? 80 : 128; }

template <int D, int NCW, int BN = fwd_default_bn<D>()>
struct FwdCfg {
  static constexpr int kConsumers = NCW;
  static constexpr int kBM = 64 * NCW;
  static constexpr int kBN = BN;
  static constexpr int kStages = 2;
  static constexpr int kQSlots = D == 256 ? 1 : 2;
  static constexpr int kThreads = 128 * (NCW + 1);
  // setmaxnreg: producer / consumer registers per thread; the CTA's sum
  // stays within the 64K registers of the SM (the entry cap is
  // 64K / kThreads). D = 256 too: its consumers fit 232 since the tile
  // arithmetic moved to the producer (fwd_kernel.cuh: TileRing), and 24
  // left the producer spilling in its TMA loop.
  static constexpr int kProducerRegs = NCW == 2 ? 40 : 32;
  static constexpr int kConsumerRegs = NCW == 2 ? 232 : 160;
  // Dynamic shared memory: Q slots + K and V rings, + 1 KB to align to
  // the 1024-byte swizzle atom (D = 128: 193 KB; D = 256: 225 KB).
  static constexpr int kSmem = 1024 + (kQSlots * kBM + 2 * kStages * kBN) * D * 2;
  static_assert(kSmem <= 227 * 1024, "shared memory over the opt-in limit");
  static_assert(kBN % 16 == 0 && kBN <= 256, "wgmma N / TMA box");
};

struct FwdArgs {
  CUtensorMap tq, tk, tv;  // 4-d (d, token, head, batch) maps, 128B swizzle
  AttnParams p;
  MaskTiles mt;            // mask tile flags (flags == nullptr: every block mixed)
  int n_mblocks;           // query blocks per (head, batch)
  int n_units;             // scheduling units (fwd_kernel.cuh: unit_tile)
  // Dynamic scheduling (fwd_kernel.cuh), causal and windowed calls: a
  // zeroed counter in device memory, and the (batch, head) pairs per L2
  // section. nullptr: the static schedule.
  int* tile_counter;
  int sched_heads;
};

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
