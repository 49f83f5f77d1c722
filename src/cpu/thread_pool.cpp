#include "cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/settings.h"
#include "cpu/core_count.h"
#include "cpu/heuristics.h"
#include "cpu/openmp_runtime.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FSDPA_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define FSDPA_CPU_RELAX() asm volatile("yield")
#else
#define FSDPA_CPU_RELAX() ((void)0)
#endif

namespace fsdpa {
namespace cpu {
namespace {

thread_local bool t_inside_pool = false;
bool g_forked_child = false;  // set in a child made by fork(); inherited by its children

// Waits until pred() holds or kPoolSpinMicros have passed; returns pred().
// Waking a thread sleeping on a condition variable costs tens of
// microseconds (60 us per call measured on the 2-core dev VM), which
// dominated decode-sized calls; a bounded wait catches back-to-back calls.
// After a short busy spin it yields, so that on an oversubscribed machine
// (other runtimes' spinning threads) the thread it waits for can run.
template <class Pred>
bool spin_until(Pred pred) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::microseconds(kPoolSpinMicros);
  for (int i = 0;; ++i) {
    if (pred()) return true;
    if (i < 64) {
      FSDPA_CPU_RELAX();
      continue;
    }
    std::this_thread::yield();
    if (clock::now() > deadline) return pred();
  }
}

// "fsdpa-pool", as top, gdb and the tests see the pool's threads.
void name_this_thread() {
#if defined(__APPLE__)
  pthread_setname_np("fsdpa-pool");
#else
  pthread_setname_np(pthread_self(), "fsdpa-pool");
#endif
}

// A job is published as one atomic word, generation << 16 | threads, so a
// worker learns in one load whether a new job exists and whether it takes
// part. The job's function and size are written before the word (release)
// and read only by the workers taking part, which the caller waits for.
class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  Pool* abandoned_before_ = nullptr;  // chain of pools a forked child gave up

  // Held from fork()'s prepare handler to its parent handler.
  void lock_for_fork() {
    job_mu_.lock();
    mu_.lock();
  }
  void unlock_after_fork() {
    mu_.unlock();
    job_mu_.unlock();
  }

  void run(int threads, int64_t n, const std::function<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> job_lock(job_mu_);  // one job at a time
    ensure_workers(threads - 1);
    fn_ = &fn;
    n_ = n;
    next_.store(0, std::memory_order_relaxed);
    pending_.store(threads - 1, std::memory_order_relaxed);
    generation_ += 1;
    job_.store(generation_ << 16 | uint64_t(threads), std::memory_order_release);
    {
      std::lock_guard<std::mutex> lk(mu_);  // no lost wake-up for a worker about to sleep
    }
    cv_.notify_all();
    work();
    if (!spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    fn_ = nullptr;
  }

 private:
  void ensure_workers(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      const int slot = static_cast<int>(workers_.size()) + 1;
      // The worker starts from the generation before the job being
      // published, which it may first see only after publication.
      workers_.emplace_back([this, slot, g = generation_] { loop(slot, g); });
    }
  }

  void work() {
    t_inside_pool = true;
    for (;;) {
      const int64_t t = next_.fetch_add(1);
      if (t >= n_) break;
      (*fn_)(t);
    }
    t_inside_pool = false;
  }

  void loop(int slot, uint64_t seen) {
    name_this_thread();
    for (;;) {
      auto fresh = [&] { return (job_.load(std::memory_order_acquire) >> 16) != seen; };
      if (!spin_until(fresh)) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || fresh(); });
        if (stop_) return;
      }
      const uint64_t job = job_.load(std::memory_order_acquire);
      seen = job >> 16;
      if (slot >= static_cast<int>(job & 0xFFFF)) continue;  // not needed this time
      work();
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_one();
      }
    }
  }

  std::mutex job_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  uint64_t generation_ = 0;
  std::atomic<uint64_t> job_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0};
  bool stop_ = false;
};

// fork(): a child has only the thread that forked, so the parent's
// workers do not exist there and a job would wait for them forever
// (DataLoader workers and multiprocessing fork pools hit this). The prepare
// handler takes the pool's locks, so no job is half published at the fork
// and the parent carries on unchanged; the child abandons the inherited
// pool (its std::thread objects name threads that do not exist: they can
// be neither joined nor destroyed, and its condition variables may count
// waiters that are gone) and builds a fresh one on its next call.
std::mutex g_pool_mu;  // guards g_pool; held across fork()
Pool* g_pool = nullptr;
Pool* g_abandoned = nullptr;  // kept reachable, so leak checkers stay quiet

void before_fork() {
  g_pool_mu.lock();
  // A fork from inside a task would wait for its own job: skip the job lock
  // there (the child then abandons a pool in the middle of a job, which it
  // does anyway).
  if (g_pool && !t_inside_pool) g_pool->lock_for_fork();
}
void after_fork_in_parent() {
  if (g_pool && !t_inside_pool) g_pool->unlock_after_fork();
  g_pool_mu.unlock();
}
void after_fork_in_child() {
  if (g_pool) {  // abandoned on purpose: see above
    g_pool->abandoned_before_ = g_abandoned;
    g_abandoned = g_pool;
  }
  g_pool = nullptr;
  g_forked_child = true;
  t_inside_pool = false;
  new (&g_pool_mu) std::mutex();  // the forking thread held it
}

// Registered when the library loads, not on the first call: a fork racing
// another thread's first call (which takes g_pool_mu to create the pool)
// must already find the handlers, or the child inherits a locked mutex.
[[maybe_unused]] const int g_atfork_registered =
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);

// The process-wide pool, destroyed (workers joined) at exit.
struct PoolOwner {
  ~PoolOwner() {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    delete g_pool;
    g_pool = nullptr;
  }
};

Pool& pool() {
  static PoolOwner owner;
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (!g_pool) g_pool = new Pool();
  return *g_pool;
}

// A job on the OpenMP runtime's team: the same counter scheduling as the
// pool's, so which thread runs a task never matters.
struct TeamJob {
  const std::function<void(int64_t)>* fn;
  int64_t n;
  std::atomic<int64_t> next{0};
};

void run_team_member(void* data) noexcept {
  auto* job = static_cast<TeamJob*>(data);
  t_inside_pool = true;
  for (;;) {
    const int64_t t = job->next.fetch_add(1);
    if (t >= job->n) break;
    (*job->fn)(t);
  }
  t_inside_pool = false;
}

// FLASHSDPA_CPU_OPENMP=0: never run on the process's OpenMP threads.
bool own_threads_requested() {
  const char* env = getenv("FLASHSDPA_CPU_OPENMP");
  return env && strcmp(env, "0") == 0;
}

}  // namespace

Route choose_route(const RouteFacts& f) {
  // One thread (or one task), or called from inside one of our tasks (the
  // job around it already keeps every thread busy): run here.
  if (f.threads <= 1 || f.inside_task) return Route::serial;
  // The user's choice (FLASHSDPA_CPU_OPENMP=0).
  if (f.own_threads_requested) return Route::own_threads;
  // A child made by fork() has none of the parent's OpenMP threads, and
  // libgomp, unlike the pool, does not start over there: a region hangs.
  if (f.forked_child) return Route::own_threads;
  // No OpenMP runtime in the process: no other threads to share the cores with.
  if (!f.openmp_loaded) return Route::own_threads;
  // Inside an OpenMP region: a nested team would get one thread (nesting
  // is off by default) or oversubscribe the cores.
  if (f.openmp_level > 0) return Route::own_threads;
  // A team of another size makes libgomp end or start threads on every
  // change of size, i.e. at each switch between PyTorch's ops and ours.
  if (f.openmp_team_threads != f.configured_threads) return Route::own_threads;
  // PyTorch's OpenMP threads spin for a while after each of its ops
  // (libgomp's default wait policy); our own threads would compete with
  // them for the cores (the CPU demo's step was 7% slower for it), while
  // the team's threads pick up our tasks as they spin.
  return Route::openmp_team;
}

int pool_threads() { return cpu_thread_count(); }

int default_thread_count() {
  // Next to an OpenMP runtime (PyTorch's libgomp): the size of the team a
  // region started here would get (omp_get_max_threads: PyTorch's thread
  // count, OMP_NUM_THREADS, torch.set_num_threads, e.g. 1 in DataLoader
  // workers). choose_route puts jobs on that team only at equal sizes, and
  // PyTorch's default is the physical cores while this one was the logical
  // CPUs: on SMT machines the team was never used, and our pool competed
  // with PyTorch's spinning threads. (Not in a forked child: the lookup's
  // lock may be held there, and the team's threads do not exist.)
  if (!g_forked_child)
    if (const OpenMpRuntime* omp = loaded_openmp_runtime())
      if (const int n = omp->get_max_threads(); n > 0) return n;
  // Else the physical cores: the kernels are bound by a core's FMA or AMX
  // units and by the per-core caches their tiles are sized for
  // (heuristics.h), which SMT siblings share; PyTorch and oneDNN default
  // to the physical cores too.
  return physical_cores();
}

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  const int configured = pool_threads();
  RouteFacts f;
  f.configured_threads = configured;
  f.threads = static_cast<int>(std::min<int64_t>(configured, n));
  f.inside_task = t_inside_pool;
  f.own_threads_requested = own_threads_requested();
  f.forked_child = g_forked_child;
  // The runtime is not looked up in a forked child: the lookup's lock may
  // have been held by a thread that does not exist there.
  const OpenMpRuntime* omp = nullptr;
  if (f.threads > 1 && !f.inside_task && !f.own_threads_requested && !f.forked_child) {
    omp = loaded_openmp_runtime();
    if (omp) {
      f.openmp_loaded = true;
      f.openmp_level = omp->get_level();
      f.openmp_team_threads = omp->get_max_threads();
    }
  }
  switch (choose_route(f)) {
    case Route::serial:
      for (int64_t t = 0; t < n; ++t) fn(t);
      return;
    case Route::openmp_team: {
      TeamJob job{&fn, n};
      omp->parallel(run_team_member, &job, static_cast<unsigned>(configured), 0);
      return;
    }
    case Route::own_threads:
      pool().run(f.threads, n, fn);
      return;
  }
}

}  // namespace cpu
}  // namespace fsdpa
