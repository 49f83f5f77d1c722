// Tile configuration and kernel arguments of the Hopper forward (host and
// device).
#pragma once

#include <cuda.h>  // CUtensorMap (a 128-byte, 64-byte aligned opaque struct)

#include "core/attn_params.h"
#include "cuda/launch.h"  // MaskTiles

namespace fsdpa {
namespace cuda {
namespace hopper {

// CTA: 1 producer warpgroup (one thread issues TMA) + NCW consumer
// warpgroups of 64 query rows each; K/V in a kStages-deep ring of kBN-key
// tiles. Persistent: one CTA per SM walks the (query block, head, batch)
// tiles.
template <int D, int NCW>
struct FwdCfg {
  static constexpr int kConsumers = NCW;
  static constexpr int kBM = 64 * NCW;
  static constexpr int kBN = 128;
  static constexpr int kStages = 2;
  static constexpr int kThreads = 128 * (NCW + 1);
  // setmaxnreg: producer / consumer registers per thread; the CTA's sum
  // stays within the 64K registers of the SM (the entry cap is
  // 64K / kThreads).
  static constexpr int kProducerRegs = NCW == 2 ? 40 : 32;
  static constexpr int kConsumerRegs = NCW == 2 ? 232 : 160;
  // Dynamic shared memory: 2 Q tiles + K and V rings, + 1 KB to align to
  // the 1024-byte swizzle atom (D = 128: 193 KB).
  static constexpr int kSmem = 1024 + (2 * kBM + 2 * kStages * kBN) * D * 2;
};

struct FwdArgs {
  CUtensorMap tq, tk, tv;  // 4-d (d, token, head, batch) maps, 128B swizzle
  AttnParams p;
  MaskTiles mt;            // mask tile flags (flags == nullptr: every block mixed)
  int n_mblocks;           // query blocks per (head, batch)
  int n_units;             // scheduling units: pairs of query blocks per (head, batch)
};

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
