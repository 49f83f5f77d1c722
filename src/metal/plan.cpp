// Host planning of the Metal backend (see plan.h). Portable C++: no Metal.
#include "metal/plan.h"

#include <stddef.h>

#include <algorithm>
#include <sstream>
#include <stdexcept>

#include "core/semantics.h"
#include "metal/heuristics.h"

namespace fsdpa::metal {

static_assert(sizeof(FsdpaMetalArgs) % 8 == 0, "FsdpaMetalArgs must stay 8-byte aligned in size");
static_assert(offsetof(FsdpaMetalArgs, alibi_stride_b) == 11 * 4 * 8, "11 stride arrays precede alibi_stride_b");
static_assert(offsetof(FsdpaMetalArgs, batch) == 11 * 4 * 8 + 4 * 8 + 4 * 4 * 8 + 6 * 8,
              "64-bit fields precede the 32-bit ones");

namespace {

int32_t round8(int64_t x) { return static_cast<int32_t>((x + 7) / 8 * 8); }

// Element size of the staged tiles: float32 as float, float16 as half,
// bfloat16 as its 16-bit pattern (fsdpa_attention.metal tg_t).
size_t elem_bytes(DType t) { return t == DType::f32 ? 4 : 2; }

size_t arr(size_t elems, size_t eb) { return (elems * eb + 15) / 16 * 16; }

// Threadgroup arrays of each kernel (fsdpa_attention.metal): the forward
// stages Q and one K/V buffer, dQ stages Q, dO and one K/V buffer (V for
// dP, then K for S and dQ), dK/dV stages K, V, Q and dO.
size_t tg_bytes(Pass pass, const KernelKey& k, Tile t) {
  const size_t eb = elem_bytes(k.dtype), dp = k.dp, dvp = k.dvp, dmax = std::max(dp, dvp);
  switch (pass) {
    case Pass::forward:
      return arr(t.parallel * dp, eb) + arr(t.traversal * dmax, eb);
    case Pass::backward_dq:
      return arr(t.parallel * dp, eb) + arr(t.parallel * dvp, eb) + arr(t.traversal * dmax, eb);
    case Pass::backward_dkdv:
      return arr(t.parallel * dp, eb) + arr(t.parallel * dvp, eb) + arr(t.traversal * dp, eb) +
             arr(t.traversal * dvp, eb);
    case Pass::backward_preprocess:
    case Pass::decode_split:
    case Pass::decode_merge:
    case Pass::sparse_expand:
      return 0;
  }
  return 0;
}

// MLX's tile (heuristics.h), shrunk until it meets the target budget:
// halve the traversal down to 16, then the parallelization down to 16 (2
// simdgroups), then the traversal to 8. If no step meets the target, the
// smallest 2-simdgroup tile (16, 8) when it fits the hard limit, else
// (8, 8): one simdgroup (only float32 backward at large head dims).
Tile fit_tile(Pass pass, const KernelKey& k) {
  const int hd = std::max(k.dp, k.dvp);
  auto bytes = [&](Tile t) { return tg_bytes(pass, k, t); };
  Tile t{kPreferredParallel, preferred_traversal(hd)};
  const size_t target = kTargetThreadgroupBytes, limit = kThreadgroupMemoryBytes;
  while (bytes(t) > target) {
    if (t.traversal > 16) t.traversal /= 2;
    else if (t.parallel > kMinParallel) t.parallel /= 2;
    else if (t.traversal > kMinTraversal) t.traversal /= 2;
    else break;
  }
  if (bytes(t) <= limit) return t;  // meets the target, or (16, 8) within the limit
  t = Tile{8, kMinTraversal};
  if (bytes(t) <= limit) return t;
  throw std::runtime_error("metal: no tile fits threadgroup memory for head dims " + std::to_string(k.dp) + "/" +
                           std::to_string(k.dvp));
}

int dtype_code(DType t) { return t == DType::f16 ? 1 : t == DType::bf16 ? 2 : 0; }

uint32_t ceil_div(int64_t a, int64_t b) { return static_cast<uint32_t>(std::max<int64_t>(1, (a + b - 1) / b)); }

}  // namespace

KernelKey make_key(const AttnParams& p, GpuFamily family) {
  if (p.dtype != DType::f32 && p.dtype != DType::f16 && p.dtype != DType::bf16)
    throw std::invalid_argument("metal: dtype must be float32, float16 or bfloat16");
  if (p.head_dim > 256 || p.head_dim_v > 256) throw std::invalid_argument("metal: head dims above 256");
  KernelKey k;
  k.family = family == GpuFamily::apple9 ? GpuFamily::apple9 : family == GpuFamily::apple8 ? GpuFamily::apple8
                                                                                           : GpuFamily::apple7;
  k.dtype = p.dtype;
  k.dp = round8(p.head_dim);
  k.dvp = round8(p.head_dim_v);
  k.mask = p.mask ? p.mask_kind : MaskKind::none;
  k.mask_dtype = k.mask == MaskKind::additive ? p.mask_dtype : DType::f32;
  k.band = p.window_left >= 0 || p.window_right >= 0;
  k.alibi = p.alibi != nullptr;
  k.softcap = p.softcap > 0.0f;
  k.dropout = p.dropout_p > 0.0f;
  k.varlen = p.cu_seqlens_q != nullptr;
  k.kv_cache = uses_kv_cache(p);
  k.sparse = p.sparse != 0;
  return k;
}

KernelConfig kernel_config(const KernelKey& key) {
  KernelConfig c;
  c.key = key;
  c.fwd = fit_tile(Pass::forward, key);
  c.dq = fit_tile(Pass::backward_dq, key);
  c.dkv = fit_tile(Pass::backward_dkdv, key);
  c.pre_rows = kPreprocessRows;
  return c;
}

const char* kernel_name(Pass pass) {
  switch (pass) {
    case Pass::forward: return "fsdpa_forward";
    case Pass::backward_dq: return "fsdpa_backward_dq";
    case Pass::backward_dkdv: return "fsdpa_backward_dkdv";
    case Pass::backward_preprocess: return "fsdpa_backward_preprocess";
    case Pass::decode_split: return "fsdpa_decode_split";
    case Pass::decode_merge: return "fsdpa_decode_merge";
    case Pass::sparse_expand: return "fsdpa_sparse_expand";
  }
  return "";
}

const char* threads_define(Pass pass) {
  switch (pass) {
    case Pass::forward: return "FSDPA_THREADS_FORWARD";
    case Pass::backward_dq: return "FSDPA_THREADS_BACKWARD_DQ";
    case Pass::backward_dkdv: return "FSDPA_THREADS_BACKWARD_DKDV";
    case Pass::backward_preprocess: return "FSDPA_THREADS_BACKWARD_PREPROCESS";
    case Pass::decode_split: return "FSDPA_THREADS_DECODE_SPLIT";
    case Pass::decode_merge: return "FSDPA_THREADS_DECODE_MERGE";
    case Pass::sparse_expand: return "FSDPA_THREADS_SPARSE_EXPAND";
  }
  return "";
}

std::string key_name(const KernelKey& k) {
  const char* dt[] = {"f32", "f16", "bf16"};
  std::ostringstream s;
  s << "a" << static_cast<int>(k.family) << "_" << dt[dtype_code(k.dtype)] << "_d" << k.dp << "_v" << k.dvp << "_m"
    << static_cast<int>(k.mask);
  if (k.mask == MaskKind::additive) s << dt[dtype_code(k.mask_dtype)];
  s << "_b" << k.band << "a" << k.alibi << "s" << k.softcap << "p" << k.dropout << "v" << k.varlen;
  if (k.kv_cache) s << "_kv";
  if (k.sparse) s << "_bs";
  return s.str();
}

std::vector<std::pair<std::string, std::string>> kernel_defines(const KernelConfig& c) {
  const KernelKey& k = c.key;
  auto n = [](auto v) { return std::to_string(static_cast<long long>(v)); };
  std::vector<std::pair<std::string, std::string>> d = {
      {"FSDPA_DTYPE", n(dtype_code(k.dtype))},
      {"FSDPA_DP", n(k.dp)},
      {"FSDPA_DVP", n(k.dvp)},
      {"FSDPA_MASK", n(static_cast<int>(k.mask))},
      {"FSDPA_MASK_DTYPE", n(dtype_code(k.mask_dtype))},
      {"FSDPA_BAND", n(k.band)},
      {"FSDPA_ALIBI", n(k.alibi)},
      {"FSDPA_SOFTCAP", n(k.softcap)},
      {"FSDPA_DROPOUT", n(k.dropout)},
      {"FSDPA_VARLEN", n(k.varlen)},
      {"FSDPA_KVCACHE", n(k.kv_cache)},
      {"FSDPA_SPARSE", n(k.sparse)},
      {"FSDPA_FWD_BQ", n(c.fwd.parallel)},
      {"FSDPA_FWD_BK", n(c.fwd.traversal)},
      {"FSDPA_DQ_BQ", n(c.dq.parallel)},
      {"FSDPA_DQ_BK", n(c.dq.traversal)},
      {"FSDPA_DKV_BK", n(c.dkv.parallel)},    // keys per threadgroup
      {"FSDPA_DKV_BQ", n(c.dkv.traversal)},   // queries per step
      {"FSDPA_PRE_ROWS", n(c.pre_rows)},
  };
  // Threads per threadgroup the host dispatches kernel fsdpa_<name> with,
  // declared by it as [[max_total_threads_per_threadgroup(FSDPA_THREADS_<NAME>)]]
  // (tests/metal/attention/test_metal_lint.cpp and test_metal_plan.cpp check both).
  for (Pass pass : kAllPasses) d.emplace_back(threads_define(pass), n(threads_per_threadgroup(pass, c)));
  return d;
}

size_t threadgroup_bytes(Pass pass, const KernelConfig& c) {
  switch (pass) {
    case Pass::forward: return tg_bytes(pass, c.key, c.fwd);
    case Pass::backward_dq: return tg_bytes(pass, c.key, c.dq);
    case Pass::backward_dkdv: return tg_bytes(pass, c.key, c.dkv);
    case Pass::backward_preprocess:
    case Pass::decode_split:
    case Pass::decode_merge:
    case Pass::sparse_expand: return 0;
  }
  return 0;
}

uint32_t threads_per_threadgroup(Pass pass, const KernelConfig& c) {
  switch (pass) {
    case Pass::forward: return static_cast<uint32_t>(c.fwd.parallel / 8 * 32);
    case Pass::backward_dq: return static_cast<uint32_t>(c.dq.parallel / 8 * 32);
    case Pass::backward_dkdv: return static_cast<uint32_t>(c.dkv.parallel / 8 * 32);
    case Pass::backward_preprocess: return static_cast<uint32_t>(c.pre_rows * 32);
    case Pass::decode_split: return static_cast<uint32_t>(kSplitSimdgroups * 32);
    case Pass::decode_merge: return static_cast<uint32_t>(kMergeRows * 32);
    case Pass::sparse_expand: return static_cast<uint32_t>(kSparseExpandThreads);
  }
  return 0;
}

FsdpaMetalArgs make_args(const AttnParams& p) {
  FsdpaMetalArgs a{};
  for (int d = 0; d < 4; ++d) {
    a.q_stride[d] = p.q_stride[d];
    a.k_stride[d] = p.k_stride[d];
    a.v_stride[d] = p.v_stride[d];
    a.out_stride[d] = p.out_stride[d];
    a.dout_stride[d] = p.dout_stride[d];
    a.dq_stride[d] = p.dq_stride[d];
    a.dk_stride[d] = p.dk_stride[d];
    a.dv_stride[d] = p.dv_stride[d];
    a.mask_stride[d] = p.mask ? p.mask_stride[d] : 0;
  }
  for (int d = 0; d < 3; ++d) a.lse_stride[d] = p.lse ? p.lse_stride[d] : 0;
  const bool varlen = p.cu_seqlens_q != nullptr;
  a.delta_stride[0] = varlen ? 0 : p.heads_q * p.seqlen_q;
  a.delta_stride[1] = varlen ? p.total_q : p.seqlen_q;
  a.delta_stride[2] = 1;
  a.alibi_stride_b = p.alibi ? p.alibi_stride_b : 0;
  a.window_left = p.window_left;
  a.window_right = p.window_right;
  a.batch = static_cast<int32_t>(p.batch);
  a.heads_q = static_cast<int32_t>(p.heads_q);
  a.heads_k = static_cast<int32_t>(p.heads_k);
  a.seqlen_q = static_cast<int32_t>(p.seqlen_q);
  a.seqlen_k = static_cast<int32_t>(p.seqlen_k);
  a.total_q = static_cast<int32_t>(p.total_q);
  a.total_k = static_cast<int32_t>(p.total_k);
  a.head_dim = static_cast<int32_t>(p.head_dim);
  a.head_dim_v = static_cast<int32_t>(p.head_dim_v);
  a.bottom_right = p.bottom_right;
  a.has_lse = p.lse != nullptr;
  a.seed_lo = static_cast<uint32_t>(p.seed);
  a.seed_hi = static_cast<uint32_t>(p.seed >> 32);
  a.offset_lo = static_cast<uint32_t>(p.offset);
  a.offset_hi = static_cast<uint32_t>(p.offset >> 32);
  a.dropout_threshold = p.dropout_p > 0 ? dropout_threshold(p.dropout_p) : 0u;
  a.scale = p.scale;
  a.softcap = p.softcap;
  a.dropout_scale = p.dropout_p > 0 ? 1.0f / (1.0f - p.dropout_p) : 1.0f;
  a.num_splits = 0;
  a.keys_per_split = 0;
  // KV cache (core/attn_params.h): the optional vectors, the page table.
  a.kv_flags = (p.seqused_k ? FSDPA_KV_SEQUSED : 0) | (p.cache_batch_idx ? FSDPA_KV_BATCH_IDX : 0) |
               (p.cache_leftpad ? FSDPA_KV_LEFTPAD : 0);
  a.page_size = p.block_table ? static_cast<int32_t>(p.page_size) : 0;
  a.block_table_stride = p.block_table ? p.block_table_stride : 0;
  // Block-sparse lists (strides already 0 on broadcast dims).
  if (p.sparse) {
    for (int d = 0; d < 3; ++d) a.kv_num_stride[d] = p.kv_num ? p.kv_num_stride[d] : 0;
    for (int d = 0; d < 3; ++d) a.full_num_stride[d] = p.full_num ? p.full_num_stride[d] : 0;
    for (int d = 0; d < 4; ++d) a.kv_idx_stride[d] = p.kv_idx ? p.kv_idx_stride[d] : 0;
    for (int d = 0; d < 4; ++d) a.full_idx_stride[d] = p.full_idx ? p.full_idx_stride[d] : 0;
    for (int d = 0; d < 6; ++d) a.sparse_mask_stride[d] = p.sparse_mask ? p.sparse_mask_stride[d] : 0;
    a.sparse_block_q = static_cast<int32_t>(p.sparse_block_q);
    a.sparse_block_k = static_cast<int32_t>(p.sparse_block_k);
    a.sparse_batches = static_cast<int32_t>(p.sparse_batches);
    a.sparse_heads = static_cast<int32_t>(p.sparse_heads);
    a.sparse_q_blocks = static_cast<int32_t>((p.seqlen_q + p.sparse_block_q - 1) / p.sparse_block_q);
    a.sparse_k_blocks = static_cast<int32_t>(p.sparse_k_blocks);
    a.sparse_lists = (p.kv_num ? 1 : 0) | (p.full_num ? 2 : 0) | (p.sparse_mask ? 4 : 0);
  }
  return a;
}

namespace {
// Rows of the expanded block-sparse state ([sparse_batches][sparse_heads]
// [query blocks][key blocks] int32, fsdpa_sparse_expand).
int64_t sparse_rows(const AttnParams& p) {
  return p.sparse_batches * p.sparse_heads * ((p.seqlen_q + p.sparse_block_q - 1) / p.sparse_block_q);
}
// The expansion pass and its scratch, ahead of the passes that read it.
void add_sparse_expand(Plan& plan, const AttnParams& p);

Dispatch make_dispatch(Pass pass, const KernelConfig& c, const AttnParams& p, int32_t splits = 0) {
  const uint32_t tail = p.cu_seqlens_q != nullptr ? 1u : 0u;  // varlen: tokens after the last sequence
  Dispatch d{};
  d.kernel = kernel_name(pass);
  d.pass = pass;
  const uint32_t nb = static_cast<uint32_t>(p.batch);
  switch (pass) {
    case Pass::forward:
      d.grid[0] = ceil_div(p.seqlen_q, c.fwd.parallel), d.grid[1] = uint32_t(p.heads_q), d.grid[2] = nb + tail;
      break;
    case Pass::backward_dq:
      d.grid[0] = ceil_div(p.seqlen_q, c.dq.parallel), d.grid[1] = uint32_t(p.heads_q), d.grid[2] = nb + tail;
      break;
    case Pass::backward_dkdv:
      d.grid[0] = ceil_div(p.seqlen_k, c.dkv.parallel), d.grid[1] = uint32_t(p.heads_k), d.grid[2] = nb + tail;
      break;
    case Pass::backward_preprocess:
      d.grid[0] = ceil_div(p.seqlen_q, c.pre_rows), d.grid[1] = uint32_t(p.heads_q), d.grid[2] = nb;
      break;
    case Pass::decode_split: {  // work item (row of the GQA group, split) per simdgroup
      const int64_t rows = (p.heads_q / p.heads_k) * p.seqlen_q;
      d.grid[0] = ceil_div(rows * splits, kSplitSimdgroups), d.grid[1] = uint32_t(p.heads_k), d.grid[2] = nb;
      break;
    }
    case Pass::decode_merge:
      d.grid[0] = ceil_div(p.seqlen_q, kMergeRows), d.grid[1] = uint32_t(p.heads_q), d.grid[2] = nb;
      break;
    case Pass::sparse_expand:  // one thread per (list batch, list head, query block)
      d.grid[0] = ceil_div(sparse_rows(p), kSparseExpandThreads), d.grid[1] = d.grid[2] = 1;
      if (sparse_rows(p) == 0) d.grid[0] = 0;
      break;
  }
  d.threads[0] = threads_per_threadgroup(pass, c);
  d.threads[1] = d.threads[2] = 1;
  d.threadgroup_memory = threadgroup_bytes(pass, c);
  return d;
}
void add_sparse_expand(Plan& plan, const AttnParams& p) {
  if (!p.sparse) return;
  plan.sparse_state_elements = sparse_rows(p) * p.sparse_k_blocks;
  plan.dispatches.push_back(make_dispatch(Pass::sparse_expand, plan.config, p));
}
// A dispatch of zero threadgroups (batch 0) is invalid in Metal: leave it out.
void drop_empty(Plan& plan) {
  std::erase_if(plan.dispatches, [](const Dispatch& d) { return uint64_t(d.grid[0]) * d.grid[1] * d.grid[2] == 0; });
}
}  // namespace

DecodeSplit choose_decode_split(const AttnParams& p) {
  DecodeSplit d;
  if (p.cu_seqlens_q != nullptr) {
    d.reason = "normal forward: varlen (the split decode kernels take padded batches)";
    return d;
  }
  if (p.seqlen_q < 1 || p.seqlen_q > kDecodeMaxQueryRows) {
    d.reason = "normal forward: seqlen_q is 0 or above kDecodeMaxQueryRows";
    return d;
  }
  // Work items of the normal forward: one threadgroup per (batch, query
  // head); of the split pass: one simdgroup per (query row, split).
  const int64_t rows = p.batch * p.heads_q * p.seqlen_q;
  const int64_t by_keys = p.seqlen_k / kDecodeMinKeysPerSplit;
  const int64_t by_work = (kDecodeTargetWorkItems + std::max<int64_t>(rows, 1) - 1) / std::max<int64_t>(rows, 1);
  const int64_t splits = std::min<int64_t>({by_keys, by_work, kDecodeMaxSplits});
  if (splits < 2) {
    d.reason = by_keys < 2 ? "normal forward: too few keys to split" : "normal forward: enough rows to fill the GPU";
    return d;
  }
  d.keys_per_split = static_cast<int32_t>((p.seqlen_k + splits - 1) / splits);
  d.splits = static_cast<int32_t>((p.seqlen_k + d.keys_per_split - 1) / d.keys_per_split);  // no empty split
  d.reason = "split-KV decode: few query rows, long keys";
  return d;
}

Plan plan_forward(const AttnParams& p, GpuFamily family) {
  return plan_forward_with(p, family, choose_decode_split(p));
}

Plan plan_forward_with(const AttnParams& p, GpuFamily family, const DecodeSplit& split) {
  Plan plan;
  plan.config = kernel_config(make_key(p, family));
  plan.args = make_args(p);
  plan.reason = split.reason;
  add_sparse_expand(plan, p);
  if (split.splits > 0) {
    if (p.cu_seqlens_q != nullptr || split.keys_per_split <= 0 ||
        int64_t(split.splits) * split.keys_per_split < p.seqlen_k)
      throw std::invalid_argument("metal: invalid split-KV decode choice");
    plan.args.num_splits = split.splits;
    plan.args.keys_per_split = split.keys_per_split;
    // Per (batch, query head, query row, split): lse, then Dv outputs.
    plan.scratch_elements = p.batch * p.heads_q * p.seqlen_q * split.splits * (1 + p.head_dim_v);
    plan.dispatches.push_back(make_dispatch(Pass::decode_split, plan.config, p, split.splits));
    plan.dispatches.push_back(make_dispatch(Pass::decode_merge, plan.config, p));
  } else {
    plan.dispatches.push_back(make_dispatch(Pass::forward, plan.config, p));
  }
  drop_empty(plan);
  return plan;
}

Plan plan_backward(const AttnParams& p, GpuFamily family) {
  if (uses_kv_cache(p))
    throw std::invalid_argument(
        "block_table / seqused_k / cache_batch_idx / cache_leftpad: the KV-cache parameters are "
        "for the forward only");
  Plan plan;
  plan.config = kernel_config(make_key(p, family));
  plan.args = make_args(p);
  plan.args.has_lse = 1;
  plan.reason = "backward";
  plan.scratch_elements = p.cu_seqlens_q != nullptr ? p.heads_q * p.total_q : p.batch * p.heads_q * p.seqlen_q;
  add_sparse_expand(plan, p);
  plan.dispatches.push_back(make_dispatch(Pass::backward_preprocess, plan.config, p));
  plan.dispatches.push_back(make_dispatch(Pass::backward_dq, plan.config, p));
  plan.dispatches.push_back(make_dispatch(Pass::backward_dkdv, plan.config, p));
  drop_empty(plan);
  return plan;
}

std::string assemble_source(const KernelConfig& c, const std::function<std::string(const std::string&)>& read) {
  std::ostringstream out;
  out << "// flashsdpa Metal kernels, specialisation " << key_name(c.key) << "\n";
  for (const auto& [name, value] : kernel_defines(c)) out << "#define " << name << " " << value << "\n";
  std::istringstream src(read("fsdpa_attention.metal"));
  std::string line;
  while (std::getline(src, line)) {
    const auto q0 = line.find("#include \"");
    if (q0 != std::string::npos && line.find_first_not_of(" \t") == q0) {
      const auto q1 = line.find('"', q0 + 10);
      out << read(line.substr(q0 + 10, q1 - q0 - 10)) << "\n";
    } else {
      out << line << "\n";
    }
  }
  return out.str();
}

}  // namespace fsdpa::metal
