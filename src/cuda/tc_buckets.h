// THE list of tensor-core instantiations: head-dim buckets (max(D, Dv) is
// rounded up to the next bucket; D and Dv are zero-padded to it) and the
// tile shapes per bucket. Each bucket compiles 6 kernels (forward, dQ,
// dK/dV, each in a band-only and a general variant) per dtype (fp16, bf16)
// per GPU architecture: 6 buckets x 6 x 2 = 72 kernels per architecture.
// Build time grows linearly with this list.
#pragma once

// X(bucket)
#define FSDPA_TC_BUCKETS(X) X(32) X(64) X(96) X(128) X(192) X(256)

namespace fsdpa {
namespace cuda {
// Warps per block (16 rows each) and the inner tile of the loop. The A/B
// runs behind these numbers are in bench/RESULTS.md (and git history: the
// build-time switches they were measured with are gone).
template <int DP> struct TcConfig {
  static constexpr int kWarps = 4;     // backward
  static constexpr int kFwdWarps = 4;  // forward
  // 16-row m-fragments per forward warp (they share each K/V fragment loaded
  // from shared memory); the band-only variant only (the general one spills).
  static constexpr int kFwdMFrags = DP <= 128 ? 2 : 1;
  // Keys per forward step (32 at D > 64 with 2 m-fragments: registers).
  static constexpr int kFwdBN = DP <= 64 ? 64 : (DP <= 128 && kFwdMFrags == 1 ? 64 : 32);
  static constexpr int kDqBN = DP <= 128 ? 64 : 32;    // keys per dQ step
  static constexpr int kDkvBM = DP <= 64 ? 64 : 32;    // queries per dK/dV step
  // Warps (16 keys each) of the dK/dV kernel with atomic dQ (deterministic = 0).
  static constexpr int kAtomicDqWarps = (DP == 96 || DP > 128) ? 4 : 8;
};
// Query rows per forward block of bucket dp with one m-fragment per warp:
// the split-KV path (host side).
inline int tc_fwd_block_m(int dp) {
  switch (dp) {
#define FSDPA_BM_CASE(B) \
  case B: return 16 * TcConfig<B>::kFwdWarps;
    FSDPA_TC_BUCKETS(FSDPA_BM_CASE)
#undef FSDPA_BM_CASE
    default: return 64;
  }
}
}  // namespace cuda
}  // namespace fsdpa
