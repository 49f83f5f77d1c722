#include "core/validate.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <utility>
#include <vector>

#include <initializer_list>
#include <limits>

#include "core/block_sparse.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/host_view.h"

namespace fsdpa {
namespace {

constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();

#define FSDPA_CHECK(cond, status, ...)        \
  do {                                        \
    if (!(cond)) return set_error(status, __VA_ARGS__); \
  } while (0)
#define FSDPA_CHECK_ARG(cond, ...) FSDPA_CHECK(cond, FSDPA_ERROR_INVALID_ARGUMENT, __VA_ARGS__)
#define FSDPA_TRY(expr)                        \
  do {                                         \
    fsdpa_status s_ = (expr);                  \
    if (s_ != FSDPA_OK) return s_;             \
  } while (0)

const char* device_name(int32_t t) {
  switch (t) {
    case kDLCPU: return "cpu";
    case kDLCUDA: return "cuda";
    case kDLCUDAHost: return "cuda_host";
    case kDLMetal: return "metal";
    case kDLROCM: return "rocm";
    default: return "other";
  }
}

// A DLTensor with its strides made explicit.
struct View {
  const char* name;
  const DLTensor* t;
  int rank;
  int64_t shape[6];  // rank <= 4 except the block-sparse element mask (6)
  int64_t stride[6];
  DType dtype;
  void* data;
};

// "int64", "float64", "uint16", ... for an error message.
void dl_dtype_text(DLDataType dt, char* buf, size_t n) {
  const char* kind = dt.code == kDLInt      ? "int"
                     : dt.code == kDLUInt   ? "uint"
                     : dt.code == kDLFloat  ? "float"
                     : dt.code == kDLBfloat ? "bfloat"
                     : dt.code == kDLComplex ? "complex"
                     : dt.code == FSDPA_DL_BOOL ? "bool"
                                             : nullptr;
  if (kind) snprintf(buf, n, "%s%d", kind, dt.bits);
  else snprintf(buf, n, "DLPack code %d, %d bits", dt.code, dt.bits);
}

fsdpa_status dtype_of(const char* name, DLDataType dt, DType* out) {
  FSDPA_CHECK_ARG(dt.lanes == 1, "%s: vector dtypes (lanes=%d) are not supported", name,
                  dt.lanes);
  if (dt.code == kDLFloat && dt.bits == 32) *out = DType::f32;
  else if (dt.code == kDLFloat && dt.bits == 16) *out = DType::f16;
  else if (dt.code == kDLBfloat && dt.bits == 16) *out = DType::bf16;
  else if (dt.code == kDLFloat && dt.bits == 64) *out = DType::f64;
  else if ((dt.code == FSDPA_DL_BOOL || dt.code == kDLUInt) && dt.bits == 8) *out = DType::u8;
  else if (dt.code == kDLInt && dt.bits == 32) *out = DType::i32;
  else {
    char text[48];
    dl_dtype_text(dt, text, sizeof text);
    return set_error(FSDPA_ERROR_INVALID_ARGUMENT, "%s: unsupported dtype %s", name, text);
  }
  return FSDPA_OK;
}

fsdpa_status view_of(const char* name, const DLTensor* t, int min_rank, int max_rank, View* v) {
  FSDPA_CHECK_ARG(t != nullptr, "%s: is NULL", name);
  if (t->ndim < min_rank || t->ndim > max_rank) {
    if (min_rank == max_rank)
      return set_error(FSDPA_ERROR_INVALID_ARGUMENT, "%s: expected rank %d, got %d", name,
                       min_rank, t->ndim);
    return set_error(FSDPA_ERROR_INVALID_ARGUMENT, "%s: expected rank %d..%d, got %d", name,
                     min_rank, max_rank, t->ndim);
  }
  FSDPA_CHECK_ARG(t->shape != nullptr, "%s: shape is NULL", name);
  v->name = name;
  v->t = t;
  v->rank = t->ndim;
  FSDPA_TRY(dtype_of(name, t->dtype, &v->dtype));
  int64_t numel = 1, contiguous_stride = 1;
  for (int d = t->ndim - 1; d >= 0; --d) {
    FSDPA_CHECK_ARG(t->shape[d] >= 0, "%s: negative size %lld in dim %d", name,
                    (long long)t->shape[d], d);
    FSDPA_CHECK_ARG(t->shape[d] <= kMaxDim,
                    "%s: size %lld in dim %d exceeds the 32-bit index limit (%lld)", name,
                    (long long)t->shape[d], d, (long long)kMaxDim);
    v->shape[d] = t->shape[d];
    v->stride[d] = t->strides ? t->strides[d] : contiguous_stride;
    contiguous_stride *= t->shape[d];
    numel *= t->shape[d];
  }
  FSDPA_CHECK_ARG(t->data != nullptr || numel == 0, "%s: data is NULL", name);
  // On Metal, DLPack's data is an id<MTLBuffer> handle, not an address, so
  // an offset cannot be folded into it; the Metal host would have to bind it
  // with setBuffer:offset:, which it does not do yet.
  FSDPA_CHECK(t->device.device_type != kDLMetal || t->byte_offset == 0, FSDPA_ERROR_UNSUPPORTED,
              "%s: a byte_offset into a Metal buffer is not supported yet (got %llu)", name,
              (unsigned long long)t->byte_offset);
  v->data = t->device.device_type == kDLMetal ? t->data
                                              : static_cast<char*>(t->data) + t->byte_offset;
  return FSDPA_OK;
}

bool has_zero_size(const View& v) {
  for (int d = 0; d < v.rank; ++d)
    if (v.shape[d] == 0) return true;
  return false;
}

fsdpa_status check_shape(const View& v, std::initializer_list<int64_t> want,
                         std::initializer_list<const char*> dims) {
  int d = 0;
  auto dn = dims.begin();
  for (int64_t w : want) {
    FSDPA_CHECK_ARG(v.shape[d] == w, "%s: size of dim %d (%s) is %lld, expected %lld", v.name,
                    d, *dn, (long long)v.shape[d], (long long)w);
    ++d;
    ++dn;
  }
  return FSDPA_OK;
}

int64_t gcd64(int64_t a, int64_t b) {
  while (b != 0) {
    const int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// Outputs must not write one memory location from two logical elements.
// Exact for any two dims: dims d, e (sizes n_d, n_e, strides s_d, s_e)
// alias iff a s_d = b s_e for some 0 < |a| < n_d, |b| < n_e, and the
// smallest such pair is a = s_e / g, b = s_d / g with g = gcd(s_d, s_e).
// That catches stride 0, equal strides and every view whose dims step over
// each other (e.g. heads spaced closer than a head's rows). An overlap that
// needs three dims at once is not searched for (no common layout has one).
fsdpa_status check_writable(const View& v) {
  if (has_zero_size(v)) return FSDPA_OK;  // no elements to alias
  for (int d = 0; d < v.rank; ++d) {
    if (v.shape[d] <= 1) continue;
    FSDPA_CHECK_ARG(v.stride[d] != 0,
                    "%s: stride 0 in dim %d of an output (it would alias elements)", v.name, d);
    for (int e = d + 1; e < v.rank; ++e) {
      if (v.shape[e] <= 1) continue;
      const int64_t sd = v.stride[d] < 0 ? -v.stride[d] : v.stride[d];
      const int64_t se = v.stride[e] < 0 ? -v.stride[e] : v.stride[e];
      if (se == 0) continue;  // reported when the loop reaches e
      const int64_t g = gcd64(sd, se);
      FSDPA_CHECK_ARG(!(se / g < v.shape[d] && sd / g < v.shape[e]),
                      "%s: strides %lld (dim %d) and %lld (dim %d) make two elements of "
                      "this output share memory",
                      v.name, (long long)v.stride[d], d, (long long)v.stride[e], e);
    }
  }
  return FSDPA_OK;
}

// Element strides in (b, h, s, d) order from a padded [B,H,S,D] or a varlen
// [T,H,D] tensor.
void bhsd_strides(const View& v, bool varlen, int64_t* st) {
  if (varlen) {
    st[0] = 0; st[1] = v.stride[1]; st[2] = v.stride[0]; st[3] = v.stride[2];
  } else {
    for (int d = 0; d < 4; ++d) st[d] = v.stride[d];
  }
}

fsdpa_status check_same_device(const View& a, const View& b) {
  FSDPA_CHECK(a.t->device.device_type == b.t->device.device_type &&
                  a.t->device.device_id == b.t->device.device_id,
              FSDPA_ERROR_INVALID_ARGUMENT,
              "%s: is on device %s:%d but %s is on %s:%d; all tensors must be on one device",
              b.name, device_name(b.t->device.device_type), b.t->device.device_id, a.name,
              device_name(a.t->device.device_type), a.t->device.device_id);
  return FSDPA_OK;
}

// Scans a host tensor for NaN/Inf (O(numel), negligible against attention).
fsdpa_status check_finite_host(const View& v) {
  if (has_zero_size(v)) return FSDPA_OK;
  int64_t idx[4] = {0, 0, 0, 0};
  const int r = v.rank;
  for (;;) {
    int64_t off = 0;
    for (int d = 0; d < r; ++d) off += idx[d] * v.stride[d];
    const double x = load_as_double(v.data, off, v.dtype);
    if (!isfinite(x)) {
      return set_error(FSDPA_ERROR_NONFINITE_INPUT,
                       "%s: contains a non-finite value (%s) at index [%lld, %lld, %lld, %lld]",
                       v.name, isnan(x) ? "NaN" : "Inf", (long long)idx[0], (long long)idx[1],
                       (long long)idx[2], (long long)idx[3]);
    }
    int d = r - 1;
    while (d >= 0 && ++idx[d] == v.shape[d]) idx[d--] = 0;
    if (d < 0) break;
  }
  return FSDPA_OK;
}

bool host_readable(int32_t device_type) {
  return device_type == kDLCPU || device_type == kDLCUDAHost;
}

// The caller's params with the fields its header did not have yet (a
// smaller struct_size: an older caller) at their defaults.
fsdpa_status read_params(const fsdpa_params* caller, fsdpa_params* full) {
  FSDPA_CHECK_ARG(caller->struct_size >= FSDPA_PARAMS_SIZE_V0_1,
                  "params: struct_size %u is smaller than any fsdpa_params (%zu); "
                  "call fsdpa_params_init()",
                  caller->struct_size, (size_t)FSDPA_PARAMS_SIZE_V0_1);
  fsdpa_params_init(full);
  const size_t known = caller->struct_size < sizeof(fsdpa_params) ? caller->struct_size
                                                                  : sizeof(fsdpa_params);
  memcpy(static_cast<void*>(full), caller, known);
  full->struct_size = sizeof(fsdpa_params);
  return FSDPA_OK;
}

// One int32 [n] vector argument of the KV cache (seqused_k, ...).
fsdpa_status int32_vector(const char* name, const DLTensor* t, const View& q, int64_t n,
                          const int32_t** out) {
  View v{};
  FSDPA_TRY(view_of(name, t, 1, 1, &v));
  FSDPA_TRY(check_same_device(q, v));
  FSDPA_CHECK_ARG(v.dtype == DType::i32, "%s: dtype must be int32, got %s", name,
                  dtype_name(v.dtype));
  FSDPA_TRY(check_shape(v, {n}, {"batch"}));
  FSDPA_CHECK_ARG(v.stride[0] == 1 || n <= 1, "%s: must be contiguous", name);
  *out = static_cast<const int32_t*>(v.data);
  return FSDPA_OK;
}

// The KV-cache arguments: shapes always, values when host-readable (on a
// GPU they are the caller's contract, see flashsdpa.h, which the CUDA
// backend's debug check holds them to with check_kv_cache_values). `cache_rows` is the
// batch size of the (contiguous) cache, `capacity` the positions per
// sequence the cache holds.
fsdpa_status check_kv_cache(const fsdpa_params* params, const View& q, const View& k,
                            bool varlen, AttnParams* p) {
  const int64_t B = p->batch;
  if (params->seqused_k) FSDPA_TRY(int32_vector("seqused_k", params->seqused_k, q, B, &p->seqused_k));
  if (params->cache_batch_idx)
    FSDPA_TRY(int32_vector("cache_batch_idx", params->cache_batch_idx, q, B, &p->cache_batch_idx));
  if (params->cache_leftpad)
    FSDPA_TRY(int32_vector("cache_leftpad", params->cache_leftpad, q, B, &p->cache_leftpad));
  FSDPA_CHECK_ARG(!varlen || (!p->cache_batch_idx && !p->cache_leftpad),
                  "%s: not supported in the varlen form (cu_seqlens)",
                  p->cache_batch_idx ? "cache_batch_idx" : "cache_leftpad");
  int64_t cache_rows = k.shape[0], capacity = k.shape[2];
  if (params->block_table) {
    View bt{};
    FSDPA_TRY(view_of("block_table", params->block_table, 2, 2, &bt));
    FSDPA_TRY(check_same_device(q, bt));
    FSDPA_CHECK_ARG(bt.dtype == DType::i32, "block_table: dtype must be int32, got %s",
                    dtype_name(bt.dtype));
    FSDPA_CHECK_ARG(bt.stride[1] == 1 || bt.shape[1] <= 1,
                    "block_table: the pages dim must be contiguous (stride 1)");
    FSDPA_CHECK_ARG(bt.shape[1] >= 1, "block_table: has no page columns");
    FSDPA_CHECK_ARG(k.shape[2] >= 1, "k: page size is 0");
    if (!p->cache_batch_idx)
      FSDPA_TRY(check_shape(bt, {B}, {"batch"}));
    p->block_table = static_cast<const int32_t*>(bt.data);
    p->block_table_stride = bt.stride[0];
    p->page_size = k.shape[2];
    p->num_pages = k.shape[0];
    cache_rows = bt.shape[0];
    capacity = bt.shape[1] * p->page_size;
  } else if (!varlen && !p->cache_batch_idx) {
    FSDPA_TRY(check_shape(k, {B}, {"batch"}));
  }
  if (!varlen) p->seqlen_k = capacity;
  p->kv_rows = cache_rows;
  p->kv_capacity = capacity;
  if (!host_readable(p->device_type)) return FSDPA_OK;
  return check_kv_cache_values(*p);
}

}  // namespace

fsdpa_status check_kv_cache_values(const AttnParams& p) {
  const int64_t B = p.batch;
  const bool varlen = p.cu_seqlens_k != nullptr;
  for (int64_t b = 0; b < B; ++b) {
    if (p.cache_batch_idx) {
      const int32_t row = p.cache_batch_idx[b];
      FSDPA_CHECK_ARG(row >= 0 && row < p.kv_rows,
                      "cache_batch_idx: entry %lld is %d, outside the %lld cache rows of %s",
                      (long long)b, row, (long long)p.kv_rows,
                      p.block_table ? "block_table" : "k/v");
    }
    // Cache positions [begin, end) of sequence b.
    int64_t end = p.kv_capacity;
    if (varlen) {
      end = int64_t(p.cu_seqlens_k[b + 1]) - p.cu_seqlens_k[b];
      if (p.block_table)
        FSDPA_CHECK_ARG(p.seqused_k || end <= p.kv_capacity,
                        "cu_seqlens_k: sequence %lld has %lld keys but its block_table row "
                        "holds %lld",
                        (long long)b, (long long)end, (long long)p.kv_capacity);
    }
    if (p.seqused_k) {
      const int64_t used = p.seqused_k[b];
      const int64_t limit = varlen && !p.block_table ? end : p.kv_capacity;
      FSDPA_CHECK_ARG(used >= 0 && used <= limit,
                      "seqused_k: entry %lld is %lld, outside 0..%lld (the keys the %s holds)",
                      (long long)b, (long long)used, (long long)limit,
                      varlen && !p.block_table ? "cu_seqlens_k sequence" : "cache");
      if (varlen)
        FSDPA_CHECK_ARG(used <= p.seqlen_k, "seqused_k: entry %lld is %lld > max_seqlen_k %lld",
                        (long long)b, (long long)used, (long long)p.seqlen_k);
      end = used;
    }
    int64_t begin = 0;
    if (p.cache_leftpad) {
      begin = p.cache_leftpad[b];
      FSDPA_CHECK_ARG(begin >= 0 && begin <= end,
                      "cache_leftpad: entry %lld is %lld, outside 0..%lld (the sequence's "
                      "cache length)",
                      (long long)b, (long long)begin, (long long)end);
    }
    if (p.block_table && end > begin) {
      const int64_t row = p.cache_batch_idx ? p.cache_batch_idx[b] : b;
      for (int64_t i = begin / p.page_size; i <= (end - 1) / p.page_size; ++i) {
        const int32_t page = p.block_table[row * p.block_table_stride + i];
        FSDPA_CHECK_ARG(page >= 0 && page < p.num_pages,
                        "block_table: entry [%lld, %lld] is %d, outside the page pool "
                        "0..%lld (k has %lld pages; sequence %lld)",
                        (long long)row, (long long)i, page, (long long)p.num_pages - 1,
                        (long long)p.num_pages, (long long)b);
      }
    }
  }
  return FSDPA_OK;
}

// The varlen offsets' values (cu_seqlens_q / cu_seqlens_k readable by the
// host): start at 0, non-decreasing, no sequence longer than its max_seqlen,
// the last within the tensor's tokens. With pages (`paged`) the keys'
// offsets only give lengths, checked against the pages by
// check_kv_cache_values.
fsdpa_status check_varlen_offsets(const AttnParams& p, bool paged) {
  const struct { const char* name; const int32_t* cu; int64_t total, max; } lists[2] = {
      {"cu_seqlens_q", p.cu_seqlens_q, p.total_q, p.seqlen_q},
      {"cu_seqlens_k", p.cu_seqlens_k, p.total_k, p.seqlen_k}};
  for (const auto& l : lists) {
    if (paged && l.cu == p.cu_seqlens_k) {
      for (int64_t b = 0; b < p.batch; ++b)
        FSDPA_CHECK_ARG(l.cu[b + 1] >= l.cu[b], "%s: not non-decreasing at index %lld (%d > %d)",
                        l.name, (long long)b, l.cu[b], l.cu[b + 1]);
      continue;
    }
    FSDPA_CHECK_ARG(l.cu[0] == 0, "%s: first element must be 0, got %d", l.name, l.cu[0]);
    for (int64_t b = 0; b < p.batch; ++b) {
      const int64_t len = int64_t(l.cu[b + 1]) - l.cu[b];
      FSDPA_CHECK_ARG(len >= 0, "%s: not non-decreasing at index %lld (%d > %d)", l.name,
                      (long long)b, l.cu[b], l.cu[b + 1]);
      FSDPA_CHECK_ARG(len <= l.max, "%s: sequence %lld has length %lld > max_seqlen %lld",
                      l.name, (long long)b, (long long)len, (long long)l.max);
    }
    FSDPA_CHECK_ARG(l.cu[p.batch] <= l.total,
                    "%s: last element %d exceeds the %lld tokens of the tensor", l.name,
                    l.cu[p.batch], (long long)l.total);
  }
  return FSDPA_OK;
}

namespace {

// One list pair of the block-sparse mask: count [Bm, Hm, NQB] and indices
// [Bm, Hm, NQB, L] (int32). Fills the pointers and broadcast strides.
fsdpa_status sparse_list(const char* num_name, const DLTensor* num_t, const char* idx_name,
                         const DLTensor* idx_t, const View& q, const AttnParams& p,
                         int64_t need_qb, const int32_t** num, int64_t* num_stride,
                         const int32_t** idx, int64_t* idx_stride, View* idx_view) {
  View n{}, x{};
  FSDPA_TRY(view_of(num_name, num_t, 3, 3, &n));
  FSDPA_TRY(view_of(idx_name, idx_t, 4, 4, &x));
  for (const View* v : {&n, &x}) {
    FSDPA_TRY(check_same_device(q, *v));
    FSDPA_CHECK_ARG(v->dtype == DType::i32, "%s: dtype must be int32, got %s", v->name,
                    dtype_name(v->dtype));
  }
  FSDPA_CHECK_ARG(n.shape[0] == 1 || n.shape[0] == p.batch,
                  "%s: size %lld of dim 0 is neither 1 nor the batch %lld", num_name,
                  (long long)n.shape[0], (long long)p.batch);
  FSDPA_CHECK_ARG(n.shape[1] == 1 || n.shape[1] == p.heads_q,
                  "%s: size %lld of dim 1 is neither 1 nor the query heads %lld", num_name,
                  (long long)n.shape[1], (long long)p.heads_q);
  FSDPA_CHECK_ARG(n.shape[2] >= need_qb,
                  "%s: %lld query blocks (dim 2), expected at least ceil(seqlen_q %lld / "
                  "sparse_block_q %lld) = %lld",
                  num_name, (long long)n.shape[2], (long long)p.seqlen_q,
                  (long long)p.sparse_block_q, (long long)need_qb);
  for (int d = 0; d < 3; ++d)
    FSDPA_CHECK_ARG(x.shape[d] == n.shape[d],
                    "%s: size %lld of dim %d differs from %s's %lld", idx_name,
                    (long long)x.shape[d], d, num_name, (long long)n.shape[d]);
  for (int d = 0; d < 3; ++d) num_stride[d] = n.shape[d] == 1 ? 0 : n.stride[d];
  for (int d = 0; d < 4; ++d) idx_stride[d] = x.shape[d] == 1 ? 0 : x.stride[d];
  *num = static_cast<const int32_t*>(n.data);
  *idx = static_cast<const int32_t*>(x.data);
  *idx_view = x;
  return FSDPA_OK;
}

// The block-sparse mask (flashsdpa.h): shapes always, list values when
// host-readable.
fsdpa_status check_block_sparse(const fsdpa_params* params, const View& q, bool varlen,
                                bool kv_cache, AttnParams* p) {
  const bool partial = params->kv_num_blocks || params->kv_indices;
  const bool full = params->full_kv_num_blocks || params->full_kv_indices;
  if (!partial && !full) {
    FSDPA_CHECK_ARG(params->kv_block_mask == nullptr,
                    "kv_block_mask: set without kv_num_blocks / kv_indices");
    return FSDPA_OK;
  }
  const char* arg = partial ? "kv_num_blocks" : "full_kv_num_blocks";
  FSDPA_CHECK_ARG(!varlen, "%s: the block-sparse mask is not supported with varlen (cu_seqlens)",
                  arg);
  FSDPA_CHECK_ARG(!kv_cache, "%s: the block-sparse mask is not supported with the KV-cache "
                  "parameters", arg);
  FSDPA_CHECK_ARG(!partial || (params->kv_num_blocks && params->kv_indices),
                  "%s: kv_num_blocks and kv_indices must be given together",
                  params->kv_num_blocks ? "kv_indices" : "kv_num_blocks");
  FSDPA_CHECK_ARG(!full || (params->full_kv_num_blocks && params->full_kv_indices),
                  "%s: full_kv_num_blocks and full_kv_indices must be given together",
                  params->full_kv_num_blocks ? "full_kv_indices" : "full_kv_num_blocks");
  FSDPA_CHECK_ARG(params->sparse_block_q >= 1 && params->sparse_block_q <= kMaxDim,
                  "sparse_block_q: %lld is outside 1..%lld (rows per query block of the "
                  "block-sparse mask)",
                  (long long)params->sparse_block_q, (long long)kMaxDim);
  FSDPA_CHECK_ARG(params->sparse_block_k >= 1 && params->sparse_block_k <= kMaxDim,
                  "sparse_block_k: %lld is outside 1..%lld (keys per key block of the "
                  "block-sparse mask)",
                  (long long)params->sparse_block_k, (long long)kMaxDim);
  p->sparse = 1;
  p->sparse_block_q = params->sparse_block_q;
  p->sparse_block_k = params->sparse_block_k;
  const int64_t need_qb = (p->seqlen_q + p->sparse_block_q - 1) / p->sparse_block_q;
  p->sparse_k_blocks = (p->seqlen_k + p->sparse_block_k - 1) / p->sparse_block_k;
  int64_t bm = 1, hm = 1;  // extent of the lists' batch / head dims
  View kv_idx{}, full_idx{};
  if (partial) {
    FSDPA_TRY(sparse_list("kv_num_blocks", params->kv_num_blocks, "kv_indices",
                          params->kv_indices, q, *p, need_qb, &p->kv_num, p->kv_num_stride,
                          &p->kv_idx, p->kv_idx_stride, &kv_idx));
    bm = std::max(bm, kv_idx.shape[0]);
    hm = std::max(hm, kv_idx.shape[1]);
  }
  if (full) {
    FSDPA_TRY(sparse_list("full_kv_num_blocks", params->full_kv_num_blocks, "full_kv_indices",
                          params->full_kv_indices, q, *p, need_qb, &p->full_num,
                          p->full_num_stride, &p->full_idx, p->full_idx_stride, &full_idx));
    bm = std::max(bm, full_idx.shape[0]);
    hm = std::max(hm, full_idx.shape[1]);
  }
  p->sparse_q_blocks = partial ? kv_idx.shape[2] : full_idx.shape[2];
  p->sparse_batches = bm;
  p->sparse_heads = hm;
  p->kv_idx_len = partial ? kv_idx.shape[3] : 0;
  p->full_idx_len = full ? full_idx.shape[3] : 0;
  if (params->kv_block_mask) {
    FSDPA_CHECK_ARG(partial, "kv_block_mask: set without kv_num_blocks / kv_indices");
    View m{};
    FSDPA_TRY(view_of("kv_block_mask", params->kv_block_mask, 6, 6, &m));
    FSDPA_TRY(check_same_device(q, m));
    FSDPA_CHECK_ARG(m.dtype == DType::u8, "kv_block_mask: dtype must be bool or uint8, got %s",
                    dtype_name(m.dtype));
    for (int d = 0; d < 4; ++d)
      FSDPA_CHECK_ARG(m.shape[d] == kv_idx.shape[d],
                      "kv_block_mask: size %lld of dim %d differs from kv_indices' %lld",
                      (long long)m.shape[d], d, (long long)kv_idx.shape[d]);
    FSDPA_CHECK_ARG(m.shape[4] == p->sparse_block_q && m.shape[5] == p->sparse_block_k,
                    "kv_block_mask: a block is [%lld, %lld], expected [sparse_block_q %lld, "
                    "sparse_block_k %lld]",
                    (long long)m.shape[4], (long long)m.shape[5], (long long)p->sparse_block_q,
                    (long long)p->sparse_block_k);
    for (int d = 0; d < 6; ++d) p->sparse_mask_stride[d] = m.shape[d] == 1 ? 0 : m.stride[d];
    p->sparse_mask = static_cast<const uint8_t*>(m.data);
  }
  if (!host_readable(p->device_type)) return FSDPA_OK;
  // Counts, indices and duplicates of every (b, h, query block) used.
  std::vector<int64_t> seen(p->sparse_k_blocks, -1);  // stamp: last row that listed the block
  int64_t stamp = 0;
  for (int64_t b = 0; b < bm; ++b)
    for (int64_t h = 0; h < hm; ++h)
      for (int64_t qb = 0; qb < need_qb; ++qb, ++stamp) {
        struct { const char* num_name; const char* idx_name; const int32_t* num;
                 const int64_t* ns; const int32_t* idx; const int64_t* is; int64_t len; }
            lists[2] = {{"full_kv_num_blocks", "full_kv_indices", p->full_num,
                         p->full_num_stride, p->full_idx, p->full_idx_stride, full_idx.shape[3]},
                        {"kv_num_blocks", "kv_indices", p->kv_num, p->kv_num_stride, p->kv_idx,
                         p->kv_idx_stride, kv_idx.shape[3]}};
        for (const auto& l : lists) {
          if (!l.num) continue;
          const int32_t n = sparse_count(l.num, l.ns, b, h, qb);
          FSDPA_CHECK_ARG(n >= 0 && n <= l.len,
                          "%s: entry [%lld, %lld, %lld] is %d, outside 0..%lld (the length of "
                          "%s)",
                          l.num_name, (long long)b, (long long)h, (long long)qb, n,
                          (long long)l.len, l.idx_name);
          for (int32_t s = 0; s < n; ++s) {
            const int32_t kb = sparse_index(l.idx, l.is, b, h, qb, s);
            FSDPA_CHECK_ARG(kb >= 0 && kb < p->sparse_k_blocks,
                            "%s: entry [%lld, %lld, %lld, %d] is %d, outside the %lld key "
                            "blocks 0..%lld (ceil(seqlen_k %lld / sparse_block_k %lld))",
                            l.idx_name, (long long)b, (long long)h, (long long)qb, s, kb,
                            (long long)p->sparse_k_blocks, (long long)p->sparse_k_blocks - 1,
                            (long long)p->seqlen_k, (long long)p->sparse_block_k);
            FSDPA_CHECK_ARG(seen[kb] != stamp,
                            "%s: key block %d is listed twice for query block [%lld, %lld, %lld] "
                            "(in full_kv_indices and kv_indices together)",
                            l.idx_name, kb, (long long)b, (long long)h, (long long)qb);
            seen[kb] = stamp;
          }
        }
      }
  return FSDPA_OK;
}

}  // namespace

fsdpa_status make_attn_params(CallKind kind, const fsdpa_params* caller_params,
                              const CallTensors& t, AttnParams* p) {
  FSDPA_CHECK_ARG(caller_params != nullptr, "params: is NULL");
  fsdpa_params full_params;
  FSDPA_TRY(read_params(caller_params, &full_params));
  const fsdpa_params* params = &full_params;
  FSDPA_CHECK_ARG(p != nullptr, "internal: output params is NULL");
  memset(p, 0, sizeof(*p));

  const bool is_reference =
      kind == CallKind::reference_forward || kind == CallKind::reference_backward;
  const bool is_backward = kind == CallKind::backward || kind == CallKind::reference_backward;
  const bool varlen = params->cu_seqlens_q != nullptr || params->cu_seqlens_k != nullptr;
  FSDPA_CHECK_ARG((params->cu_seqlens_q != nullptr && params->cu_seqlens_k != nullptr) || !varlen,
                  "%s: varlen needs both cu_seqlens_q and cu_seqlens_k",
                  params->cu_seqlens_q ? "cu_seqlens_k" : "cu_seqlens_q");
  const int rank = varlen ? 3 : 4;
  const bool paged = params->block_table != nullptr;
  const bool kv_cache = paged || params->seqused_k || params->cache_batch_idx ||
                        params->cache_leftpad;
  const char* kv_arg = paged ? "block_table"
                       : params->seqused_k ? "seqused_k"
                       : params->cache_batch_idx ? "cache_batch_idx" : "cache_leftpad";
  FSDPA_CHECK_ARG(!kv_cache || kind == CallKind::forward || kind == CallKind::reference_forward,
                  "%s: the KV-cache parameters are for the forward only", kv_arg);
  // A paged k/v is the page pool [num_pages, Hk, page_size, D] in both forms.
  const int kv_rank = paged ? 4 : rank;
  const bool kv_varlen = varlen && !paged;

  View q, k, v;
  FSDPA_TRY(view_of("q", t.q, rank, rank, &q));
  FSDPA_TRY(view_of("k", t.k, kv_rank, kv_rank, &k));
  FSDPA_TRY(check_same_device(q, k));
  const int32_t dev = q.t->device.device_type;
  if (kind != CallKind::forward && kind != CallKind::backward)
    FSDPA_CHECK_ARG(dev == kDLCPU, "q: the reference and dropout_mask take CPU tensors, got %s",
                    device_name(dev));

  // dtype rules: q, k, v (and out, dout, dq, dk, dv) share one dtype.
  const bool allow_f64 = is_reference || kind == CallKind::dropout_mask;
  FSDPA_CHECK_ARG(q.dtype == DType::f32 || q.dtype == DType::f16 || q.dtype == DType::bf16 ||
                      (q.dtype == DType::f64 && allow_f64),
                  "q: unsupported dtype %s; expected float32, float16 or bfloat16",
                  dtype_name(q.dtype));
  FSDPA_CHECK_ARG(k.dtype == q.dtype, "k: dtype %s differs from q's %s", dtype_name(k.dtype),
                  dtype_name(q.dtype));
  p->dtype = q.dtype;
  p->out_dtype = q.dtype;
  p->dout_dtype = q.dtype;
  p->device_type = dev;
  p->device_id = q.t->device.device_id;

  // sizes
  const int hd = 1;               // heads dim, in both forms
  const int sd = varlen ? 0 : 2;  // sequence dim
  const int dd = rank - 1;        // feature dim
  const int kdd = kv_rank - 1;    // feature dim of k/v
  p->heads_q = q.shape[hd];
  p->heads_k = k.shape[hd];
  p->head_dim = q.shape[dd];
  FSDPA_CHECK_ARG(p->heads_q >= 1, "q: number of heads is 0");
  FSDPA_CHECK_ARG(p->heads_k >= 1, "k: number of heads is 0");
  FSDPA_CHECK_ARG(p->heads_q % p->heads_k == 0,
                  "k: query heads (%lld) must be a multiple of key/value heads (%lld) for GQA",
                  (long long)p->heads_q, (long long)p->heads_k);
  FSDPA_CHECK_ARG(p->head_dim >= 1 && p->head_dim <= FSDPA_MAX_HEAD_DIM,
                  "q: head dim %lld is outside 1..%d", (long long)p->head_dim,
                  FSDPA_MAX_HEAD_DIM);
  FSDPA_CHECK_ARG(k.shape[kdd] == p->head_dim, "k: head dim %lld differs from q's %lld",
                  (long long)k.shape[kdd], (long long)p->head_dim);

  if (varlen) {
    View cq, ck;
    for (const auto& [name, c] : {std::pair{"cu_seqlens_q", params->cu_seqlens_q},
                                  std::pair{"cu_seqlens_k", params->cu_seqlens_k}}) {
      if (c->dtype.code == kDLInt && c->dtype.bits == 32 && c->dtype.lanes == 1) continue;
      char text[48];
      dl_dtype_text(c->dtype, text, sizeof text);
      return set_error(FSDPA_ERROR_INVALID_ARGUMENT, "%s: dtype %s is not supported; expected int32",
                       name, text);
    }
    FSDPA_TRY(view_of("cu_seqlens_q", params->cu_seqlens_q, 1, 1, &cq));
    FSDPA_TRY(view_of("cu_seqlens_k", params->cu_seqlens_k, 1, 1, &ck));
    FSDPA_CHECK_ARG(cq.dtype == DType::i32, "cu_seqlens_q: dtype must be int32, got %s",
                    dtype_name(cq.dtype));
    FSDPA_CHECK_ARG(ck.dtype == DType::i32, "cu_seqlens_k: dtype must be int32, got %s",
                    dtype_name(ck.dtype));
    FSDPA_TRY(check_same_device(q, cq));
    FSDPA_TRY(check_same_device(q, ck));
    FSDPA_CHECK_ARG(cq.shape[0] >= 1, "cu_seqlens_q: needs at least one element (B + 1)");
    FSDPA_CHECK_ARG(ck.shape[0] == cq.shape[0],
                    "cu_seqlens_k: length %lld differs from cu_seqlens_q's %lld",
                    (long long)ck.shape[0], (long long)cq.shape[0]);
    FSDPA_CHECK_ARG(cq.stride[0] == 1 && ck.stride[0] == 1,
                    "%s: must be contiguous", cq.stride[0] == 1 ? "cu_seqlens_k" : "cu_seqlens_q");
    FSDPA_CHECK_ARG(params->max_seqlen_q >= 0 && params->max_seqlen_q <= kMaxDim,
                    "max_seqlen_q: %lld is outside 0..%lld", (long long)params->max_seqlen_q,
                    (long long)kMaxDim);
    FSDPA_CHECK_ARG(params->max_seqlen_k >= 0 && params->max_seqlen_k <= kMaxDim,
                    "max_seqlen_k: %lld is outside 0..%lld", (long long)params->max_seqlen_k,
                    (long long)kMaxDim);
    p->batch = cq.shape[0] - 1;
    p->seqlen_q = params->max_seqlen_q;
    p->seqlen_k = params->max_seqlen_k;
    p->total_q = q.shape[0];
    p->total_k = paged ? 0 : k.shape[0];
    p->cu_seqlens_q = static_cast<const int32_t*>(cq.data);
    p->cu_seqlens_k = static_cast<const int32_t*>(ck.data);
    // Device-resident offsets are checked by the backend (or trusted).
    if (host_readable(dev)) FSDPA_TRY(check_varlen_offsets(*p, paged));
  } else {
    p->batch = q.shape[0];
    p->seqlen_q = q.shape[sd];
    p->seqlen_k = k.shape[sd];
    if (!kv_cache) FSDPA_TRY(check_shape(k, {p->batch}, {"batch"}));
    p->total_q = p->batch * p->seqlen_q;
    p->total_k = p->batch * p->seqlen_k;
  }
  FSDPA_CHECK_ARG(p->batch * p->heads_q * p->seqlen_q <= int64_t(0xFFFFFFFF),
                  "q: batch * heads * seqlen_q = %lld exceeds 2^32 (row index limit)",
                  (long long)(p->batch * p->heads_q * p->seqlen_q));
  bhsd_strides(q, varlen, p->q_stride);
  bhsd_strides(k, kv_varlen, p->k_stride);
  p->q = q.data;
  p->k = k.data;

  // ---- scalar semantics -------------------------------------------------
  float scale = params->scale;
  if (isnan(scale)) scale = 1.0f / sqrtf(static_cast<float>(p->head_dim));
  FSDPA_CHECK_ARG(isfinite(scale), "scale: must be finite, got %g", (double)params->scale);
  p->scale = scale;
  FSDPA_CHECK_ARG(isfinite(params->softcap) && params->softcap >= 0.0f,
                  "softcap: must be >= 0 and finite, got %g", (double)params->softcap);
  p->softcap = params->softcap;
  FSDPA_CHECK_ARG(params->window_left >= -1, "window_left: %lld is negative (use -1 for none)",
                  (long long)params->window_left);
  FSDPA_CHECK_ARG(params->window_right >= -1, "window_right: %lld is negative (use -1 for none)",
                  (long long)params->window_right);
  FSDPA_CHECK_ARG(params->align == FSDPA_ALIGN_TOP_LEFT ||
                      params->align == FSDPA_ALIGN_BOTTOM_RIGHT,
                  "align: %d is neither FSDPA_ALIGN_TOP_LEFT nor FSDPA_ALIGN_BOTTOM_RIGHT",
                  params->align);
  p->window_left = params->window_left;
  p->window_right = params->causal ? 0 : params->window_right;
  p->bottom_right = params->align == FSDPA_ALIGN_BOTTOM_RIGHT;
  FSDPA_CHECK_ARG(params->dropout_p >= 0.0f && params->dropout_p < 1.0f,
                  "dropout_p: %g is outside [0, 1)", (double)params->dropout_p);
  p->dropout_p = params->dropout_p;
  p->seed = params->seed;
  p->offset = params->offset;
  p->deterministic = params->deterministic != 0;
  p->check_finite = params->check_finite != 0;

  if (kind == CallKind::dropout_mask) {
    FSDPA_CHECK_ARG(!varlen, "keep: dropout_mask takes the padded form only");
    View keep;
    FSDPA_TRY(view_of("keep", t.out, 4, 4, &keep));
    FSDPA_CHECK_ARG(keep.dtype == DType::u8, "keep: dtype must be bool or uint8");
    FSDPA_TRY(check_same_device(q, keep));
    FSDPA_TRY(check_shape(keep, {p->batch, p->heads_q, p->seqlen_q, p->seqlen_k},
                          {"batch", "heads_q", "seqlen_q", "seqlen_k"}));
    FSDPA_TRY(check_writable(keep));
    p->out = keep.data;
    for (int d = 0; d < 4; ++d) p->out_stride[d] = keep.stride[d];
    return FSDPA_OK;
  }

  FSDPA_TRY(view_of("v", t.v, kv_rank, kv_rank, &v));
  FSDPA_TRY(check_same_device(q, v));
  FSDPA_CHECK_ARG(v.dtype == q.dtype, "v: dtype %s differs from q's %s", dtype_name(v.dtype),
                  dtype_name(q.dtype));
  p->head_dim_v = v.shape[kdd];
  FSDPA_CHECK_ARG(p->head_dim_v >= 1 && p->head_dim_v <= FSDPA_MAX_HEAD_DIM,
                  "v: head dim %lld is outside 1..%d", (long long)p->head_dim_v,
                  FSDPA_MAX_HEAD_DIM);
  if (kv_varlen) {
    FSDPA_CHECK_ARG(v.shape[0] == p->total_k && v.shape[1] == p->heads_k,
                    "v: shape [%lld, %lld, *] differs from k's [%lld, %lld, *]",
                    (long long)v.shape[0], (long long)v.shape[1], (long long)p->total_k,
                    (long long)p->heads_k);
  } else {
    FSDPA_TRY(check_shape(v, {k.shape[0], p->heads_k, k.shape[2]},
                          {paged ? "num_pages" : "batch", "heads_k",
                           paged ? "page_size" : "seqlen_k"}));
  }
  bhsd_strides(v, kv_varlen, p->v_stride);
  p->v = v.data;
  if (kv_cache) {
    FSDPA_CHECK_ARG(params->mask == nullptr,
                    "mask: not supported together with the KV-cache parameters");
    FSDPA_CHECK_ARG(params->dropout_p == 0.0f,
                    "dropout_p: must be 0 with the KV-cache parameters (inference)");
    FSDPA_TRY(check_kv_cache(params, q, k, varlen, p));
  }

  // Shapes of the remaining tensors, by role.
  auto check_like = [&](const View& x, const View& like, int64_t last) -> fsdpa_status {
    FSDPA_TRY(check_same_device(q, x));
    const bool dtype_ok = x.dtype == q.dtype || (is_reference && x.dtype == DType::f64);
    FSDPA_CHECK_ARG(dtype_ok, "%s: dtype %s differs from q's %s", x.name, dtype_name(x.dtype),
                    dtype_name(q.dtype));
    for (int d = 0; d < rank - 1; ++d)
      FSDPA_CHECK_ARG(x.shape[d] == like.shape[d],
                      "%s: size of dim %d is %lld, expected %lld (as %s)", x.name, d,
                      (long long)x.shape[d], (long long)like.shape[d], like.name);
    FSDPA_CHECK_ARG(x.shape[rank - 1] == last, "%s: size of the last dim is %lld, expected %lld",
                    x.name, (long long)x.shape[rank - 1], (long long)last);
    return FSDPA_OK;
  };

  View out{};
  const bool needs_out = kind == CallKind::forward || kind == CallKind::reference_forward ||
                         kind == CallKind::backward;
  if (needs_out) {
    FSDPA_TRY(view_of("out", t.out, rank, rank, &out));
    FSDPA_TRY(check_like(out, q, p->head_dim_v));
    if (!is_backward) FSDPA_TRY(check_writable(out));
    bhsd_strides(out, varlen, p->out_stride);
    p->out = out.data;
    if (!is_backward) p->out_dtype = out.dtype;
  }

  const bool needs_lse = kind == CallKind::backward;
  if (t.lse != nullptr || needs_lse) {
    View lse;
    FSDPA_TRY(view_of("lse", t.lse, varlen ? 2 : 3, varlen ? 2 : 3, &lse));
    FSDPA_TRY(check_same_device(q, lse));
    FSDPA_CHECK_ARG(lse.dtype == DType::f32, "lse: dtype must be float32, got %s",
                    dtype_name(lse.dtype));
    if (varlen) {
      FSDPA_TRY(check_shape(lse, {p->heads_q, p->total_q}, {"heads_q", "total_q"}));
      p->lse_stride[0] = 0;
      p->lse_stride[1] = lse.stride[0];
      p->lse_stride[2] = lse.stride[1];
    } else {
      FSDPA_TRY(check_shape(lse, {p->batch, p->heads_q, p->seqlen_q},
                            {"batch", "heads_q", "seqlen_q"}));
      for (int d = 0; d < 3; ++d) p->lse_stride[d] = lse.stride[d];
    }
    if (!is_backward) FSDPA_TRY(check_writable(lse));
    p->lse = static_cast<float*>(lse.data);
  }

  if (is_backward) {
    View dout, dq, dk, dv;
    FSDPA_TRY(view_of("dout", t.dout, rank, rank, &dout));
    FSDPA_TRY(check_like(dout, q, p->head_dim_v));
    FSDPA_TRY(view_of("dq", t.dq, rank, rank, &dq));
    FSDPA_TRY(check_like(dq, q, p->head_dim));
    FSDPA_TRY(view_of("dk", t.dk, rank, rank, &dk));
    FSDPA_TRY(check_like(dk, k, p->head_dim));
    FSDPA_TRY(view_of("dv", t.dv, rank, rank, &dv));
    FSDPA_TRY(check_like(dv, v, p->head_dim_v));
    for (const View* x : {&dq, &dk, &dv}) FSDPA_TRY(check_writable(*x));
    FSDPA_CHECK_ARG(dk.dtype == dq.dtype && dv.dtype == dq.dtype,
                    "dk/dv: dtypes %s/%s differ from dq's %s", dtype_name(dk.dtype),
                    dtype_name(dv.dtype), dtype_name(dq.dtype));
    p->out_dtype = dq.dtype;
    p->dout_dtype = dout.dtype;
    bhsd_strides(dout, varlen, p->dout_stride);
    bhsd_strides(dq, varlen, p->dq_stride);
    bhsd_strides(dk, varlen, p->dk_stride);
    bhsd_strides(dv, varlen, p->dv_stride);
    p->dout = dout.data;
    p->dq = dq.data;
    p->dk = dk.data;
    p->dv = dv.data;
    if (p->check_finite && is_reference) FSDPA_TRY(check_finite_host(dout));
  }

  // ---- mask -----------------------------------------------------------------
  if (params->mask != nullptr) {
    FSDPA_CHECK_ARG(!varlen, "mask: not supported together with varlen (cu_seqlens)");
    View m;
    FSDPA_TRY(view_of("mask", params->mask, 2, 4, &m));
    FSDPA_TRY(check_same_device(q, m));
    if (m.dtype == DType::u8) {
      p->mask_kind = MaskKind::boolean;
    } else {
      FSDPA_CHECK_ARG(m.dtype == DType::f32 || m.dtype == q.dtype ||
                          (is_reference && m.dtype == DType::f64),
                      "mask: a float mask must be float32 or q's dtype (%s), got %s",
                      dtype_name(q.dtype), dtype_name(m.dtype));
      p->mask_kind = MaskKind::additive;
    }
    p->mask_dtype = m.dtype;
    p->mask = m.data;
    const int64_t target[4] = {p->batch, p->heads_q, p->seqlen_q, p->seqlen_k};
    static const char* const names[4] = {"batch", "heads_q", "seqlen_q", "seqlen_k"};
    for (int d = 0; d < 4; ++d) {
      const int src = d - (4 - m.rank);
      if (src < 0) {
        p->mask_stride[d] = 0;
        continue;
      }
      const int64_t sz = m.shape[src];
      FSDPA_CHECK_ARG(sz == target[d] || sz == 1,
                      "mask: size %lld of dim %d is not broadcastable to %s = %lld",
                      (long long)sz, src, names[d], (long long)target[d]);
      p->mask_stride[d] = sz == 1 && target[d] != 1 ? 0 : m.stride[src];
    }
  }

  FSDPA_TRY(check_block_sparse(params, q, varlen, kv_cache, p));

  if (params->alibi_slopes != nullptr) {
    View a;
    FSDPA_TRY(view_of("alibi_slopes", params->alibi_slopes, 1, 2, &a));
    FSDPA_TRY(check_same_device(q, a));
    FSDPA_CHECK_ARG(a.dtype == DType::f32, "alibi_slopes: dtype must be float32, got %s",
                    dtype_name(a.dtype));
    if (a.rank == 1) {
      FSDPA_TRY(check_shape(a, {p->heads_q}, {"heads_q"}));
      p->alibi_stride_b = 0;
    } else {
      FSDPA_TRY(check_shape(a, {p->batch, p->heads_q}, {"batch", "heads_q"}));
      p->alibi_stride_b = a.stride[0];
    }
    FSDPA_CHECK_ARG(a.stride[a.rank - 1] == 1 || p->heads_q == 1,
                    "alibi_slopes: the heads dim must be contiguous (stride 1)");
    p->alibi = static_cast<const float*>(a.data);
  }

  // Backends check q, k, v, dout themselves, fused with reading them (a
  // separate pass would cost as much as a decode step); the reference scans.
  if (p->check_finite && is_reference) {
    FSDPA_TRY(check_finite_host(q));
    // A KV cache holds unused rows (anything, e.g. torch.empty): the scan
    // would see them. The reference reads only used rows, where a NaN/Inf
    // shows up in its output.
    if (!kv_cache) {
      FSDPA_TRY(check_finite_host(k));
      FSDPA_TRY(check_finite_host(v));
    }
  }
  return FSDPA_OK;
}

fsdpa_status make_merge_params(const MergeTensors& t, MergeParams* m) {
  FSDPA_CHECK_ARG(m != nullptr, "internal: output params is NULL");
  memset(m, 0, sizeof(*m));
  View oa{}, ob{}, o{}, la{}, lb{}, l{};
  FSDPA_TRY(view_of("out_a", t.out_a, 1, 4, &oa));
  const int rank = oa.rank;
  FSDPA_TRY(view_of("out_b", t.out_b, rank, rank, &ob));
  FSDPA_TRY(view_of("out", t.out, rank, rank, &o));
  FSDPA_TRY(view_of("lse_a", t.lse_a, rank - 1, rank - 1, &la));
  FSDPA_TRY(view_of("lse_b", t.lse_b, rank - 1, rank - 1, &lb));
  FSDPA_TRY(view_of("lse", t.lse, rank - 1, rank - 1, &l));
  FSDPA_CHECK_ARG(oa.dtype == DType::f32 || oa.dtype == DType::f16 || oa.dtype == DType::bf16,
                  "out_a: unsupported dtype %s; expected float32, float16 or bfloat16",
                  dtype_name(oa.dtype));
  for (const View* x : {&ob, &o}) {
    FSDPA_TRY(check_same_device(oa, *x));
    FSDPA_CHECK_ARG(x->dtype == oa.dtype, "%s: dtype %s differs from out_a's %s", x->name,
                    dtype_name(x->dtype), dtype_name(oa.dtype));
    for (int d = 0; d < rank; ++d)
      FSDPA_CHECK_ARG(x->shape[d] == oa.shape[d], "%s: size of dim %d is %lld, expected %lld (as out_a)",
                      x->name, d, (long long)x->shape[d], (long long)oa.shape[d]);
  }
  for (const View* x : {&la, &lb, &l}) {
    FSDPA_TRY(check_same_device(oa, *x));
    FSDPA_CHECK_ARG(x->dtype == DType::f32, "%s: dtype must be float32, got %s", x->name,
                    dtype_name(x->dtype));
    for (int d = 0; d < rank - 1; ++d)
      FSDPA_CHECK_ARG(x->shape[d] == oa.shape[d],
                      "%s: size of dim %d is %lld, expected %lld (out_a's dims without the last)",
                      x->name, d, (long long)x->shape[d], (long long)oa.shape[d]);
  }
  FSDPA_TRY(check_writable(o));
  FSDPA_TRY(check_writable(l));
  m->device_type = oa.t->device.device_type;
  m->device_id = oa.t->device.device_id;
  m->dtype = oa.dtype;
  m->dim = oa.shape[rank - 1];
  // Leading dims, padded in front to three.
  const int lead = rank - 1, pad = 3 - lead;
  for (int d = 0; d < 3; ++d) {
    const int src = d - pad;
    m->shape[d] = src < 0 ? 1 : oa.shape[src];
    m->out_a_stride[d] = src < 0 ? 0 : oa.stride[src];
    m->out_b_stride[d] = src < 0 ? 0 : ob.stride[src];
    m->out_stride[d] = src < 0 ? 0 : o.stride[src];
    m->lse_a_stride[d] = src < 0 ? 0 : la.stride[src];
    m->lse_b_stride[d] = src < 0 ? 0 : lb.stride[src];
    m->lse_stride[d] = src < 0 ? 0 : l.stride[src];
  }
  m->out_a_stride[3] = oa.stride[rank - 1];
  m->out_b_stride[3] = ob.stride[rank - 1];
  m->out_stride[3] = o.stride[rank - 1];
  m->out_a = oa.data;
  m->out_b = ob.data;
  m->out = o.data;
  m->lse_a = static_cast<const float*>(la.data);
  m->lse_b = static_cast<const float*>(lb.data);
  m->lse = static_cast<float*>(l.data);
  return FSDPA_OK;
}

}  // namespace fsdpa
