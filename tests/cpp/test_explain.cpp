// fsdpa_explain: the plan a call would run, with reasons; the same argument
// checks as the call; nothing is written.
#include <gtest/gtest.h>

#include <string>

#include "attention_case.h"

namespace fsdpa_test {
namespace {

struct Small {
  Case c;
  Problem pr;
  Tensor out, lse, dq, dk, dv;
  Small() : c(make_case()), pr(c) {
    out = Tensor({1, 2, 9, 16}, DT::f32);
    lse = Tensor({1, 2, 9}, DT::f32);
    dq = Tensor({1, 2, 9, 16}, DT::f32);
    dk = Tensor({1, 1, 11, 16}, DT::f32);
    dv = Tensor({1, 1, 11, 16}, DT::f32);
  }
  static Case make_case() {
    Case c;
    c.B = 1; c.Hq = 2; c.Hk = 1; c.Sq = 9; c.Sk = 11; c.D = 16; c.Dv = 16;
    return c;
  }
  fsdpa_status explain(int backward, char* buf, size_t size) {
    return fsdpa_explain(&pr.p, backward, backward ? &pr.dout : nullptr, &pr.q, &pr.k, &pr.v,
                         &out, &lse, backward ? &dq : nullptr, backward ? &dk : nullptr,
                         backward ? &dv : nullptr, buf, size);
  }
};

TEST(Explain, NamesBackendFamilyAndReason) {
  Small s;
  for (int backward : {0, 1}) {
    char buf[1024];
    const auto before = s.out.bytes;
    ASSERT_EQ(s.explain(backward, buf, sizeof buf), FSDPA_OK) << fsdpa_last_error();
    const std::string text(buf);
    EXPECT_EQ(text.rfind(backward ? "backend cpu, backward: family " : "backend cpu, forward: family ",
                         0),
              0u)
        << text;
    EXPECT_NE(text.find('\n'), std::string::npos) << text;
    EXPECT_EQ(s.out.bytes, before) << "explain wrote the output";
  }
}

TEST(Explain, TruncatesAndReportsBadArguments) {
  Small s;
  char tiny[8];
  ASSERT_EQ(s.explain(0, tiny, sizeof tiny), FSDPA_OK);
  EXPECT_EQ(std::string(tiny).size(), sizeof tiny - 1);
  s.pr.k = Tensor({1, 1, 11, 15}, DT::f32);  // head dim differs from q's
  char buf[256];
  EXPECT_EQ(s.explain(0, buf, sizeof buf), FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(fsdpa_last_error()).find("k: head dim 15"), std::string::npos)
      << fsdpa_last_error();
  EXPECT_EQ(s.explain(0, nullptr, 0), FSDPA_ERROR_INVALID_ARGUMENT);
}

}  // namespace
}  // namespace fsdpa_test
