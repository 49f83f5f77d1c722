// Emulator runtime: kernel registry, fibers, scheduler, rendezvous,
// threadgroup memory, device buffers.
//
// Each emulated GPU thread of a threadgroup is a fiber on the calling OS
// thread (a minimal context switch written here for x86-64, POSIX ucontext
// elsewhere); threadgroups of a grid run one after the other (in an
// order chosen by the schedule). A fiber runs until it blocks at a
// rendezvous (threadgroup_barrier, SIMD-group collective), exits, fails or is
// preempted; then the scheduler picks the next ready fiber.
// macOS's <ucontext.h> refuses to compile without _XOPEN_SOURCE (its
// ucontext routines are "deprecated"); glibc accepts it too. Defined before
// any include, since the system headers read it once.
#if !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700
#endif
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
#define _DARWIN_C_SOURCE 1  // keeps MAP_ANON, sigaltstack... visible under _XOPEN_SOURCE
#endif
#include <signal.h>
#include <sys/mman.h>
// FSDPA_EMU_FORCE_UCONTEXT: use the portable ucontext path on x86-64 too
// (to test it).
#if defined(__x86_64__) && !defined(FSDPA_EMU_FORCE_UCONTEXT)
#define FSDPA_EMU_OWN_SWITCH 1
#else
#define FSDPA_EMU_OWN_SWITCH 0
#include <ucontext.h>
#endif
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdio>
#include <deque>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>

#include "fsdpa_msl_emu/detail.h"
#include "fsdpa_msl_emu/emu.h"

#if defined(__SANITIZE_ADDRESS__)
#define FSDPA_EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define FSDPA_EMU_ASAN 0
#endif

namespace fsdpa_emu {
namespace detail {
namespace {

// ------------------------------------------------------------ context switch
#if FSDPA_EMU_OWN_SWITCH
// Saves the callee-saved registers (System V AMD64 ABI: rbx, rbp, r12-r15,
// MXCSR and the x87 control word) on the current stack, stores the stack
// pointer in *from_sp and continues on the stack to_sp. Written for this
// harness; no ucontext because glibc's swapcontext makes a system call per
// switch and AddressSanitizer's swapcontext interceptor clears the shadow of
// the whole target stack on each switch (very slow with many fibers).
extern "C" void fsdpa_emu_ctx_switch(void** from_sp, void* to_sp);
asm(R"(
  .text
  .p2align 4
  .globl fsdpa_emu_ctx_switch
  .hidden fsdpa_emu_ctx_switch
  .type fsdpa_emu_ctx_switch,@function
fsdpa_emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fsdpa_emu_ctx_switch,.-fsdpa_emu_ctx_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

struct Context {
  void* sp = nullptr;
};
// Prepares a context that starts entry() (which must never return) on the
// given stack at the first switch to it. Not instrumented by ASan: the top
// of a reused stack may still carry the poisoned frame of the previous
// fiber's (never returning) entry function.
__attribute__((no_sanitize_address)) void context_init(Context& c, void* stack_lo, std::size_t size,
                                                        void (*entry)()) {
  auto top = (reinterpret_cast<uintptr_t>(stack_lo) + size) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<uint64_t*>(top - 16);  // 16-byte aligned: entry sees rsp % 16 == 8
  slot[1] = 0;                                         // fake return address of entry (ends backtraces)
  slot[0] = reinterpret_cast<uint64_t>(entry);         // popped by `ret`
  uint64_t* regs = slot - 6;                           // r15 r14 r13 r12 rbx rbp, all zero
  for (int i = 0; i < 6; ++i) regs[i] = 0;
  uint32_t* ctl = reinterpret_cast<uint32_t*>(regs - 1);
  ctl[0] = 0x1f80;  // MXCSR default
  ctl[1] = 0x037f;  // x87 control word default
  c.sp = regs - 1;
}
inline void context_switch(Context& from, Context& to) { fsdpa_emu_ctx_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
void context_init(Context& c, void* stack_lo, std::size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack_lo;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
inline void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ------------------------------------------------------------ registry
std::map<std::string, KernelInfo>& registry() {
  static std::map<std::string, KernelInfo> r;
  return r;
}

// ------------------------------------------------------------ state
enum class FState : uint8_t { ready, blocked, done, failed };
enum class Wait : uint8_t { none, barrier, simd };

struct Site {
  const char* file = nullptr;
  uint32_t line = 0, column = 0;
  const char* op = nullptr;
  CollectiveFn fn = nullptr;
  bool operator==(const Site& o) const {
    return line == o.line && column == o.column && fn == o.fn && op == o.op &&
           (file == o.file || std::string_view(file) == std::string_view(o.file));
  }
};

std::string site_str(const Site& s) {
  std::ostringstream o;
  o << (s.op ? s.op : "?") << " at " << (s.file ? s.file : "?") << ":" << s.line;
  return o.str();
}

struct Stack {
  void* map = nullptr;  // including the guard region below the stack
  std::size_t map_size = 0;
  std::size_t guard = 0;  // PROT_NONE bytes at the bottom of the mapping
  void* lo = nullptr;  // usable stack
  std::size_t size = 0;
  bool dirty = false;  // used by a fiber that was abandoned mid-run (failed dispatch)
};

struct Fiber {
  Context ctx;
  Stack stack;
  FState state = FState::ready;
  Wait wait = Wait::none;
  Site site;
  ThreadIds ids;
  void* fake_stack = nullptr;  // ASan
  std::size_t ready_pos = 0;   // position in Dispatcher::ready
};

// Happens-before state of one threadgroup-memory element in the current
// threadgroup: last writer, and the readers since the last ordering point.
constexpr uint32_t kNobody = 0xffffffffu, kMany = 0xfffffffeu;
struct TgShadow {
  uint32_t w_thread = kNobody, w_epoch = 0, w_sg_epoch = 0;
  uint32_t r_epoch = kNobody, r_thread = kNobody, r_sg = kNobody, r_sg_epoch = 0;
};

struct SimdState {
  unsigned n_active = 0;
  unsigned n_done = 0;
  unsigned arrived = 0;
  Site site;
  void* slots[32] = {};
};

struct Dispatcher {
  const KernelInfo* kernel = nullptr;
  Dim3 grid, tg;
  Schedule schedule;
  Options options;
  std::mt19937_64 rng;
  std::map<uint32_t, std::pair<std::byte*, std::size_t>> buffers;

  // current threadgroup
  uint32_t tg_pos[3] = {0, 0, 0};
  std::vector<Fiber> fibers;
  std::vector<uint32_t> ready;       // indices of ready fibers (any order)
  std::vector<uint64_t> ready_bits;  // the same as a bit set
  uint32_t cursor = 0;               // round robin position
  unsigned barrier_arrived = 0;
  unsigned barrier_flags = ~0u;  // AND of the flags of the arrivals
  unsigned n_done = 0;
  Site barrier_site;
  uint32_t tg_epoch = 0;             // completed threadgroup barriers ordering threadgroup memory
  std::vector<uint32_t> sg_epoch;    // completed rendezvous per SIMD group
  std::vector<SimdState> simd;
  struct Block {
    const void* key;
    TgBlock b;
    std::size_t bytes;
  };
  std::deque<Block> blocks;  // stable addresses: kernels hold TgBlock*
  std::size_t tg_bytes = 0;

  // scheduler context
  Context sched_ctx;
  const void* sched_stack_lo = nullptr;
  std::size_t sched_stack_size = 0;
  Fiber* current = nullptr;
  bool failed = false;
  std::string error;

  ~Dispatcher() { free_blocks(); }
  void free_blocks() {
    for (auto& b : blocks) {
      std::free(b.b.data);
      std::free(b.b.written);
      std::free(b.b.shadow);
    }
    blocks.clear();
    tg_bytes = 0;
  }
};

thread_local Dispatcher* g_disp = nullptr;

// Stacks are reused across threadgroups and dispatches (per OS thread).
struct StackPool {
  std::vector<Stack> stacks;
  std::size_t size = 0;
  ~StackPool() {
    for (auto& s : stacks) munmap(s.map, s.map_size);
  }
  void ensure(std::size_t n, std::size_t bytes) {
    if (bytes != size) {
      for (auto& s : stacks) munmap(s.map, s.map_size);
      stacks.clear();
      size = bytes;
    }
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    while (stacks.size() < n) {
      Stack s;
      s.size = (bytes + page - 1) / page * page;
      // A large guard region (address space only): a frame that overflows the
      // stack by less than this faults instead of writing into a neighbour.
      s.guard = std::max<std::size_t>(page, 64 * 1024);
      s.map_size = s.size + s.guard;
      s.map = mmap(nullptr, s.map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (s.map == MAP_FAILED) throw EmuError("fsdpa_emu: cannot allocate fiber stacks");
      mprotect(s.map, s.guard, PROT_NONE);
      s.lo = static_cast<char*>(s.map) + s.guard;
      stacks.push_back(s);
    }
  }
};
thread_local StackPool g_stacks;

// ------------------------------------------------------------ helpers
std::string dim_str(const uint32_t v[3]) {
  std::ostringstream o;
  o << "(" << v[0] << "," << v[1] << "," << v[2] << ")";
  return o.str();
}

std::string thread_str(const ThreadIds& t) {
  std::ostringstream o;
  o << "thread " << dim_str(t.pos_in_tg) << " [index " << t.index_in_tg << ", simdgroup " << t.simdgroup
    << ", lane " << t.lane << "]";
  return o.str();
}

std::string prefix(const Dispatcher& d) {
  std::ostringstream o;
  o << "kernel '" << d.kernel->library << "/" << d.kernel->name << "', threadgroup " << dim_str(d.tg_pos);
  return o.str();
}

// "0-31, 40, 42-45"
std::string ranges(const std::vector<uint32_t>& v) {
  std::ostringstream o;
  for (std::size_t i = 0; i < v.size();) {
    std::size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (i) o << ", ";
    o << v[i];
    if (j > i) o << "-" << v[j];
    i = j + 1;
  }
  return o.str();
}

struct KernelFault : std::exception {
  std::string msg;
  explicit KernelFault(std::string m) : msg(std::move(m)) {}
  const char* what() const noexcept override { return msg.c_str(); }
};

Dispatcher& disp() {
  if (!g_disp || !g_disp->current) {
    std::fprintf(stderr, "fsdpa_emu: MSL function called outside of an emulated dispatch\n");
    std::abort();
  }
  return *g_disp;
}

void set_state(Dispatcher& d, Fiber& f, FState s) {
  const bool was_ready = f.state == FState::ready;
  const bool is_ready = s == FState::ready;
  f.state = s;
  if (was_ready == is_ready) return;
  const uint32_t idx = static_cast<uint32_t>(&f - d.fibers.data());
  if (is_ready) {
    f.ready_pos = d.ready.size();
    d.ready.push_back(idx);
    d.ready_bits[idx / 64] |= uint64_t(1) << (idx % 64);
  } else {
    d.ready_bits[idx / 64] &= ~(uint64_t(1) << (idx % 64));
    const uint32_t last = d.ready.back();
    d.ready[f.ready_pos] = last;
    d.fibers[last].ready_pos = f.ready_pos;
    d.ready.pop_back();
  }
}

// Called on a fiber: give the CPU back to the scheduler.
void switch_to_scheduler(Dispatcher& d, Fiber& f) {
#if FSDPA_EMU_ASAN
  __sanitizer_start_switch_fiber(&f.fake_stack, d.sched_stack_lo, d.sched_stack_size);
#endif
  context_switch(f.ctx, d.sched_ctx);
#if FSDPA_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

void block_current(Dispatcher& d, Fiber& f) {
  set_state(d, f, FState::blocked);
  switch_to_scheduler(d, f);
}

void yield_current(Dispatcher& d, Fiber& f) {
  // state stays ready
  switch_to_scheduler(d, f);
}

[[noreturn]] void fiber_main() {
  Dispatcher& d = *g_disp;
#if FSDPA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &d.sched_stack_lo, &d.sched_stack_size);
#endif
  Fiber& f = *d.current;
  try {
    d.kernel->invoke();
    set_state(d, f, FState::done);
  } catch (const KernelFault& e) {
    d.failed = true;
    d.error = e.msg;
    set_state(d, f, FState::failed);
  } catch (const std::exception& e) {
    d.failed = true;
    d.error = prefix(d) + ", " + thread_str(f.ids) + ": unexpected exception: " + e.what();
    set_state(d, f, FState::failed);
  }
#if FSDPA_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, d.sched_stack_lo, d.sched_stack_size);
#endif
  context_switch(f.ctx, d.sched_ctx);  // never resumed
  std::abort();
}

void run_fiber(Dispatcher& d, Fiber& f) {
  d.current = &f;
#if FSDPA_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack.lo, f.stack.size);
#endif
  context_switch(d.sched_ctx, f.ctx);
#if FSDPA_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  d.current = nullptr;
}

Fiber* pick(Dispatcher& d) {
  if (d.ready.empty()) return nullptr;
  const uint32_t words = static_cast<uint32_t>(d.ready_bits.size());
  switch (d.schedule.order) {
    case Schedule::Order::in_order:  // lowest ready index first
      for (uint32_t w = 0; w < words; ++w)
        if (d.ready_bits[w]) return &d.fibers[w * 64 + std::countr_zero(d.ready_bits[w])];
      break;
    case Schedule::Order::reversed:  // highest ready index first
      for (uint32_t w = words; w-- > 0;)
        if (d.ready_bits[w]) return &d.fibers[w * 64 + 63 - std::countl_zero(d.ready_bits[w])];
      break;
    case Schedule::Order::round_robin: {
      const uint32_t n = static_cast<uint32_t>(d.fibers.size());
      for (uint32_t k = 0; k < n; ++k) {
        const uint32_t i = (d.cursor + k) % n;
        if (d.fibers[i].state == FState::ready) {
          d.cursor = (i + 1) % n;
          return &d.fibers[i];
        }
      }
      break;
    }
    case Schedule::Order::shuffled: {
      const uint32_t i = d.ready[std::uniform_int_distribution<std::size_t>(0, d.ready.size() - 1)(d.rng)];
      return &d.fibers[i];
    }
  }
  return nullptr;
}

// Explains why no fiber can run although not all are done.
std::string deadlock_report(Dispatcher& d) {
  std::map<std::string, std::vector<uint32_t>> waiting;
  std::vector<uint32_t> done;
  for (auto& f : d.fibers) {
    if (f.state == FState::done) done.push_back(f.ids.index_in_tg);
    else if (f.state == FState::blocked) {
      std::string k = f.wait == Wait::barrier ? site_str(f.site)
                                              : site_str(f.site) + " (simdgroup " + std::to_string(f.ids.simdgroup) + ")";
      waiting[k].push_back(f.ids.index_in_tg);
    }
  }
  std::ostringstream o;
  o << prefix(d) << ": divergent control flow: no thread can make progress.";
  for (auto& [k, v] : waiting) o << " Threads [" << ranges(v) << "] wait at " << k << ".";
  if (!done.empty()) o << " Threads [" << ranges(done) << "] have exited.";
  return o.str();
}

void check_done_fiber(Dispatcher& d, Fiber& f) {
  // A thread that exits while others wait for it at a rendezvous.
  if (d.barrier_arrived > 0) {
    std::vector<uint32_t> w;
    for (auto& g : d.fibers)
      if (g.state == FState::blocked && g.wait == Wait::barrier) w.push_back(g.ids.index_in_tg);
    throw EmuError(prefix(d) + ": divergent threadgroup_barrier: " + thread_str(f.ids) +
                   " exited without reaching " + site_str(d.barrier_site) + " where threads [" + ranges(w) +
                   "] wait");
  }
  SimdState& s = d.simd[f.ids.simdgroup];
  if (s.arrived > 0) {
    std::vector<uint32_t> w;
    for (auto& g : d.fibers)
      if (g.ids.simdgroup == f.ids.simdgroup && g.state == FState::blocked && g.wait == Wait::simd)
        w.push_back(g.ids.lane);
    throw EmuError(prefix(d) + ": divergent SIMD-group operation: " + thread_str(f.ids) + " exited without reaching " +
                   site_str(s.site) + " where lanes [" + ranges(w) + "] of simdgroup " +
                   std::to_string(f.ids.simdgroup) + " wait");
  }
}

void run_threadgroup(Dispatcher& d, const uint32_t pos[3]) {
  const uint32_t n = static_cast<uint32_t>(d.tg.count());
  for (int i = 0; i < 3; ++i) d.tg_pos[i] = pos[i];
  d.free_blocks();
  d.barrier_arrived = 0;
  d.barrier_flags = ~0u;
  d.tg_epoch = 0;
  d.ready.clear();
  d.ready_bits.assign((n + 63) / 64, 0);
  d.cursor = 0;
  const uint32_t n_simd = (n + 31) / 32;
  d.simd.assign(n_simd, SimdState{});
  d.sg_epoch.assign(n_simd, 0);
  for (uint32_t s = 0; s < n_simd; ++s) d.simd[s].n_active = std::min<uint32_t>(32, n - s * 32);

  d.fibers.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    Fiber& f = d.fibers[i];
    Stack& st = g_stacks.stacks[i];
#if FSDPA_EMU_ASAN
    // Frames of fibers abandoned by an earlier failed dispatch may have left
    // poisoned shadow memory behind. (Not done every time: unpoisoning large
    // regions makes ASan release and re-fault shadow pages.)
    if (st.dirty) ASAN_UNPOISON_MEMORY_REGION(st.lo, st.size);
#endif
    st.dirty = true;  // until the fiber completes
    f.stack = st;
    f.state = FState::blocked;  // set_state(ready) below adds it to the ready list
    f.wait = Wait::none;
    f.site = Site{};
    f.fake_stack = nullptr;
    ThreadIds& t = f.ids;
    for (int k = 0; k < 3; ++k) {
      t.tg_pos[k] = pos[k];
    }
    t.tg_size[0] = d.tg.x, t.tg_size[1] = d.tg.y, t.tg_size[2] = d.tg.z;
    t.grid_size[0] = d.grid.x, t.grid_size[1] = d.grid.y, t.grid_size[2] = d.grid.z;
    t.pos_in_tg[0] = i % d.tg.x;
    t.pos_in_tg[1] = (i / d.tg.x) % d.tg.y;
    t.pos_in_tg[2] = i / (d.tg.x * d.tg.y);
    t.index_in_tg = i;
    t.simdgroup = i / 32;
    t.lane = i % 32;
    t.simdgroups = n_simd;
    t.lanes_in_simdgroup = d.simd[t.simdgroup].n_active;
    context_init(f.ctx, f.stack.lo, f.stack.size, fiber_main);
    set_state(d, f, FState::ready);
  }
  if (d.schedule.order == Schedule::Order::shuffled) {
    std::shuffle(d.ready.begin(), d.ready.end(), d.rng);
    for (std::size_t i = 0; i < d.ready.size(); ++i) d.fibers[d.ready[i]].ready_pos = i;
  }

  d.n_done = 0;
  while (d.n_done < n) {
    Fiber* f = pick(d);
    if (!f) throw EmuError(deadlock_report(d));
    run_fiber(d, *f);
    if (d.failed) throw EmuError(d.error);
    if (f->state == FState::done) {
      g_stacks.stacks[f - d.fibers.data()].dirty = false;
      ++d.n_done;
      ++d.simd[f->ids.simdgroup].n_done;
      check_done_fiber(d, *f);
    }
  }
}

}  // namespace

// ------------------------------------------------------------ kernel-side API
KernelRegistrar::KernelRegistrar(const char* library, const char* name, void (*invoke)(),
                                 std::vector<ParamInfo> params, uint32_t max_threads) {
  std::string key = std::string(library) + "/" + name;
  auto [it, inserted] = registry().emplace(key, KernelInfo{library, name, invoke, std::move(params), max_threads});
  if (!inserted) {
    std::fprintf(stderr, "fsdpa_emu: kernel %s registered twice\n", key.c_str());
    std::abort();
  }
}

const ThreadIds& this_thread() { return disp().current->ids; }

void builtin_value(Builtin b, uint32_t out[3]) {
  const ThreadIds& t = this_thread();
  out[0] = out[1] = out[2] = 0;
  auto set3 = [&](uint32_t a, uint32_t b2, uint32_t c) { out[0] = a, out[1] = b2, out[2] = c; };
  switch (b) {
    case Builtin::threadgroup_position_in_grid: set3(t.tg_pos[0], t.tg_pos[1], t.tg_pos[2]); break;
    case Builtin::thread_position_in_threadgroup: set3(t.pos_in_tg[0], t.pos_in_tg[1], t.pos_in_tg[2]); break;
    case Builtin::thread_position_in_grid:
      set3(t.tg_pos[0] * t.tg_size[0] + t.pos_in_tg[0], t.tg_pos[1] * t.tg_size[1] + t.pos_in_tg[1],
           t.tg_pos[2] * t.tg_size[2] + t.pos_in_tg[2]);
      break;
    case Builtin::thread_index_in_threadgroup: out[0] = t.index_in_tg; break;
    case Builtin::thread_index_in_simdgroup: out[0] = t.lane; break;
    case Builtin::simdgroup_index_in_threadgroup: out[0] = t.simdgroup; break;
    case Builtin::threads_per_threadgroup: set3(t.tg_size[0], t.tg_size[1], t.tg_size[2]); break;
    case Builtin::threadgroups_per_grid: set3(t.grid_size[0], t.grid_size[1], t.grid_size[2]); break;
    case Builtin::threads_per_grid:
      set3(t.grid_size[0] * t.tg_size[0], t.grid_size[1] * t.tg_size[1], t.grid_size[2] * t.tg_size[2]);
      break;
    case Builtin::threads_per_simdgroup:
    case Builtin::thread_execution_width: out[0] = 32; break;
    case Builtin::simdgroups_per_threadgroup: out[0] = t.simdgroups; break;
  }
}

void fail(const std::string& what) {
  Dispatcher& d = disp();
  throw KernelFault(prefix(d) + ", " + thread_str(d.current->ids) + ": " + what);
}

void* buffer_pointer(uint32_t index, std::size_t min_bytes, const char* type_name) {
  Dispatcher& d = disp();
  auto it = d.buffers.find(index);
  if (it == d.buffers.end()) fail("no buffer bound at [[buffer(" + std::to_string(index) + ")]]");
  if (it->second.second < min_bytes)
    fail("buffer [[buffer(" + std::to_string(index) + ")]] holds " + std::to_string(it->second.second) +
         " bytes, the kernel parameter (" + type_name + ") needs " + std::to_string(min_bytes));
  return it->second.first;
}

void threadgroup_barrier(unsigned flags, const std::source_location& loc) {
  Dispatcher& d = disp();
  Fiber& f = *d.current;
  Site s{loc.file_name(), loc.line(), loc.column(), "threadgroup_barrier", nullptr};
  if (d.n_done > 0)
    for (auto& g : d.fibers)
      if (g.state == FState::done)
        fail("divergent threadgroup_barrier: " + site_str(s) + " reached but " + thread_str(g.ids) +
             " has already exited");
  if (d.barrier_arrived == 0) {
    d.barrier_site = s;
  } else if (!(d.barrier_site == s)) {
    fail("divergent threadgroup_barrier: this thread reached " + site_str(s) + " while " +
         std::to_string(d.barrier_arrived) + " thread(s) wait at " + site_str(d.barrier_site));
  }
  f.wait = Wait::barrier;
  f.site = s;
  d.barrier_flags &= flags;
  if (++d.barrier_arrived == d.fibers.size()) {
    d.barrier_arrived = 0;
    if (d.barrier_flags & 2u) ++d.tg_epoch;  // mem_flags::mem_threadgroup
    d.barrier_flags = ~0u;
    for (auto& g : d.fibers)
      if (g.state == FState::blocked && g.wait == Wait::barrier) {
        g.wait = Wait::none;
        set_state(d, g, FState::ready);
      }
    f.wait = Wait::none;
    yield_current(d, f);
  } else {
    block_current(d, f);
  }
}

void simd_collective(const char* op, const std::source_location& loc, void* slot, CollectiveFn fn) {
  Dispatcher& d = disp();
  Fiber& f = *d.current;
  SimdState& sg = d.simd[f.ids.simdgroup];
  Site s{loc.file_name(), loc.line(), loc.column(), op, fn};
  const uint32_t base = f.ids.simdgroup * 32;
  if (sg.n_done > 0)
    for (uint32_t l = 0; l < sg.n_active; ++l)
      if (d.fibers[base + l].state == FState::done)
      fail("divergent SIMD-group operation: " + site_str(s) + " reached but lane " + std::to_string(l) +
           " of this simdgroup has already exited");
  if (sg.arrived == 0) {
    sg.site = s;
  } else if (!(sg.site == s)) {
    fail("divergent SIMD-group operation: this lane reached " + site_str(s) + " while " +
         std::to_string(sg.arrived) + " lane(s) of its simdgroup wait at " + site_str(sg.site));
  }
  sg.slots[f.ids.lane] = slot;
  f.wait = Wait::simd;
  f.site = s;
  if (++sg.arrived == sg.n_active) {
    sg.arrived = 0;
    f.wait = Wait::none;
    fn(sg.slots, sg.n_active);  // may fail() on this (the last) lane
    ++d.sg_epoch[f.ids.simdgroup];
    for (uint32_t l = 0; l < sg.n_active; ++l) {
      Fiber& g = d.fibers[base + l];
      if (g.state == FState::blocked && g.wait == Wait::simd) {
        g.wait = Wait::none;
        set_state(d, g, FState::ready);
      }
    }
    yield_current(d, f);
  } else {
    block_current(d, f);
  }
}

namespace {
// Is an access by `other` (made at epochs other_epoch / other_sg_epoch)
// ordered before the current thread's access?
bool ordered(const Dispatcher& d, uint32_t other, uint32_t other_epoch, uint32_t other_sg_epoch, uint32_t self) {
  if (other_epoch != d.tg_epoch) return true;  // a threadgroup_barrier(mem_threadgroup) in between
  const uint32_t sg = self / 32;
  return other / 32 == sg && other_sg_epoch != d.sg_epoch[sg];  // same SIMD group, a rendezvous in between
}
[[noreturn]] void race(const Dispatcher& d, const TgBlock* b, std::size_t i, const char* what, uint32_t other,
                       const char* other_what) {
  std::string o = other == kMany ? std::string("other threads") : thread_str(d.fibers[other].ids);
  fail("data race on threadgroup memory " + std::string(b->name) + "[" + std::to_string(i) + "]: this thread " +
       what + " it, " + o + " " + other_what +
       " it, and no threadgroup_barrier(mem_flags::mem_threadgroup) (nor, within one SIMD group, a SIMD-group "
       "rendezvous) separates the two accesses");
}
}  // namespace

void tg_check_read(TgBlock* b, std::size_t i) {
  Dispatcher& d = disp();
  if (!d.options.detect_threadgroup_races) return;
  const uint32_t t = d.current->ids.index_in_tg, sg = t / 32;
  TgShadow& sh = static_cast<TgShadow*>(b->shadow)[i];
  if (sh.w_thread != kNobody && sh.w_thread != t && !ordered(d, sh.w_thread, sh.w_epoch, sh.w_sg_epoch, t))
    race(d, b, i, "reads", sh.w_thread, "wrote");
  if (sh.r_epoch != d.tg_epoch) {
    sh.r_epoch = d.tg_epoch;
    sh.r_thread = t;
    sh.r_sg = sg;
  } else {
    if (sh.r_thread != t) sh.r_thread = kMany;
    if (sh.r_sg != sg) sh.r_sg = kMany;
  }
  sh.r_sg_epoch = d.sg_epoch[sg];
}

void tg_check_write(TgBlock* b, std::size_t i) {
  Dispatcher& d = disp();
  if (!d.options.detect_threadgroup_races) return;
  const uint32_t t = d.current->ids.index_in_tg, sg = t / 32;
  TgShadow& sh = static_cast<TgShadow*>(b->shadow)[i];
  if (sh.w_thread != kNobody && sh.w_thread != t && !ordered(d, sh.w_thread, sh.w_epoch, sh.w_sg_epoch, t))
    race(d, b, i, "writes", sh.w_thread, "wrote");
  if (sh.r_epoch == d.tg_epoch && sh.r_thread != t) {
    const bool ok = sh.r_sg == sg && sh.r_sg_epoch != d.sg_epoch[sg];
    if (!ok) race(d, b, i, "writes", sh.r_thread, "read");
  }
  sh.w_thread = t;
  sh.w_epoch = d.tg_epoch;
  sh.w_sg_epoch = d.sg_epoch[sg];
}

TgBlock* threadgroup_block(const void* key, const char* name, std::size_t elem_size, std::size_t align,
                           std::size_t count) {
  Dispatcher& d = disp();
  for (auto& b : d.blocks)
    if (b.key == key) return &b.b;
  const std::size_t bytes = elem_size * count;
  const std::size_t aligned = (bytes + 15) / 16 * 16;
  if (d.tg_bytes + aligned > d.options.threadgroup_memory_limit)
    fail("threadgroup memory '" + std::string(name) + "' (" + std::to_string(bytes) + " bytes) exceeds the limit of " +
         std::to_string(d.options.threadgroup_memory_limit) + " bytes per threadgroup (" +
         std::to_string(d.tg_bytes) + " already used)");
  TgBlock b;
  // Exactly sized allocation per array: ASan also sees overruns of raw
  // accesses; the checked accessors catch them first.
  const std::size_t al = std::max<std::size_t>(align, 16);
  const std::size_t alloc = (std::max<std::size_t>(bytes, 1) + al - 1) / al * al;
  b.data = static_cast<std::byte*>(std::aligned_alloc(al, alloc));
  b.written = static_cast<uint8_t*>(std::calloc(std::max<std::size_t>(count, 1), 1));
  auto* sh = static_cast<TgShadow*>(std::malloc(std::max<std::size_t>(count, 1) * sizeof(TgShadow)));
  b.shadow = sh;
  if (!b.data || !b.written || !sh) fail("out of memory");
  for (std::size_t i = 0; i < count; ++i) sh[i] = TgShadow{};
  std::memset(b.data, 0xff, bytes);  // poison: NaN for floats, -1 for integers
  b.count = count;
  b.elem_size = elem_size;
  b.name = name;
  d.blocks.push_back({key, b, bytes});
  d.tg_bytes += aligned;
  return &d.blocks.back().b;
}

void preemption_point() {
  Dispatcher& d = disp();
  if (d.schedule.preempt <= 0.0) return;
  if (std::uniform_real_distribution<double>(0.0, 1.0)(d.rng) < d.schedule.preempt) yield_current(d, *d.current);
}

}  // namespace detail

// ------------------------------------------------------------ host API
Kernel Kernel::find(std::string_view library, std::string_view name) {
  auto& r = detail::registry();
  auto it = r.find(std::string(library) + "/" + std::string(name));
  if (it == r.end()) {
    std::string msg = "fsdpa_emu: no kernel '" + std::string(library) + "/" + std::string(name) + "'; registered:";
    for (auto& [k, v] : r) msg += " " + k;
    throw EmuError(msg);
  }
  return Kernel(&it->second);
}

std::string Kernel::full_name() const { return std::string(info_->library) + "/" + info_->name; }

std::vector<std::string> registered_kernels() {
  std::vector<std::string> v;
  for (auto& [k, _] : detail::registry()) v.push_back(k);
  return v;
}

std::string Schedule::name() const {
  std::ostringstream o;
  switch (order) {
    case Order::in_order: o << "in_order"; break;
    case Order::reversed: o << "reversed"; break;
    case Order::round_robin: o << "round_robin"; break;
    case Order::shuffled: o << "shuffled(seed=" << seed << ", preempt=" << preempt << ")"; break;
  }
  return o.str();
}

std::vector<Schedule> standard_schedules() {
  return {Schedule::in_order(),    Schedule::reversed(),          Schedule::round_robin(),
          Schedule::shuffled(1),    Schedule::shuffled(2, 0.05),   Schedule::shuffled(3, 0.25)};
}

namespace {
constexpr unsigned char kGuardByte = 0xa5;

// A device buffer of a dispatch.
//  * Under ASan: an exactly sized malloc; ASan reports overruns.
//  * Otherwise: its own mapping  [guard page | pattern bytes | data | slack | guard page]
//    with the data's end aligned to the upper guard page (up to 15 bytes of
//    slack, to keep 16-byte alignment). Accesses into a guard page fault and
//    are reported by the SIGSEGV handler below; writes into the pattern bytes
//    or the slack are found by checking them after the dispatch.
struct DeviceBuffer {
  std::byte* user = nullptr;
  std::size_t n = 0;
  void* map = nullptr;
  std::size_t map_size = 0;
  std::byte* pattern_lo = nullptr;  // [pattern_lo, user) and [user + n, slack_end): guard bytes
  std::byte* slack_end = nullptr;
  uintptr_t guard_lo = 0, guard_hi = 0;  // the two PROT_NONE pages (start addresses)

  DeviceBuffer(const std::vector<std::byte>& bytes) : n(bytes.size()) {
#if FSDPA_EMU_ASAN
    user = static_cast<std::byte*>(std::malloc(n ? n : 1));
    if (!user) throw EmuError("fsdpa_emu: out of memory");
#else
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t data = (4096 + n + 15 + page - 1) / page * page;
    map_size = data + 2 * page;
    map = mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) throw EmuError("fsdpa_emu: cannot map a device buffer");
    auto* base = static_cast<std::byte*>(map);
    mprotect(base, page, PROT_NONE);
    mprotect(base + page + data, page, PROT_NONE);
    guard_lo = reinterpret_cast<uintptr_t>(base);
    guard_hi = reinterpret_cast<uintptr_t>(base + page + data);
    slack_end = base + page + data;
    user = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(slack_end) - n) & ~uintptr_t(15));
    pattern_lo = base + page;
    std::memset(pattern_lo, kGuardByte, static_cast<std::size_t>(slack_end - pattern_lo));
#endif
    if (n) std::memcpy(user, bytes.data(), n);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
#if FSDPA_EMU_ASAN
    std::free(user);
#else
    munmap(map, map_size);
#endif
  }
  // Offset of the first overwritten guard byte (negative: before the data), or 0.
  std::ptrdiff_t overwritten_guard() const {
    if (!pattern_lo) return 0;
    for (const std::byte* p = user; p-- > pattern_lo;)
      if (static_cast<unsigned char>(*p) != kGuardByte) return p - user;
    for (const std::byte* p = user + n; p < slack_end; ++p)
      if (static_cast<unsigned char>(*p) != kGuardByte) return p - user;
    return 0;
  }
};

#if !FSDPA_EMU_ASAN
// Reports faults on the guard pages of device buffers and fiber stacks with
// the kernel and thread, then aborts. Other faults go to the previous handler.
thread_local std::map<uint32_t, std::unique_ptr<DeviceBuffer>>* g_dev_buffers = nullptr;
struct sigaction g_prev_segv;

void segv_handler(int sig, siginfo_t* si, void* uc) {
  const auto a = reinterpret_cast<uintptr_t>(si->si_addr);
  detail::Dispatcher* d = detail::g_disp;
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  static char msg[1024];
  if (d && d->current && g_dev_buffers) {
    const detail::ThreadIds& t = d->current->ids;
    for (auto& [idx, b] : *g_dev_buffers) {
      if ((a >= b->guard_lo && a < b->guard_lo + page) || (a >= b->guard_hi && a < b->guard_hi + page)) {
        const long long off = static_cast<long long>(a) - static_cast<long long>(reinterpret_cast<uintptr_t>(b->user));
        std::snprintf(msg, sizeof msg,
                      "fsdpa_emu: kernel '%s/%s', threadgroup (%u,%u,%u), thread (%u,%u,%u) [index %u, simdgroup %u, "
                      "lane %u]: out-of-bounds device memory access to [[buffer(%u)]] of %zu bytes at byte offset %lld\n",
                      d->kernel->library, d->kernel->name, t.tg_pos[0], t.tg_pos[1], t.tg_pos[2], t.pos_in_tg[0],
                      t.pos_in_tg[1], t.pos_in_tg[2], t.index_in_tg, t.simdgroup, t.lane, idx, b->n, off);
        (void)!write(2, msg, std::strlen(msg));
        std::abort();
      }
    }
    for (auto& f : d->fibers) {
      const auto lo = reinterpret_cast<uintptr_t>(f.stack.map);
      if (a >= lo && a < lo + f.stack.guard) {
        std::snprintf(msg, sizeof msg,
                      "fsdpa_emu: kernel '%s/%s': stack overflow in an emulated thread (thread index %u); "
                      "raise fsdpa_emu::Options::stack_bytes (now %zu)\n",
                      d->kernel->library, d->kernel->name, f.ids.index_in_tg, f.stack.size);
        (void)!write(2, msg, std::strlen(msg));
        std::abort();
      }
    }
  }
  // Not ours: let the previous disposition handle the re-executed fault.
  sigaction(SIGSEGV, &g_prev_segv, nullptr);
  (void)sig;
  (void)uc;
}

void install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
  });
  // An alternate signal stack, so that a fiber stack overflow can be reported.
  thread_local std::unique_ptr<char[]> alt;
  if (!alt) {
    const std::size_t size = 64 * 1024;
    alt.reset(new char[size]);
    stack_t st{};
    st.ss_sp = alt.get();
    st.ss_size = size;
    sigaltstack(&st, nullptr);
  }
}
#endif
}  // namespace

void dispatch(const Kernel& kernel, Dim3 grid, Dim3 tg, Args& args, const Schedule& schedule,
              const Options& options) {
  const detail::KernelInfo& k = kernel.info();
  const std::string kname = "kernel '" + kernel.full_name() + "'";
  if (grid.count() == 0 || tg.count() == 0) throw EmuError(kname + ": empty dispatch");
  if (tg.count() > options.max_threads_per_threadgroup)
    throw EmuError(kname + ": " + std::to_string(tg.count()) + " threads per threadgroup exceed the limit of " +
                   std::to_string(options.max_threads_per_threadgroup));
  if (k.max_total_threads_per_threadgroup && tg.count() > k.max_total_threads_per_threadgroup)
    throw EmuError(kname + ": " + std::to_string(tg.count()) +
                   " threads per threadgroup exceed its [[max_total_threads_per_threadgroup(" +
                   std::to_string(k.max_total_threads_per_threadgroup) + ")]]");
  for (auto& p : k.params)
    if (p.kind == detail::ParamInfo::Kind::buffer && !args.buffers().count(p.buffer_index))
      throw EmuError(kname + ": no buffer bound at [[buffer(" + std::to_string(p.buffer_index) + ")]]");
  if (detail::g_disp) throw EmuError("fsdpa_emu: nested dispatch");

  // Device buffers: see DeviceBuffer.
  std::map<uint32_t, std::unique_ptr<DeviceBuffer>> dev;
  for (auto& [idx, bytes] : args.buffers()) dev[idx] = std::make_unique<DeviceBuffer>(bytes);
#if !FSDPA_EMU_ASAN
  install_fault_handler();
  g_dev_buffers = &dev;
  struct ClearGuards {
    ~ClearGuards() { g_dev_buffers = nullptr; }
  } clear_guards;
#endif

  detail::Dispatcher d;
  d.kernel = &k;
  d.grid = grid;
  d.tg = tg;
  d.schedule = schedule;
  d.options = options;
  d.rng.seed(schedule.seed * 0x9e3779b97f4a7c15ull + 12345);
  for (auto& [idx, b] : dev) d.buffers[idx] = {b->user, b->n};
  std::size_t stack = options.stack_bytes ? options.stack_bytes : (FSDPA_EMU_ASAN ? 512 * 1024 : 64 * 1024);
  detail::g_stacks.ensure(tg.count(), stack);

  std::vector<std::array<uint32_t, 3>> order;
  for (uint32_t z = 0; z < grid.z; ++z)
    for (uint32_t y = 0; y < grid.y; ++y)
      for (uint32_t x = 0; x < grid.x; ++x) order.push_back({x, y, z});
  if (schedule.order == Schedule::Order::reversed || schedule.order == Schedule::Order::round_robin)
    std::reverse(order.begin(), order.end());
  if (schedule.order == Schedule::Order::shuffled) std::shuffle(order.begin(), order.end(), d.rng);

  detail::g_disp = &d;
  try {
    for (auto& p : order) detail::run_threadgroup(d, p.data());
  } catch (EmuError& e) {
    detail::g_disp = nullptr;
    throw EmuError(std::string(e.what()) + " [schedule " + schedule.name() + "]");
  }
  detail::g_disp = nullptr;

  for (auto& [idx, b] : dev) {
    if (const std::ptrdiff_t off = b->overwritten_guard())
      throw EmuError(kname + ": out-of-bounds write " + (off < 0 ? "before the start" : "past the end") +
                     " of device buffer [[buffer(" + std::to_string(idx) + ")]] of " + std::to_string(b->n) +
                     " bytes (byte offset " + std::to_string(off) + ") [schedule " + schedule.name() + "]");
    auto& out = args.raw(idx);
    if (b->n) std::memcpy(out.data(), b->user, b->n);
  }
}

void dispatch_all_schedules(const Kernel& kernel, Dim3 grid, Dim3 tg, Args& args,
                            const std::vector<Schedule>& schedules, const Options& options) {
  if (schedules.empty()) throw EmuError("dispatch_all_schedules: no schedules");
  std::optional<Args> first;
  for (const Schedule& s : schedules) {
    Args a = args;
    dispatch(kernel, grid, tg, a, s, options);
    if (!first) {
      first = std::move(a);
      continue;
    }
    for (auto& [idx, bytes] : first->buffers()) {
      const auto& other = a.raw(idx);
      if (other != bytes) {
        std::size_t off = 0;
        while (off < bytes.size() && bytes[off] == other[off]) ++off;
        throw EmuError("kernel '" + kernel.full_name() + "': results depend on the schedule (data race?): buffer [[buffer(" +
                       std::to_string(idx) + ")]] differs at byte " + std::to_string(off) + " between schedules " +
                       schedules.front().name() + " and " + s.name());
      }
    }
  }
  args = std::move(*first);
}

}  // namespace fsdpa_emu
