// dK, dV of a backward whose GQA groups were split over several CTAs per key
// block (BwdArgs::head_splits > 1): the fp32 sums in dkvacc, converted into
// p.dk / p.dv in the input dtype.
#pragma once

#include "cuda/common.cuh"
#include "cuda/hopper/softmax.cuh"  // pack_pair

namespace fsdpa {
namespace cuda {
namespace hopper {

// Grid: (row blocks, Hk, B), 256 threads; a pair of columns per thread.
// dkvacc: dK as [(token * Hk + hk) * dp + d], then dV total_k * Hk * dp
// floats later (dp: the kernel's D, >= head_dim).
template <typename T>
__global__ void dkv_convert_kernel(AttnParams p, const float* dkvacc, int dp) {
  const int64_t b = blockIdx.z;
  const int hk = blockIdx.y;
  const Seq e = get_seq(p, b);
  const int d_k = static_cast<int>(p.head_dim), d_v = static_cast<int>(p.head_dim_v);
  const int pairs = (d_k > d_v ? d_k : d_v) / 2;
  const float* dvacc = dkvacc + p.total_k * p.heads_k * dp;
  for (int x = blockIdx.x * blockDim.x + threadIdx.x; x < e.sk * pairs;
       x += gridDim.x * blockDim.x) {
    const int j = x / pairs, d = 2 * (x % pairs);
    const int64_t tok = p.cu_seqlens_k ? e.k_begin + j : b * p.seqlen_k + j;
    const int64_t src = (tok * p.heads_k + hk) * dp + d;
    T* dk = static_cast<T*>(p.dk) + off4(p.dk_stride, b, hk, e.k_begin + j, d);
    T* dv = static_cast<T*>(p.dv) + off4(p.dv_stride, b, hk, e.k_begin + j, d);
    if (d < d_k) *reinterpret_cast<uint32_t*>(dk) = pack_pair<T>(dkvacc[src], dkvacc[src + 1]);
    if (d < d_v) *reinterpret_cast<uint32_t*>(dv) = pack_pair<T>(dvacc[src], dvacc[src + 1]);
  }
}

template <typename T>
void launch_dkv_convert(const AttnParams& p, const float* dkvacc, int dp, cudaStream_t s) {
  const int64_t work = (p.seqlen_k * ((p.head_dim > p.head_dim_v ? p.head_dim : p.head_dim_v) / 2) + 255) / 256;
  const dim3 grid(static_cast<unsigned>(work < 1024 ? work : 1024), p.heads_k, p.batch);
  if (grid.x > 0) dkv_convert_kernel<T><<<grid, 256, 0, s>>>(p, dkvacc, dp);
}

}  // namespace hopper
}  // namespace cuda
}  // namespace fsdpa
