// The CPU backend against the fp64 reference: forward (out, lse) and
// gradients (dq, dk, dv) over sizes, head dims, GQA ratios, dtypes, layouts
// and every kind of mask, alone and combined. Outputs are poisoned (NaN)
// before each run, so an element the kernel does not write fails.
#include <gtest/gtest.h>

#include <memory>

#include "attention_grid.h"
#include "reference_checks.h"

namespace fsdpa_test {
namespace {

std::vector<Case> make_grid() {
  std::vector<Case> grid;
  const DT dts[] = {DT::f32, DT::f16, DT::bf16};
  std::vector<Shape> shapes = shared_shapes();
  shapes.insert(shapes.end(), {
      {"s37x300_d59_gqa_decode", 2, 4, 2, 37, 300, 59, 59},
      // Decode with <= 16 query rows: K/V read in place (row tails, D < 8
      // vectors, D = 2 blocks of 8 vectors).
      {"s5x300_d59_gqa_inplace", 2, 4, 2, 5, 300, 59, 59},
      {"s1x1000_d80_dv48_inplace", 1, 2, 1, 1, 1000, 80, 48},
      {"s16x130_d256_inplace", 1, 2, 2, 16, 130, 256, 256},
  });
  // Every shape x dtype: plain, and the combination of all features.
  for (const Shape& s : shapes)
    for (DT dt : dts) {
      grid.push_back(case_of(s, dt));
      grid.push_back(with_all_features(case_of(s, dt)));
    }
  // Every feature alone on an odd GQA shape, each dtype.
  for (DT dt : dts) add_feature_cases(grid, case_of(shapes[1], dt));
  // Layouts and band/varlen features on the in-place decode path.
  for (DT dt : dts) {
    auto add = [&](const char* name, auto&& set) {
      Case c = case_of(shapes[11], dt);
      c.name += std::string("_") + name;
      set(c);
      grid.push_back(c);
    };
    add("bshd", [](Case& c) { c.bshd = true; });
    add("varlen", [](Case& c) { c.varlen = true; c.B = 3; });
    add("causal_br_window", [](Case& c) { c.causal = true; c.align = FSDPA_ALIGN_BOTTOM_RIGHT; c.wl = 70; });
    add("empty_rows", [](Case& c) { c.mask = MaskKind::empty_rows; });
    add("dropout", [](Case& c) { c.dropout = 0.3f; });
  }
  return grid;
}

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

INSTANTIATE_TEST_SUITE_P(Grid, CpuVsReference, ::testing::ValuesIn(make_grid()),
                         [](const ::testing::TestParamInfo<Case>& i) { return describe(i.param); });

// The backward is bit-reproducible (and so is the forward).
TEST(CpuDeterminism, RepeatedRunsAreBitwiseIdentical) {
  Case c;
  c.B = 1; c.Hq = 4; c.Hk = 1; c.Sq = 300; c.Sk = 700; c.D = 64; c.Dv = 64;
  c.causal = true;
  c.dropout = 0.1f;
  Problem pr(c);
  pr.p.deterministic = 1;
  Tensor first[4];
  for (int run = 0; run < 3; ++run) {
    Tensor out({1, 4, 300, 64}, DT::f32), lse({1, 4, 300}, DT::f32);
    Tensor dq({1, 4, 300, 64}, DT::f32), dk({1, 1, 700, 64}, DT::f32), dv({1, 1, 700, 64}, DT::f32);
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
