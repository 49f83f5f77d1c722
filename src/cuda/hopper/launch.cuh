// Launch of one instantiation of the Hopper forward (included by the
// per-dtype files fwd_<dtype>.cu).
#pragma once

#include <cuda_runtime.h>

#include "cuda/hopper/fwd_kernel.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {

template <typename T, int D, bool PIPE>
cudaError_t launch_fwd(const FwdArgs& a, cudaStream_t s) {
  using C = FwdCfg<D>;
  auto kern = fwd_kernel<T, D, PIPE>;
  cudaError_t err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>((a.p.seqlen_q + C::kBM - 1) / C::kBM),
                  static_cast<unsigned>(a.p.heads_q), static_cast<unsigned>(a.p.batch));
  kern<<<grid, C::kThreads, C::kSmem, s>>>(a);
  return cudaGetLastError();
}

// Per dtype (fwd_f16.cu, fwd_bf16.cu): D in {64, 128}; pipe selects the
// intra-warpgroup overlapped loop.
template <typename T>
cudaError_t launch_fwd_dtype(const FwdArgs& a, bool pipe, cudaStream_t s) {
  switch (a.p.head_dim) {
    case 64: return pipe ? launch_fwd<T, 64, true>(a, s) : launch_fwd<T, 64, false>(a, s);
    case 128: return pipe ? launch_fwd<T, 128, true>(a, s) : launch_fwd<T, 128, false>(a, s);
    default: return cudaErrorNotSupported;
  }
}

// Whether the binary holds machine code of the kernel for the current device.
template <typename T>
bool kernel_image_ok() {
  cudaFuncAttributes attr;
  const bool ok = cudaFuncGetAttributes(&attr, fwd_kernel<T, 128, true>) == cudaSuccess;
  if (!ok) (void)cudaGetLastError();
  return ok && attr.binaryVersion >= 90;
}

cudaError_t fwd_f16(const FwdArgs& a, bool pipe, cudaStream_t s);
cudaError_t fwd_bf16(const FwdArgs& a, bool pipe, cudaStream_t s);
bool image_ok_f16();

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
