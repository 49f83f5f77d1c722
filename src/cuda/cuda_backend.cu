// The CUDA backend: picks a path per call and launches it on the caller's
// stream.
//
// Paths
//   fp16 / bf16: tensor-core kernels (tc.cuh; mma.sync m16n8k16, fp32
//     accumulation), head dims padded to the buckets of tc_buckets.h.
//     Split-KV (flash-decoding) with an lse-weighted merge when the query
//     blocks alone cannot fill the GPU and the key range is long.
//   Decode (decode.cu, use_decode below): fp16/bf16 calls with at most 16
//     query rows per head and 64 per GQA group, D == Dv in {64, 128},
//     band-only semantics: the rows of a GQA group share one CTA per key
//     split, K/V streamed once per group; split partials merged by
//     splitkv_merge. Taken before the Hopper and tensor-core choice.
//   fp32: the SIMT kernels (simt.cu), plain fp32 arithmetic (no TF32).
//   Backward, deterministic = 1: dQ is computed by its own kernel looping
//   over key blocks, dK/dV by one looping over the query blocks of every
//   query head of the GQA group; no atomics (bit-reproducible).
//   deterministic = 0 (tensor-core path): one dK/dV kernel also adds dS K to
//   an fp32 dQ workspace with atomics (5 matrix products instead of 7), then
//   a conversion kernel writes dq.
//
//   Hopper (sm_90a build on a 9.x GPU): the forward of the calls that
//     hopper_fwd_supported() accepts and that would not split the keys
//     runs the wgmma/TMA kernel of hopper/ (use_hopper below, the one place
//     that decides); the backward of the calls that hopper_bwd_supported()
//     accepts runs hopper/'s wgmma dK/dV/dQ kernel (use_hopper_bwd); with
//     deterministic = 1 its dQ adds take turns in key-block order.
//
// Environment (for tests and benchmarks): FLASHSDPA_CUDA_NO_DECODE=1 turns
// the decode kernel off (A/B); FLASHSDPA_CUDA_NO_HOPPER=1 keeps
// the sm_80 kernels on Hopper GPUs; FLASHSDPA_CUDA_SIMT=1 forces the
// SIMT path for every dtype; FLASHSDPA_CUDA_SPLITS=n forces n KV splits in
// the tensor-core and decode forwards (1 = off); FLASHSDPA_CUDA_DQ_KERNEL=1 keeps the
// deterministic dQ kernel also when deterministic = 0.
//
// check_finite: one strided scan kernel per input and one 32-byte copy back
// (a stream synchronisation per call); pass check_finite = 0 to skip it.
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>

#include "core/backend.h"
#include "core/error.h"
#include "cuda/env.h"
#include "cuda/hopper/hopper.h"
#include "cuda/launch.h"
#include "cuda/tc_buckets.h"

namespace fsdpa {
namespace cuda {
namespace {

struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int dev) {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != dev) {
      prev = cur;
      cudaSetDevice(dev);
    }
  }
  ~DeviceGuard() {
    if (prev >= 0) cudaSetDevice(prev);
  }
};

int bucket_for(int64_t d, int64_t dv) {
  const int64_t m = d > dv ? d : dv;
#define FSDPA_BUCKET(B) \
  if (m <= B) return B;
  FSDPA_TC_BUCKETS(FSDPA_BUCKET)
#undef FSDPA_BUCKET
  return 0;
}

bool vec_ok(const void* ptr, const int64_t* st, int64_t dim) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && st[3] == 1 && dim % 8 == 0 &&
         st[0] % 8 == 0 && st[1] % 8 == 0 && st[2] % 8 == 0;
}

int vec_bits(const AttnParams& p, bool backward) {
  int v = 0;
  if (vec_ok(p.q, p.q_stride, p.head_dim)) v |= kVecQ;
  if (vec_ok(p.k, p.k_stride, p.head_dim)) v |= kVecK;
  if (vec_ok(p.v, p.v_stride, p.head_dim_v)) v |= kVecV;
  if (!backward && vec_ok(p.out, p.out_stride, p.head_dim_v)) v |= kVecO;
  if (backward && vec_ok(p.dout, p.dout_stride, p.head_dim_v)) v |= kVecDO;
  return v;
}

fsdpa_status cuda_fail(cudaError_t e, const char* what) {
  if (e == cudaErrorMemoryAllocation)
    return set_error(FSDPA_ERROR_OUT_OF_MEMORY, "cuda: out of device memory (%s)", what);
  return set_error(FSDPA_ERROR_INTERNAL, "cuda: %s failed: %s", what, cudaGetErrorString(e));
}

// Workspaces come from a memory pool of the library's own per device that
// keeps up to kWorkspaceKeep bytes reserved between calls. The default pool
// (release threshold 0) hands its memory back at every synchronisation, so
// the next call mapped it again: ~40 us per allocation, measured on an H100
// as a split decode call 0.08 ms slower than the same kernels without its
// two workspaces. Larger workspaces (the backward's dQ accumulator) are
// still returned at the next synchronisation above the threshold.
constexpr uint64_t kWorkspaceKeep = uint64_t(64) << 20;
constexpr int kMaxPoolDevices = 64;

cudaMemPool_t workspace_pool() {
  int dev = -1;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxPoolDevices) return nullptr;
  static std::mutex mu;
  static cudaMemPool_t pools[kMaxPoolDevices];
  static bool tried[kMaxPoolDevices];
  std::lock_guard<std::mutex> lock(mu);
  if (!tried[dev]) {
    tried[dev] = true;
    int supported = 0;
    cudaMemPool_t pool = nullptr;
    cudaMemPoolProps props;
    memset(&props, 0, sizeof props);
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = dev;
    uint64_t keep = kWorkspaceKeep;
    if (cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, dev) == cudaSuccess &&
        supported) {
      if (cudaMemPoolCreate(&pool, &props) == cudaSuccess &&
          cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) == cudaSuccess)
        pools[dev] = pool;
      else
        cudaGetLastError();  // no pool of our own: cudaMallocAsync as before
    }
  }
  return pools[dev];
}

// Stream-ordered workspace, freed on the same stream.
struct Buf {
  void* ptr = nullptr;
  cudaStream_t stream = nullptr;
  ~Buf() {
    if (ptr) cudaFreeAsync(ptr, stream);
  }
  cudaError_t alloc(size_t bytes, cudaStream_t s) {
    stream = s;
    if (bytes < 16) bytes = 16;
    cudaMemPool_t pool = workspace_pool();
    return pool ? cudaMallocFromPoolAsync(&ptr, bytes, pool, s) : cudaMallocAsync(&ptr, bytes, s);
  }
  template <typename U> U* as() const { return static_cast<U*>(ptr); }
};

// NaN/Inf scan of q, k, v (and dout) on the device.
fsdpa_status check_inputs(const AttnParams& p, bool backward, cudaStream_t s) {
  if (!p.check_finite) return FSDPA_OK;
  const bool varlen = p.cu_seqlens_q != nullptr;
  struct Item {
    const char* name;
    const void* data;
    const int64_t* st;
    int64_t n[4];
  } items[4] = {
      {"q", p.q, p.q_stride, {varlen ? 1 : p.batch, p.heads_q, varlen ? p.total_q : p.seqlen_q, p.head_dim}},
      {"k", p.k, p.k_stride, {varlen ? 1 : p.batch, p.heads_k, varlen ? p.total_k : p.seqlen_k, p.head_dim}},
      {"v", p.v, p.v_stride, {varlen ? 1 : p.batch, p.heads_k, varlen ? p.total_k : p.seqlen_k, p.head_dim_v}},
      {"dout", p.dout, p.dout_stride, {varlen ? 1 : p.batch, p.heads_q, varlen ? p.total_q : p.seqlen_q, p.head_dim_v}},
  };
  const int count = backward ? 4 : 3;
  Buf flags;
  cudaError_t err = flags.alloc(count * sizeof(unsigned long long), s);
  if (err != cudaSuccess) return cuda_fail(err, "workspace allocation");
  err = cudaMemsetAsync(flags.ptr, 0xFF, count * sizeof(unsigned long long), s);
  if (err != cudaSuccess) return cuda_fail(err, "cudaMemsetAsync");
  for (int x = 0; x < count; ++x)
    check_finite(items[x].data, p.dtype, items[x].n, items[x].st,
                 flags.as<unsigned long long>() + x, s);
  unsigned long long host[4];
  err = cudaMemcpyAsync(host, flags.ptr, count * sizeof(unsigned long long),
                        cudaMemcpyDeviceToHost, s);
  if (err == cudaSuccess) err = cudaStreamSynchronize(s);
  if (err != cudaSuccess) return cuda_fail(err, "finite check");
  for (int x = 0; x < count; ++x) {
    if (host[x] == ~0ull) continue;
    int64_t idx[4], r = static_cast<int64_t>(host[x]);
    for (int d = 3; d >= 0; --d) {
      idx[d] = r % items[x].n[d];
      r /= items[x].n[d];
    }
    return set_error(FSDPA_ERROR_NONFINITE_INPUT,
                     "%s: contains a non-finite value (NaN or Inf) at index [%lld, %lld, %lld, %lld]",
                     items[x].name, (long long)idx[0], (long long)idx[1], (long long)idx[2],
                     (long long)idx[3]);
  }
  return FSDPA_OK;
}

// Tile flags of the mask for block skipping (tensor-core path).
fsdpa_status classify_mask(const AttnParams& p, Buf& flags, MaskTiles* mt, cudaStream_t s) {
  const int64_t bytes = mask_tiles_bytes(p);
  if (bytes <= 0 || env_flag("FLASHSDPA_CUDA_NO_MASK_SKIP")) return FSDPA_OK;
  const cudaError_t err = flags.alloc(bytes, s);
  if (err != cudaSuccess) return cuda_fail(err, "mask tile workspace allocation");
  *mt = mask_tiles(p, flags.as<uint8_t>(), s);
  return FSDPA_OK;
}

int sm_count(int dev) {
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0)
    n = 108;
  return n;
}

// Number of KV splits for the tensor-core forward.
int choose_splits(const AttnParams& p, int dp) {
  const int forced = env_int("FLASHSDPA_CUDA_SPLITS", 0);
  if (forced > 0) return forced > 256 ? 256 : forced;
  const int bm = tc_fwd_block_m(dp);
  const int bn = dp <= 128 ? 64 : 32;  // the split-KV kernel's keys per step
  const int64_t ctas = (p.seqlen_q + bm - 1) / bm * p.heads_q * p.batch;
  const int64_t nkb = (p.seqlen_k + bn - 1) / bn;
  const int sms = sm_count(p.device_id);
  if (ctas >= sms || nkb < 8) return 1;
  // About two full waves of 2 blocks per SM (measured on an H100, decode
  // B*H = 128, Sk = 32k: 4 or 8 splits 0.84 ms, 5 splits 0.96 ms (a partial
  // third wave), 16 splits 0.92 ms).
  int64_t n = 4 * sms / ctas;
  if (n > nkb / 4) n = nkb / 4;
  if (n > 64) n = 64;
  // Keep the fp32 partials under 1 GiB.
  while (n > 1 && n * p.total_q * p.heads_q * dp * 4 > (int64_t(1) << 30)) n /= 2;
  return n < 2 ? 1 : static_cast<int>(n);
}

// The decode kernel takes the call (see the header comment).
bool use_decode(const AttnParams& p) {
  return !env_flag("FLASHSDPA_CUDA_NO_DECODE") && decode_supported(p);
}

// Decode forward: one launch, plus the lse-weighted merge when the keys are split.
cudaError_t run_decode(const AttnParams& p, cudaStream_t s, bool* oom) {
  const int nsplit = decode_splits(p);
  if (nsplit <= 1) return decode_fwd(p, 1, nullptr, nullptr, s);
  const int64_t rows = p.total_q * p.heads_q;
  Buf opart, lsepart;
  cudaError_t err = opart.alloc(size_t(nsplit) * rows * p.head_dim * sizeof(float), s);
  if (err == cudaSuccess) err = lsepart.alloc(size_t(nsplit) * rows * sizeof(float), s);
  if (err != cudaSuccess) {
    *oom = true;
    return err;
  }
  err = decode_fwd(p, nsplit, opart.as<float>(), lsepart.as<float>(), s);
  if (err != cudaSuccess) return err;
  splitkv_merge(p, nsplit, opart.as<float>(), lsepart.as<float>(), static_cast<int>(p.head_dim), s);
  return cudaGetLastError();
}

// The Hopper forward takes the call (see the header comment).
bool use_hopper(const AttnParams& p, int nsplit) {
  return nsplit <= 1 && !env_flag("FLASHSDPA_CUDA_NO_HOPPER") && hopper_fwd_supported(p) &&
         hopper_fwd_available(p.device_id);
}

// The Hopper backward takes the call (FLASHSDPA_CUDA_NO_HOPPER turns it off
// as well).
bool use_hopper_bwd(const AttnParams& p) {
  return !env_flag("FLASHSDPA_CUDA_NO_HOPPER") && hopper_bwd_supported(p) &&
         hopper_fwd_available(p.device_id);
}

fsdpa_status forward(const AttnParams& p, void* stream) {
  // No CUDA kernel reads a paged or per-sequence-length cache yet; refuse
  // rather than read the wrong rows.
  if (uses_kv_cache(p))
    return set_error(FSDPA_ERROR_UNSUPPORTED,
                     "block_table / seqused_k / cache_batch_idx / cache_leftpad: the KV-cache "
                     "parameters are not supported on cuda yet");
  DeviceGuard guard(p.device_id);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  fsdpa_status st = check_inputs(p, false, s);
  if (st != FSDPA_OK) return st;
  if (p.cu_seqlens_q != nullptr) varlen_uncovered(p, s);
  if (p.batch == 0 || p.seqlen_q == 0) {
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? FSDPA_OK : cuda_fail(e, "forward kernel launch");
  }
  const int dp = bucket_for(p.head_dim, p.head_dim_v);
  const bool simt = p.dtype == DType::f32 || dp == 0 || env_flag("FLASHSDPA_CUDA_SIMT");
  cudaError_t err = cudaSuccess;
  if (simt) {
    simt_forward(p, s);
    err = cudaGetLastError();
  } else if (use_decode(p)) {
    bool oom = false;
    err = run_decode(p, s, &oom);
    if (oom) return cuda_fail(err, "split-KV workspace allocation");
  } else {
    const int vec = vec_bits(p, false);
    const int nsplit = choose_splits(p, dp);
    Buf flags;
    MaskTiles mt{nullptr, 0, 0, 0, 0};
    st = classify_mask(p, flags, &mt, s);
    if (st != FSDPA_OK) return st;
    if (use_hopper(p, nsplit)) {
      Buf counter;
      if (hopper_fwd_dynamic(p)) {
        err = counter.alloc(sizeof(int), s);
        if (err == cudaSuccess) err = cudaMemsetAsync(counter.ptr, 0, sizeof(int), s);
        if (err != cudaSuccess) return cuda_fail(err, "tile counter");
      }
      err = hopper_fwd(p, mt, counter.as<int>(), s);
      if (err != cudaErrorNotSupported) {
        if (err != cudaSuccess) return cuda_fail(err, "forward kernel launch");
        return FSDPA_OK;
      }
    }
    auto run = p.dtype == DType::f16 ? tc_fwd_f16 : tc_fwd_bf16;
    if (nsplit <= 1) {
      err = run(p, dp, vec, mt, 1, nullptr, nullptr, s);
    } else {
      const int64_t rows = p.total_q * p.heads_q;
      Buf opart, lsepart;
      err = opart.alloc(size_t(nsplit) * rows * dp * sizeof(float), s);
      if (err == cudaSuccess) err = lsepart.alloc(size_t(nsplit) * rows * sizeof(float), s);
      if (err != cudaSuccess) return cuda_fail(err, "split-KV workspace allocation");
      err = run(p, dp, vec, mt, nsplit, opart.as<float>(), lsepart.as<float>(), s);
      if (err == cudaSuccess) {
        splitkv_merge(p, nsplit, opart.as<float>(), lsepart.as<float>(), dp, s);
        err = cudaGetLastError();
      }
    }
  }
  if (err != cudaSuccess) return cuda_fail(err, "forward kernel launch");
  return FSDPA_OK;
}

fsdpa_status backward(const AttnParams& p, void* stream) {
  DeviceGuard guard(p.device_id);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  fsdpa_status st = check_inputs(p, true, s);
  if (st != FSDPA_OK) return st;
  if (p.cu_seqlens_q != nullptr) zero_grads(p, s);
  if (p.batch == 0) {
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? FSDPA_OK : cuda_fail(e, "backward kernel launch");
  }
  Buf dsum;
  cudaError_t err = dsum.alloc(size_t(p.total_q) * p.heads_q * sizeof(float), s);
  if (err != cudaSuccess) return cuda_fail(err, "workspace allocation");
  const int dp = bucket_for(p.head_dim, p.head_dim_v);
  const bool simt = p.dtype == DType::f32 || dp == 0 || env_flag("FLASHSDPA_CUDA_SIMT");
  Buf flags;
  MaskTiles mt{nullptr, 0, 0, 0, 0};
  if (!simt) {
    st = classify_mask(p, flags, &mt, s);
    if (st != FSDPA_OK) return st;
  }
  // The fp32 dQ workspace, [token * Hq + h][dq_cols], zeroed by the
  // preprocess: the Hopper kernels' (head_dim columns, then the
  // deterministic turn counters, zeroed here), or the sm_80 kernels' when
  // they add dQ by atomics (non-deterministic; FLASHSDPA_CUDA_DQ_KERNEL=1
  // keeps their separate dQ kernel).
  const bool hopper = !simt && use_hopper_bwd(p);
  const bool tc_atomics = !simt && !p.deterministic && !env_flag("FLASHSDPA_CUDA_DQ_KERNEL");
  const int dq_cols = hopper ? static_cast<int>(p.head_dim) : dp;
  const size_t dq_bytes = size_t(p.total_q) * p.heads_q * dq_cols * sizeof(float);
  Buf dqacc;
  if (hopper || tc_atomics) {
    const size_t bytes = hopper ? hopper_bwd_workspace_bytes(p) : dq_bytes;
    err = dqacc.alloc(bytes, s);
    if (err != cudaSuccess) return cuda_fail(err, "dQ workspace allocation");
    if (bytes > dq_bytes)
      err = cudaMemsetAsync(dqacc.as<char>() + dq_bytes, 0, bytes - dq_bytes, s);
    if (err != cudaSuccess) return cuda_fail(err, "dQ workspace zeroing");
  }
  bwd_preprocess(p, dsum.as<float>(), dqacc.as<float>(), dq_cols, s);
  err = cudaGetLastError();
  if (err != cudaSuccess) return cuda_fail(err, "backward preprocess launch");
  bool done = false;
  if (simt) {
    simt_backward(p, dsum.as<float>(), s);
    err = cudaGetLastError();
    done = true;
  } else if (hopper) {
    err = hopper_bwd(p, mt, dsum.as<float>(), dqacc.as<float>(), s);
    done = err != cudaErrorNotSupported;
  }
  if (!done) {
    auto run = p.dtype == DType::f16 ? tc_bwd_f16 : tc_bwd_bf16;
    // Non-deterministic: dQ by fp32 atomics in the dK/dV kernel (5 products).
    float* dq = tc_atomics ? dqacc.as<float>() : nullptr;
    Buf own;
    if (hopper && tc_atomics && dp != dq_cols) {
      // The Hopper kernels declined after all, and their workspace rows
      // are narrower: a workspace of this path's own.
      const size_t bytes = size_t(p.total_q) * p.heads_q * dp * sizeof(float);
      err = own.alloc(bytes, s);
      if (err == cudaSuccess) err = cudaMemsetAsync(own.ptr, 0, bytes, s);
      if (err != cudaSuccess) return cuda_fail(err, "dQ workspace allocation");
      dq = own.as<float>();
    }
    err = run(p, dp, vec_bits(p, true), mt, dsum.as<float>(), dq, s);
  }
  if (err != cudaSuccess) return cuda_fail(err, "backward kernel launch");
  return FSDPA_OK;
}

bool available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace

fsdpa_status merge(const MergeParams& m, void* stream);  // merge.cu
}  // namespace cuda

extern const Backend kCudaBackend = {"cuda", kDLCUDA, cuda::available, cuda::forward,
                                     cuda::backward, cuda::merge};

}  // namespace fsdpa
