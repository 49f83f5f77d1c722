// Launch of one instantiation of the Hopper forward (included by the
// per-dtype files fwd_<dtype>.cu).
#pragma once

#include <cuda_runtime.h>

#include "cuda/hopper/fwd_kernel.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {

// a: tensor maps and params filled by the caller (host.cu); the tile counts
// are set here. sms: multiprocessors of the device (one persistent CTA each).
template <typename T, int D, int NCW>
cudaError_t launch_fwd(FwdArgs a, int sms, cudaStream_t s) {
  using C = FwdCfg<D, NCW>;
  auto kern = fwd_kernel<T, D, NCW>;
  cudaError_t err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
  if (err != cudaSuccess) return err;
  a.n_mblocks = static_cast<int>((a.p.seqlen_q + C::kBM - 1) / C::kBM);
  const int64_t units = int64_t((a.n_mblocks + 1) / 2) * a.p.heads_q * a.p.batch;
  if (units >= (int64_t(1) << 31)) return cudaErrorNotSupported;
  a.n_units = static_cast<int>(units);
  const int grid = static_cast<int>(units < sms ? units : sms);
  kern<<<grid, C::kThreads, C::kSmem, s>>>(a);
  return cudaGetLastError();
}

// Per dtype (fwd_f16.cu, fwd_bf16.cu): D in {64, 128}; wg64 = consumer
// warpgroups at D = 64 (2 or 3).
template <typename T>
cudaError_t launch_fwd_dtype(const FwdArgs& a, int sms, int wg64, cudaStream_t s) {
  switch (a.p.head_dim) {
    case 64: return wg64 == 2 ? launch_fwd<T, 64, 2>(a, sms, s) : launch_fwd<T, 64, 3>(a, sms, s);
    case 128: return launch_fwd<T, 128, 2>(a, sms, s);
    default: return cudaErrorNotSupported;
  }
}

// Whether the binary holds machine code of the kernel for the current device.
template <typename T>
bool kernel_image_ok() {
  cudaFuncAttributes attr;
  const bool ok = cudaFuncGetAttributes(&attr, fwd_kernel<T, 128, 2>) == cudaSuccess;
  if (!ok) (void)cudaGetLastError();
  return ok && attr.binaryVersion >= 90;
}

cudaError_t fwd_f16(const FwdArgs& a, int sms, int wg64, cudaStream_t s);
cudaError_t fwd_bf16(const FwdArgs& a, int sms, int wg64, cudaStream_t s);
bool image_ok_f16();

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
