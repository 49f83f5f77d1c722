// The error message through a caller's buffer (the _msg variants): the same
// text as fsdpa_last_error(), readable from any thread, "" on success,
// truncated safely; and the header's claims about fsdpa_last_error().
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "attention_case.h"

namespace fsdpa_test {
namespace {

Case small_case() {
  Case c;
  c.B = 1; c.Hq = 2; c.Hk = 1; c.Sq = 5; c.Sk = 7; c.D = 8; c.Dv = 8;
  return c;
}

// One problem and its outputs, for forward, backward and merge calls.
struct Call {
  Problem pr{small_case()};
  Tensor out{{1, 2, 5, 8}, DT::f32}, lse{{1, 2, 5}, DT::f32};
  Tensor dq{{1, 2, 5, 8}, DT::f32}, dk{{1, 1, 7, 8}, DT::f32}, dv{{1, 1, 7, 8}, DT::f32};
  Tensor keep{{1, 2, 5, 7}, DT::u8};
  char msg[FSDPA_MAX_MESSAGE_SIZE];

  fsdpa_status forward() {
    return fsdpa_forward_msg(&pr.p, &pr.q, &pr.k, &pr.v, &out, &lse, nullptr, msg, sizeof msg);
  }
};

TEST(ErrorMessage, FailureFillsBufferWithTheLastErrorText) {
  Call c;
  c.pr.p.window_left = -7;
  ASSERT_EQ(c.forward(), FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(c.msg).find("window_left: -7 is negative"), std::string::npos) << c.msg;
  EXPECT_STREQ(c.msg, fsdpa_last_error());
}

TEST(ErrorMessage, SuccessWritesEmptyString) {
  Call c;
  strcpy(c.msg, "stale text from an earlier call");
  ASSERT_EQ(c.forward(), FSDPA_OK) << c.msg;
  EXPECT_STREQ(c.msg, "");
  EXPECT_STREQ(fsdpa_last_error(), "");  // a successful call clears it too
}

// A goroutine or async task may resume on another OS thread after the call:
// the buffer still holds the call's message, fsdpa_last_error() there does
// not, and a later call elsewhere does not overwrite it.
TEST(ErrorMessage, BufferIsIndependentOfTheReadingThread) {
  Call c;
  c.pr.p.window_right = -3;
  fsdpa_status s = FSDPA_OK;
  std::thread caller([&] { s = c.forward(); });
  caller.join();
  ASSERT_EQ(s, FSDPA_ERROR_INVALID_ARGUMENT);
  std::string other_thread_last;
  std::thread reader([&] {
    Call ok;
    ASSERT_EQ(fsdpa_forward(&ok.pr.p, &ok.pr.q, &ok.pr.k, &ok.pr.v, &ok.out, &ok.lse, nullptr),
              FSDPA_OK);
    other_thread_last = fsdpa_last_error();
  });
  reader.join();
  EXPECT_EQ(other_thread_last, "");
  EXPECT_NE(std::string(c.msg).find("window_right: -3 is negative"), std::string::npos) << c.msg;
}

TEST(ErrorMessage, TruncatesToTheBufferAndAcceptsNull) {
  Call c;
  c.pr.p.window_left = -7;
  char small[8];
  memset(small, 'x', sizeof small);
  ASSERT_EQ(fsdpa_forward_msg(&c.pr.p, &c.pr.q, &c.pr.k, &c.pr.v, &c.out, &c.lse, nullptr, small,
                              sizeof small),
            FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(std::string(small), std::string(fsdpa_last_error()).substr(0, sizeof small - 1));
  char untouched = 'x';
  EXPECT_EQ(fsdpa_forward_msg(&c.pr.p, &c.pr.q, &c.pr.k, &c.pr.v, &c.out, &c.lse, nullptr,
                              &untouched, 0),
            FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(untouched, 'x');
  EXPECT_EQ(fsdpa_forward_msg(&c.pr.p, &c.pr.q, &c.pr.k, &c.pr.v, &c.out, &c.lse, nullptr,
                              nullptr, 64),
            FSDPA_ERROR_INVALID_ARGUMENT);
}

// Every status-returning call has a _msg variant giving the same status and
// the same message as the plain call followed by fsdpa_last_error().
TEST(ErrorMessage, EveryVariantMatchesThePlainCall) {
  Call c, ok;
  c.pr.p.window_left = -2;  // rejected by every call that reads params
  const fsdpa_params* p = &c.pr.p;
  Problem& pr = c.pr;
  struct Pair {
    const char* name;
    std::function<fsdpa_status()> plain;
    std::function<fsdpa_status(char*, size_t)> with_msg;
  };
  char plan[256];
  const Pair pairs[] = {
      {"forward", [&] { return fsdpa_forward(p, &pr.q, &pr.k, &pr.v, &c.out, &c.lse, nullptr); },
       [&](char* m, size_t n) {
         return fsdpa_forward_msg(p, &pr.q, &pr.k, &pr.v, &c.out, &c.lse, nullptr, m, n);
       }},
      {"backward",
       [&] {
         return fsdpa_backward(p, &pr.dout, &pr.q, &pr.k, &pr.v, &c.out, &c.lse, &c.dq, &c.dk,
                               &c.dv, nullptr);
       },
       [&](char* m, size_t n) {
         return fsdpa_backward_msg(p, &pr.dout, &pr.q, &pr.k, &pr.v, &c.out, &c.lse, &c.dq, &c.dk,
                                   &c.dv, nullptr, m, n);
       }},
      // lse_b's shape is wrong: merge reads no params.
      {"merge",
       [&] { return fsdpa_merge_attn_states(&c.out, &c.lse, &c.out, &c.dq, &c.out, &c.lse, nullptr); },
       [&](char* m, size_t n) {
         return fsdpa_merge_attn_states_msg(&c.out, &c.lse, &c.out, &c.dq, &c.out, &c.lse, nullptr,
                                            m, n);
       }},
      {"explain",
       [&] {
         return fsdpa_explain(p, 0, nullptr, &pr.q, &pr.k, &pr.v, &c.out, &c.lse, nullptr,
                              nullptr, nullptr, plan, sizeof plan);
       },
       [&](char* m, size_t n) {
         return fsdpa_explain_msg(p, 0, nullptr, &pr.q, &pr.k, &pr.v, &c.out, &c.lse, nullptr,
                                  nullptr, nullptr, plan, sizeof plan, m, n);
       }},
      {"reference_forward",
       [&] { return fsdpa_reference_forward(p, &pr.q, &pr.k, &pr.v, &c.out, &c.lse); },
       [&](char* m, size_t n) {
         return fsdpa_reference_forward_msg(p, &pr.q, &pr.k, &pr.v, &c.out, &c.lse, m, n);
       }},
      {"reference_backward",
       [&] {
         return fsdpa_reference_backward(p, &pr.dout, &pr.q, &pr.k, &pr.v, &c.dq, &c.dk, &c.dv);
       },
       [&](char* m, size_t n) {
         return fsdpa_reference_backward_msg(p, &pr.dout, &pr.q, &pr.k, &pr.v, &c.dq, &c.dk,
                                             &c.dv, m, n);
       }},
      {"dropout_mask", [&] { return fsdpa_dropout_mask(p, &pr.q, &pr.k, &c.keep); },
       [&](char* m, size_t n) { return fsdpa_dropout_mask_msg(p, &pr.q, &pr.k, &c.keep, m, n); }},
  };
  for (const Pair& x : pairs) {
    SCOPED_TRACE(x.name);
    const fsdpa_status plain = x.plain();
    ASSERT_NE(plain, FSDPA_OK);
    const std::string plain_msg = fsdpa_last_error();
    EXPECT_FALSE(plain_msg.empty());
    ASSERT_EQ(ok.forward(), FSDPA_OK);  // clears fsdpa_last_error()
    ASSERT_STREQ(fsdpa_last_error(), "");
    char m[FSDPA_MAX_MESSAGE_SIZE];
    EXPECT_EQ(x.with_msg(m, sizeof m), plain);
    EXPECT_EQ(std::string(m), plain_msg);
    EXPECT_EQ(std::string(fsdpa_last_error()), plain_msg);
  }
}

// The header: "-1 is unbounded, any other negative bound is rejected".
TEST(ErrorMessage, WindowBoundsAsTheHeaderSays) {
  for (int64_t w : {int64_t(-1), int64_t(0), int64_t(3)}) {
    Call c;
    c.pr.p.window_left = w;
    c.pr.p.window_right = w;
    EXPECT_EQ(c.forward(), FSDPA_OK) << w << ": " << c.msg;
  }
  for (int64_t w : {int64_t(-2), int64_t(-7), INT64_MIN}) {
    Call c;
    c.pr.p.window_right = w;
    EXPECT_EQ(c.forward(), FSDPA_ERROR_INVALID_ARGUMENT) << w;
    EXPECT_NE(std::string(c.msg).find("window_right"), std::string::npos) << c.msg;
  }
}

}  // namespace
}  // namespace fsdpa_test
