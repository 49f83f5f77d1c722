#include "cpu/core_count.h"

#include <stdio.h>

#include <set>
#include <thread>
#include <utility>

#if defined(__linux__)
#include <sched.h>
#endif

namespace fsdpa::cpu {
namespace {

int logical_cpus() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
}

#if defined(__linux__)
// An integer file of /sys, or -1.
long read_long(const char* path) {
  FILE* f = fopen(path, "r");
  if (!f) return -1;
  long v = -1;
  if (fscanf(f, "%ld", &v) != 1) v = -1;
  fclose(f);
  return v;
}

// Distinct (package, core) pairs of the CPUs this process may run on; 0 if
// the topology cannot be read (e.g. no /sys in a container).
int count_physical_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 0;
  std::set<std::pair<long, long>> cores;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    char path[96];
    snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
    const long package = read_long(path);
    snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
    const long core = read_long(path);
    if (core < 0) return 0;
    cores.emplace(package, core);
  }
  return static_cast<int>(cores.size());
}
#endif

}  // namespace

int physical_cores() {
  static const int n = [] {
#if defined(__linux__)
    if (const int cores = count_physical_cores(); cores > 0) return cores;
#endif
    return logical_cpus();
  }();
  return n;
}

}  // namespace fsdpa::cpu
