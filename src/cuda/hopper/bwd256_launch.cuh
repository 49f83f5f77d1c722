// Launch of the D = 256 Hopper backward (included by bwd256_<dtype>.cu): the
// dK/dV/dQ kernel (bwd256_kernel.cuh), then the sm_80 path's conversion of
// the fp32 dQ workspace.
#pragma once

#include <cuda_runtime.h>

#include "cuda/hopper/bwd256_kernel.cuh"
#include "cuda/tc.cuh"
#include "cuda/smem_opt_in.h"

namespace fsdpa {
namespace cuda {
namespace hopper {

// dQ by TMA reduces (the variant the A/B kept over the atomics: +20-25%).
template <typename T>
cudaError_t launch_bwd256(const BwdArgs& a, cudaStream_t s) {
  using C = Bwd256Cfg;
  auto kern = bwd256_kernel<T>;
  cudaError_t err =
      allow_dynamic_smem(kern, C::kSmem);
  if (err != cudaSuccess) return err;
  const AttnParams& p = a.p;
  const dim3 grid((p.seqlen_k + C::kBN - 1) / C::kBN, p.heads_k, p.batch);
  if (grid.x > 0) {
    kern<<<grid, C::kThreads, C::kSmem, s>>>(a);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  launch_dq_convert<T>(p, a.dqacc, C::D, s);
  return cudaGetLastError();
}

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
