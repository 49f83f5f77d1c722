// The CPU backend against the fp64 reference: forward (out, lse) and
// gradients (dq, dk, dv) over sizes, head dims, GQA ratios, dtypes, layouts
// and every kind of mask, alone and combined: the registry's cases for the
// CPU (tests/common/case_registry.cc). Outputs are poisoned (NaN) before
// each run, so an element the kernel does not write fails.
#include <gtest/gtest.h>

#include <memory>

#include "reference_checks.h"
#include "registry_case.h"

namespace fsdpa_test {
namespace {

class CpuVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(CpuVsReference, ForwardAndGradients) {
  const Case& c = GetParam();
  Problem pr(c);
  fsdpa_params& p = pr.p;

  Tensor out = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, c.dt), lse = pr.make_lse();
  out.poison();
  lse.poison();
  ASSERT_EQ(fsdpa_forward(&p, &pr.q, &pr.k, &pr.v, &out, &lse, nullptr), FSDPA_OK)
      << fsdpa_last_error();

  Tensor out64 = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, DT::f64), lse64 = pr.make_lse();
  out64.poison();
  lse64.poison();
  ASSERT_EQ(fsdpa_reference_forward(&p, &pr.q, &pr.k, &pr.v, &out64, &lse64), FSDPA_OK)
      << fsdpa_last_error();
  expect_close("out", out, out64, c.dt, pr.reduction_len());
  expect_close("lse", lse, lse64, DT::f32, pr.reduction_len());

  expect_gradients_match_reference(p, pr, c, out, lse);
}

INSTANTIATE_TEST_SUITE_P(Grid, CpuVsReference,
                         ::testing::ValuesIn(registry_reference_cases(fsdpa_cases::kCpu)),
                         [](const ::testing::TestParamInfo<Case>& i) { return describe(i.param); });

// The backward is bit-reproducible (and so is the forward): the registry's
// determinism cases for the CPU.
class CpuDeterminism : public ::testing::TestWithParam<Case> {};

TEST_P(CpuDeterminism, RepeatedRunsAreBitwiseIdentical) {
  const Case& c = GetParam();
  Problem pr(c);
  pr.p.deterministic = 1;
  Tensor first[4];
  for (int run = 0; run < 3; ++run) {
    Tensor out = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, c.dt), lse = pr.make_lse();
    Tensor dq = pr.make(c.Hq, c.Sq, pr.total_q, c.D, c.dt);
    Tensor dk = pr.make(c.Hk, c.Sk, pr.total_k, c.D, c.dt), dv = pr.make(c.Hk, c.Sk, pr.total_k, c.Dv, c.dt);
    ASSERT_EQ(fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, &lse, nullptr), FSDPA_OK);
    ASSERT_EQ(fsdpa_backward(&pr.p, &pr.dout, &pr.q, &pr.k, &pr.v, &out, &lse, &dq, &dk, &dv, nullptr),
              FSDPA_OK);
    Tensor now[4] = {out, dq, dk, dv};
    for (int i = 0; i < 4; ++i) {
      if (run == 0) first[i] = now[i];
      else EXPECT_EQ(now[i].bytes, first[i].bytes) << "tensor " << i << " differs in run " << run;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Registry, CpuDeterminism,
                         ::testing::ValuesIn(registry_determinism_cases(fsdpa_cases::kCpu)),
                         [](const ::testing::TestParamInfo<Case>& i) { return describe(i.param); });

// Decode shapes take the key-split path; compare with the reference.
TEST(CpuDecode, KeySplitMatchesReference) {
  for (int64_t sq : {1, 8}) {
    Case c;
    c.B = 1; c.Hq = 2; c.Hk = 1; c.Sq = sq; c.Sk = 5000; c.D = 64; c.Dv = 64;
    c.causal = true;
    c.align = FSDPA_ALIGN_BOTTOM_RIGHT;
    Problem pr(c);
    Tensor out({1, 2, sq, 64}, DT::f32), lse({1, 2, sq}, DT::f32);
    Tensor out64({1, 2, sq, 64}, DT::f64), lse64({1, 2, sq}, DT::f32);
    out.poison();
    ASSERT_EQ(fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, &lse, nullptr), FSDPA_OK);
    ASSERT_EQ(fsdpa_reference_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out64, &lse64), FSDPA_OK);
    expect_close("out", out, out64, DT::f32, 5000);
    expect_close("lse", lse, lse64, DT::f32, 5000);
  }
}

}  // namespace
}  // namespace fsdpa_test
