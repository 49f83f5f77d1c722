// Every argument wrong in turn: the call returns an error status and a
// message naming the argument; nothing crashes, nothing is written.
#include <gtest/gtest.h>

#include <functional>
#include <memory>

#include "attention_case.h"

namespace fsdpa_test {
namespace {

struct Args {
  Case c;
  Problem pr;
  Tensor out, lse, dq, dk, dv;
  Args() : c(make_case()), pr(c) {
    out = Tensor({2, 4, 9, 8}, DT::f32);
    lse = Tensor({2, 4, 9}, DT::f32);
    dq = Tensor({2, 4, 9, 16}, DT::f32);
    dk = Tensor({2, 2, 11, 16}, DT::f32);
    dv = Tensor({2, 2, 11, 8}, DT::f32);
  }
  static Case make_case() {
    Case c;
    c.B = 2; c.Hq = 4; c.Hk = 2; c.Sq = 9; c.Sk = 11; c.D = 16; c.Dv = 8;
    return c;
  }
  fsdpa_status forward() { return fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, &lse, nullptr); }
  fsdpa_status backward() {
    return fsdpa_backward(&pr.p, &pr.dout, &pr.q, &pr.k, &pr.v, &out, &lse, &dq, &dk, &dv, nullptr);
  }
};

struct BadCase {
  const char* name;
  std::function<void(Args&)> corrupt;
  const char* expect_in_message;
  fsdpa_status expect_status = FSDPA_ERROR_INVALID_ARGUMENT;
  bool backward = false;
};

void set_shape(Tensor& t, std::vector<int64_t> s) {
  t = Tensor(s, t.dtype);
}

const BadCase kBad[] = {
    {"q_rank", [](Args& a) { set_shape(a.pr.q, {2, 4, 9}); }, "q: expected rank 4"},
    {"k_head_dim", [](Args& a) { set_shape(a.pr.k, {2, 2, 11, 15}); }, "k: head dim 15"},
    {"gqa_ratio", [](Args& a) { set_shape(a.pr.k, {2, 3, 11, 16}); set_shape(a.pr.v, {2, 3, 11, 8}); }, "multiple of key/value heads"},
    {"v_seq", [](Args& a) { set_shape(a.pr.v, {2, 2, 10, 8}); }, "v: size of dim 2"},
    {"k_batch", [](Args& a) { set_shape(a.pr.k, {1, 2, 11, 16}); }, "k: size of dim 0"},
    {"out_shape", [](Args& a) { set_shape(a.out, {2, 4, 9, 9}); }, "out: size of the last dim"},
    {"lse_shape", [](Args& a) { set_shape(a.lse, {2, 4, 8}); }, "lse: size of dim 2"},
    {"lse_dtype", [](Args& a) { a.lse = Tensor({2, 4, 9}, DT::f16); }, "lse: dtype must be float32"},
    {"dtype_mix", [](Args& a) { a.pr.k = Tensor({2, 2, 11, 16}, DT::bf16); }, "k: dtype bfloat16 differs"},
    {"dtype_int", [](Args& a) { a.pr.q = Tensor({2, 4, 9, 16}, DT::i32); }, "q: unsupported dtype"},
    {"device_mix", [](Args& a) { a.pr.v.dl.device = {kDLCUDA, 0}; }, "v: is on device cuda:0"},
    {"head_dim_0", [](Args& a) { set_shape(a.pr.q, {2, 4, 9, 0}); set_shape(a.pr.k, {2, 2, 11, 0}); }, "q: head dim 0 is outside"},
    {"head_dim_300", [](Args& a) { set_shape(a.pr.q, {2, 4, 9, 300}); set_shape(a.pr.k, {2, 2, 11, 300}); }, "q: head dim 300 is outside"},
    {"window_negative", [](Args& a) { a.pr.p.window_left = -5; }, "window_left: -5 is negative"},
    {"dropout_range", [](Args& a) { a.pr.p.dropout_p = 1.0f; }, "dropout_p"},
    {"softcap_negative", [](Args& a) { a.pr.p.softcap = -1.0f; }, "softcap"},
    {"scale_inf", [](Args& a) { a.pr.p.scale = INFINITY; }, "scale: must be finite"},
    {"align_bad", [](Args& a) { a.pr.p.align = 7; }, "align: 7"},
    {"params_size", [](Args& a) { a.pr.p.struct_size = 8; }, "params: struct_size"},
    {"mask_broadcast", [](Args& a) { a.pr.mask = Tensor({2, 1, 9, 5}, DT::u8); a.pr.p.mask = &a.pr.mask; }, "mask: size 5 of dim 3 is not broadcastable"},
    {"mask_dtype", [](Args& a) { a.pr.mask = Tensor({9, 11}, DT::i32); a.pr.p.mask = &a.pr.mask; }, "mask: a float mask must be float32"},
    {"alibi_shape", [](Args& a) { a.pr.alibi = Tensor({3}, DT::f32); a.pr.p.alibi_slopes = &a.pr.alibi; }, "alibi_slopes: size of dim 0"},
    {"null_q", [](Args& a) { a.pr.q.dl.data = nullptr; }, "q: data is NULL"},
    {"size_past_int32", [](Args& a) { a.pr.q.shape[2] = int64_t(1) << 33; a.pr.q.sync(); }, "exceeds the 32-bit index limit"},
    {"out_stride0", [](Args& a) { a.out.strides[2] = 0; }, "out: stride 0"},
    {"nan_in_q", [](Args& a) { a.pr.q.set(17, NAN); }, "q: contains a non-finite value", FSDPA_ERROR_NONFINITE_INPUT},
    {"inf_in_v", [](Args& a) { a.pr.v.set(3, INFINITY); }, "v: contains a non-finite value", FSDPA_ERROR_NONFINITE_INPUT},
    // -inf in k would only mask its score; it must still be reported.
    {"neg_inf_in_k", [](Args& a) { a.pr.k.set(40, -INFINITY); }, "k: contains a non-finite value", FSDPA_ERROR_NONFINITE_INPUT},
    {"nan_in_v_last_key", [](Args& a) { a.pr.v.set(2 * 2 * 11 * 8 - 1, NAN); }, "v: contains a non-finite value", FSDPA_ERROR_NONFINITE_INPUT},
    {"varlen_half", [](Args& a) { a.pr.cu_q = Tensor({3}, DT::i32); a.pr.p.cu_seqlens_q = &a.pr.cu_q; }, "varlen needs both"},
    {"no_backend", [](Args& a) { for (Tensor* t : {std::addressof(a.pr.q), std::addressof(a.pr.k), std::addressof(a.pr.v), std::addressof(a.out), std::addressof(a.lse)}) t->dl.device = {kDLROCM, 0}; }, "no backend for DLPack device type", FSDPA_ERROR_DEVICE},
    {"bwd_lse_missing", [](Args& a) { a.lse = Tensor({2, 4}, DT::f32); }, "lse: expected rank 3", FSDPA_ERROR_INVALID_ARGUMENT, true},
    {"bwd_dk_shape", [](Args& a) { set_shape(a.dk, {2, 4, 11, 16}); }, "dk: size of dim 1", FSDPA_ERROR_INVALID_ARGUMENT, true},
    {"bwd_dout_dtype", [](Args& a) { a.pr.dout = Tensor({2, 4, 9, 8}, DT::f16); }, "dout: dtype float16 differs", FSDPA_ERROR_INVALID_ARGUMENT, true},
    {"bwd_nan_dout", [](Args& a) { a.pr.dout.set(5, NAN); }, "dout: contains a non-finite value", FSDPA_ERROR_NONFINITE_INPUT, true},
};

class BadInput : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadInput, ReturnsErrorNamingTheArgument) {
  const BadCase& bc = GetParam();
  Args a;
  if (bc.backward) ASSERT_EQ(a.forward(), FSDPA_OK) << fsdpa_last_error();
  bc.corrupt(a);
  a.out.poison();
  const std::vector<uint8_t> before = a.out.bytes;
  const fsdpa_status s = bc.backward ? a.backward() : a.forward();
  EXPECT_EQ(s, bc.expect_status) << fsdpa_last_error();
  EXPECT_NE(std::string(fsdpa_last_error()).find(bc.expect_in_message), std::string::npos)
      << "message: " << fsdpa_last_error();
  // Argument errors are found before any work; NaN/Inf while reading the data.
  if (!bc.backward && bc.expect_status != FSDPA_ERROR_NONFINITE_INPUT)
    EXPECT_EQ(a.out.bytes, before) << "a rejected call wrote its output";
}

INSTANTIATE_TEST_SUITE_P(EveryArgument, BadInput, ::testing::ValuesIn(kBad),
                         [](const ::testing::TestParamInfo<BadCase>& i) { return std::string(i.param.name); });

TEST(BadInput, NullPointersDoNotCrash) {
  Args a;
  EXPECT_EQ(fsdpa_forward(nullptr, &a.pr.q, &a.pr.k, &a.pr.v, &a.out, nullptr, nullptr),
            FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(fsdpa_forward(&a.pr.p, nullptr, &a.pr.k, &a.pr.v, &a.out, nullptr, nullptr),
            FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(fsdpa_last_error()).find("q: is NULL"), std::string::npos);
  EXPECT_EQ(fsdpa_backward(&a.pr.p, nullptr, &a.pr.q, &a.pr.k, &a.pr.v, &a.out, &a.lse, &a.dq,
                           &a.dk, &a.dv, nullptr),
            FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(fsdpa_last_error()).find("dout: is NULL"), std::string::npos);
}

TEST(BadInput, VarlenOffsetsMustIncrease) {
  Case c;
  c.B = 2; c.Hq = 1; c.Sq = 8; c.Sk = 8; c.varlen = true;
  c.Sq = 40; c.Sk = 40;
  Problem pr(c);
  pr.cu_k.set(1, 30);
  pr.cu_k.set(2, 10);  // decreasing
  Tensor out({pr.total_q, 1, 32}, DT::f32);
  EXPECT_EQ(fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, nullptr, nullptr),
            FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(fsdpa_last_error()).find("cu_seqlens_k: not non-decreasing"),
            std::string::npos)
      << fsdpa_last_error();
}

TEST(Api, VersionAndBackends) {
  EXPECT_STREQ(fsdpa_version(), "0.1.0");
  EXPECT_NE(std::string(fsdpa_backends()).find("cpu"), std::string::npos);
  EXPECT_EQ(fsdpa_device_available(kDLCPU), 1);
  EXPECT_EQ(fsdpa_device_available(kDLROCM), 0);
}

}  // namespace
}  // namespace fsdpa_test
