// Hopper forward instantiations for __half (D = 64, 128), bool mask.
#include "cuda/hopper/launch.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {
cudaError_t fwd_f16_bool(const FwdArgs& a, int sms, int wg64, cudaStream_t s) {
  return launch_fwd_dtype<__half, kMaskBool>(a, sms, wg64, s);
}
}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
