// Hopper forward instantiations for __half (D = 64, 128), no mask.
#include "cuda/hopper/launch.cuh"

namespace fsdpa {
namespace cuda {
namespace hopper {
cudaError_t fwd_f16(const FwdArgs& a, int sms, int wg64, cudaStream_t s) {
  return launch_fwd_dtype<__half, kMaskNone>(a, sms, wg64, s);
}
bool image_ok_f16() { return kernel_image_ok<__half>(); }
}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
