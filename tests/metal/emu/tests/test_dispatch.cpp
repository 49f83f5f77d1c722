// Dispatch, builtins, barriers, schedules, specialisation.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "fsdpa_msl_emu/emu.h"

using namespace fsdpa_emu;

namespace {
struct ReduceParams {
  uint32_t n;
};
}  // namespace

TEST(Dispatch, RegistryListsKernels) {
  auto ks = registered_kernels();
  EXPECT_NE(std::find(ks.begin(), ks.end(), "emu_k_reduce/reduce_sum"), ks.end());
  EXPECT_THROW(Kernel::find("emu_k_reduce", "no_such_kernel"), EmuError);
}

TEST(Dispatch, ReductionWithBarriersAllSchedules) {
  const uint32_t n = 5000, groups = 3, threads = 256;
  std::vector<float> in(n);
  std::mt19937 rng(7);
  for (auto& v : in) v = float(int(rng() % 100) - 50) / 4.0f;  // exactly summable
  Args args;
  args.set(0, in).set(1, std::vector<float>(groups, -1.0f)).set_bytes(2, ReduceParams{n});
  dispatch_all_schedules(Kernel::find("emu_k_reduce", "reduce_sum"), {groups, 1, 1}, {threads, 1, 1}, args);
  auto out = args.get<float>(1);
  const double total = std::accumulate(in.begin(), in.end(), 0.0);
  EXPECT_EQ(double(out[0]) + out[1] + out[2], total);
  // each group's partial, computed on the host (grid-stride loop of the kernel)
  for (uint32_t g = 0; g < groups; ++g) {
    double part = 0;
    for (uint32_t i = 0; i < n; ++i)
      if ((i % (threads * groups)) / threads == g) part += in[i];
    EXPECT_EQ(double(out[g]), part) << "group " << g;
  }
}

TEST(Dispatch, Builtins2D) {
  const Dim3 grid{3, 2, 1}, tg{8, 6, 1};  // 48 threads: one full and one partial simdgroup
  const uint32_t total = uint32_t(grid.count() * tg.count());
  Args args;
  args.set(0, std::vector<uint32_t>(total * 10, 0xdeadbeef));
  dispatch(Kernel::find("emu_k_reduce", "builtins"), grid, tg, args, Schedule::shuffled(5));
  auto o = args.get<uint32_t>(0);
  for (uint32_t gy = 0; gy < grid.y; ++gy)
    for (uint32_t gx = 0; gx < grid.x; ++gx)
      for (uint32_t ty = 0; ty < tg.y; ++ty)
        for (uint32_t tx = 0; tx < tg.x; ++tx) {
          const uint32_t tindex = tx + ty * tg.x;
          const uint32_t global = (gx + gy * grid.x) * uint32_t(tg.count()) + tindex;
          const uint32_t* r = &o[global * 10];
          EXPECT_EQ(r[0], gx);
          EXPECT_EQ(r[1], gy);
          EXPECT_EQ(r[2], tx);
          EXPECT_EQ(r[3], ty);
          EXPECT_EQ(r[4], gx * tg.x + tx);
          EXPECT_EQ(r[5], gy * tg.y + ty);
          EXPECT_EQ(r[6], tindex % 32);
          EXPECT_EQ(r[7], tindex / 32);
          EXPECT_EQ(r[8], 2u);
          EXPECT_EQ(r[9], 32u);
        }
}

TEST(Dispatch, MissingBufferIsAnError) {
  Args args;
  args.set(0, std::vector<float>(4));
  EXPECT_THROW(dispatch(Kernel::find("emu_k_reduce", "reduce_sum"), {1, 1, 1}, {32, 1, 1}, args), EmuError);
}

TEST(Dispatch, ConstantBufferTooSmallIsAnError) {
  Args args;
  args.set(0, std::vector<float>(4)).set(1, std::vector<float>(1)).set_raw(2, std::vector<std::byte>(2));
  try {
    dispatch(Kernel::find("emu_k_reduce", "reduce_sum"), {1, 1, 1}, {32, 1, 1}, args);
    FAIL() << "expected EmuError";
  } catch (const EmuError& e) {
    EXPECT_NE(std::string(e.what()).find("buffer(2)"), std::string::npos) << e.what();
  }
}

TEST(Dispatch, TooManyThreadsPerThreadgroup) {
  Args args;
  args.set(0, std::vector<uint32_t>(2048 * 10));
  EXPECT_THROW(dispatch(Kernel::find("emu_k_reduce", "builtins"), {1, 1, 1}, {2048, 1, 1}, args), EmuError);
}

TEST(Dispatch, TwoSpecialisationsOfOneSource) {
  std::vector<int> in = {0, 1, 2, 3, 4, 5, 6, 7};
  Args a, b;
  a.set(0, in).set(1, std::vector<int>(in.size()));
  b = a;
  dispatch(Kernel::find("emu_k_spec_a", "affine"), {1, 1, 1}, {8, 1, 1}, a);
  dispatch(Kernel::find("emu_k_spec_b", "affine"), {1, 1, 1}, {8, 1, 1}, b);
  auto ra = a.get<int>(1), rb = b.get<int>(1);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(ra[i], 2 * i + 1);
    EXPECT_EQ(rb[i], 3 * i - 5);
  }
}

TEST(Dispatch, ScheduleNames) {
  auto s = standard_schedules();
  ASSERT_GE(s.size(), 4u);
  EXPECT_EQ(s[0].name(), "in_order");
  EXPECT_EQ(s[1].name(), "reversed");
}
