// A small persistent thread pool: parallel_for over task indices with
// dynamic (work-stealing by counter) scheduling. Results must not depend on
// which thread runs a task: the kernels give every task its own outputs.
#pragma once

#include <stdint.h>

#include <functional>

namespace fsdpa::cpu {

// Runs fn(task, thread_slot) for task in [0, n) on up to cpu_thread_count()
// threads; thread_slot in [0, threads) identifies per-thread scratch.
// Blocks until all tasks are done. Nested calls run serially.
void parallel_for(int64_t n, const std::function<void(int64_t task, int slot)>& fn);

// Number of slots parallel_for may use (size per-thread scratch with it).
int pool_threads();

}  // namespace fsdpa::cpu
