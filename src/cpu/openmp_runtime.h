// The OpenMP runtime the process has already loaded (PyTorch's libgomp, or
// LLVM's libomp / Intel's libiomp5, which export the same GOMP_* entry
// points), found at run time. flashsdpa does not link OpenMP: without a
// runtime in the process this finds none and the pool uses its own threads.
#pragma once

namespace fsdpa::cpu {

struct OpenMpRuntime {
  // GOMP_parallel: runs fn(data) on a team of num_threads threads (the
  // caller is thread 0) and returns when all are done. flags 0.
  void (*parallel)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);
  int (*get_level)();        // omp_get_level: nesting depth of the calling thread, 0 outside
  int (*get_max_threads)();  // omp_get_max_threads: the team size a region here would get
};

// The loaded runtime, or nullptr. Looks again (cheaply) only after the
// process has loaded another shared object since the last miss.
const OpenMpRuntime* loaded_openmp_runtime();

}  // namespace fsdpa::cpu
