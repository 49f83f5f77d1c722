// fork() after the CPU thread pool has run: the child must get a working
// pool of its own (it inherits none of the parent's worker threads), and
// the parent's pool must keep working. A child that hangs is killed after a
// timeout and the test fails.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "attention_case.h"
#include "wait_child.h"

namespace fsdpa_test {
namespace {

// A forward big enough to use several threads (many q-blocks x heads).
fsdpa_status run_forward() {
  Case c;
  c.B = 2; c.Hq = 4; c.Hk = 4; c.Sq = 200; c.Sk = 200; c.D = 32; c.Dv = 32;
  Problem pr(c);
  Tensor out({c.B, c.Hq, c.Sq, c.Dv}, DT::f32);
  return fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, nullptr, nullptr);
}

TEST(Fork, ChildRunsMultiThreadedCallsAfterParentUsedThePool) {
  fsdpa_set_num_threads(4);  // several workers even on a 2-core machine
  ASSERT_EQ(run_forward(), FSDPA_OK) << fsdpa_last_error();
  for (int generation = 0; generation < 2; ++generation) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // Child: two calls (a fresh pool, then reusing it), and a grandchild.
      int code = run_forward() == FSDPA_OK && run_forward() == FSDPA_OK ? 0 : 1;
      if (code == 0) {
        const pid_t grandchild = fork();
        if (grandchild == 0) _exit(run_forward() == FSDPA_OK ? 0 : 1);
        const int st = wait_with_timeout(grandchild, 60);
        code = st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 2;
      }
      _exit(code);  // no static destructors / gtest teardown in the child
    }
    const int st = wait_with_timeout(pid, 60);
    ASSERT_NE(st, -1) << "forked child hung (killed after 60 s)";
    ASSERT_TRUE(WIFEXITED(st)) << "child died by signal " << WTERMSIG(st);
    EXPECT_EQ(WEXITSTATUS(st), 0) << "1: a call failed in the child, 2: in the grandchild";
    // The parent's pool still works after the fork.
    ASSERT_EQ(run_forward(), FSDPA_OK) << fsdpa_last_error();
  }
  fsdpa_set_num_threads(0);
}

// Forks while another thread keeps the pool busy: the prepare handler must
// wait for the job in flight, and neither side may deadlock.
TEST(Fork, ForkWhileAnotherThreadRunsAJob) {
  fsdpa_set_num_threads(4);
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0}, calls{0};
  std::thread busy([&] {
    while (!stop.load()) {
      if (run_forward() != FSDPA_OK) failures.fetch_add(1);
      calls.fetch_add(1);
    }
  });
  // The forks race jobs in flight, not the busy thread's first call: a
  // fork while another thread is inside a function-local static's first
  // initialisation (Highway's dispatch tables, say) leaves the child a
  // guard that never completes, a hazard of fork() itself.
  while (calls.load() == 0) std::this_thread::yield();
  for (int i = 0; i < 5; ++i) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) _exit(run_forward() == FSDPA_OK ? 0 : 1);
    const int st = wait_with_timeout(pid, 60);
    ASSERT_NE(st, -1) << "forked child hung (killed after 60 s)";
    ASSERT_TRUE(WIFEXITED(st));
    EXPECT_EQ(WEXITSTATUS(st), 0);
  }
  stop = true;
  busy.join();
  EXPECT_EQ(failures.load(), 0);
  fsdpa_set_num_threads(0);
}

}  // namespace
}  // namespace fsdpa_test
