// The CUDA backend: plans each call (plan.h) and launches the plan on the
// caller's stream.
//
// Paths
//   fp16 / bf16: tensor-core kernels (tc.cuh; mma.sync m16n8k16, fp32
//     accumulation), head dims padded to the buckets of tc_buckets.h.
//     Split-KV (flash-decoding) with an lse-weighted merge when the query
//     blocks alone cannot fill the GPU and the key range is long.
//   Decode (decode.cu): fp16/bf16 calls with at most 16
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
//   Hopper (sm_90a build on a 9.x GPU): the forward of the calls in
//     hopper_fwd_scope() that would not split the keys runs the wgmma/TMA
//     kernel of hopper/; the backward of the calls in hopper_bwd_scope()
//     runs hopper/'s wgmma dK/dV/dQ kernel; with deterministic = 1 its dQ
//     adds take turns in key-block order.
//
//   KV caches (forward; seqused_k, cache_leftpad, cache_batch_idx,
//     block_table): the decode, sm80 and SIMT forwards read the cache in
//     place, pages of any size through the page table row by row (no
//     gather copy); the Hopper forward and every backward do not take them.
//     The values are the caller's contract unless the debug check runs
//     (check_device_indices below).
//
// Every call is planned first (plan.h: make_plan, the one place that
// decides, with the reasons; explain() prints it), then run. The one
// override for A/B work and tests is FLASHSDPA_CUDA_FORCE (plan.h).
//
// check_finite: one strided scan kernel per input and one 32-byte copy back
// (a stream synchronisation per call); pass check_finite = 0 to skip it.
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>
#include <vector>

#include "core/backend.h"
#include "core/error.h"
#include "core/settings.h"
#include "core/validate.h"
#include "cuda/plan.h"
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

// Stream-ordered workspace, freed on the same stream: from the caller's
// allocator (fsdpa_set_workspace_allocator) if one is set, else our pool.
struct Buf {
  void* ptr = nullptr;
  cudaStream_t stream = nullptr;
  WorkspaceAllocator from{nullptr, nullptr, nullptr};
  ~Buf() {
    if (ptr == nullptr) return;
    if (from.alloc != nullptr)
      from.free_fn(ptr, stream, from.ctx);
    else
      cudaFreeAsync(ptr, stream);
  }
  cudaError_t alloc(size_t bytes, cudaStream_t s) {
    stream = s;
    if (bytes < 16) bytes = 16;
    from = workspace_allocator();
    if (from.alloc != nullptr) {
      ptr = from.alloc(bytes, s, from.ctx);
      return ptr != nullptr ? cudaSuccess : cudaErrorMemoryAllocation;
    }
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
  // A KV cache holds rows the call does not read (anything, e.g. unused
  // pages): k and v are scanned where the call reads them.
  const bool kv = uses_kv_cache(p);
  Buf flags;
  cudaError_t err = flags.alloc(count * sizeof(unsigned long long), s);
  if (err != cudaSuccess) return cuda_fail(err, "workspace allocation");
  err = cudaMemsetAsync(flags.ptr, 0xFF, count * sizeof(unsigned long long), s);
  if (err != cudaSuccess) return cuda_fail(err, "cudaMemsetAsync");
  for (int x = 0; x < count; ++x) {
    unsigned long long* flag = flags.as<unsigned long long>() + x;
    if (kv && (x == 1 || x == 2)) {
      items[x].n[0] = p.batch;
      items[x].n[2] = p.seqlen_k;
      check_finite_kv(p, x == 2, flag, s);
    } else {
      check_finite(items[x].data, p.dtype, items[x].n, items[x].st, flag, s);
    }
  }
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
    if (kv && (x == 1 || x == 2))
      return set_error(FSDPA_ERROR_NONFINITE_INPUT,
                       "%s: contains a non-finite value (NaN or Inf) at key %lld of sequence %lld "
                       "(kv head %lld, column %lld)",
                       items[x].name, (long long)idx[2], (long long)idx[0], (long long)idx[1],
                       (long long)idx[3]);
    return set_error(FSDPA_ERROR_NONFINITE_INPUT,
                     "%s: contains a non-finite value (NaN or Inf) at index [%lld, %lld, %lld, %lld]",
                     items[x].name, (long long)idx[0], (long long)idx[1], (long long)idx[2],
                     (long long)idx[3]);
  }
  return FSDPA_OK;
}

// The index values the kernels read from device memory (varlen: the
// cu_seqlens offsets; KV caches: seqused_k, cache_leftpad, cache_batch_idx,
// the used block_table entries) are the caller's contract (flashsdpa.h):
// the kernels trust them, so that a call costs no host synchronisation. The
// debug check copies them to the host and holds them to the CPU's rules
// (check_varlen_offsets, check_kv_cache_values: the same messages naming the
// argument). It runs with check_finite = 1 (the C ABI's default, which
// synchronises for its scan anyway, and which must not scan through a bad
// page index) or when the environment variable FLASHSDPA_CHECK_INDICES is
// set to 1 (read per call; for callers such as the Python API on GPUs,
// which pass check_finite = 0).
bool index_check_on(const AttnParams& p) {
  if (!uses_kv_cache(p) && p.cu_seqlens_q == nullptr) return false;
  if (p.check_finite) return true;
  const char* v = getenv("FLASHSDPA_CHECK_INDICES");
  return v != nullptr && strcmp(v, "1") == 0;
}

fsdpa_status check_device_indices(const AttnParams& p, cudaStream_t s) {
  if (!index_check_on(p) || p.batch == 0) return FSDPA_OK;
  std::vector<int32_t> used, rows, pad, cu_q, cu_k, table;
  cudaError_t err = cudaSuccess;
  auto fetch = [&](const int32_t* src, int64_t n, std::vector<int32_t>& dst) -> const int32_t* {
    if (src == nullptr || n <= 0) return src;
    dst.resize(size_t(n));
    if (err == cudaSuccess)
      err = cudaMemcpyAsync(dst.data(), src, size_t(n) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                            s);
    return dst.data();
  };
  AttnParams h = p;
  h.seqused_k = fetch(p.seqused_k, p.batch, used);
  h.cache_batch_idx = fetch(p.cache_batch_idx, p.batch, rows);
  h.cache_leftpad = fetch(p.cache_leftpad, p.batch, pad);
  h.cu_seqlens_q = fetch(p.cu_seqlens_q, p.batch + 1, cu_q);
  h.cu_seqlens_k = fetch(p.cu_seqlens_k, p.batch + 1, cu_k);
  if (p.block_table != nullptr && p.kv_rows > 0)
    h.block_table = fetch(p.block_table,
                          (p.kv_rows - 1) * p.block_table_stride + p.kv_capacity / p.page_size,
                          table);
  if (err == cudaSuccess) err = cudaStreamSynchronize(s);
  if (err != cudaSuccess) return cuda_fail(err, "index check");
  if (h.cu_seqlens_q != nullptr) {
    const fsdpa_status st = check_varlen_offsets(h, h.block_table != nullptr);
    if (st != FSDPA_OK) return st;
  }
  return uses_kv_cache(h) ? check_kv_cache_values(h) : FSDPA_OK;
}

// The plan for p, or its error reported.
fsdpa_status plan_call(const AttnParams& p, bool backward, Plan* plan) {
  const Override ov = read_override();
  *plan = make_plan(p, backward, device_info(p.device_id), ov);
  if (plan->error != nullptr)
    return set_error(static_cast<fsdpa_status>(plan->error_status), "cuda: %s", plan->error);
  return FSDPA_OK;
}

// The plan's workspace: one stream-ordered allocation, carved by the plan.
struct Workspace {
  Buf buf;
  template <typename U> U* at(const Slice& s) const {
    return s.bytes == 0 ? nullptr : reinterpret_cast<U*>(buf.as<char>() + s.off);
  }
};

fsdpa_status alloc_workspace(const Plan& plan, Workspace& ws, cudaStream_t s) {
  if (plan.workspace_bytes == 0) return FSDPA_OK;
  const cudaError_t err = ws.buf.alloc(plan.workspace_bytes, s);
  return err == cudaSuccess ? FSDPA_OK : cuda_fail(err, "workspace allocation");
}

MaskTiles classify_mask(const AttnParams& p, const Plan& plan, const Workspace& ws,
                        cudaStream_t s) {
  if (!plan.mask_tiles) return MaskTiles{nullptr, 0, 0, 0, 0};
  return mask_tiles(p, ws.at<uint8_t>(plan.flags), s);
}

// Expands the block lists into the plan's state table and points p at it.
void prepare_block_sparse(AttnParams& p, const Plan& plan, const Workspace& ws, cudaStream_t s) {
  if (plan.sparse.bytes > 0) sparse_state(&p, ws.at<int32_t>(plan.sparse), s);
}

fsdpa_status forward(const AttnParams& call, void* stream) {
  AttnParams p = call;  // gains the block lists' state table (prepare_block_sparse)
  DeviceGuard guard(p.device_id);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  fsdpa_status st = check_device_indices(p, s);  // before the finite scan reads through pages
  if (st != FSDPA_OK) return st;
  st = check_inputs(p, false, s);
  if (st != FSDPA_OK) return st;
  if (p.cu_seqlens_q != nullptr) varlen_uncovered(p, s);
  if (p.batch == 0 || p.seqlen_q == 0) {
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? FSDPA_OK : cuda_fail(e, "forward kernel launch");
  }
  Plan plan;
  if ((st = plan_call(p, false, &plan)) != FSDPA_OK) return st;
  Workspace ws;
  if ((st = alloc_workspace(plan, ws, s)) != FSDPA_OK) return st;
  prepare_block_sparse(p, plan, ws, s);
  float* opart = ws.at<float>(plan.opart);
  float* lsepart = ws.at<float>(plan.lsepart);
  cudaError_t err = cudaSuccess;
  switch (plan.family) {
    case Family::simt:
      simt_forward(p, s);
      err = cudaGetLastError();
      break;
    case Family::decode:
      err = decode_fwd(p, plan.splits, opart, lsepart, s);
      if (err == cudaSuccess && plan.splits > 1) {
        splitkv_merge(p, plan.splits, opart, lsepart, static_cast<int>(p.head_dim), s);
        err = cudaGetLastError();
      }
      break;
    case Family::hopper: {
      const MaskTiles mt = classify_mask(p, plan, ws, s);
      int* counter = ws.at<int>(plan.counter);
      if (counter != nullptr) err = cudaMemsetAsync(counter, 0, sizeof(int), s);
      if (err == cudaSuccess) err = hopper_fwd(p, mt, counter, s);
      break;
    }
    case Family::sm80: {
      const MaskTiles mt = classify_mask(p, plan, ws, s);
      auto run = p.dtype == DType::f16 ? tc_fwd_f16 : tc_fwd_bf16;
      err = run(p, plan.head_bucket, vec_bits(p, false), mt, plan.splits, opart, lsepart, s);
      if (err == cudaSuccess && plan.splits > 1) {
        splitkv_merge(p, plan.splits, opart, lsepart, plan.head_bucket, s);
        err = cudaGetLastError();
      }
      break;
    }
  }
  if (err != cudaSuccess) return cuda_fail(err, "forward kernel launch");
  return FSDPA_OK;
}

fsdpa_status backward(const AttnParams& call, void* stream) {
  AttnParams p = call;  // gains the block lists' state table (prepare_block_sparse)
  DeviceGuard guard(p.device_id);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  fsdpa_status st = check_device_indices(p, s);
  if (st != FSDPA_OK) return st;
  st = check_inputs(p, true, s);
  if (st != FSDPA_OK) return st;
  if (p.cu_seqlens_q != nullptr) zero_grads(p, s);
  if (p.batch == 0) {
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? FSDPA_OK : cuda_fail(e, "backward kernel launch");
  }
  Plan plan;
  if ((st = plan_call(p, true, &plan)) != FSDPA_OK) return st;
  Workspace ws;
  if ((st = alloc_workspace(plan, ws, s)) != FSDPA_OK) return st;
  prepare_block_sparse(p, plan, ws, s);
  float* dsum = ws.at<float>(plan.dsum);
  // The fp32 dQ workspace, [token * Hq + h][dq_cols], is zeroed by the
  // preprocess row by row; the deterministic turn counters after it here.
  float* dqacc = ws.at<float>(plan.dq);
  cudaError_t err = cudaSuccess;
  if (plan.dq_turns.bytes > 0)
    err = cudaMemsetAsync(ws.at<char>(plan.dq_turns), 0, plan.dq_turns.bytes, s);
  if (err == cudaSuccess && plan.dkv.bytes > 0)
    err = cudaMemsetAsync(ws.at<char>(plan.dkv), 0, plan.dkv.bytes, s);
  if (err != cudaSuccess) return cuda_fail(err, "dQ workspace zeroing");
  const MaskTiles mt = classify_mask(p, plan, ws, s);
  bwd_preprocess(p, dsum, dqacc, plan.dq_cols, s);
  err = cudaGetLastError();
  if (err != cudaSuccess) return cuda_fail(err, "backward preprocess launch");
  switch (plan.family) {
    case Family::simt:
      simt_backward(p, dsum, s);
      err = cudaGetLastError();
      break;
    case Family::hopper:
      err = hopper_bwd(p, mt, dsum, dqacc, ws.at<float>(plan.dkv), plan.head_splits, s);
      break;
    case Family::decode:  // forward only (make_plan never picks it here)
    case Family::sm80: {
      auto run = p.dtype == DType::f16 ? tc_bwd_f16 : tc_bwd_bf16;
      err = run(p, plan.head_bucket, vec_bits(p, true), mt, dsum, dqacc, s);
      break;
    }
  }
  if (err != cudaSuccess) return cuda_fail(err, "backward kernel launch");
  return FSDPA_OK;
}

// The plan of a call, as text (fsdpa_explain). Nothing runs on the device.
fsdpa_status explain(const AttnParams& p, bool backward, char* buf, size_t size) {
  const Override ov = read_override();
  const Plan plan = make_plan(p, backward, device_info(p.device_id), ov, true);
  format_plan(plan, ov, buf, size);
  if (plan.error != nullptr)
    return set_error(static_cast<fsdpa_status>(plan.error_status), "cuda: %s", plan.error);
  return FSDPA_OK;
}

bool available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace

fsdpa_status merge(const MergeParams& m, void* stream);  // merge.cu
}  // namespace cuda

extern const Backend kCudaBackend = {"cuda",       kDLCUDA,      cuda::available,
                                     cuda::forward, cuda::backward, cuda::merge,
                                     cuda::explain, /*block_sparse=*/true};

}  // namespace fsdpa
