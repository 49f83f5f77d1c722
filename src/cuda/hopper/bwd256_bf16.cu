// Hopper backward, D = 256, for __nv_bfloat16 (bwd256_kernel.cuh).
#include "cuda/hopper/bwd256_launch.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {
cudaError_t bwd256_bf16(const BwdArgs& a, cudaStream_t s) {
  return launch_bwd256<__nv_bfloat16>(a, s);
}
}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
