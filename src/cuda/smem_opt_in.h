// Opting a kernel into more than 48 KiB of dynamic shared memory.
#pragma once

#include <cuda_runtime.h>

namespace fsdpa {
namespace cuda {

// cudaFuncSetAttribute(kernel, MaxDynamicSharedMemorySize, bytes), once per
// (kernel, device, size): the attribute stays with the kernel on its device,
// while each call costs about 5 us of host time on an H200 host (two per
// forward+backward: a tenth of a small call, issue 18).
cudaError_t allow_dynamic_smem(const void* kernel, int bytes);

template <typename Kernel>
cudaError_t allow_dynamic_smem(Kernel* kernel, int bytes) {
  return allow_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes);
}

}  // namespace cuda
}  // namespace fsdpa
