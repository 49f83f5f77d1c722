// See bridge.h.
#include "metal/bridge.h"

#include <stdexcept>

#include "core/error.h"
#include "core/validate.h"
#include "metal/plan.h"

namespace fsdpa::metal {

std::string embedded_kernel_file(const std::string& name);  // generated: metal_sources.cpp

namespace {
DLDataType dl_type(int32_t code) {
  switch (code) {
    case 0: return {kDLFloat, 32, 1};
    case 1: return {kDLFloat, 16, 1};
    case 2: return {kDLBfloat, 16, 1};
    case 3: return {kDLFloat, 64, 1};
    case 4: return {FSDPA_DL_BOOL, 8, 1};
    case 5: return {kDLInt, 32, 1};
  }
  throw std::invalid_argument("metal bridge: unknown dtype code " + std::to_string(code));
}
}  // namespace

BridgePlan plan_for_tensors(bool backward, const fsdpa_params& params, const std::vector<TensorDesc>& tensors,
                            int family) {
  if (tensors.size() < FSDPA_NUM_BUFFERS) throw std::invalid_argument("metal bridge: need one entry per buffer index");
  // Data-less DLTensors on kDLMetal: validation never reads Metal memory.
  std::vector<DLTensor> dl(FSDPA_NUM_BUFFERS);
  std::vector<const DLTensor*> ptr(FSDPA_NUM_BUFFERS, nullptr);
  for (int i = 1; i < FSDPA_NUM_BUFFERS; ++i) {
    const TensorDesc& t = tensors[i];
    if (!t.present) continue;
    if (t.shape.size() != t.strides.size()) throw std::invalid_argument("metal bridge: shape/strides rank mismatch");
    DLTensor& d = dl[i];
    d.data = reinterpret_cast<void*>(uintptr_t(4096) * uintptr_t(i + 1));  // distinct, aligned, never dereferenced
    d.device = {kDLMetal, 0};
    d.ndim = static_cast<int32_t>(t.shape.size());
    d.dtype = dl_type(t.dtype);
    d.shape = const_cast<int64_t*>(t.shape.data());
    d.strides = const_cast<int64_t*>(t.strides.data());
    d.byte_offset = 0;
    ptr[i] = &d;
  }
  fsdpa_params p = params;
  p.check_finite = 0;  // needs the data; not done on the MPS path (docs/metal.md)
  p.mask = ptr[FSDPA_BUF_MASK];
  p.alibi_slopes = ptr[FSDPA_BUF_ALIBI];
  p.cu_seqlens_q = ptr[FSDPA_BUF_CU_Q];
  p.cu_seqlens_k = ptr[FSDPA_BUF_CU_K];
  p.seqused_k = ptr[FSDPA_BUF_SEQUSED_K];
  p.cache_batch_idx = ptr[FSDPA_BUF_CACHE_BATCH_IDX];
  p.cache_leftpad = ptr[FSDPA_BUF_CACHE_LEFTPAD];
  p.block_table = ptr[FSDPA_BUF_BLOCK_TABLE];
  p.kv_num_blocks = ptr[FSDPA_BUF_KV_NUM];
  p.kv_indices = ptr[FSDPA_BUF_KV_IDX];
  p.full_kv_num_blocks = ptr[FSDPA_BUF_FULL_NUM];
  p.full_kv_indices = ptr[FSDPA_BUF_FULL_IDX];
  p.kv_block_mask = ptr[FSDPA_BUF_SPARSE_MASK];
  CallTensors ct;
  ct.q = ptr[FSDPA_BUF_Q], ct.k = ptr[FSDPA_BUF_K], ct.v = ptr[FSDPA_BUF_V];
  ct.out = ptr[FSDPA_BUF_OUT], ct.lse = ptr[FSDPA_BUF_LSE];
  if (backward) ct.dout = ptr[FSDPA_BUF_DOUT], ct.dq = ptr[FSDPA_BUF_DQ], ct.dk = ptr[FSDPA_BUF_DK], ct.dv = ptr[FSDPA_BUF_DV];
  AttnParams ap;
  if (make_attn_params(backward ? CallKind::backward : CallKind::forward, &p, ct, &ap) != FSDPA_OK)
    throw std::invalid_argument(last_error());
  const GpuFamily fam = family >= 9 ? GpuFamily::apple9 : family == 8 ? GpuFamily::apple8 : GpuFamily::apple7;
  const Plan plan = backward ? plan_backward(ap, fam) : plan_forward(ap, fam);
  BridgePlan out;
  out.key = key_name(plan.config.key);
  out.source = assemble_source(plan.config, embedded_kernel_file);
  for (const Dispatch& d : plan.dispatches) {
    out.kernels.emplace_back(d.kernel);
    out.grid.push_back({d.grid[0], d.grid[1], d.grid[2]});
    out.threads.push_back({d.threads[0], d.threads[1], d.threads[2]});
  }
  out.args.assign(reinterpret_cast<const char*>(&plan.args), sizeof(plan.args));
  out.scratch_elements = plan.scratch_elements;
  out.sparse_state_elements = plan.sparse_state_elements;
  out.reason = plan.reason;
  return out;
}

}  // namespace fsdpa::metal
