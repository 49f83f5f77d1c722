// Running a Metal plan on the MSL emulator from a test: tensors bound at the
// planner's buffer indices, the plan's dispatches under two fiber schedules
// (results must agree bit for bit), and the comparison with the fp64
// reference. Shared by test_metal_attention.cpp and test_metal_kv_cache.cpp.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "attention_case.h"
#include "fsdpa_msl_emu/emu.h"
#include "metal/heuristics.h"
#include "metal/plan.h"

namespace fsdpa_test {

// Binds tensors to the planner's buffer indices. The AttnParams pointers the
// planner saw must be the tensors' own storage (offset 0), so that binding
// the storage is binding what the kernel addresses.
struct Binder {
  fsdpa_emu::Args args;
  void bind(uint32_t index, Tensor* t, const void* param_ptr) {
    if (t == nullptr || param_ptr == nullptr) return;  // left to bind_unused()
    ASSERT_EQ(param_ptr, static_cast<const void*>(t->bytes.data())) << "buffer " << index;
    std::vector<std::byte> b(t->bytes.size());
    std::memcpy(b.data(), t->bytes.data(), b.size());
    args.set_raw(index, std::move(b));
  }
  // The plan's scratch, poisoned: float32 NaN; int32 (the expanded
  // block-sparse lists) a slot far past any list, so a state no pass wrote
  // reads outside the element mask. A read of an element no earlier pass
  // wrote shows in the results.
  void bind_scratch(const fsdpa::metal::Plan& plan) {
    args.set(FSDPA_BUF_SCRATCH,
             std::vector<float>(static_cast<size_t>(std::max<int64_t>(plan.scratch_elements, 4)), NAN));
    if (plan.sparse_state_elements > 0)
      args.set(FSDPA_BUF_SPARSE_STATE,
               std::vector<int32_t>(static_cast<size_t>(plan.sparse_state_elements), 0x3fffffff));
  }
  // Every index the call leaves empty gets a small placeholder, as the
  // Metal host binds a dummy buffer there.
  void bind_unused() {
    for (uint32_t i = 1; i < FSDPA_NUM_BUFFERS; ++i)
      if (!args.buffers().count(i)) args.set_raw(i, std::vector<std::byte>(16));
  }
  void read_back(uint32_t index, Tensor* t) const {
    const auto& b = args.raw(index);
    ASSERT_EQ(b.size(), t->bytes.size());
    std::memcpy(t->bytes.data(), b.data(), b.size());
  }
};

inline void run_plan(const fsdpa::metal::Plan& plan, Binder& bd, uint64_t seed) {
  namespace mtl = fsdpa::metal;
  bd.args.set_bytes(FSDPA_BUF_ARGS, plan.args);
  bd.bind_unused();
  const std::string lib = "mtl_" + mtl::key_name(plan.config.key);
  const std::vector<fsdpa_emu::Schedule> schedules = {fsdpa_emu::Schedule::reversed(),
                                                      fsdpa_emu::Schedule::shuffled(seed, 0.01)};
  for (const mtl::Dispatch& d : plan.dispatches) {
    ASSERT_LE(d.threadgroup_memory, static_cast<size_t>(mtl::kThreadgroupMemoryBytes));
    fsdpa_emu::Kernel k = fsdpa_emu::Kernel::find(lib, d.kernel);  // throws (fails) if the grid's CMake list lacks the key
    fsdpa_emu::dispatch_all_schedules(k, {d.grid[0], d.grid[1], d.grid[2]},
                                      {d.threads[0], d.threads[1], d.threads[2]}, bd.args, schedules);
  }
}

inline void expect_close(const char* what, const Tensor& got, const Tensor& ref64, DT dt, int64_t reduction_len,
                         bool is_gradient = false) {
  const double err = max_abs_diff(got, ref64);
  const double tol = 2.0 * baseline_error(ref64, dt, reduction_len, is_gradient);
  EXPECT_LE(err, tol) << what << ": max |metal - fp64 reference| = " << err << " exceeds 2x the baseline " << tol / 2;
  const char* names[] = {"f32", "f16", "bf16", "f64", "u8", "i32"};
  printf("MAXERR %s %s %.3g (tol %.3g)\n", names[static_cast<int>(dt)], what, err, tol);
}

}  // namespace fsdpa_test
