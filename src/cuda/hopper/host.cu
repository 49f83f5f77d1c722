// Host side of the Hopper forward: the scope predicate, the per-device
// availability check, the TMA tensor maps, and the launch.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>

#include "cuda/hopper/config.h"
#include "cuda/hopper/hopper.h"
#include "cuda/hopper/bwd_kernel.cuh"
#include "cuda/hopper/bwd256_kernel.cuh"
#include "cuda/hopper/launch.cuh"

namespace fsdpa {
namespace cuda {
namespace {

using hopper::FwdArgs;

// cuTensorMapEncodeTiled through the runtime's driver entry point (no
// libcuda link dependency).
PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// 4-d map (d, token, head, batch) of a q/k/v tensor: box 64 x box_rows,
// 128-byte swizzle, zero fill outside (also columns D.. of a kernel
// instantiated for more: hopper_kernel_dim). Size-1 dims get a harmless
// stride.
bool make_map(CUtensorMap* m, DType t, const void* ptr, const int64_t* st, int64_t rows,
              int64_t heads, int64_t batch, int D, int box_rows) {
  auto encode = encode_fn();
  if (encode == nullptr) return false;
  const cuuint64_t dims[4] = {cuuint64_t(D), cuuint64_t(rows), cuuint64_t(heads),
                              cuuint64_t(batch)};
  const int64_t es[3] = {st[2], st[1], st[0]};
  cuuint64_t strides[3];
  int64_t prev = int64_t(D) * 2, prev_dim = 1;
  for (int i = 0; i < 3; ++i) {
    int64_t v = es[i] * 2;
    if (dims[i + 1] == 1) v = (prev * prev_dim + 15) / 16 * 16;
    if (v <= 0 || v % 16 != 0 || v >= (int64_t(1) << 40)) return false;
    strides[i] = cuuint64_t(v);
    prev = v;
    prev_dim = int64_t(dims[i + 1]);
  }
  const cuuint32_t box[4] = {64, cuuint32_t(box_rows), 1, 1};
  const cuuint32_t estr[4] = {1, 1, 1, 1};
  const CUtensorMapDataType dt =
      t == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return encode(m, dt, 4, const_cast<void*>(ptr), dims, strides, box, estr,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

int sm_count(int dev) {
  static int cache[64];
  if (dev >= 0 && dev < 64 && cache[dev] > 0) return cache[dev];
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    (void)cudaGetLastError();
    n = 132;
  }
  if (dev >= 0 && dev < 64) cache[dev] = n;
  return n;
}

}  // namespace

// Consumer warpgroups at D = 64: 3 (192 query rows per tile: a third less
// K/V traffic per row) for long key ranges, 2 (128 rows: less work on
// diagonal and partial blocks, shorter tiles) otherwise. Measured on an
// H100, bf16, TFLOP/s 3 vs 2: S = 16384 537 vs 440 (causal 488 vs 444);
// S = 4096 443-445 vs 423-437 (causal 346-366 vs 388-391); S = 1024 within
// +-3% (causal 238-242 vs 271-278). D 128 / 256: 2.
int hopper_fwd_warpgroups(const AttnParams& p) {
  if (hopper_kernel_dim(p) != 64) return 2;
  if (p.mask_kind != MaskKind::none) return 2;  // launch.cuh: masked kernels have 2
  const bool band = p.window_left >= 0 || p.window_right >= 0;
  return p.seqlen_k >= 8192 || (!band && p.seqlen_k >= 4096) ? 3 : 2;
}

namespace {

// (batch, head) pairs per section of the dynamic schedule (fwd_kernel.cuh):
// their K/V take about 16 MB, a third of an H100's L2, so the CTAs running
// at once (they span one or two sections) keep theirs there.
int sched_heads(const AttnParams& p, int D) {
  const int64_t kv_bytes = 4 * p.seqlen_k * D;  // K and V of one KV head, 2 bytes each
  const int64_t per_kv = std::max<int64_t>(1, (int64_t(16) << 20) / std::max<int64_t>(kv_bytes, 1));
  const int64_t g = per_kv * (p.heads_q / p.heads_k);  // query heads sharing a KV head
  return static_cast<int>(std::min<int64_t>(g, p.heads_q * p.batch));
}

template <int D>
cudaError_t run(const AttnParams& p, const MaskTiles& mt, int* tile_counter, cudaStream_t s) {
  const int w = hopper_fwd_warpgroups(p);
  const int bm = 64 * w, bn = hopper::fwd_default_bn<D>();
  FwdArgs a;
  memset(&a, 0, sizeof a);
  a.p = p;
  a.mt = mt;
  a.tile_counter = tile_counter;
  a.sched_heads = sched_heads(p, D);
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int64_t nb = varlen ? 1 : p.batch;
  // <= D: hopper_kernel_dim(p)
  const int d = static_cast<int>(p.head_dim), dv = static_cast<int>(p.head_dim_v);
  if (!make_map(&a.tq, p.dtype, p.q, p.q_stride, varlen ? p.total_q : p.seqlen_q, p.heads_q, nb,
                d, bm) ||
      !make_map(&a.tk, p.dtype, p.k, p.k_stride, varlen ? p.total_k : p.seqlen_k, p.heads_k, nb,
                d, bn) ||
      !make_map(&a.tv, p.dtype, p.v, p.v_stride, varlen ? p.total_k : p.seqlen_k, p.heads_k, nb,
                dv, bn))
    return cudaErrorInvalidValue;  // hopper_fwd_scope rules this out
  const int sms = sm_count(p.device_id);
  const bool bf = p.dtype == DType::bf16;
  switch (p.mask_kind) {
    case MaskKind::boolean:
      return bf ? hopper::fwd_bf16_bool(a, sms, w, s) : hopper::fwd_f16_bool(a, sms, w, s);
    case MaskKind::additive:
      return bf ? hopper::fwd_bf16_add(a, sms, w, s) : hopper::fwd_f16_add(a, sms, w, s);
    default: return bf ? hopper::fwd_bf16(a, sms, w, s) : hopper::fwd_f16(a, sms, w, s);
  }
}

// The backward's fp32 dQ workspace [(token * Hq + h) * D + d] as a 3-d map
// (d, head, token) for the TMA reduce (bwd_dq.cuh): boxes of 32 columns
// (128 bytes: the 128B swizzle's row) x 1 head x 64 tokens.
bool make_dq_map(CUtensorMap* m, float* dqacc, int D, int64_t heads, int64_t tokens) {
  auto encode = encode_fn();
  if (encode == nullptr || tokens <= 0 || tokens >= (int64_t(1) << 31)) return false;
  const cuuint64_t dims[3] = {cuuint64_t(D), cuuint64_t(heads), cuuint64_t(tokens)};
  const cuuint64_t strides[2] = {cuuint64_t(D) * 4, cuuint64_t(heads) * D * 4};
  if (strides[1] >= (cuuint64_t(1) << 40)) return false;
  const cuuint32_t box[3] = {32, 1, 64};
  const cuuint32_t estr[3] = {1, 1, 1};
  return encode(m, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 3, dqacc, dims, strides, box, estr,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The arguments both backward kernels take: q, dO in boxes of bm rows, k, v
// in boxes of bn (p.head_dim columns), the dQ workspace ([token][head][D]:
// the kernel's D) as a map for the TMA reduce and, with
// deterministic = 1, its turn counters (one per bm query rows). False when
// a tensor map cannot be encoded (hopper_bwd_scope rules that out).
bool bwd_args(hopper::BwdArgs* a, const AttnParams& p, const MaskTiles& mt, const float* dsum,
              float* dqacc, int D, int bm, int bn) {
  memset(a, 0, sizeof *a);
  a->p = p;
  a->dsum = dsum;
  a->dqacc = dqacc;
  a->mt = mt;
  a->head_splits = 1;
  const bool varlen = p.cu_seqlens_q != nullptr;
  const int64_t nb = varlen ? 1 : p.batch;
  const int64_t sq = varlen ? p.total_q : p.seqlen_q, sk = varlen ? p.total_k : p.seqlen_k;
  const int d = static_cast<int>(p.head_dim), dv = static_cast<int>(p.head_dim_v);
  if (!make_map(&a->tq, p.dtype, p.q, p.q_stride, sq, p.heads_q, nb, d, bm) ||
      !make_map(&a->tdo, p.dtype, p.dout, p.dout_stride, sq, p.heads_q, nb, dv, bm) ||
      !make_map(&a->tk, p.dtype, p.k, p.k_stride, sk, p.heads_k, nb, d, bn) ||
      !make_map(&a->tv, p.dtype, p.v, p.v_stride, sk, p.heads_k, nb, dv, bn) ||
      !make_dq_map(&a->tdq, dqacc, D, p.heads_q, p.total_q))
    return false;
  if (p.deterministic) {
    // The counters follow dQ in the workspace (hopper_bwd_workspace_bytes).
    a->sem_nqb = static_cast<int>((p.seqlen_q + bm - 1) / bm);
    a->dq_sem = reinterpret_cast<int*>(dqacc + p.total_q * p.heads_q * D);
  }
  return true;
}

template <int D>
cudaError_t run_bwd(const AttnParams& p, const MaskTiles& mt, const float* dsum, float* dqacc,
                    float* dkvacc, int head_splits, cudaStream_t s) {
  using C = hopper::BwdCfg<D>;
  hopper::BwdArgs a;
  if (!bwd_args(&a, p, mt, dsum, dqacc, D, C::kBM, C::kBN)) return cudaErrorInvalidValue;
  if (head_splits > 1) {
    a.head_splits = head_splits;
    a.dkvacc = dkvacc;
  }
  return p.dtype == DType::bf16 ? hopper::bwd_bf16(a, s) : hopper::bwd_f16(a, s);
}

// D = 256 (bwd256_kernel.cuh): 64-key blocks, 64-row query blocks.
cudaError_t run_bwd256(const AttnParams& p, const float* dsum, float* dqacc, cudaStream_t s) {
  using C = hopper::Bwd256Cfg;
  hopper::BwdArgs a;
  if (!bwd_args(&a, p, MaskTiles{nullptr, 0, 0, 0, 0}, dsum, dqacc, C::D, C::kBM, C::kBN))
    return cudaErrorInvalidValue;
  return p.dtype == DType::bf16 ? hopper::bwd256_bf16(a, s) : hopper::bwd256_f16(a, s);
}

}  // namespace

const char* hopper_bwd_scope(const AttnParams& p) {
  // D = Dv = 256 (bwd256_kernel.cuh): no mask.
  if (hopper_kernel_dim(p) == 256 && p.mask_kind != MaskKind::none)
    return "D or Dv > 128 with a mask (the D 256 kernels are unmasked)";
  // The forward's scope for q, k, v and the band, whatever it says about
  // masks: bool and additive masks (additive in fp32/fp16/bf16) are in the
  // backward's scope (bwd_mask.cuh).
  AttnParams nm = p;
  nm.mask_kind = MaskKind::none;
  nm.mask = nullptr;
  if (const char* why = hopper_fwd_scope(nm)) return why;
  if (p.mask_kind != MaskKind::none) {
    if (p.mask == nullptr) return "mask kind without a mask";
    if (p.mask_kind == MaskKind::boolean ? p.mask_dtype != DType::u8
                                         : p.mask_dtype != DType::f32 &&
                                               p.mask_dtype != DType::f16 &&
                                               p.mask_dtype != DType::bf16)
      return "mask dtype";
  }
  if (p.dout_dtype != p.dtype) return "dout dtype differs from q's";
  if (p.lse == nullptr) return "no lse";
  if (p.heads_k > 65535) return "more than 65535 kv heads (grid.y)";
  if (!aligned16(p.dout) || !aligned16(p.dk) || !aligned16(p.dv))
    return "dout/dk/dv not 16-byte aligned";
  const int64_t* st[3] = {p.dout_stride, p.dk_stride, p.dv_stride};
  for (const int64_t* x : st)
    if (x[3] != 1 || x[0] % 8 != 0 || x[1] % 8 != 0 || x[2] % 8 != 0)
      return "dout/dk/dv strides (d stride 1, others multiples of 8 elements)";
  return nullptr;
}

size_t hopper_bwd_workspace_bytes(const AttnParams& p) {
  const size_t dq = size_t(p.total_q) * p.heads_q * hopper_kernel_dim(p) * sizeof(float);
  if (!p.deterministic) return dq;
  // + one int per (sequence, query head, block of 64 query rows: the
  // smallest kBM)
  return dq + size_t(p.batch) * p.heads_q * ((p.seqlen_q + 63) / 64) * sizeof(int);
}

int hopper_bwd_head_splits(const AttnParams& p, int sms) {
  const int group = static_cast<int>(p.heads_q / p.heads_k);
  // Not with deterministic = 1 (the dK/dV adds would come in any order),
  // nor at D 256 (bwd256_kernel.cuh has no split).
  if (group == 1 || p.deterministic || hopper_kernel_dim(p) == 256) return 1;
  const int64_t ctas = (p.seqlen_k + 127) / 128 * p.heads_k * p.batch;
  // The smallest divisor of the group that gives two waves of CTAs (under
  // one, a causal backward waits for its first key blocks, which have the
  // most query blocks).
  for (int s = 1; s < group; ++s)
    if (group % s == 0 && (ctas * s >= 2 * sms || p.heads_k * s * 2 > 65535)) return s;
  return group;
}

size_t hopper_bwd_dkv_bytes(const AttnParams& p, int head_splits) {
  if (head_splits <= 1) return 0;
  return 2 * size_t(p.total_k) * p.heads_k * hopper_kernel_dim(p) * sizeof(float);
}

cudaError_t hopper_bwd(const AttnParams& p, const MaskTiles& mt, const float* dsum, float* dqacc,
                       float* dkvacc, int head_splits, cudaStream_t s) {
  switch (hopper_kernel_dim(p)) {
    case 64: return run_bwd<64>(p, mt, dsum, dqacc, dkvacc, head_splits, s);
    case 128: return run_bwd<128>(p, mt, dsum, dqacc, dkvacc, head_splits, s);
    case 256: return run_bwd256(p, dsum, dqacc, s);
    default: return cudaErrorInvalidValue;
  }
}

const char* hopper_fwd_scope(const AttnParams& p) {
  // Its TMA maps address one strided K/V per batch row: no page table, cache
  // rows or per-sequence key ranges (decode / sm80 read those).
  if (uses_kv_cache(p)) return "KV-cache parameters (paged / seqused_k / cache rows)";
  if (p.dtype != DType::f16 && p.dtype != DType::bf16) return "dtype not fp16/bf16";
  if (p.out_dtype != p.dtype) return "out dtype differs from q's";
  if (hopper_kernel_dim(p) == 0)
    return "D or Dv not 64 or a multiple of 8 in (64, 256]";
  // D = 256: unmasked only (the mask code walks 128-key blocks).
  if (hopper_kernel_dim(p) == 256 && p.mask_kind != MaskKind::none)
    return "D or Dv > 128 with a mask (the D 256 kernels are unmasked)";
  if (p.alibi != nullptr) return "ALiBi";
  if (p.softcap > 0.0f) return "softcap";
  if (p.dropout_p > 0.0f) return "dropout";
  // Masks: bool (u8) or additive (f32/f16/bf16), strides 0 on broadcast
  // dims; not with varlen (validate.cpp rejects that combination anyway).
  if (p.mask_kind == MaskKind::boolean && p.mask_dtype != DType::u8) return "bool mask not u8";
  if (p.mask_kind == MaskKind::additive && p.mask_dtype != DType::f32 &&
      p.mask_dtype != DType::f16 && p.mask_dtype != DType::bf16)
    return "additive mask dtype";
  // Key stride 1 (mask.cuh: MaskOp's addressing; a mask broadcast over keys
  // or with strided keys stays on the sm_80 kernels).
  if (p.mask_kind != MaskKind::none &&
      (p.mask == nullptr || p.cu_seqlens_q != nullptr || p.mask_stride[3] != 1))
    return "mask with key stride != 1 (or with varlen)";
  if (!(p.scale > 0.0f)) return "scale <= 0";
  if (!aligned16(p.q) || !aligned16(p.k) || !aligned16(p.v) || !aligned16(p.out))
    return "q/k/v/out not 16-byte aligned";
  const int64_t* st[4] = {p.q_stride, p.k_stride, p.v_stride, p.out_stride};
  for (const int64_t* x : st)
    if (x[3] != 1 || x[0] % 8 != 0 || x[1] % 8 != 0 || x[2] % 8 != 0)
      return "q/k/v/out strides (d stride 1, others multiples of 8 elements)";
  // Also what the tensor maps (make_map: byte strides < 2^40), the tile
  // count and the grid need, so that the kernels never decline a call in
  // this scope.
  const int64_t lim = int64_t(1) << 30;
  if (p.seqlen_q >= lim || p.seqlen_k >= lim || p.total_q >= lim || p.total_k >= lim ||
      p.heads_q >= lim || p.batch >= 65536)
    return "sizes past the tensor maps' / grid's limits";
  for (const int64_t* x : st)
    for (int i = 0; i < 3; ++i)
      if (x[i] >= (int64_t(1) << 38)) return "a stride past the tensor maps' limit";
  if ((p.seqlen_q + 63) / 64 * p.heads_q * p.batch >= (int64_t(1) << 31))
    return "more than 2^31 query tiles";
  return nullptr;
}

bool hopper_fwd_available(int dev) {
#if defined(FSDPA_HOPPER_SM90A)
  static int cache[64];  // 0 unknown, 1 yes, 2 no
  if (dev < 0 || dev >= 64) return false;
  if (cache[dev] == 0) {
    int major = 0;
    bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) ==
                  cudaSuccess &&
              major == 9 && encode_fn() != nullptr && hopper::image_ok_f16();
    (void)cudaGetLastError();
    cache[dev] = ok ? 1 : 2;
  }
  return cache[dev] == 1;
#else
  (void)dev;
  return false;
#endif
}

bool hopper_fwd_dynamic(const AttnParams& p) {
  return p.window_left >= 0 || p.window_right >= 0;
}

cudaError_t hopper_fwd(const AttnParams& p, const MaskTiles& mt, int* tile_counter,
                       cudaStream_t s) {
  switch (hopper_kernel_dim(p)) {
    case 64: return run<64>(p, mt, tile_counter, s);
    case 128: return run<128>(p, mt, tile_counter, s);
    case 256: return run<256>(p, mt, tile_counter, s);
    default: return cudaErrorNotSupported;
  }
}

}  // namespace cuda
}  // namespace fsdpa
