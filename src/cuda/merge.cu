// fsdpa_merge_attn_states on CUDA: one warp per row; lane 0 reads the two
// lse values, every lane weights its share of the row's elements. Memory
// bound and elementwise, so a simple kernel is as fast as a clever one.
// Untested on a GPU so far (the CPU implementation, src/cpu/merge.cpp, is
// the one the tests check); NaN/+inf lse values are the caller's contract
// here (checking them would cost a host synchronisation).
#include <math.h>

#include "core/error.h"
#include "core/merge.h"
#include "cuda/common.cuh"

namespace fsdpa {
namespace cuda {
namespace {

constexpr int kRowsPerBlock = 4;  // warps per block

__device__ __forceinline__ void store_elem(void* base, int64_t idx, DType t, float x) {
  switch (t) {
    case DType::f32: static_cast<float*>(base)[idx] = x; break;
    case DType::f16: static_cast<__half*>(base)[idx] = __float2half_rn(x); break;
    case DType::bf16: static_cast<__nv_bfloat16*>(base)[idx] = __float2bfloat16_rn(x); break;
    default: break;
  }
}

__global__ void merge_kernel(MergeParams m, int64_t rows) {
  const int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const MergeRow x = merge_row(m, r);
  const float la = m.lse_a[merge_offset(m.lse_a_stride, x)];
  const float lb = m.lse_b[merge_offset(m.lse_b_stride, x)];
  const float mx = fmaxf(la, lb);
  const int64_t oa = merge_offset(m.out_a_stride, x), ob = merge_offset(m.out_b_stride, x);
  const int64_t o = merge_offset(m.out_stride, x);
  float ca = 0.0f, cb = 0.0f, lse = neg_inf();
  if (mx != neg_inf()) {  // else both parts are empty: out 0, lse -inf
    const float wa = expf(la - mx), wb = expf(lb - mx), sum = wa + wb;
    ca = wa / sum;
    cb = wb / sum;
    lse = mx + logf(sum);
  }
  for (int64_t d = lane; d < m.dim; d += 32) {
    // An empty part (weight 0) is not read: its values may be anything.
    float acc = 0.0f;
    if (ca != 0.0f) acc += ca * load_dyn(m.out_a, oa + d * m.out_a_stride[3], m.dtype);
    if (cb != 0.0f) acc += cb * load_dyn(m.out_b, ob + d * m.out_b_stride[3], m.dtype);
    store_elem(m.out, o + d * m.out_stride[3], m.dtype, acc);
  }
  // Every lane has read lse (and out_a) before lane 0 overwrites it in place.
  __syncwarp();
  if (lane == 0) m.lse[merge_offset(m.lse_stride, x)] = lse;
}

}  // namespace

fsdpa_status merge(const MergeParams& m, void* stream) {
  const int64_t rows = m.shape[0] * m.shape[1] * m.shape[2];
  if (rows == 0) return FSDPA_OK;
  int prev = -1;
  cudaGetDevice(&prev);
  if (prev != m.device_id) cudaSetDevice(m.device_id);
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  merge_kernel<<<static_cast<unsigned>(blocks), kRowsPerBlock * 32, 0,
                 static_cast<cudaStream_t>(stream)>>>(m, rows);
  const cudaError_t e = cudaGetLastError();
  if (prev >= 0 && prev != m.device_id) cudaSetDevice(prev);
  if (e != cudaSuccess)
    return set_error(FSDPA_ERROR_INTERNAL, "cuda: merge kernel launch failed: %s",
                     cudaGetErrorString(e));
  return FSDPA_OK;
}

}  // namespace cuda
}  // namespace fsdpa
