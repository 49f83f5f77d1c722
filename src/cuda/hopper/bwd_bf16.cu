// Hopper backward instantiations for __nv_bfloat16 (D = 64, 128).
#include "cuda/hopper/bwd_launch.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {
cudaError_t bwd_bf16(const BwdArgs& a, bool simple, bool dqr, cudaStream_t s) {
  return launch_bwd_dtype<__nv_bfloat16>(a, simple, dqr, s);
}
}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
