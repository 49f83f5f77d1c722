// The Metal kernels (src/metal/kernels/fsdpa_attention.metal) executed on the
// MSL emulator (tests/metal/emu) against the fp64 reference: forward (out,
// lse) and gradients (dq, dk, dv) over the grid of metal_grid.h. Each call
// goes through the real validation (make_attn_params) and the real planner
// (plan_forward / plan_backward): the test binds the tensors to the
// planner's buffer indices and runs the planner's dispatches, each under two
// fiber schedules (results must agree bit for bit). Outputs and the float32
// scratch (Delta, split-decode partials) are poisoned. Split-KV decode
// cases either require the planner to choose the split kernels or force a
// split count on a small shape (plan_forward_with).
#include <gtest/gtest.h>

#include <cstring>
#include <memory>

#include "attention_case.h"
#include "core/validate.h"
#include "fsdpa_msl_emu/emu.h"
#include "metal/heuristics.h"
#include "metal/plan.h"
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

// Binds tensors to the planner's buffer indices. The AttnParams pointers the
// planner saw must be the tensors' own storage (offset 0), so that binding
// the storage is binding what the kernel addresses.
struct Binder {
  emu::Args args;
  void bind(uint32_t index, Tensor* t, const void* param_ptr) {
    if (t == nullptr || param_ptr == nullptr) {
      args.set_raw(index, std::vector<std::byte>(16));  // unused optional input
      return;
    }
    ASSERT_EQ(param_ptr, static_cast<const void*>(t->bytes.data())) << "buffer " << index;
    std::vector<std::byte> b(t->bytes.size());
    std::memcpy(b.data(), t->bytes.data(), b.size());
    args.set_raw(index, std::move(b));
  }
  // The plan's float32 scratch, poisoned (NaN): a read of an element no
  // earlier pass wrote shows in the results.
  void bind_scratch(int64_t elements) {
    args.set(FSDPA_BUF_SCRATCH, std::vector<float>(static_cast<size_t>(std::max<int64_t>(elements, 4)), NAN));
  }
  void read_back(uint32_t index, Tensor* t) const {
    const auto& b = args.raw(index);
    ASSERT_EQ(b.size(), t->bytes.size());
    std::memcpy(t->bytes.data(), b.data(), b.size());
  }
};

void run(const mtl::Plan& plan, Binder& bd, uint64_t seed) {
  bd.args.set_bytes(FSDPA_BUF_ARGS, plan.args);
  const std::string lib = "mtl_" + mtl::key_name(plan.config.key);
  const std::vector<emu::Schedule> schedules = {emu::Schedule::reversed(), emu::Schedule::shuffled(seed, 0.01)};
  for (const mtl::Dispatch& d : plan.dispatches) {
    ASSERT_LE(d.threadgroup_memory, static_cast<size_t>(mtl::kThreadgroupMemoryBytes));
    emu::Kernel k = emu::Kernel::find(lib, d.kernel);  // throws (fails) if the grid's CMake list lacks the key
    emu::dispatch_all_schedules(k, {d.grid[0], d.grid[1], d.grid[2]}, {d.threads[0], d.threads[1], d.threads[2]},
                                bd.args, schedules);
  }
}

void expect_close(const char* what, const Tensor& got, const Tensor& ref64, DT dt, int64_t reduction_len,
                  bool is_gradient = false) {
  const double err = max_abs_diff(got, ref64);
  const double tol = 2.0 * baseline_error(ref64, dt, reduction_len, is_gradient);
  EXPECT_LE(err, tol) << what << ": max |metal - fp64 reference| = " << err << " exceeds 2x the baseline " << tol / 2;
  const char* names[] = {"f32", "f16", "bf16", "f64", "u8", "i32"};
  printf("MAXERR %s %s %.3g (tol %.3g)\n", names[static_cast<int>(dt)], what, err, tol);
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
  if (m.expect_split || m.forced_splits > 0) {
    ASSERT_EQ(fplan.dispatches.size(), 2u) << fplan.reason;
    EXPECT_EQ(fplan.dispatches[0].pass, mtl::Pass::decode_split) << fplan.reason;
    EXPECT_EQ(fplan.dispatches[1].pass, mtl::Pass::decode_merge);
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
    bd.bind_scratch(fplan.scratch_elements);
    ASSERT_NO_FATAL_FAILURE(run(fplan, bd, seed));
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
    bd.bind_scratch(bplan.scratch_elements);
    bd.bind(FSDPA_BUF_DQ, std::addressof(dq), bp.dq);
    bd.bind(FSDPA_BUF_DK, std::addressof(dk), bp.dk);
    bd.bind(FSDPA_BUF_DV, std::addressof(dv), bp.dv);
    ASSERT_NO_FATAL_FAILURE(run(bplan, bd, seed + 1));
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
