// Hopper forward instantiations for __nv_bfloat16 (D = 64, 128), additive mask.
#include "cuda/hopper/launch.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {
cudaError_t fwd_bf16_add(const FwdArgs& a, int sms, int wg64, cudaStream_t s) {
  return launch_fwd_add<__nv_bfloat16>(a, sms, wg64, s);
}
}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
