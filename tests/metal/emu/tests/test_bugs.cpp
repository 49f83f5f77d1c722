// Deliberately buggy kernels: the harness must report each bug, with the
// kernel name and thread ids in the message.
#include <gtest/gtest.h>

#include <iostream>

#include "fsdpa_msl_emu/emu.h"

using namespace fsdpa_emu;

namespace {
// Runs `f`, which must throw EmuError; returns its message.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const EmuError& e) {
    std::cout << "  reported: " << e.what() << "\n";
    return e.what();
  }
  ADD_FAILURE() << "no EmuError thrown";
  return {};
}
bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }
Kernel bug(const char* name) { return Kernel::find("emu_k_bugs", name); }
}  // namespace

Options no_race_detector() {
  Options o;
  o.detect_threadgroup_races = false;
  return o;
}

TEST(Bugs, MissingBarrierIsADataRace) {
  std::vector<float> in(256);
  for (int i = 0; i < 256; ++i) in[i] = float(i);
  for (const Schedule& s : standard_schedules()) {
    Args args;
    args.set(0, in).set(1, std::vector<float>(1));
    const std::string e = error_of([&] { dispatch(bug("reduce_missing_barrier"), {1, 1, 1}, {256, 1, 1}, args, s); });
    EXPECT_TRUE(has(e, "data race on threadgroup memory partial[")) << e;
    EXPECT_TRUE(has(e, "emu_k_bugs/reduce_missing_barrier")) << e;
  }
}

TEST(Bugs, MissingBarrierMakesSchedulesDisagree) {
  // The same bug found the other way: with the race detector off, each
  // schedule runs without error but the results differ between schedules.
  std::vector<float> in(256);
  for (int i = 0; i < 256; ++i) in[i] = float(i);
  Args args;
  args.set(0, in).set(1, std::vector<float>(1));
  for (const Schedule& s : standard_schedules()) {
    Args a = args;
    EXPECT_NO_THROW(dispatch(bug("reduce_missing_barrier"), {1, 1, 1}, {256, 1, 1}, a, s, no_race_detector())) << s.name();
  }
  const std::string e = error_of([&] {
    dispatch_all_schedules(bug("reduce_missing_barrier"), {1, 1, 1}, {256, 1, 1}, args, standard_schedules(),
                           no_race_detector());
  });
  EXPECT_TRUE(has(e, "results depend on the schedule")) << e;
  EXPECT_TRUE(has(e, "emu_k_bugs/reduce_missing_barrier")) << e;
  EXPECT_TRUE(has(e, "buffer(1)")) << e;
}

TEST(Bugs, CorrectReductionAgreesAcrossSchedules) {
  // The fixed kernel (emu_k_reduce/reduce_sum) is the control for the test above.
  std::vector<float> in(256, 1.0f);
  Args args;
  struct P {
    uint32_t n;
  };
  args.set(0, in).set(1, std::vector<float>(1)).set_bytes(2, P{256});
  EXPECT_NO_THROW(dispatch_all_schedules(Kernel::find("emu_k_reduce", "reduce_sum"), {1, 1, 1}, {256, 1, 1}, args));
  EXPECT_EQ(args.get<float>(1)[0], 256.0f);
}

TEST(Bugs, LostUpdateNeedsPreemption) {
  // Without preemption every thread's read-modify-write is atomic...
  for (const Schedule& s : {Schedule::in_order(), Schedule::reversed(), Schedule::round_robin(), Schedule::shuffled(9)}) {
    Args a;
    a.set(0, std::vector<uint32_t>(1));
    dispatch(bug("lost_update_race"), {1, 1, 1}, {256, 1, 1}, a, s, no_race_detector());
    EXPECT_EQ(a.get<uint32_t>(0)[0], 256u) << s.name();
  }
  // ...the preempting schedules interleave reads and writes and lose updates.
  Args args;
  args.set(0, std::vector<uint32_t>(1));
  const std::string e = error_of([&] {
    dispatch_all_schedules(bug("lost_update_race"), {1, 1, 1}, {256, 1, 1}, args, standard_schedules(),
                           no_race_detector());
  });
  EXPECT_TRUE(has(e, "results depend on the schedule")) << e;
  EXPECT_TRUE(has(e, "preempt")) << e;
}

TEST(Bugs, LostUpdateIsADataRace) {
  Args args;
  args.set(0, std::vector<uint32_t>(1));
  const std::string e = error_of([&] { dispatch(bug("lost_update_race"), {1, 1, 1}, {256, 1, 1}, args); });
  EXPECT_TRUE(has(e, "data race on threadgroup memory counter[0]")) << e;
}

TEST(Bugs, BarrierWithoutThreadgroupMemFlag) {
  Args args;
  args.set(0, std::vector<float>(64));
  const std::string e = error_of([&] { dispatch(bug("barrier_without_threadgroup_flag"), {1, 1, 1}, {64, 1, 1}, args); });
  EXPECT_TRUE(has(e, "data race on threadgroup memory tile[")) << e;
}

TEST(Bugs, ExchangeThroughThreadgroupMemory) {
  for (uint32_t mode = 0; mode < 4; ++mode) {
    Args args;
    args.set(0, std::vector<float>(64)).set_bytes(1, mode);
    const bool racy = mode == 0 || mode == 2;
    if (racy) {
      // reported whichever thread of a pair runs first (read-after-write or write-after-read)
      for (const Schedule& sch : standard_schedules()) {
        Args a = args;
        const std::string e = error_of([&] { dispatch(bug("exchange"), {1, 1, 1}, {64, 1, 1}, a, sch); });
        EXPECT_TRUE(has(e, "data race on threadgroup memory tile[")) << "mode " << mode << ": " << e;
      }
    } else {
      EXPECT_NO_THROW(dispatch_all_schedules(bug("exchange"), {1, 1, 1}, {64, 1, 1}, args)) << "mode " << mode;
      auto o = args.get<float>(0);
      for (uint32_t t = 0; t < 64; ++t) EXPECT_EQ(o[t], float(mode == 1 ? (t ^ 1u) : (t ^ 32u)));
    }
  }
}

TEST(Bugs, RaceBetweenThreadgroupsOnDeviceMemory) {
  Args args;
  args.set(0, std::vector<uint32_t>(1));
  const std::string e = error_of([&] { dispatch_all_schedules(bug("tg_write_race"), {8, 1, 1}, {32, 1, 1}, args); });
  EXPECT_TRUE(has(e, "results depend on the schedule")) << e;
}

TEST(Bugs, GemmWithoutSecondBarrierRaces) {
  const uint32_t n = 128;
  std::vector<msl::half> A(n * n), B(n * n);
  for (uint32_t i = 0; i < n * n; ++i) {
    A[i] = msl::half(float(i % 7) - 3.0f);
    B[i] = msl::half(float(i % 5) - 2.0f);
  }
  Args args;
  args.set(0, A).set(1, B).set(2, std::vector<float>(n * n));
  const Kernel k = Kernel::find("emu_k_gemm_racy", "gemm");
  // found by the race detector under any single schedule...
  Args a = args;
  const std::string e1 = error_of([&] { dispatch(k, {2, 2, 1}, {128, 1, 1}, a); });
  EXPECT_TRUE(has(e1, "data race on threadgroup memory")) << e1;
  // ...and, without it, by comparing schedules
  const std::string e = error_of([&] {
    dispatch_all_schedules(k, {2, 2, 1}, {128, 1, 1}, args, standard_schedules(), no_race_detector());
  });
  EXPECT_TRUE(has(e, "results depend on the schedule")) << e;
}

TEST(Bugs, DivergentSimdSum) {
  Args args;
  args.set(0, std::vector<float>(64));
  const std::string e = error_of([&] { dispatch(bug("divergent_simd_sum"), {1, 1, 1}, {64, 1, 1}, args); });
  EXPECT_TRUE(has(e, "divergent")) << e;
  EXPECT_TRUE(has(e, "simd_sum")) << e;
  EXPECT_TRUE(has(e, "emu_k_bugs/divergent_simd_sum")) << e;
  EXPECT_TRUE(has(e, "lane")) << e;
  EXPECT_TRUE(has(e, "bugs.metal")) << e;  // source location of the call
}

TEST(Bugs, DivergentSimdSumUnderEverySchedule) {
  for (const Schedule& s : standard_schedules()) {
    Args args;
    args.set(0, std::vector<float>(128));
    const std::string e = error_of([&] { dispatch(bug("divergent_simd_sum"), {2, 1, 1}, {64, 1, 1}, args, s); });
    EXPECT_TRUE(has(e, "divergent")) << s.name() << ": " << e;
  }
}

TEST(Bugs, DivergentBarrier) {
  for (const Schedule& s : standard_schedules()) {
    Args args;
    args.set(0, std::vector<float>(64));
    const std::string e = error_of([&] { dispatch(bug("divergent_barrier"), {1, 1, 1}, {64, 1, 1}, args, s); });
    EXPECT_TRUE(has(e, "divergent threadgroup_barrier")) << s.name() << ": " << e;
    EXPECT_TRUE(has(e, "emu_k_bugs/divergent_barrier")) << e;
    EXPECT_TRUE(has(e, "thread")) << e;
  }
}

TEST(Bugs, MismatchedBarriers) {
  Args args;
  args.set(0, std::vector<float>(64));
  const std::string e = error_of([&] { dispatch(bug("mismatched_barriers"), {1, 1, 1}, {64, 1, 1}, args); });
  EXPECT_TRUE(has(e, "divergent threadgroup_barrier")) << e;
}

TEST(Bugs, SimdCollectiveVersusBarrierDeadlock) {
  Args args;
  args.set(0, std::vector<float>(64));
  const std::string e = error_of([&] { dispatch(bug("simd_vs_barrier"), {1, 1, 1}, {64, 1, 1}, args); });
  EXPECT_TRUE(has(e, "divergent")) << e;
  EXPECT_TRUE(has(e, "threadgroup_barrier")) << e;
  EXPECT_TRUE(has(e, "simd_max")) << e;
}

TEST(Bugs, OutOfBoundsThreadgroupStore) {
  Args args;
  args.set(0, std::vector<float>(64));
  const std::string e = error_of([&] { dispatch(bug("oob_threadgroup_store"), {1, 1, 1}, {64, 1, 1}, args); });
  EXPECT_TRUE(has(e, "out-of-bounds threadgroup memory access tile[64]")) << e;
  EXPECT_TRUE(has(e, "index 63")) << e;  // the offending thread
}

TEST(Bugs, OutOfBoundsThreadgroupPointerRead) {
  Args args;
  args.set(0, std::vector<float>(64));
  const std::string e = error_of([&] { dispatch(bug("oob_threadgroup_pointer_read"), {1, 1, 1}, {64, 1, 1}, args); });
  EXPECT_TRUE(has(e, "out-of-bounds threadgroup memory access tile[-")) << e;
}

TEST(Bugs, UninitialisedThreadgroupRead) {
  Args args;
  args.set(0, std::vector<float>(64));
  const std::string e = error_of([&] { dispatch(bug("uninitialised_threadgroup_read"), {1, 1, 1}, {64, 1, 1}, args); });
  EXPECT_TRUE(has(e, "uninitialised threadgroup memory tile[")) << e;
}

TEST(Bugs, ThreadgroupMemoryLimit) {
  Args args;
  args.set(0, std::vector<float>(64));
  const std::string e = error_of([&] { dispatch(bug("too_much_threadgroup_memory"), {1, 1, 1}, {64, 1, 1}, args); });
  EXPECT_TRUE(has(e, "exceeds the limit")) << e;
}

TEST(Bugs, NonUniformMatrixLoad) {
  Args args;
  args.set(0, std::vector<float>(128)).set(1, std::vector<float>(64));
  const std::string e = error_of([&] { dispatch(bug("non_uniform_matrix_load"), {1, 1, 1}, {32, 1, 1}, args); });
  EXPECT_TRUE(has(e, "simdgroup_load")) << e;
  EXPECT_TRUE(has(e, "lane 3")) << e;
}

TEST(Bugs, NonUniformShuffleMask) {
  Args args;
  args.set(0, std::vector<float>(32));
  const std::string e = error_of([&] { dispatch(bug("non_uniform_shuffle_mask"), {1, 1, 1}, {32, 1, 1}, args); });
  EXPECT_TRUE(has(e, "simd_shuffle_xor: the mask/delta/lane argument must be the same for all lanes")) << e;
  EXPECT_TRUE(has(e, "lane 16 passes 2")) << e;
}

TEST(Bugs, ShuffleFromInactiveLane) {
  Args args;
  args.set(0, std::vector<float>(48));
  const std::string e = error_of([&] { dispatch(bug("shuffle_inactive_lane"), {1, 1, 1}, {48, 1, 1}, args); });
  EXPECT_TRUE(has(e, "not an active lane")) << e;
}

// Out-of-bounds device accesses kill the process: under ASan through its
// report on the exactly sized buffer, otherwise through the fault handler on
// the guard page after the buffer, which names the kernel, thread and buffer.
#if defined(__SANITIZE_ADDRESS__)
constexpr const char* kOobStore = "heap-buffer-overflow";
constexpr const char* kOobRead = "heap-buffer-overflow";
#else
constexpr const char* kOobStore =
    "kernel 'emu_k_bugs/oob_device_store', threadgroup \\(0,0,0\\), thread \\(63,0,0\\).*out-of-bounds device "
    "memory access to \\[\\[buffer\\(0\\)\\]\\] of 256 bytes at byte offset 256";
constexpr const char* kOobRead = "oob_device_read.*out-of-bounds device memory access to \\[\\[buffer\\(0\\)\\]\\] of 128 bytes";
#endif

TEST(BugsDeathTest, OutOfBoundsDeviceStore) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Args args;
        args.set(0, std::vector<float>(64)).set_bytes(1, uint32_t(64));
        dispatch(bug("oob_device_store"), {1, 1, 1}, {64, 1, 1}, args);
      },
      kOobStore);
}

TEST(BugsDeathTest, OutOfBoundsDeviceRead) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Args args;
        args.set(0, std::vector<float>(32)).set(1, std::vector<float>(32));
        dispatch(bug("oob_device_read"), {1, 1, 1}, {32, 1, 1}, args, Schedule::reversed());
      },
      kOobRead);
}

#if !defined(__SANITIZE_ADDRESS__)
TEST(Bugs, OutOfBoundsDeviceStoreIntoAlignmentSlack) {
  // 63 floats = 252 bytes: the data ends 4 bytes before the guard page (16-byte
  // alignment), so out[63] lands in guard bytes checked after the dispatch.
  Args args;
  args.set(0, std::vector<float>(63)).set_bytes(1, uint32_t(63));
  const std::string e = error_of([&] { dispatch(bug("oob_device_store"), {1, 1, 1}, {63, 1, 1}, args); });
  EXPECT_TRUE(has(e, "out-of-bounds write past the end of device buffer [[buffer(0)]] of 252 bytes")) << e;
  EXPECT_TRUE(has(e, "byte offset 252")) << e;
}

TEST(BugsDeathTest, FiberStackOverflow) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Args args;
        args.set(0, std::vector<float>(32)).set_bytes(1, uint32_t(100000));
        dispatch(bug("stack_hog"), {1, 1, 1}, {32, 1, 1}, args);
      },
      "stack overflow in an emulated thread.*stack_bytes");
}
#endif

TEST(Bugs, CorrectKernelsDoNotTrip) {
  // Control: valid in-bounds device stores leave the guards intact.
  Args args;
  args.set(0, std::vector<int>{1, 2, 3, 4}).set(1, std::vector<int>(4));
  EXPECT_NO_THROW(dispatch(Kernel::find("emu_k_spec_a", "affine"), {1, 1, 1}, {4, 1, 1}, args));
}
