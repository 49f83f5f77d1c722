// The CPU backend's default thread count in a process without OpenMP (this
// executable links none): one thread per physical core the process may run
// on, SMT siblings counted once (test_openmp_team.cpp covers the default
// next to an OpenMP runtime).
#include <gtest/gtest.h>

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <string>
#include <thread>

#include "flashsdpa/flashsdpa.h"

namespace {

// CPUs of the affinity mask that are the first of their SMT siblings within
// the mask (thread_siblings_list, e.g. "0,64" or "0-1"); -1 if /sys lacks it.
int first_siblings_in_mask() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return -1;
  int n = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    const std::string path =
        "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/thread_siblings_list";
    FILE* f = fopen(path.c_str(), "r");
    if (!f) return -1;
    char buf[256] = {};
    const bool read = fgets(buf, sizeof(buf), f) != nullptr;
    fclose(f);
    if (!read) return -1;
    // The lowest sibling inside the mask counts the core.
    int lowest = cpu;
    for (char* s = buf; *s;) {
      char* end;
      const long a = strtol(s, &end, 10);
      if (end == s) break;
      long b = a;
      if (*end == '-') b = strtol(end + 1, &end, 10);
      for (long c = a; c <= b; ++c)
        if (c < lowest && CPU_ISSET(c, &set)) lowest = static_cast<int>(c);
      s = *end ? end + 1 : end;
    }
    n += lowest == cpu;
  }
  return n;
}

TEST(DefaultThreads, OnePerPhysicalCoreWithoutOpenMp) {
  const char* env = getenv("FLASHSDPA_NUM_THREADS");
  const std::string saved = env ? env : "";
  unsetenv("FLASHSDPA_NUM_THREADS");
  fsdpa_set_num_threads(0);
  // Without the topology (no /sys), the logical CPUs.
  const int cores = first_siblings_in_mask();
  const int expected =
      cores > 0 ? cores : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  EXPECT_EQ(fsdpa_get_num_threads(), expected);
  // The setting and the environment variable still come first.
  setenv("FLASHSDPA_NUM_THREADS", "3", 1);
  EXPECT_EQ(fsdpa_get_num_threads(), 3);
  fsdpa_set_num_threads(5);
  EXPECT_EQ(fsdpa_get_num_threads(), 5);
  fsdpa_set_num_threads(0);
  if (env) setenv("FLASHSDPA_NUM_THREADS", saved.c_str(), 1);
  else unsetenv("FLASHSDPA_NUM_THREADS");
}

}  // namespace
