// Hopper backward instantiations for __half (D = 64, 128).
#include "cuda/hopper/bwd_launch.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {
cudaError_t bwd_f16(const BwdArgs& a, cudaStream_t s) {
  return launch_bwd_dtype<__half>(a, s);
}
}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
