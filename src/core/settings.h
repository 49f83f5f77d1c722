// Process-wide settings shared between the C ABI and the backends.
#pragma once

#include "flashsdpa/flashsdpa.h"

namespace fsdpa {

// fsdpa_set_num_threads() value; 0 = default.
int cpu_threads_setting();
// Threads the CPU backend will use: the setting, else FLASHSDPA_NUM_THREADS,
// else the CPU backend's default (cpu/thread_pool.h: the OpenMP team's size
// next to an OpenMP runtime, else the physical cores).
int cpu_thread_count();

// fsdpa_set_workspace_allocator() value; alloc == nullptr: the backend's
// own pool.
struct WorkspaceAllocator {
  fsdpa_workspace_alloc_fn alloc;
  fsdpa_workspace_free_fn free_fn;
  void* ctx;
};
WorkspaceAllocator workspace_allocator();

}  // namespace fsdpa
