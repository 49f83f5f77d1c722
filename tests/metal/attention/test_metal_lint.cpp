// The planner's side of the Metal source lint (issue 17), over every
// configuration the planner can emit (all families, dtypes and head-dim
// pairs, with short, decode-like and long shapes, forward and backward):
//  * every dispatched kernel fsdpa_<name> gets a define
//    FSDPA_THREADS_<NAME> equal to the threads it is dispatched with (the
//    kernel declares it as [[max_total_threads_per_threadgroup]];
//    tests/metal/lint_kernel_sources.py checks the declaration);
//  * threads per threadgroup are whole simdgroups and within the 1024 of
//    Apple GPUs, threadgroup memory within their 32 KiB.
// Sanitizer builds (FSDPA_METAL_TEST_REDUCED) take Dv = D or 40 only.
// It prints a census of threadgroup memory and threadgroup sizes (occupancy
// is to be tuned on hardware; the census is for the record, not a limit).
#include <gtest/gtest.h>

#include <cctype>
#include <iostream>
#include <map>
#include <string>

#include "metal/plan.h"

namespace {
namespace mtl = fsdpa::metal;
using fsdpa::AttnParams;
using fsdpa::DType;

constexpr uint32_t kMaxThreads = 1024;         // every Apple GPU family
constexpr size_t kThreadgroupMemory = 32768;  // every Apple GPU family

AttnParams shape(DType dt, int64_t d, int64_t dv, int64_t sq, int64_t sk) {
  AttnParams p{};
  p.batch = 1, p.heads_q = 4, p.heads_k = 2, p.seqlen_q = sq, p.seqlen_k = sk;
  p.total_q = sq, p.total_k = sk;
  p.head_dim = d, p.head_dim_v = dv;
  p.dtype = p.out_dtype = p.dout_dtype = dt;
  p.window_left = p.window_right = -1;
  p.scale = 0.125f;
  return p;
}

std::string threads_define(const std::string& kernel) {
  std::string s = "FSDPA_THREADS_" + kernel.substr(kernel.rfind("fsdpa_", 0) == 0 ? 6 : 0);
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

TEST(MetalLint, EveryPlannedDispatchDeclaresItsThreadsAndFitsTheGpu) {
  const mtl::GpuFamily families[] = {mtl::GpuFamily::apple7, mtl::GpuFamily::apple8, mtl::GpuFamily::apple9};
  const DType dtypes[] = {DType::f32, DType::f16, DType::bf16};
  const int64_t shapes[][2] = {{1, 1}, {1, 4096}, {300, 257}};  // tiny, decode-like, long
  std::map<std::string, int> dispatches, over_24k, one_simdgroup;
  std::map<std::string, size_t> max_tg;
  int configs = 0;
  for (mtl::GpuFamily fam : families)
    for (DType dt : dtypes)
      for (int64_t d = 8; d <= 256; d += 8)
        for (int64_t dv = 8; dv <= 256; dv += 8) {
          if (FSDPA_METAL_TEST_REDUCED && dv != d && dv != 40) continue;  // sanitizer builds: Dv = D or 40
          ++configs;
          for (const auto& s : shapes)
            for (bool backward : {false, true}) {
              const AttnParams p = shape(dt, d, dv, s[0], s[1]);
              const mtl::Plan plan = backward ? mtl::plan_backward(p, fam) : mtl::plan_forward(p, fam);
              std::map<std::string, std::string> defines;
              for (const auto& [k, v] : mtl::kernel_defines(plan.config)) defines[k] = v;
              ASSERT_FALSE(plan.dispatches.empty());
              for (const mtl::Dispatch& disp : plan.dispatches) {
                const std::string kernel = disp.kernel;
                const uint32_t threads = disp.threads[0] * disp.threads[1] * disp.threads[2];
                const std::string where = kernel + " of " + mtl::key_name(plan.config.key);
                const auto it = defines.find(threads_define(kernel));
                ASSERT_NE(it, defines.end()) << where << ": the planner emits no " << threads_define(kernel);
                ASSERT_EQ(it->second, std::to_string(threads)) << where << ": declared max threads differ from the "
                                                                           "dispatched threadgroup size";
                ASSERT_GT(threads, 0u) << where;
                ASSERT_EQ(threads % 32, 0u) << where << ": not whole simdgroups";
                ASSERT_LE(threads, kMaxThreads) << where;
                ASSERT_LE(disp.threadgroup_memory, kThreadgroupMemory) << where;
                ++dispatches[kernel];
                max_tg[kernel] = std::max(max_tg[kernel], disp.threadgroup_memory);
                if (disp.threadgroup_memory > 24 * 1024) ++over_24k[kernel];
                if (threads == 32) ++one_simdgroup[kernel];
              }
            }
        }
  std::cout << "census over " << configs << " head-dim/dtype/family configs x 3 shapes:\n";
  for (const auto& [k, n] : dispatches)
    std::cout << "  " << k << ": " << n << " dispatches, " << over_24k[k] << " above 24 KiB of threadgroup memory (max "
              << max_tg[k] << " B), " << one_simdgroup[k] << " with a single 32-thread simdgroup\n";
}

}  // namespace
