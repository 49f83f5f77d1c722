// Tile configuration and kernel arguments of the Hopper forward (host and
// device).
#pragma once

#include <cuda.h>  // CUtensorMap (a 128-byte, 64-byte aligned opaque struct)

#include "core/attn_params.h"

namespace fsdpa {
namespace cuda {
namespace hopper {

// CTA: 1 producer warpgroup (one thread issues TMA) + kConsumers warpgroups
// of 64 query rows each; K/V in a kStages-deep ring of kBN-key tiles.
template <int D>
struct FwdCfg {
  static constexpr int kConsumers = 2;
  static constexpr int kBM = 64 * kConsumers;
  static constexpr int kBN = 128;
  static constexpr int kStages = 2;
  static constexpr int kThreads = 128 * (kConsumers + 1);
  // setmaxnreg: producer / consumer registers per thread (sum over the
  // CTA's warpgroups <= 64K; kThreads * the entry cap).
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;
  // Dynamic shared memory: Q tile + K and V rings, + 1 KB to align to the
  // 1024-byte swizzle atom.
  static constexpr int kSmem = 1024 + (kBM + 2 * kStages * kBN) * D * 2;
};

struct FwdArgs {
  CUtensorMap tq, tk, tv;  // 4-d (d, token, head, batch) maps, 128B swizzle
  AttnParams p;
};

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
