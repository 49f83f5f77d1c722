// Launch of one instantiation of the Hopper forward (included by the
// per-dtype files fwd_<dtype>.cu).
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/hopper/fwd_kernel.cuh"
#include "cuda/smem_opt_in.h"

namespace fsdpa {
namespace cuda {
namespace hopper {

// a: tensor maps, params and mask tiles filled by the caller (host.cu); the
// tile counts are set here. sms: multiprocessors of the device (one
// persistent CTA each). MK: MaskMode (mask.cuh). BN: keys per block.
template <typename T, int D, int NCW, int MK, int BN = fwd_default_bn<D>()>
cudaError_t launch_fwd(FwdArgs a, int sms, cudaStream_t s) {
  using C = FwdCfg<D, NCW, BN>;
  auto kern = fwd_kernel<T, D, NCW, MK, BN>;
  cudaError_t err = allow_dynamic_smem(kern, C::kSmem);
  if (err != cudaSuccess) return err;
  a.n_mblocks = static_cast<int>((a.p.seqlen_q + C::kBM - 1) / C::kBM);
  const int64_t per_head = a.tile_counter != nullptr ? a.n_mblocks : (a.n_mblocks + 1) / 2;
  const int64_t units = per_head * a.p.heads_q * a.p.batch;
  if (units >= (int64_t(1) << 31)) return cudaErrorNotSupported;
  a.n_units = static_cast<int>(units);
  const int grid = static_cast<int>(units < sms ? units : sms);
  kern<<<grid, C::kThreads, C::kSmem, s>>>(a);
  return cudaGetLastError();
}

// D: hopper_kernel_dim(p), 64, 128 or 256; wg64 = consumer warpgroups at D = 64 (2 or 3; 2
// with a mask).
template <typename T, int MK>
cudaError_t launch_fwd_dtype(const FwdArgs& a, int sms, int wg64, cudaStream_t s) {
  switch (hopper_kernel_dim(a.p)) {
    case 64:
      // Masked: 2 only (3 leaves the consumers 160 registers; the mask
      // code spilled there).
      if (wg64 == 2) return launch_fwd<T, 64, 2, MK>(a, sms, s);
      if constexpr (MK == kMaskNone) return launch_fwd<T, 64, 3, MK>(a, sms, s);
      return cudaErrorNotSupported;
    case 128: return launch_fwd<T, 128, 2, MK>(a, sms, s);
    case 256:
      // Unmasked only (the mask code walks 128-key blocks).
      if constexpr (MK == kMaskNone) return launch_fwd<T, 256, 2, MK>(a, sms, s);
      return cudaErrorNotSupported;
    default: return cudaErrorNotSupported;
  }
}

// Additive masks: float32 or q's dtype (what validate.cpp accepts).
template <typename T>
cudaError_t launch_fwd_add(const FwdArgs& a, int sms, int wg64, cudaStream_t s) {
  constexpr bool bf = std::is_same_v<T, __nv_bfloat16>;
  if (a.p.mask_dtype == DType::f32) return launch_fwd_dtype<T, kMaskAddF32>(a, sms, wg64, s);
  if (a.p.mask_dtype == (bf ? DType::bf16 : DType::f16))
    return launch_fwd_dtype<T, bf ? kMaskAddBF16 : kMaskAddF16>(a, sms, wg64, s);
  return cudaErrorNotSupported;
}

// Whether the binary holds machine code of the kernel for the current device.
template <typename T>
bool kernel_image_ok() {
  cudaFuncAttributes attr;
  const bool ok = cudaFuncGetAttributes(&attr, fwd_kernel<T, 128, 2, kMaskNone>) == cudaSuccess;
  if (!ok) (void)cudaGetLastError();
  return ok && attr.binaryVersion >= 90;
}

// Per dtype, without a mask (fwd_<dtype>.cu), with a bool mask
// (fwd_<dtype>_bool.cu) and with an additive one (fwd_<dtype>_add.cu): one
// file each so that the instantiations build in parallel.
cudaError_t fwd_f16(const FwdArgs& a, int sms, int wg64, cudaStream_t s);
cudaError_t fwd_bf16(const FwdArgs& a, int sms, int wg64, cudaStream_t s);
cudaError_t fwd_f16_bool(const FwdArgs& a, int sms, int wg64, cudaStream_t s);
cudaError_t fwd_bf16_bool(const FwdArgs& a, int sms, int wg64, cudaStream_t s);
cudaError_t fwd_f16_add(const FwdArgs& a, int sms, int wg64, cudaStream_t s);
cudaError_t fwd_bf16_add(const FwdArgs& a, int sms, int wg64, cudaStream_t s);
bool image_ok_f16();

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
