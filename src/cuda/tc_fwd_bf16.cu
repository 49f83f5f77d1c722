// Tensor-core forward instantiations for __nv_bfloat16 (bucket list: tc_buckets.h).
#include "cuda/tc_inst.cuh"

namespace fsdpa {
namespace cuda {
cudaError_t tc_fwd_bf16(const AttnParams& p, int dp, int vec, const MaskTiles& mt, int nsplit, float* opart,
                      float* lsepart, cudaStream_t s) {
  switch (dp) {
#define FSDPA_CASE(B) \
  case B: return tc_fwd_launch<__nv_bfloat16, B>(p, vec, mt, nsplit, opart, lsepart, s);
    FSDPA_TC_BUCKETS(FSDPA_CASE)
#undef FSDPA_CASE
    default: return cudaErrorInvalidValue;
  }
}
}  // namespace cuda
}  // namespace fsdpa
