// The reference itself: hand-checkable cases, and the dropout stream.
#include <gtest/gtest.h>

#include "attention_case.h"

namespace fsdpa_test {
namespace {

// One query, two keys: softmax by hand.
TEST(Reference, TwoKeysByHand) {
  Tensor q({1, 1, 1, 1}, DT::f64), k({1, 1, 2, 1}, DT::f64), v({1, 1, 2, 1}, DT::f64);
  q.set(0, 1.0);
  k.set(0, 1.0); k.set(1, -1.0);
  v.set(0, 3.0); v.set(1, 5.0);
  Tensor out({1, 1, 1, 1}, DT::f64), lse({1, 1, 1}, DT::f32);
  fsdpa_params p;
  fsdpa_params_init(&p);
  p.check_finite = 0;
  ASSERT_EQ(fsdpa_reference_forward(&p, &q, &k, &v, &out, &lse), FSDPA_OK) << fsdpa_last_error();
  const double w0 = exp(1.0) / (exp(1.0) + exp(-1.0));
  EXPECT_NEAR(out.get(0), 3.0 * w0 + 5.0 * (1 - w0), 1e-12);
  EXPECT_NEAR(lse.get(0), log(exp(1.0) + exp(-1.0)), 1e-6);
}

// Top-left vs bottom-right causal with Sq < Sk: row 0 sees 1 vs Sk-Sq+1 keys.
TEST(Reference, CausalAlignments) {
  Tensor q({1, 1, 2, 1}, DT::f64), k({1, 1, 4, 1}, DT::f64), v({1, 1, 4, 1}, DT::f64);
  for (int i = 0; i < 2; ++i) q.set(i, 0.0);  // uniform attention over visible keys
  for (int j = 0; j < 4; ++j) { k.set(j, 0.0); v.set(j, j); }
  fsdpa_params p;
  fsdpa_params_init(&p);
  p.causal = 1;
  Tensor out({1, 1, 2, 1}, DT::f64);
  ASSERT_EQ(fsdpa_reference_forward(&p, &q, &k, &v, &out, nullptr), FSDPA_OK);
  EXPECT_DOUBLE_EQ(out.get(0), 0.0);        // sees key 0
  EXPECT_DOUBLE_EQ(out.get(1), 0.5);        // keys 0, 1
  p.align = FSDPA_ALIGN_BOTTOM_RIGHT;
  ASSERT_EQ(fsdpa_reference_forward(&p, &q, &k, &v, &out, nullptr), FSDPA_OK);
  EXPECT_DOUBLE_EQ(out.get(0), 1.0);        // keys 0..2
  EXPECT_DOUBLE_EQ(out.get(1), 1.5);        // keys 0..3
}

// A row that sees nothing gives 0 and lse = -inf, never NaN.
TEST(Reference, EmptyRowIsZero) {
  Case c;
  c.Sq = 5; c.Sk = 3; c.causal = true; c.align = FSDPA_ALIGN_BOTTOM_RIGHT;  // rows 0, 1 empty
  Problem pr(c);
  Tensor out({1, 1, 5, 32}, DT::f64), lse({1, 1, 5}, DT::f32);
  ASSERT_EQ(fsdpa_reference_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, &lse), FSDPA_OK);
  for (int d = 0; d < 32; ++d) EXPECT_EQ(out.get(d), 0.0);
  EXPECT_TRUE(std::isinf(lse.get(0)) && lse.get(0) < 0);
  EXPECT_TRUE(std::isfinite(lse.get(2)));
}

// The realised drop rate is within 1% of p, and the stream depends on seed
// and offset.
TEST(Dropout, RateAndStream) {
  for (float prob : {0.1f, 0.5f, 0.9f}) {
    Case c;
    c.B = 2; c.Hq = 3; c.Sq = 200; c.Sk = 300;
    Problem pr(c);
    pr.p.dropout_p = prob;
    Tensor keep({2, 3, 200, 300}, DT::u8);
    ASSERT_EQ(fsdpa_dropout_mask(&pr.p, &pr.q, &pr.k, &keep), FSDPA_OK) << fsdpa_last_error();
    double kept = 0;
    for (int64_t i = 0; i < keep.numel(); ++i) kept += keep.get(i);
    EXPECT_NEAR(1.0 - kept / keep.numel(), prob, 0.01);
    Tensor keep2 = keep;
    pr.p.offset += 1;
    ASSERT_EQ(fsdpa_dropout_mask(&pr.p, &pr.q, &pr.k, &keep2), FSDPA_OK);
    EXPECT_NE(keep.bytes, keep2.bytes);
  }
}

}  // namespace
}  // namespace fsdpa_test
