#include "cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "core/settings.h"
#include "cpu/heuristics.h"

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

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

int pool_threads() { return cpu_thread_count(); }

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  const int threads = static_cast<int>(std::min<int64_t>(pool_threads(), n));
  if (threads <= 1 || t_inside_pool) {
    for (int64_t t = 0; t < n; ++t) fn(t);
    return;
  }
  pool().run(threads, n, fn);
}

}  // namespace cpu
}  // namespace fsdpa
