// The SIMT path: plain fp32 arithmetic on CUDA cores, any head dim up to 256,
// every semantic. It serves fp32 inputs (exact fp32 math: no TF32) and is the
// cross-check of the tensor-core path (FLASHSDPA_CUDA_FORCE=simt forces it for
// fp16/bf16 too). One warp per query row (forward, dQ) or per key row
// (dK/dV): lanes take 32 keys (rows) at a time for the scores, then split the
// head dim for the accumulation. Deterministic: no atomics.
#include "cuda/common.cuh"
#include "cuda/launch.h"

namespace fsdpa {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxD = 256;
constexpr int kPerLane = kMaxD / 32;

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
simt_fwd_kernel(AttnParams p) {
  __shared__ float qs[kWarps][kMaxD];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int i = blockIdx.x * kWarps + warp;
  const Seq e = get_kv_seq(p, b);  // with the KV-cache parameters, if any (a no-op without)
  if (i >= e.sq) return;
  const int64_t hk = h / (p.heads_q / p.heads_k);
  const int D = static_cast<int>(p.head_dim), Dv = static_cast<int>(p.head_dim_v);
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  for (int d = lane; d < D; d += 32)
    qs[warp][d] = to_f(q[off4(p.q_stride, b, h, e.q_begin + i, d)]);
  __syncwarp();
  const ScoreCtx c = make_score_ctx(p, b, h, e);
  const DropCtx dc = make_drop_ctx(p);
  const uint32_t drow = dropout_row_id(b, h, i, p.heads_q, p.seqlen_q);
  const KeyRange r = row_range(p, c, i);
  const int64_t row = kv_cache_row(p, b);  // K/V cache row (the forward reads KV caches)
  float m = neg_inf(), l = 0.0f;
  float o[kPerLane];
#pragma unroll
  for (int u = 0; u < kPerLane; ++u) o[u] = 0.0f;
  for (int64_t j0 = r.lo; j0 <= r.hi; j0 += 32) {
    const int j = static_cast<int>(j0) + lane;
    float s = neg_inf(), t = 0.0f;
    if (j <= r.hi) {
      const T* kr = k + kv_row_off(p, p.k_stride, row, hk, static_cast<int>(e.k_begin) + j);
      float dot = 0.0f;
      for (int d = 0; d < D; ++d) dot += qs[warp][d] * to_f(kr[d * p.k_stride[3]]);
      s = score_of(p, c, dot, i, j, r, &t);
    }
    const float mnew = fmaxf(m, warp_max(s));
    if (mnew == neg_inf()) {
      // Nothing attended yet, unless a score is NaN (fmaxf skips NaN): then
      // the row is NaN (l stays NaN through every later block).
      if (__any_sync(0xffffffffu, isnan(s))) l = NAN;
      continue;
    }
    const float pj = s == neg_inf() ? 0.0f : expf(s - mnew);
    const float alpha = m == neg_inf() ? 0.0f : expf(m - mnew);
    l = l * alpha + warp_sum(pj);
    m = mnew;
    const float pz = dc.on && j <= r.hi ? pj * drop_factor(dc, drow, j) : pj;
#pragma unroll
    for (int u = 0; u < kPerLane; ++u) o[u] *= alpha;
    const int n = static_cast<int>(min(int64_t(32), r.hi - j0 + 1));
    for (int jj = 0; jj < n; ++jj) {
      const float pb = __shfl_sync(0xffffffffu, pz, jj);
      if (pb == 0.0f) continue;
      const T* vr = v + kv_row_off(p, p.v_stride, row, hk, static_cast<int>(e.k_begin + j0) + jj);
#pragma unroll
      for (int u = 0; u < kPerLane; ++u) {
        const int d = lane + 32 * u;
        if (d < Dv) o[u] += pb * to_f(vr[d * p.v_stride[3]]);
      }
    }
  }
  // l == 0: nothing attended (out 0, lse -inf); l NaN: a NaN or +inf score
  // was attended, and out and lse are NaN (as in PyTorch).
  const bool empty = l == 0.0f;
  const float inv = empty ? 0.0f : 1.0f / l;
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int u = 0; u < kPerLane; ++u) {
    const int d = lane + 32 * u;
    if (d < Dv) out[off4(p.out_stride, b, h, e.q_begin + i, d)] = from_f<T>(empty ? 0.0f : o[u] * inv);
  }
  if (p.lse && lane == 0)
    p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + (e.q_begin + i) * p.lse_stride[2]] =
        empty ? neg_inf() : m + logf(l);
}

// dS of (i, j) from the recomputed score; p_out gets the probability.
__device__ __forceinline__ float dscore(const ScoreCtx& c, float s, float t, float lse,
                                        float dp, float dsum, float* p_out) {
  const float pr = (s == neg_inf() || lse == neg_inf()) ? 0.0f : expf(s - lse);
  *p_out = pr;
  float ds = pr * (dp - dsum);
  if (c.softcap > 0.0f) ds *= 1.0f - t * t;
  return ds * c.scale;
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
simt_dq_kernel(AttnParams p, const float* dsum) {
  __shared__ float qs[kWarps][kMaxD];
  __shared__ float dos[kWarps][kMaxD];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int i = blockIdx.x * kWarps + warp;
  const Seq e = get_seq(p, b);
  if (i >= e.sq) return;
  const int64_t hk = h / (p.heads_q / p.heads_k);
  const int D = static_cast<int>(p.head_dim), Dv = static_cast<int>(p.head_dim_v);
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* dout = static_cast<const T*>(p.dout);
  for (int d = lane; d < D; d += 32)
    qs[warp][d] = to_f(q[off4(p.q_stride, b, h, e.q_begin + i, d)]);
  for (int d = lane; d < Dv; d += 32)
    dos[warp][d] = to_f(dout[off4(p.dout_stride, b, h, e.q_begin + i, d)]);
  __syncwarp();
  const ScoreCtx c = make_score_ctx(p, b, h, e);
  const DropCtx dc = make_drop_ctx(p);
  const uint32_t drow = dropout_row_id(b, h, i, p.heads_q, p.seqlen_q);
  const KeyRange r = row_range(p, c, i);
  const float lse =
      p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + (e.q_begin + i) * p.lse_stride[2]];
  const float Di = dsum[q_token(p, b, e, i) * p.heads_q + h];
  float acc[kPerLane];
#pragma unroll
  for (int u = 0; u < kPerLane; ++u) acc[u] = 0.0f;
  for (int64_t j0 = r.lo; j0 <= r.hi; j0 += 32) {
    const int j = static_cast<int>(j0) + lane;
    float ds = 0.0f;
    if (j <= r.hi) {
      const T* kr = k + off4(p.k_stride, b, hk, e.k_begin + j, 0);
      const T* vr = v + off4(p.v_stride, b, hk, e.k_begin + j, 0);
      float dot = 0.0f, dp = 0.0f, t = 0.0f, pr;
      for (int d = 0; d < D; ++d) dot += qs[warp][d] * to_f(kr[d * p.k_stride[3]]);
      for (int d = 0; d < Dv; ++d) dp += dos[warp][d] * to_f(vr[d * p.v_stride[3]]);
      if (dc.on) dp *= drop_factor(dc, drow, j);
      const float s = score_of(p, c, dot, i, j, r, &t);
      ds = dscore(c, s, t, lse, dp, Di, &pr);
    }
    const int n = static_cast<int>(min(int64_t(32), r.hi - j0 + 1));
    for (int jj = 0; jj < n; ++jj) {
      const float db = __shfl_sync(0xffffffffu, ds, jj);
      if (db == 0.0f) continue;
      const T* kr = k + off4(p.k_stride, b, hk, e.k_begin + j0 + jj, 0);
#pragma unroll
      for (int u = 0; u < kPerLane; ++u) {
        const int d = lane + 32 * u;
        if (d < D) acc[u] += db * to_f(kr[d * p.k_stride[3]]);
      }
    }
  }
  T* dq = static_cast<T*>(p.dq);
#pragma unroll
  for (int u = 0; u < kPerLane; ++u) {
    const int d = lane + 32 * u;
    if (d < D) dq[off4(p.dq_stride, b, h, e.q_begin + i, d)] = from_f<T>(acc[u]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
simt_dkdv_kernel(AttnParams p, const float* dsum) {
  __shared__ float ks[kWarps][kMaxD];
  __shared__ float vs[kWarps][kMaxD];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.z, hk = blockIdx.y;
  const int j = blockIdx.x * kWarps + warp;
  const Seq e = get_seq(p, b);
  if (j >= e.sk) return;
  const int64_t group = p.heads_q / p.heads_k;
  const int D = static_cast<int>(p.head_dim), Dv = static_cast<int>(p.head_dim_v);
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* dout = static_cast<const T*>(p.dout);
  for (int d = lane; d < D; d += 32)
    ks[warp][d] = to_f(k[off4(p.k_stride, b, hk, e.k_begin + j, d)]);
  for (int d = lane; d < Dv; d += 32)
    vs[warp][d] = to_f(v[off4(p.v_stride, b, hk, e.k_begin + j, d)]);
  __syncwarp();
  const DropCtx dc = make_drop_ctx(p);
  int i_lo, i_hi;
  rows_for_keys(p, e, j, j, &i_lo, &i_hi);
  float dk[kPerLane], dv[kPerLane];
#pragma unroll
  for (int u = 0; u < kPerLane; ++u) dk[u] = dv[u] = 0.0f;
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const ScoreCtx c = make_score_ctx(p, b, h, e);
    for (int i0 = i_lo; i0 <= i_hi; i0 += 32) {
      const int i = i0 + lane;
      float ds = 0.0f, pz = 0.0f;
      if (i <= i_hi) {
        const T* qr = q + off4(p.q_stride, b, h, e.q_begin + i, 0);
        const T* dor = dout + off4(p.dout_stride, b, h, e.q_begin + i, 0);
        float dot = 0.0f, dp = 0.0f, t = 0.0f, pr;
        for (int d = 0; d < D; ++d) dot += ks[warp][d] * to_f(qr[d * p.q_stride[3]]);
        for (int d = 0; d < Dv; ++d) dp += vs[warp][d] * to_f(dor[d * p.dout_stride[3]]);
        const float z = dc.on ? drop_factor(dc, dropout_row_id(b, h, i, p.heads_q, p.seqlen_q), j)
                              : 1.0f;
        dp *= z;
        const KeyRange r = row_range(p, c, i);
        const float s = score_of(p, c, dot, i, j, r, &t);
        const float lse =
            p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + (e.q_begin + i) * p.lse_stride[2]];
        const float Di = dsum[q_token(p, b, e, i) * p.heads_q + h];
        ds = dscore(c, s, t, lse, dp, Di, &pr);
        pz = pr * z;
      }
      const int n = min(32, i_hi - i0 + 1);
      for (int ii = 0; ii < n; ++ii) {
        const float db = __shfl_sync(0xffffffffu, ds, ii);
        const float pb = __shfl_sync(0xffffffffu, pz, ii);
        if (db == 0.0f && pb == 0.0f) continue;
        const T* qr = q + off4(p.q_stride, b, h, e.q_begin + i0 + ii, 0);
        const T* dor = dout + off4(p.dout_stride, b, h, e.q_begin + i0 + ii, 0);
#pragma unroll
        for (int u = 0; u < kPerLane; ++u) {
          const int d = lane + 32 * u;
          if (d < D) dk[u] += db * to_f(qr[d * p.q_stride[3]]);
          if (d < Dv) dv[u] += pb * to_f(dor[d * p.dout_stride[3]]);
        }
      }
    }
  }
  T* dkp = static_cast<T*>(p.dk);
  T* dvp = static_cast<T*>(p.dv);
#pragma unroll
  for (int u = 0; u < kPerLane; ++u) {
    const int d = lane + 32 * u;
    if (d < D) dkp[off4(p.dk_stride, b, hk, e.k_begin + j, d)] = from_f<T>(dk[u]);
    if (d < Dv) dvp[off4(p.dv_stride, b, hk, e.k_begin + j, d)] = from_f<T>(dv[u]);
  }
}

template <typename T>
void simt_forward_t(const AttnParams& p, cudaStream_t s) {
  const dim3 grid((p.seqlen_q + kWarps - 1) / kWarps, p.heads_q, p.batch);
  if (grid.x > 0) simt_fwd_kernel<T><<<grid, kWarps * 32, 0, s>>>(p);
}

template <typename T>
void simt_backward_t(const AttnParams& p, const float* dsum, cudaStream_t s) {
  const dim3 gq((p.seqlen_q + kWarps - 1) / kWarps, p.heads_q, p.batch);
  if (gq.x > 0) simt_dq_kernel<T><<<gq, kWarps * 32, 0, s>>>(p, dsum);
  const dim3 gk((p.seqlen_k + kWarps - 1) / kWarps, p.heads_k, p.batch);
  if (gk.x > 0) simt_dkdv_kernel<T><<<gk, kWarps * 32, 0, s>>>(p, dsum);
}

}  // namespace

void simt_forward(const AttnParams& p, cudaStream_t s) {
  switch (p.dtype) {
    case DType::f32: simt_forward_t<float>(p, s); break;
    case DType::f16: simt_forward_t<__half>(p, s); break;
    case DType::bf16: simt_forward_t<__nv_bfloat16>(p, s); break;
    default: break;
  }
}

void simt_backward(const AttnParams& p, const float* dsum, cudaStream_t s) {
  switch (p.dtype) {
    case DType::f32: simt_backward_t<float>(p, dsum, s); break;
    case DType::f16: simt_backward_t<__half>(p, dsum, s); break;
    case DType::bf16: simt_backward_t<__nv_bfloat16>(p, dsum, s); break;
    default: break;
  }
}

}  // namespace cuda
}  // namespace fsdpa
