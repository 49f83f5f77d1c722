// Launch wrappers of the tensor-core kernels for one dtype; included by
// tc_fwd_<dtype>.cu / tc_bwd_<dtype>.cu with FSDPA_TC_T and FSDPA_TC_NAME set.
#pragma once

#include "cuda/tc.cuh"
#include "cuda/tc_buckets.h"
#include "cuda/smem_opt_in.h"

namespace fsdpa {
namespace cuda {

template <typename T, int DP, bool GENERAL, int MFRAGS, int BN, bool KV = false>
cudaError_t tc_fwd_launch_t(const AttnParams& p, int vec, const MaskTiles& mt, int nsplit,
                            float* opart, float* lsepart, cudaStream_t s) {
  using C = TcConfig<DP>;
  constexpr int BM = 16 * C::kFwdWarps * MFRAGS;
  static_assert(128 % BM == 0 && 128 % BN == 0, "sparse_band_only: tiles must divide 128");
  constexpr size_t smem = size_t(BM + 4 * BN) * pitch<DP>() * sizeof(T);
  auto kern = tc_fwd_kernel<T, DP, BN, C::kFwdWarps, MFRAGS, GENERAL, KV>;
  cudaError_t err = allow_dynamic_smem(kern, int(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid((p.seqlen_q + BM - 1) / BM, p.heads_q, p.batch * nsplit);
  kern<<<grid, C::kFwdWarps * 32, smem, s>>>(p, vec, mt, nsplit, opart, lsepart);
  return cudaGetLastError();
}

// One m-fragment per warp (64 rows, 64 keys per step at D <= 128) for the
// general variant, split-KV and short query ranges (decode: 2 m-fragments
// would compute 128 rows for one); 2 for the rest of the band-only variant.
template <typename T, int DP, bool GENERAL>
cudaError_t tc_fwd_launch_g(const AttnParams& p, int vec, const MaskTiles& mt, int nsplit, float* opart, float* lsepart,
                          cudaStream_t s) {
  using C = TcConfig<DP>;
  constexpr int BN1 = DP <= 128 ? 64 : 32;
  if constexpr (GENERAL || C::kFwdMFrags == 1) {
    return tc_fwd_launch_t<T, DP, GENERAL, 1, BN1>(p, vec, mt, nsplit, opart, lsepart, s);
  } else {
    if (nsplit > 1 || p.seqlen_q <= 16 * C::kFwdWarps)
      return tc_fwd_launch_t<T, DP, GENERAL, 1, BN1>(p, vec, mt, nsplit, opart, lsepart, s);
    return tc_fwd_launch_t<T, DP, GENERAL, C::kFwdMFrags, C::kFwdBN>(p, vec, mt, nsplit, opart, lsepart, s);
  }
}

template <typename T, int DP, bool GENERAL, bool ATOMIC_DQ>
cudaError_t tc_dkdv_launch(const AttnParams& p, int vec, const MaskTiles& mt, const float* dsum,
                           float* dqacc, cudaStream_t s) {
  using C = TcConfig<DP>;
  constexpr int NW = ATOMIC_DQ ? C::kAtomicDqWarps : C::kWarps;
  constexpr int BN = 16 * NW, BM = C::kDkvBM;
  static_assert(128 % BM == 0 && 128 % BN == 0, "sparse_band_only: tiles must divide 128");
  constexpr size_t smem = size_t(2 * BN + 4 * BM) * pitch<DP>() * sizeof(T) + 4 * BM * sizeof(float) +
                          (ATOMIC_DQ ? size_t(BN) * (BM + 8) * sizeof(T) : 0);
  auto kern = tc_dkdv_kernel<T, DP, BM, NW, GENERAL, ATOMIC_DQ>;
  cudaError_t err = allow_dynamic_smem(kern, int(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid((p.seqlen_k + BN - 1) / BN, p.heads_k, p.batch);
  if (grid.x > 0) kern<<<grid, NW * 32, smem, s>>>(p, vec, mt, dsum, dqacc);
  return cudaGetLastError();
}

// dqacc != nullptr (non-deterministic): zeroed fp32 workspace of
// total_q * Hq * DP floats; dQ accumulated by the dK/dV kernel with atomics.
template <typename T, int DP, bool GENERAL>
cudaError_t tc_bwd_launch_g(const AttnParams& p, int vec, const MaskTiles& mt, const float* dsum,
                            float* dqacc, cudaStream_t s) {
  using C = TcConfig<DP>;
  if (dqacc != nullptr) {
    cudaError_t err = tc_dkdv_launch<T, DP, GENERAL, true>(p, vec, mt, dsum, dqacc, s);
    if (err != cudaSuccess) return err;
    launch_dq_convert<T>(p, dqacc, DP, s);
    return cudaGetLastError();
  }
  {
    constexpr int BM = 16 * C::kWarps, BN = C::kDqBN;
    static_assert(128 % BM == 0 && 128 % BN == 0, "sparse_band_only: tiles must divide 128");
    constexpr size_t smem = size_t(2 * BM + 4 * BN) * pitch<DP>() * sizeof(T);
    auto kern = tc_dq_kernel<T, DP, BN, C::kWarps, GENERAL>;
    cudaError_t err = allow_dynamic_smem(kern, int(smem));
    if (err != cudaSuccess) return err;
    const dim3 grid((p.seqlen_q + BM - 1) / BM, p.heads_q, p.batch);
    if (grid.x > 0) kern<<<grid, C::kWarps * 32, smem, s>>>(p, vec, mt, dsum);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return tc_dkdv_launch<T, DP, GENERAL, false>(p, vec, mt, dsum, nullptr, s);
}

// GENERAL: the general variant (softcap, ALiBi, masks, block lists with
// element tests, dropout); the other one only applies the causal/window
// band, and skips the tiles block lists leave out (sparse_band_only).
inline bool tc_general(const AttnParams& p) {
  return p.softcap > 0.0f || p.alibi != nullptr || p.mask_kind != MaskKind::none ||
         p.dropout_p > 0.0f || (p.sparse && !sparse_band_only(p));
}

// Calls with the KV-cache parameters (chunked prefill or decode outside the
// decode kernel's scope) take the KV instantiations, one m-fragment per warp
// (short query ranges, split-KV): two more kernels per bucket instead of a
// run-time branch in every call's kernel.
template <typename T, int DP>
cudaError_t tc_fwd_launch(const AttnParams& p, int vec, const MaskTiles& mt, int nsplit,
                          float* opart, float* lsepart, cudaStream_t s) {
  constexpr int BN1 = DP <= 128 ? 64 : 32;
  if (uses_kv_cache(p))
    return tc_general(p)
               ? tc_fwd_launch_t<T, DP, true, 1, BN1, true>(p, vec, mt, nsplit, opart, lsepart, s)
               : tc_fwd_launch_t<T, DP, false, 1, BN1, true>(p, vec, mt, nsplit, opart, lsepart, s);
  return tc_general(p) ? tc_fwd_launch_g<T, DP, true>(p, vec, mt, nsplit, opart, lsepart, s)
                       : tc_fwd_launch_g<T, DP, false>(p, vec, mt, nsplit, opart, lsepart, s);
}

template <typename T, int DP>
cudaError_t tc_bwd_launch(const AttnParams& p, int vec, const MaskTiles& mt, const float* dsum,
                          float* dqacc, cudaStream_t s) {
  return tc_general(p) ? tc_bwd_launch_g<T, DP, true>(p, vec, mt, dsum, dqacc, s)
                       : tc_bwd_launch_g<T, DP, false>(p, vec, mt, dsum, dqacc, s);
}

}  // namespace cuda
}  // namespace fsdpa
