// Hopper backward instantiations for __nv_bfloat16 (D = 64, 128).
#include "cuda/hopper/bwd_launch.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {
cudaError_t bwd_bf16(const BwdArgs& a, cudaStream_t s) {
  return launch_bwd_dtype<__nv_bfloat16>(a, s);
}
}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
