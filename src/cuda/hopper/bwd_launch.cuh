// Launch of the Hopper backward (included by bwd_<dtype>.cu): the dK/dV/dQ
// kernel, then the sm_80 path's conversion of the fp32 dQ workspace.
#pragma once

#include <cuda_runtime.h>

#include "cuda/hopper/bwd_kernel.cuh"
#include "cuda/tc.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {

template <typename T, int D, bool PIPE, bool MASK, bool DQR, bool XS>
cudaError_t launch_bwd(const BwdArgs& a, cudaStream_t s) {
  using C = BwdCfg<D>;
  auto kern = bwd_kernel<T, D, PIPE, MASK, DQR, XS>;
  constexpr int smem = C::smem(DQR);
  cudaError_t err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const AttnParams& p = a.p;
  const dim3 grid((p.seqlen_k + C::kBN - 1) / C::kBN, p.heads_k, p.batch);
  if (grid.x > 0) {
    kern<<<grid, C::kThreads, smem, s>>>(a);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  launch_dq_convert<T>(p, a.dqacc, D, s);
  return cudaGetLastError();
}

// XS (the overlap across steps, bwd_kernel.cuh) needs the TMA reduce.
template <typename T, bool MASK, bool DQR>
cudaError_t launch_bwd_mask(const BwdArgs& a, bool simple, cudaStream_t s) {
  switch (a.p.head_dim) {
    case 64: return launch_bwd<T, 64, false, MASK, DQR, DQR>(a, s);  // PIPE does not fit (C7512)
    case 128:
      return simple ? launch_bwd<T, 128, false, MASK, DQR, false>(a, s)
                    : launch_bwd<T, 128, true, MASK, DQR, DQR>(a, s);
    default: return cudaErrorNotSupported;
  }
}

// simple: the kernel without the PIPE and XS overlaps (bwd_kernel.cuh). dqr:
// dQ by the TMA reduce (bwd_dq.cuh; a.tdq is set) instead of atomics.
template <typename T>
cudaError_t launch_bwd_dtype(const BwdArgs& a, bool simple, bool dqr, cudaStream_t s) {
  const bool m = a.p.mask_kind != MaskKind::none;
  if (dqr)
    return m ? launch_bwd_mask<T, true, true>(a, simple, s)
             : launch_bwd_mask<T, false, true>(a, simple, s);
  return m ? launch_bwd_mask<T, true, false>(a, simple, s)
           : launch_bwd_mask<T, false, false>(a, simple, s);
}

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
