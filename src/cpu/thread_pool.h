// A small persistent thread pool: parallel_for over task indices with
// dynamic (work-stealing by counter) scheduling. Results must not depend on
// which thread runs a task: the kernels give every task its own outputs.
#pragma once

#include <stdint.h>

#include <functional>

namespace fsdpa::cpu {

// Runs fn(task) for task in [0, n) on up to cpu_thread_count() threads.
// Blocks until all tasks are done. Nested calls run serially.
void parallel_for(int64_t n, const std::function<void(int64_t task)>& fn);

// Number of threads parallel_for may use.
int pool_threads();

}  // namespace fsdpa::cpu
