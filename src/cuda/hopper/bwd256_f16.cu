// Hopper backward, D = 256, for __half (bwd256_kernel.cuh).
#include "cuda/hopper/bwd256_launch.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {
cudaError_t bwd256_f16(const BwdArgs& a, cudaStream_t s) {
  return launch_bwd256<__half>(a, s);
}
}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
