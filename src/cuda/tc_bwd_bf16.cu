// Tensor-core backward instantiations for __nv_bfloat16 (bucket list: tc_buckets.h).
#include "cuda/tc_inst.cuh"

namespace fsdpa {
namespace cuda {
cudaError_t tc_bwd_bf16(const AttnParams& p, int dp, int vec, const MaskTiles& mt, const float* dsum, float* dqacc,
                       cudaStream_t s) {
  switch (dp) {
#define FSDPA_CASE(B) \
  case B: return tc_bwd_launch<__nv_bfloat16, B>(p, vec, mt, dsum, dqacc, s);
    FSDPA_TC_BUCKETS(FSDPA_CASE)
#undef FSDPA_CASE
    default: return cudaErrorInvalidValue;
  }
}
}  // namespace cuda
}  // namespace fsdpa
