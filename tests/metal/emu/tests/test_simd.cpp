// SIMD-group functions against host-computed expectations.
#include <gtest/gtest.h>

#include <algorithm>

#include "fsdpa_msl_emu/emu.h"

using namespace fsdpa_emu;

TEST(Simd, CollectivesMatchHost) {
  const uint32_t groups = 2, threads = 64, n = groups * threads;
  std::vector<float> in(n);
  for (uint32_t i = 0; i < n; ++i) in[i] = float(int((i * 37) % 91) - 45);  // integers: exact sums
  Args args;
  args.set(0, in).set(1, std::vector<float>(n * 16, -7.0f));
  dispatch_all_schedules(Kernel::find("emu_k_simd", "simd_ops"), {groups, 1, 1}, {threads, 1, 1}, args);
  auto o = args.get<float>(1);
  for (uint32_t g = 0; g < n; g += 32) {
    float sum = 0, mx = -1e9f, mn = 1e9f;
    bool any = false;
    for (uint32_t l = 0; l < 32; ++l) {
      sum += in[g + l];
      mx = std::max(mx, in[g + l]);
      mn = std::min(mn, in[g + l]);
      any = any || in[g + l] > 40.0f;
    }
    float prefix = 0;
    for (uint32_t l = 0; l < 32; ++l) {
      const float* r = &o[(g + l) * 16];
      const float x = in[g + l];
      EXPECT_EQ(r[0], sum);
      EXPECT_EQ(r[1], mx);
      EXPECT_EQ(r[2], mn);
      EXPECT_EQ(r[3], prefix);
      prefix += x;
      EXPECT_EQ(r[4], prefix);
      EXPECT_EQ(r[5], in[g + (l * 7) % 32]);
      EXPECT_EQ(r[6], in[g + (l ^ 5)]);
      EXPECT_EQ(r[7], l + 3 < 32 ? in[g + l + 3] : x) << "shuffle_down keeps the upper lanes' values";
      EXPECT_EQ(r[8], l >= 2 ? in[g + l - 2] : x) << "shuffle_up keeps the lower lanes' values";
      EXPECT_EQ(r[9], in[g + 9]);
      EXPECT_EQ(r[10], mx);
      EXPECT_EQ(r[11], 1.0f);
      EXPECT_EQ(r[12], any ? 1.0f : 0.0f);
      EXPECT_EQ(r[13], 2.0f * sum);
      EXPECT_EQ(r[14], 32.0f);
      EXPECT_EQ(r[15], sum);  // small integers are exact in half
    }
  }
}

TEST(Simd, PartialSimdgroup) {
  const uint32_t threads = 48;  // simdgroup 1 has 16 active lanes
  std::vector<int> in(threads);
  for (uint32_t i = 0; i < threads; ++i) in[i] = int(i) + 1;
  Args args;
  args.set(0, in).set(1, std::vector<int>(threads * 2));
  dispatch_all_schedules(Kernel::find("emu_k_simd", "simd_partial"), {1, 1, 1}, {threads, 1, 1}, args);
  auto o = args.get<int>(1);
  int s0 = 0, s1 = 0;
  for (uint32_t i = 0; i < 32; ++i) s0 += in[i];
  for (uint32_t i = 32; i < 48; ++i) s1 += in[i];
  int p = 0;
  for (uint32_t i = 0; i < threads; ++i) {
    if (i == 32) p = 0;
    EXPECT_EQ(o[i * 2], i < 32 ? s0 : s1) << i;
    EXPECT_EQ(o[i * 2 + 1], p) << i;
    p += in[i];
  }
}

TEST(Simd, ThreadgroupReductionThroughSimdSum) {
  const uint32_t groups = 3, threads = 256;
  std::vector<float> in(groups * threads);
  for (uint32_t i = 0; i < in.size(); ++i) in[i] = float(i % 13);
  Args args;
  args.set(0, in).set(1, std::vector<float>(groups));
  dispatch_all_schedules(Kernel::find("emu_k_simd", "tg_sum_via_simd"), {groups, 1, 1}, {threads, 1, 1}, args);
  auto o = args.get<float>(1);
  for (uint32_t g = 0; g < groups; ++g) {
    float s = 0;
    for (uint32_t i = 0; i < threads; ++i) s += in[g * threads + i];
    EXPECT_EQ(o[g], s);
  }
}
