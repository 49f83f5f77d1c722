// GoogleTest checks of a backend's results against the fp64 reference, with
// FlashAttention's rule (error <= 2x a same-precision computation's),
// shared by the CPU grid and the block-sparse tests.
#pragma once

#include <gtest/gtest.h>
#include <stdio.h>

#include <memory>

#include "attention_case.h"

namespace fsdpa_test {

inline void expect_close(const char* what, const Tensor& got, const Tensor& ref64, DT dt,
                         int64_t reduction_len, bool is_gradient = false) {
  const double err = max_abs_diff(got, ref64);
  const double tol = 2.0 * baseline_error(ref64, dt, reduction_len, is_gradient);
  EXPECT_LE(err, tol) << what << ": max |ours - fp64 reference| = " << err
                      << " exceeds 2x the same-precision baseline " << tol / 2;
  // Grep-able line for the closing notes: largest error per dtype.
  const char* names[] = {"f32", "f16", "bf16", "f64", "u8", "i32"};
  printf("MAXERR %s %s %.3g (tol %.3g)\n", names[static_cast<int>(dt)], what, err, tol);
}

// fsdpa_backward (gradients poisoned first) against fsdpa_reference_backward
// for the forward's out and lse.
inline void expect_gradients_match_reference(const fsdpa_params& p, Problem& pr, const Case& c,
                                             Tensor& out, Tensor& lse) {
  Tensor dq = pr.make(c.Hq, c.Sq, pr.total_q, c.D, c.dt);
  Tensor dk = pr.make(c.Hk, c.Sk, pr.total_k, c.D, c.dt);
  Tensor dv = pr.make(c.Hk, c.Sk, pr.total_k, c.Dv, c.dt);
  for (Tensor* t : {std::addressof(dq), std::addressof(dk), std::addressof(dv)}) t->poison();
  ASSERT_EQ(fsdpa_backward(&p, &pr.dout, &pr.q, &pr.k, &pr.v, &out, &lse, &dq, &dk, &dv, nullptr),
            FSDPA_OK)
      << fsdpa_last_error();
  Tensor dq64 = pr.make(c.Hq, c.Sq, pr.total_q, c.D, DT::f64);
  Tensor dk64 = pr.make(c.Hk, c.Sk, pr.total_k, c.D, DT::f64);
  Tensor dv64 = pr.make(c.Hk, c.Sk, pr.total_k, c.Dv, DT::f64);
  ASSERT_EQ(fsdpa_reference_backward(&p, &pr.dout, &pr.q, &pr.k, &pr.v, &dq64, &dk64, &dv64),
            FSDPA_OK)
      << fsdpa_last_error();
  expect_close("dq", dq, dq64, c.dt, pr.reduction_len(), true);
  expect_close("dk", dk, dk64, c.dt, pr.reduction_len(), true);
  expect_close("dv", dv, dv64, c.dt, pr.reduction_len(), true);
}

}  // namespace fsdpa_test
