// The backends' support declarations (support_table.h). To change what a
// backend claims, change its cell here and regenerate the README's matrix
// (the readme_support_matrix test prints the command). A backend's cell is
// "pending" while its library refuses the feature until its cases have run
// on the hardware.
#include "support_table.h"

namespace fsdpa_cases {

namespace {

bool bwd(const Case& c) { return c.backward && c.check == Check::reference; }
bool additive(const Case& c) {
  return c.mask == Mask::additive || c.mask == Mask::finfo_min_rows || c.mask == Mask::additive_qdtype;
}

}  // namespace

bool Feature::used_by(const Case& c) const {
  for (const Aspect& a : aspects)
    if (a.in(c)) return true;
  return false;
}

const std::vector<Feature>& support_table() {
  static const std::vector<Feature> table = {
      {"forward + backward, fp32 / fp16 / bf16",
       {{"fp32 gradients", [](const Case& c) { return bwd(c) && c.dtype == DType::f32; }},
        {"fp16 gradients", [](const Case& c) { return bwd(c) && c.dtype == DType::f16; }},
        {"bf16 gradients", [](const Case& c) { return bwd(c) && c.dtype == DType::bf16; }}},
       "",
       {Support::yes},
       {Support::yes},
       {Support::yes}},
      {"head dim ≤ 256, Dv ≠ D",
       {{"head dim 256", [](const Case& c) { return c.D == 256; }},
        {"Dv != D", [](const Case& c) { return c.Dv != c.D; }}},
       "",
       {Support::yes},
       {Support::yes},
       {Support::yes}},
      {"causal top-left / bottom-right, sliding window",
       {{"causal top-left", [](const Case& c) { return c.causal && c.align == 0; }},
        {"causal bottom-right", [](const Case& c) { return c.causal && c.align == 1; }},
        {"sliding window", [](const Case& c) { return c.wl >= 0 || c.wr >= 0; }}},
       "",
       {Support::yes},
       {Support::yes},
       {Support::yes}},
      {"bool / additive mask, broadcasting",
       {{"bool mask", [](const Case& c) { return c.mask == Mask::boolean || c.mask == Mask::empty_rows; }},
        {"additive mask", additive}},
       "",
       {Support::yes},
       {Support::yes},
       {Support::yes}},
      {"GQA / MQA (dK, dV reduced)",
       {{"GQA gradients", [](const Case& c) { return bwd(c) && c.Hk > 1 && c.Hq > c.Hk; }},
        {"MQA gradients", [](const Case& c) { return bwd(c) && c.Hk == 1 && c.Hq > 1; }}},
       "",
       {Support::yes},
       {Support::yes},
       {Support::yes}},
      {"dropout (same Philox mask on every backend)",
       {{"dropout", [](const Case& c) { return c.dropout > 0; }}},
       "",
       {Support::yes},
       {Support::yes},
       {Support::yes}},
      {"softcap, ALiBi",
       {{"softcap", [](const Case& c) { return c.softcap > 0; }},
        {"ALiBi", [](const Case& c) { return c.alibi; }}},
       "",
       {Support::yes},
       {Support::yes},
       {Support::yes}},
      {"varlen (`cu_seqlens`)",
       {{"varlen", [](const Case& c) { return c.varlen; }}},
       "",
       {Support::yes},
       {Support::yes},
       {Support::yes}},
      {"deterministic backward",
       {{"bitwise repeated backward", [](const Case& c) { return c.check == Check::determinism; }}},
       "",
       {Support::yes, "(always)"},
       {Support::yes, "with `deterministic=True` (the default path adds dQ with atomics)"},
       {Support::untested, "by construction (no atomics); not run on hardware"}},
      {"PyTorch drop-in / FlashAttention API",
       {},
       "tests/python/test_sdpa.py, tests/python/test_flash_api.py",
       {Support::yes},
       {Support::yes},
       {Support::untested, "MPS path (`torch.mps.compile_shader`) run on the emulator only: see below"}},
      {"KV cache: `flash_attn_with_kvcache`, paged KV (any page size), `seqused_k`",
       {{"contiguous cache", [](const Case& c) { return c.kv == KvCache::contiguous; }},
        {"paged cache", [](const Case& c) { return c.kv == KvCache::paged; }}},
       "",
       {Support::yes},
       {Support::yes, "(decode / tensor-core / SIMT kernels read pages in place)"},
       {Support::untested, "forward, pages of any size read in place (emulator only, by "
                           "tests/metal/attention/test_metal_kv_cache.cpp, outside the registry)"}},
      {"`merge_attn_states`",
       {},
       "tests/cpp/test_kv_cache.cpp, tests/python/test_kvcache.py",
       {Support::yes},
       {Support::yes},
       {Support::raises}},
      {"block-sparse mask (FlexAttention `BlockMask`, `block_sparse_attention`)",
       {{"block lists", [](const Case& c) { return c.sparse != Sparse::none; }}},
       "",
       {Support::yes},
       {Support::yes, "(sm80 tensor-core and SIMT kernels; not the Hopper kernels yet)"},
       {Support::yes, "(emulator only)"}},
  };
  return table;
}

bool runs_on(Backend b, const Case& c) {
  if ((c.backends & b) == 0) return false;
  for (const Feature& f : support_table()) {
    const Support s = f.cell(b).support;
    if ((s == Support::raises || s == Support::untested) && f.used_by(c)) return false;
  }
  return true;
}

}  // namespace fsdpa_cases
