// Process-wide settings shared between the C ABI and the backends.
#pragma once

namespace fsdpa {

// fsdpa_set_num_threads() value; 0 = default.
int cpu_threads_setting();
// Threads the CPU backend will use: the setting, else FLASHSDPA_NUM_THREADS,
// else the hardware concurrency.
int cpu_thread_count();

}  // namespace fsdpa
