// Interface between kernel translation units (shim.h, generated adapters)
// and the emulator runtime (src/runtime.cpp). Not for test code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <source_location>
#include <string>
#include <vector>

namespace fsdpa_emu {

enum class Builtin : uint8_t {
  threadgroup_position_in_grid,
  thread_position_in_threadgroup,
  thread_position_in_grid,
  thread_index_in_threadgroup,
  thread_index_in_simdgroup,
  simdgroup_index_in_threadgroup,
  threads_per_threadgroup,
  threadgroups_per_grid,
  threads_per_grid,
  threads_per_simdgroup,
  simdgroups_per_threadgroup,
  thread_execution_width,
};

namespace detail {

// One parameter of a kernel, as read from its [[...]] attribute by the
// generator (msl_emu_gen.py).
struct ParamInfo {
  enum class Kind : uint8_t { buffer, builtin } kind;
  uint32_t buffer_index;  // kind == buffer
  Builtin builtin;        // kind == builtin
};

struct KernelInfo {
  const char* library;
  const char* name;
  void (*invoke)();  // calls the kernel with binders for the current thread
  std::vector<ParamInfo> params;
  uint32_t max_total_threads_per_threadgroup;  // 0 = not given
};

struct KernelRegistrar {
  KernelRegistrar(const char* library, const char* name, void (*invoke)(), std::vector<ParamInfo> params,
                  uint32_t max_threads);
};

// Per-thread (fiber) values the builtins are made of.
struct ThreadIds {
  uint32_t tg_pos[3];       // threadgroup_position_in_grid
  uint32_t pos_in_tg[3];    // thread_position_in_threadgroup
  uint32_t tg_size[3];      // threads_per_threadgroup
  uint32_t grid_size[3];    // threadgroups_per_grid
  uint32_t index_in_tg;     // thread_index_in_threadgroup
  uint32_t simdgroup;       // simdgroup_index_in_threadgroup
  uint32_t lane;            // thread_index_in_simdgroup
  uint32_t simdgroups;      // simdgroups_per_threadgroup
  uint32_t lanes_in_simdgroup;  // active lanes of this thread's SIMD group (32 except a partial last one)
};

const ThreadIds& this_thread();
// Value of a builtin for the current thread (scalars in [0], vectors in [0..2]).
void builtin_value(Builtin b, uint32_t out[3]);

// Raises a kernel error for the current thread: the message gets the kernel
// name and thread ids prepended and the dispatch fails with EmuError.
[[noreturn]] void fail(const std::string& what);

// Buffer bound at [[buffer(index)]]; checks that it exists and holds at least
// min_bytes.
void* buffer_pointer(uint32_t index, std::size_t min_bytes, const char* type_name);

// threadgroup_barrier: rendezvous of all threads of the threadgroup.
// flags: bit 1 (mem_threadgroup) orders threadgroup memory.
void threadgroup_barrier(unsigned flags, const std::source_location& loc);

// A SIMD-group collective. Each lane passes a pointer to its own slot; the
// last lane to arrive calls fn(slots indexed by lane, number of active lanes)
// then all lanes continue. Lanes must arrive at the same call site with the
// same fn, else the kernel fails (divergence).
using CollectiveFn = void (*)(void* const* slots, unsigned n_lanes);
void simd_collective(const char* op, const std::source_location& loc, void* slot, CollectiveFn fn);

// Threadgroup memory block, shared by the threads of one threadgroup.
struct TgBlock {
  std::byte* data;
  uint8_t* written;  // one flag per element
  std::size_t count;
  std::size_t elem_size;
  const char* name;
  void* shadow;  // runtime: happens-before state per element
};
// Happens-before checks of one threadgroup-memory access by the current
// thread (data-race detection, see runtime.cpp); fail() on a race.
void tg_check_read(TgBlock* b, std::size_t i);
void tg_check_write(TgBlock* b, std::size_t i);
// Returns the block declared at `key` (address of a static tag in the
// kernel) for the current threadgroup, creating (and poisoning) it on first use.
TgBlock* threadgroup_block(const void* key, const char* name, std::size_t elem_size, std::size_t align,
                           std::size_t count);

// Under a preempting schedule: maybe switch to another thread.
void preemption_point();

}  // namespace detail
}  // namespace fsdpa_emu
