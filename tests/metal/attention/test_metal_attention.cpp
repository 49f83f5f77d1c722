// The Metal kernels (src/metal/kernels/fsdpa_attention.metal) executed on the
// MSL emulator (tests/metal/emu) against the fp64 reference: forward (out,
// lse) and gradients (dq, dk, dv) over the grid of metal_grid.h. Each call
// goes through the real validation (make_attn_params) and the real planner
// (plan_forward / plan_backward): the test binds the tensors to the
// planner's buffer indices and runs the planner's dispatches, each under two
// fiber schedules (results must agree bit for bit). Outputs and the float32
// scratch (Delta, split-decode partials) are poisoned. Split-KV decode
// cases either require the planner to choose the split kernels or force a
// split count on a small shape (plan_forward_with). Block-sparse cases
// (block_sparse_case.h patterns) bind the lists; the fp64 reference reads
// the same lists.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>

#include "attention_case.h"
#include "block_sparse_case.h"
#include "core/validate.h"
#include "metal/plan.h"
#include "metal_emu_run.h"
#include "metal_grid.h"

#ifndef FSDPA_METAL_TEST_REDUCED
#define FSDPA_METAL_TEST_REDUCED 0
#endif

namespace fsdpa_test {
namespace {

using fsdpa_metal_test::Mask;
using fsdpa_metal_test::MCase;
namespace mtl = fsdpa::metal;
namespace emu = fsdpa_emu;

Case to_case(const MCase& m) {
  Case c;
  c.name = m.name;
  c.B = m.B, c.Hq = m.Hq, c.Hk = m.Hk, c.Sq = m.Sq, c.Sk = m.Sk, c.D = m.D, c.Dv = m.Dv;
  c.dt = m.dt == 0 ? DT::f32 : m.dt == 1 ? DT::f16 : DT::bf16;
  c.causal = m.causal;
  c.align = m.align;
  c.wl = m.wl, c.wr = m.wr;
  c.softcap = m.softcap;
  c.alibi = m.alibi;
  c.mask = m.mask == Mask::none ? MaskKind::none
           : m.mask == Mask::boolean ? MaskKind::boolean
           : m.mask == Mask::additive || m.mask == Mask::additive_qdtype ? MaskKind::additive
           : m.mask == Mask::finfo_min_rows                           ? MaskKind::finfo_min_rows
                                                                        : MaskKind::empty_rows;
  c.dropout = m.dropout;
  c.varlen = m.varlen;
  c.bshd = m.bshd;
  c.scale = m.scale;
  return c;
}

std::string test_name(const MCase& m) {
  std::string s = m.name + (m.dt == 0 ? "_f32" : m.dt == 1 ? "_f16" : "_bf16");
  for (char& ch : s)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

// The block-sparse lists of a case (block_sparse_case.h), or none.
std::unique_ptr<BlockSparse> sparse_lists(const MCase& m, const Case& c, fsdpa_params* p) {
  if (m.sparse < 0) return nullptr;
  SparseSpec s;
  s.kind = static_cast<SparseKind>(m.sparse);
  s.bq = m.sbq, s.bk = m.sbk;
  s.per_batch = m.sp_per_batch, s.per_head = m.sp_per_head;
  s.extra_q_blocks = m.sp_extra_q_blocks;
  auto bs = std::make_unique<BlockSparse>(c, s);
  bs->attach(p, s);
  return bs;
}

void bind_sparse(Binder& bd, BlockSparse* bs, const fsdpa::AttnParams& ap) {
  if (bs == nullptr) return;
  bd.bind(FSDPA_BUF_KV_NUM, std::addressof(bs->kv_num), ap.kv_num);
  bd.bind(FSDPA_BUF_KV_IDX, std::addressof(bs->kv_idx), ap.kv_idx);
  bd.bind(FSDPA_BUF_FULL_NUM, std::addressof(bs->full_num), ap.full_num);
  bd.bind(FSDPA_BUF_FULL_IDX, std::addressof(bs->full_idx), ap.full_idx);
  bd.bind(FSDPA_BUF_SPARSE_MASK, std::addressof(bs->kv_mask), ap.sparse_mask);
}

class MetalEmu : public ::testing::TestWithParam<MCase> {};

TEST_P(MetalEmu, ForwardAndGradients) {
  const MCase& m = GetParam();
  const Case c = to_case(m);
  const auto family = static_cast<mtl::GpuFamily>(m.family);
  const uint64_t seed = std::hash<std::string>{}(m.name) ^ uint64_t(m.dt);
  Problem pr(c);
  fsdpa_params& p = pr.p;
  if (m.mask == Mask::additive_qdtype) {  // the same mask values (incl. -inf), stored in q's dtype
    Tensor mq(pr.mask.shape, c.dt);
    for (int64_t i = 0; i < mq.numel(); ++i) mq.set(i, pr.mask.get(i));
    pr.mask = mq;
    p.mask = &pr.mask;
  }
  std::unique_ptr<BlockSparse> bs = sparse_lists(m, c, &p);

  Tensor out = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, c.dt), lse = pr.make_lse();
  out.poison();
  lse.poison();
  fsdpa::AttnParams ap;
  fsdpa::CallTensors ct;
  ct.q = &pr.q, ct.k = &pr.k, ct.v = &pr.v, ct.out = &out, ct.lse = &lse;
  ASSERT_EQ(fsdpa::make_attn_params(fsdpa::CallKind::forward, &p, ct, &ap), FSDPA_OK) << fsdpa_last_error();
  mtl::DecodeSplit forced;
  if (m.forced_splits > 0) {
    forced.splits = m.forced_splits;
    forced.keys_per_split = static_cast<int32_t>((m.Sk + m.forced_splits - 1) / m.forced_splits);
    forced.reason = "forced by the test";
  }
  const mtl::Plan fplan = m.forced_splits > 0 ? mtl::plan_forward_with(ap, family, forced) : mtl::plan_forward(ap, family);
  const size_t first = m.sparse >= 0 ? 1 : 0;  // block-sparse: the expansion pass runs first
  if (first) EXPECT_EQ(fplan.dispatches.at(0).pass, mtl::Pass::sparse_expand);
  if (m.expect_split || m.forced_splits > 0) {
    ASSERT_EQ(fplan.dispatches.size(), first + 2) << fplan.reason;
    EXPECT_EQ(fplan.dispatches[first].pass, mtl::Pass::decode_split) << fplan.reason;
    EXPECT_EQ(fplan.dispatches[first + 1].pass, mtl::Pass::decode_merge);
    EXPECT_GE(fplan.args.num_splits, m.forced_splits > 0 ? m.forced_splits : 2);
  }
  {
    Binder bd;
    bd.bind(FSDPA_BUF_Q, std::addressof(pr.q), ap.q);
    bd.bind(FSDPA_BUF_K, std::addressof(pr.k), ap.k);
    bd.bind(FSDPA_BUF_V, std::addressof(pr.v), ap.v);
    bd.bind(FSDPA_BUF_OUT, std::addressof(out), ap.out);
    bd.bind(FSDPA_BUF_LSE, std::addressof(lse), ap.lse);
    bd.bind(FSDPA_BUF_MASK, ap.mask ? std::addressof(pr.mask) : nullptr, ap.mask);
    bd.bind(FSDPA_BUF_ALIBI, ap.alibi ? std::addressof(pr.alibi) : nullptr, ap.alibi);
    bd.bind(FSDPA_BUF_CU_Q, ap.cu_seqlens_q ? std::addressof(pr.cu_q) : nullptr, ap.cu_seqlens_q);
    bd.bind(FSDPA_BUF_CU_K, ap.cu_seqlens_k ? std::addressof(pr.cu_k) : nullptr, ap.cu_seqlens_k);
    bind_sparse(bd, bs.get(), ap);
    bd.bind_scratch(fplan);
    ASSERT_NO_FATAL_FAILURE(run_plan(fplan, bd, seed));
    bd.read_back(FSDPA_BUF_OUT, std::addressof(out));
    bd.read_back(FSDPA_BUF_LSE, std::addressof(lse));
  }
  Tensor out64 = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, DT::f64), lse64 = pr.make_lse();
  ASSERT_EQ(fsdpa_reference_forward(&p, &pr.q, &pr.k, &pr.v, &out64, &lse64), FSDPA_OK) << fsdpa_last_error();
  expect_close("out", out, out64, c.dt, pr.reduction_len());
  expect_close("lse", lse, lse64, DT::f32, pr.reduction_len());
  if (!m.backward) return;

  Tensor dq = pr.make(c.Hq, c.Sq, pr.total_q, c.D, c.dt);
  Tensor dk = pr.make(c.Hk, c.Sk, pr.total_k, c.D, c.dt);
  Tensor dv = pr.make(c.Hk, c.Sk, pr.total_k, c.Dv, c.dt);
  for (Tensor* t : {std::addressof(dq), std::addressof(dk), std::addressof(dv)}) t->poison();
  fsdpa::CallTensors bt;
  bt.q = &pr.q, bt.k = &pr.k, bt.v = &pr.v, bt.out = &out, bt.lse = &lse, bt.dout = &pr.dout;
  bt.dq = &dq, bt.dk = &dk, bt.dv = &dv;
  fsdpa::AttnParams bp;
  ASSERT_EQ(fsdpa::make_attn_params(fsdpa::CallKind::backward, &p, bt, &bp), FSDPA_OK) << fsdpa_last_error();
  const mtl::Plan bplan = mtl::plan_backward(bp, family);
  EXPECT_EQ(mtl::key_name(bplan.config.key), mtl::key_name(fplan.config.key));
  {
    Binder bd;
    bd.bind(FSDPA_BUF_Q, std::addressof(pr.q), bp.q);
    bd.bind(FSDPA_BUF_K, std::addressof(pr.k), bp.k);
    bd.bind(FSDPA_BUF_V, std::addressof(pr.v), bp.v);
    bd.bind(FSDPA_BUF_OUT, std::addressof(out), bp.out);
    bd.bind(FSDPA_BUF_LSE, std::addressof(lse), bp.lse);
    bd.bind(FSDPA_BUF_MASK, bp.mask ? std::addressof(pr.mask) : nullptr, bp.mask);
    bd.bind(FSDPA_BUF_ALIBI, bp.alibi ? std::addressof(pr.alibi) : nullptr, bp.alibi);
    bd.bind(FSDPA_BUF_CU_Q, bp.cu_seqlens_q ? std::addressof(pr.cu_q) : nullptr, bp.cu_seqlens_q);
    bd.bind(FSDPA_BUF_CU_K, bp.cu_seqlens_k ? std::addressof(pr.cu_k) : nullptr, bp.cu_seqlens_k);
    bd.bind(FSDPA_BUF_DOUT, std::addressof(pr.dout), bp.dout);
    bind_sparse(bd, bs.get(), bp);
    bd.bind_scratch(bplan);
    bd.bind(FSDPA_BUF_DQ, std::addressof(dq), bp.dq);
    bd.bind(FSDPA_BUF_DK, std::addressof(dk), bp.dk);
    bd.bind(FSDPA_BUF_DV, std::addressof(dv), bp.dv);
    ASSERT_NO_FATAL_FAILURE(run_plan(bplan, bd, seed + 1));
    bd.read_back(FSDPA_BUF_DQ, std::addressof(dq));
    bd.read_back(FSDPA_BUF_DK, std::addressof(dk));
    bd.read_back(FSDPA_BUF_DV, std::addressof(dv));
  }
  Tensor dq64 = pr.make(c.Hq, c.Sq, pr.total_q, c.D, DT::f64);
  Tensor dk64 = pr.make(c.Hk, c.Sk, pr.total_k, c.D, DT::f64);
  Tensor dv64 = pr.make(c.Hk, c.Sk, pr.total_k, c.Dv, DT::f64);
  ASSERT_EQ(fsdpa_reference_backward(&p, &pr.dout, &pr.q, &pr.k, &pr.v, &dq64, &dk64, &dv64), FSDPA_OK)
      << fsdpa_last_error();
  expect_close("dq", dq, dq64, c.dt, pr.reduction_len(), true);
  expect_close("dk", dk, dk64, c.dt, pr.reduction_len(), true);
  expect_close("dv", dv, dv64, c.dt, pr.reduction_len(), true);
}

INSTANTIATE_TEST_SUITE_P(Grid, MetalEmu, ::testing::ValuesIn(fsdpa_metal_test::metal_grid(FSDPA_METAL_TEST_REDUCED)),
                         [](const ::testing::TestParamInfo<MCase>& i) { return test_name(i.param); });

}  // namespace
}  // namespace fsdpa_test
