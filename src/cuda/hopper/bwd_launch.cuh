// Launch of the Hopper backward (included by bwd_<dtype>.cu): the dK/dV/dQ
// kernel, then the sm_80 path's conversion of the fp32 dQ workspace.
#pragma once

#include <cuda_runtime.h>

#include "cuda/hopper/bwd_dkv.cuh"
#include "cuda/hopper/bwd_kernel.cuh"
#include "cuda/hopper/hopper.h"  // hopper_kernel_dim
#include "cuda/tc.cuh"
#include "cuda/smem_opt_in.h"

namespace fsdpa {
namespace cuda {
namespace hopper {

template <typename T, int D, bool DV_UNDER_DP, bool MASK>
cudaError_t launch_bwd(const BwdArgs& a, cudaStream_t s) {
  using C = BwdCfg<D>;
  auto kern = bwd_kernel<T, D, DV_UNDER_DP, MASK>;
  constexpr int smem = C::kSmemTotal;
  cudaError_t err = allow_dynamic_smem(kern, smem);
  if (err != cudaSuccess) return err;
  const AttnParams& p = a.p;
  const dim3 grid((p.seqlen_k + C::kBN - 1) / C::kBN, p.heads_k * a.head_splits, p.batch);
  if (grid.x > 0) {
    kern<<<grid, C::kThreads, smem, s>>>(a);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  launch_dq_convert<T>(p, a.dqacc, D, s);
  if (a.head_splits > 1) launch_dkv_convert<T>(p, a.dkvacc, D, s);
  return cudaGetLastError();
}

// The variant per (D, mask) that the A/B runs kept (bench/RESULTS.md,
// hopper/README.md): dV issued under dP^T at D = 128 (at D = 64 it does not
// fit, C7512).
template <typename T>
cudaError_t launch_bwd_dtype(const BwdArgs& a, cudaStream_t s) {
  const bool m = a.p.mask_kind != MaskKind::none;
  switch (hopper_kernel_dim(a.p)) {
    case 64:
      return m ? launch_bwd<T, 64, false, true>(a, s)
               : launch_bwd<T, 64, false, false>(a, s);
    case 128:
      return m ? launch_bwd<T, 128, true, true>(a, s)
               : launch_bwd<T, 128, true, false>(a, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
