// A small persistent thread pool: parallel_for over task indices with
// dynamic (work-stealing by counter) scheduling. Results must not depend on
// which thread runs a task: the kernels give every task its own outputs.
#pragma once

#include <stdint.h>

#include <functional>

namespace fsdpa::cpu {

// Runs fn(task) for task in [0, n) on up to pool_threads() threads.
// Blocks until all tasks are done. Nested calls run serially.
void parallel_for(int64_t n, const std::function<void(int64_t task)>& fn);

// Number of threads parallel_for may use (fsdpa_get_num_threads()).
int pool_threads();

// The thread count when neither fsdpa_set_num_threads() nor
// FLASHSDPA_NUM_THREADS sets one (see thread_pool.cpp for why).
int default_thread_count();

// Where parallel_for runs a job: on the calling thread, on the threads of
// the OpenMP runtime the process has loaded (PyTorch's), or on the pool's
// own threads. The choice, with its reasons, is choose_route's.
enum class Route { serial, openmp_team, own_threads };

struct RouteFacts {
  int configured_threads = 1;  // pool_threads()
  int threads = 1;             // min(configured_threads, tasks)
  bool inside_task = false;    // called from a task of a parallel_for
  bool own_threads_requested = false;  // FLASHSDPA_CPU_OPENMP=0
  bool forked_child = false;   // this process was made by fork()
  bool openmp_loaded = false;  // an OpenMP runtime with the GOMP ABI is loaded
  int openmp_level = 0;        // omp_get_level() of the caller
  int openmp_team_threads = 0; // omp_get_max_threads() of the caller
};

Route choose_route(const RouteFacts& facts);

}  // namespace fsdpa::cpu
