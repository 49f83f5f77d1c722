// Host-side API of the MSL emulation harness (test-only).
//
//   #include <fsdpa_msl_emu/emu.h>
//   using namespace fsdpa_emu;
//   Kernel k = Kernel::find("my_kernel_lib", "my_kernel");   // CMake target / kernel name
//   Args args;
//   args.set(0, std::vector<float>(n, 1.0f))     // [[buffer(0)]], device memory
//       .set_bytes(1, Params{...});             // [[buffer(1)]], like setBytes
//   dispatch(k, {groups_x, 1, 1}, {threads, 1, 1}, args);            // one schedule
//   dispatch_all_schedules(k, {groups_x, 1, 1}, {threads, 1, 1}, args); // race check
//   std::vector<float> out = args.get<float>(0);
//
// Every detected kernel bug (divergent barrier / SIMD collective, out-of-bounds
// or uninitialised threadgroup access, data race on threadgroup memory,
// out-of-bounds device write, results that differ between schedules, ...) is thrown as fsdpa_emu::EmuError with a
// message naming the kernel, the threadgroup and the thread(s).
// See tests/metal/emu/README.md and docs/metal-emulation.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "fsdpa_msl_emu/types.h"

namespace fsdpa_emu {

struct Dim3 {
  uint32_t x = 1, y = 1, z = 1;
  constexpr uint64_t count() const { return uint64_t(x) * y * z; }
};

class EmuError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
struct KernelInfo;
}

// A kernel compiled into the test binary by fsdpa_add_msl_kernel_library().
class Kernel {
 public:
  // library: the CMake target name given to fsdpa_add_msl_kernel_library;
  // name: the kernel function name in the .metal source. Throws EmuError
  // (listing the registered kernels) when absent.
  static Kernel find(std::string_view library, std::string_view name);
  std::string full_name() const;  // "library/name"
  const detail::KernelInfo& info() const { return *info_; }

 private:
  explicit Kernel(const detail::KernelInfo* i) : info_(i) {}
  const detail::KernelInfo* info_;
};

std::vector<std::string> registered_kernels();  // "library/name", sorted

// Buffers bound to [[buffer(n)]] indices. Contents are plain bytes; during a
// dispatch each one is copied into an exactly sized allocation (so that
// AddressSanitizer sees overruns) or, without ASan, into one surrounded by
// guard bytes that are checked afterwards.
class Args {
 public:
  template <class T>
  Args& set(uint32_t index, const std::vector<T>& data) {
    static_assert(std::is_trivially_copyable_v<T>);
    std::vector<std::byte> b(data.size() * sizeof(T));
    if (!b.empty()) std::memcpy(b.data(), data.data(), b.size());
    buffers_[index] = std::move(b);
    return *this;
  }
  // Like MTLComputeCommandEncoder setBytes: one value, for `constant T&`.
  template <class T>
  Args& set_bytes(uint32_t index, const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    std::vector<std::byte> b(sizeof(T));
    std::memcpy(b.data(), &value, sizeof(T));
    buffers_[index] = std::move(b);
    return *this;
  }
  Args& set_raw(uint32_t index, std::vector<std::byte> bytes) {
    buffers_[index] = std::move(bytes);
    return *this;
  }
  template <class T>
  std::vector<T> get(uint32_t index) const {
    const auto& b = raw(index);
    if (b.size() % sizeof(T) != 0) throw EmuError("Args::get: buffer size not a multiple of the element size");
    std::vector<T> r(b.size() / sizeof(T));
    if (!b.empty()) std::memcpy(r.data(), b.data(), b.size());
    return r;
  }
  const std::vector<std::byte>& raw(uint32_t index) const {
    auto it = buffers_.find(index);
    if (it == buffers_.end()) throw EmuError("Args: no buffer bound at index " + std::to_string(index));
    return it->second;
  }
  std::vector<std::byte>& raw(uint32_t index) {
    auto it = buffers_.find(index);
    if (it == buffers_.end()) throw EmuError("Args: no buffer bound at index " + std::to_string(index));
    return it->second;
  }
  const std::map<uint32_t, std::vector<std::byte>>& buffers() const { return buffers_; }
  std::map<uint32_t, std::vector<std::byte>>& buffers() { return buffers_; }

 private:
  std::map<uint32_t, std::vector<std::byte>> buffers_;
};

// Which ready thread (fiber) of a threadgroup runs next, and in which order
// the threadgroups of the grid run. A thread runs until it blocks (barrier,
// SIMD-group collective), exits, or is preempted.
//  * in_order    : always the lowest-index ready thread. Simdgroup 0 runs as
//                  far ahead as it can before simdgroup 1 starts, etc. (the
//                  most skewed interleaving; exposes missing barriers between
//                  phases). Threadgroups in increasing linear order.
//  * reversed    : always the highest-index ready thread; threadgroups in
//                  decreasing order.
//  * round_robin : threads take turns in index order (near lock-step
//                  progress of all simdgroups); threadgroups in decreasing order.
//  * shuffled    : a ready thread chosen at random (seeded) each time;
//                  threadgroups shuffled. With preempt > 0 a thread also gives
//                  up the CPU with that probability at every threadgroup-
//                  memory access, so interleavings between barriers are
//                  explored as well.
struct Schedule {
  enum class Order { in_order, reversed, round_robin, shuffled };
  Order order = Order::in_order;
  uint64_t seed = 0;
  double preempt = 0.0;

  static Schedule in_order() { return {Order::in_order, 0, 0.0}; }
  static Schedule reversed() { return {Order::reversed, 0, 0.0}; }
  static Schedule round_robin() { return {Order::round_robin, 0, 0.0}; }
  static Schedule shuffled(uint64_t seed, double preempt = 0.0) { return {Order::shuffled, seed, preempt}; }
  std::string name() const;
};

// in_order, reversed, round_robin, shuffled(1), shuffled(2, 0.05), shuffled(3, 0.25)
std::vector<Schedule> standard_schedules();

struct Options {
  // Apple GPUs: 32 KiB of threadgroup memory, 1024 threads per threadgroup.
  std::size_t threadgroup_memory_limit = 32 * 1024;
  uint32_t max_threads_per_threadgroup = 1024;
  // Fiber stack per emulated thread; 0 = default (64 KiB, 512 KiB under ASan).
  std::size_t stack_bytes = 0;
  // Happens-before race detection on threadgroup memory: two accesses to one
  // element by different threads, at least one a write, must be separated by
  // a threadgroup_barrier with mem_flags::mem_threadgroup, or -- for threads
  // of one SIMD group -- by a SIMD-group rendezvous (collective, matrix
  // operation or simdgroup_barrier). Reported independently of the schedule.
  bool detect_threadgroup_races = true;
};

// Runs the whole grid once under `schedule`. args' buffers are updated with
// the results. Throws EmuError on any detected error.
void dispatch(const Kernel& kernel, Dim3 threadgroups_per_grid, Dim3 threads_per_threadgroup, Args& args,
              const Schedule& schedule = Schedule::in_order(), const Options& options = {});

// Runs the grid once per schedule, each time on a fresh copy of args, and
// requires all runs to succeed and to leave byte-identical buffers (anything
// else is a race or a schedule-dependent result). args receives the result.
void dispatch_all_schedules(const Kernel& kernel, Dim3 threadgroups_per_grid, Dim3 threads_per_threadgroup,
                            Args& args, const std::vector<Schedule>& schedules = standard_schedules(),
                            const Options& options = {});

}  // namespace fsdpa_emu
