// How many cores this process may run on, for the CPU backend's default
// thread count (thread_pool.h: default_thread_count).
#pragma once

namespace fsdpa::cpu {

// Physical cores among the CPUs of this process's affinity mask (SMT
// siblings counted once; Linux, from /sys's topology); elsewhere, or if
// that cannot be read, the logical CPUs (std::thread::hardware_concurrency).
// At least 1. Read once per process.
int physical_cores();

}  // namespace fsdpa::cpu
