// Test-only C entry points (ctypes) that run the Metal kernel libraries the
// emulator tests build (one per planner key, tests/metal/attention) on the
// MSL emulator. fake_mps.py uses them as the "GPU" behind its stand-in for
// torch.mps.compile_shader, so that python/flashsdpa/metal.py runs end to
// end on CPU tensors. Never shipped.
#include <stdint.h>
#include <string.h>

#include <cstddef>
#include <exception>
#include <string>
#include <vector>

#include <fsdpa_msl_emu/detail.h>  // KernelInfo: the declared max threads
#include <fsdpa_msl_emu/emu.h>

namespace {
void set_err(char* err, size_t len, const std::string& msg) {
  if (err == nullptr || len == 0) return;
  const size_t n = msg.size() < len - 1 ? msg.size() : len - 1;
  memcpy(err, msg.data(), n);
  err[n] = '\0';
}
}  // namespace

extern "C" {

// 0 if `library/kernel` is registered; *max_threads = its declared
// [[max_total_threads_per_threadgroup]] (0 = none declared).
int fsdpa_mps_emu_kernel(const char* library, const char* kernel, uint32_t* max_threads, char* err, size_t err_len) {
  try {
    const fsdpa_emu::Kernel k = fsdpa_emu::Kernel::find(library, kernel);
    *max_threads = k.info().max_total_threads_per_threadgroup;
    return 0;
  } catch (const std::exception& e) {
    set_err(err, err_len, e.what());
    return 1;
  }
}

// Runs `library/kernel` over grid x threads (threadgroups, threads per
// threadgroup) with buffer i = the bytes [ptrs[i], ptrs[i] + sizes[i]), which
// receive the results. Returns 0, or 1 with the emulator's message.
int fsdpa_mps_emu_dispatch(const char* library, const char* kernel, const uint32_t* grid, const uint32_t* threads,
                           int nbuf, void* const* ptrs, const uint64_t* sizes, char* err, size_t err_len) {
  try {
    const fsdpa_emu::Kernel k = fsdpa_emu::Kernel::find(library, kernel);
    fsdpa_emu::Args args;
    for (int i = 0; i < nbuf; ++i) {
      std::vector<std::byte> b(sizes[i]);
      if (sizes[i]) memcpy(b.data(), ptrs[i], sizes[i]);
      args.set_raw(static_cast<uint32_t>(i), std::move(b));
    }
    fsdpa_emu::dispatch(k, {grid[0], grid[1], grid[2]}, {threads[0], threads[1], threads[2]}, args);
    for (int i = 0; i < nbuf; ++i)
      if (sizes[i]) memcpy(ptrs[i], args.raw(static_cast<uint32_t>(i)).data(), sizes[i]);
    return 0;
  } catch (const std::exception& e) {
    set_err(err, err_len, e.what());
    return 1;
  }
}

}  // extern "C"
