// The CPU pool next to an OpenMP runtime (this executable links OpenMP, as
// PyTorch brings libgomp into a Python process): jobs run on the OpenMP
// team instead of the pool's own threads when the caller is outside any
// OpenMP region and both want the same number of threads; the results are
// the same bytes on either route; a forked child, whose OpenMP runtime
// cannot run a region after the parent used it, falls back to the pool.
#include <gtest/gtest.h>

#include <dirent.h>
#include <omp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "attention_case.h"
#include "wait_child.h"

namespace fsdpa_test {
namespace {

// Threads of this process named "fsdpa-pool" (the pool names its workers).
int own_pool_threads() {
  int n = 0;
  DIR* dir = opendir("/proc/self/task");
  if (!dir) return -1;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream comm(std::string("/proc/self/task/") + e->d_name + "/comm");
    std::string name;
    std::getline(comm, name);
    n += name == "fsdpa-pool";
  }
  closedir(dir);
  return n;
}

// Sets FLASHSDPA_CPU_OPENMP (read on every call) for one scope.
struct OwnThreadsOnly {
  OwnThreadsOnly() { setenv("FLASHSDPA_CPU_OPENMP", "0", 1); }
  ~OwnThreadsOnly() { unsetenv("FLASHSDPA_CPU_OPENMP"); }
};

// Both libraries at `threads`, as PyTorch and flashsdpa by default.
void use_threads(int threads) {
  omp_set_num_threads(threads);
  fsdpa_set_num_threads(threads);
}

// Wakes the OpenMP team (as PyTorch's ops do between attention calls).
void openmp_work() {
  volatile double sink = 0;
#pragma omp parallel
  { sink = sink + omp_get_thread_num(); }
}

// out, lse and (with backward) dq, dk, dv of one problem.
std::vector<Tensor> run(Problem& pr, bool backward) {
  const Case& c = pr.c;
  Tensor out = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, c.dt), lse = pr.make_lse();
  Tensor dq = pr.make(c.Hq, c.Sq, pr.total_q, c.D, c.dt);
  Tensor dk = pr.make(c.Hk, c.Sk, pr.total_k, c.D, c.dt);
  Tensor dv = pr.make(c.Hk, c.Sk, pr.total_k, c.Dv, c.dt);
  EXPECT_EQ(fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, &lse, nullptr), FSDPA_OK)
      << fsdpa_last_error();
  if (!backward) return {out, lse};
  EXPECT_EQ(fsdpa_backward(&pr.p, &pr.dout, &pr.q, &pr.k, &pr.v, &out, &lse, &dq, &dk, &dv,
                           nullptr),
            FSDPA_OK)
      << fsdpa_last_error();
  return {out, lse, dq, dk, dv};
}

Case prefill_case() {
  Case c;
  c.name = "prefill";
  c.B = 2; c.Hq = 4; c.Hk = 2; c.Sq = 203; c.Sk = 203; c.D = 40; c.Dv = 40;
  c.causal = true;
  return c;
}

// Declared first: in a fresh process no other test has started the pool.
TEST(OpenMpTeam, JobsRunOnTheTeamAndStartNoThreadsOfTheirOwn) {
  ASSERT_EQ(own_pool_threads(), 0) << "the pool ran before this test";
  use_threads(3);
  openmp_work();
  Problem pr(prefill_case());
  run(pr, true);
  openmp_work();
  run(pr, true);
  EXPECT_EQ(own_pool_threads(), 0) << "the jobs ran on the pool's own threads";
  {
    OwnThreadsOnly own;  // the user setting
    run(pr, true);
  }
  EXPECT_EQ(own_pool_threads(), 2) << "FLASHSDPA_CPU_OPENMP=0 did not use the pool (3 threads)";
  use_threads(0);
}

// With no count set, flashsdpa takes the OpenMP team's size (PyTorch's
// torch.get_num_threads()), follows it as it changes, and so runs on the
// team: a team of 5 starts none of the pool's threads (the pool would need 4).
TEST(OpenMpTeam, DefaultThreadCountIsTheTeamSize) {
  const char* env = getenv("FLASHSDPA_NUM_THREADS");
  const std::string saved = env ? env : "";
  unsetenv("FLASHSDPA_NUM_THREADS");
  fsdpa_set_num_threads(0);
  omp_set_num_threads(3);
  EXPECT_EQ(fsdpa_get_num_threads(), 3);
  omp_set_num_threads(5);
  EXPECT_EQ(fsdpa_get_num_threads(), 5);
  const int pool_before = own_pool_threads();
  openmp_work();
  Problem pr(prefill_case());
  run(pr, true);
  EXPECT_EQ(own_pool_threads(), pool_before) << "the default count did not take the team";
  // An explicit count still comes first.
  fsdpa_set_num_threads(2);
  EXPECT_EQ(fsdpa_get_num_threads(), 2);
  fsdpa_set_num_threads(0);
  omp_set_num_threads(omp_get_num_procs());
  if (env) setenv("FLASHSDPA_NUM_THREADS", saved.c_str(), 1);
}

// The same bytes on the team and on the pool's own threads, over thread
// counts (2, 3: the team route; 4 against OpenMP's 2: the pool on both),
// prefill with GQA, a causal band and a mask, decode (split keys), varlen
// with an empty sequence, dropout.
TEST(OpenMpTeam, ResultsAreTheSameBytesOnEitherRoute) {
  std::vector<Case> cases;
  cases.push_back(prefill_case());
  Case decode;
  decode.name = "decode";
  decode.B = 1; decode.Hq = 8; decode.Hk = 2; decode.Sq = 1; decode.Sk = 1500;
  decode.D = 64; decode.Dv = 64;
  cases.push_back(decode);
  Case band;
  band.name = "band_mask";
  band.B = 2; band.Hq = 3; band.Hk = 3; band.Sq = 130; band.Sk = 170; band.D = 24; band.Dv = 56;
  band.wl = 40; band.wr = 7; band.mask = MaskKind::additive; band.dt = DT::bf16;
  cases.push_back(band);
  Case varlen;
  varlen.name = "varlen_dropout";
  varlen.B = 3; varlen.Hq = 4; varlen.Hk = 1; varlen.Sq = 150; varlen.Sk = 150;
  varlen.D = 32; varlen.Dv = 32; varlen.varlen = true; varlen.dropout = 0.2f;
  cases.push_back(varlen);
  for (const int threads : {2, 3, 4}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(describe(c) + ", " + std::to_string(threads) + " threads");
      omp_set_num_threads(threads == 4 ? 2 : threads);
      fsdpa_set_num_threads(threads);
      Problem pr(c);
      openmp_work();
      const std::vector<Tensor> team = run(pr, true);
      std::vector<Tensor> own;
      {
        OwnThreadsOnly o;
        own = run(pr, true);
      }
      ASSERT_EQ(team.size(), own.size());
      for (size_t i = 0; i < team.size(); ++i)
        EXPECT_EQ(team[i].bytes, own[i].bytes) << "tensor " << i << " (out, lse, dq, dk, dv)";
    }
  }
  use_threads(0);
}

// Called from inside an OpenMP region (each of its threads calling): the
// pool runs the jobs one at a time, with the same results.
TEST(OpenMpTeam, CallsFromInsideAnOpenMpRegion) {
  use_threads(2);
  Problem pr(prefill_case());
  const std::vector<Tensor> outside = run(pr, false);
  std::vector<std::vector<Tensor>> inside(2);
#pragma omp parallel num_threads(2)
  inside[omp_get_thread_num()] = run(pr, false);
  for (const auto& r : inside) {
    ASSERT_EQ(r.size(), outside.size());
    for (size_t i = 0; i < r.size(); ++i) EXPECT_EQ(r[i].bytes, outside[i].bytes);
  }
  use_threads(0);
}

// After the parent ran jobs on its OpenMP team, a forked child's calls
// (and its child's) complete on the pool, with the parent's results.
TEST(OpenMpTeam, ForkedChildAfterTheParentUsedTheTeam) {
  use_threads(2);
  openmp_work();
  Problem pr(prefill_case());
  const std::vector<Tensor> parent = run(pr, true);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto same = [&] {
      const std::vector<Tensor> r = run(pr, true);
      for (size_t i = 0; i < r.size(); ++i)
        if (r[i].bytes != parent[i].bytes) return false;
      return true;
    };
    int code = same() && same() ? 0 : 1;
    if (code == 0) {
      const pid_t grandchild = fork();
      if (grandchild == 0) _exit(same() ? 0 : 1);
      const int st = wait_with_timeout(grandchild, 60);
      code = st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 2;
    }
    _exit(code);
  }
  const int st = wait_with_timeout(pid, 60);
  ASSERT_NE(st, -1) << "forked child hung (killed after 60 s)";
  ASSERT_TRUE(WIFEXITED(st)) << "child died by signal " << WTERMSIG(st);
  EXPECT_EQ(WEXITSTATUS(st), 0) << "1: results differ or a call failed in the child, 2: in the grandchild";
  // The parent still runs on its team.
  openmp_work();
  const std::vector<Tensor> again = run(pr, true);
  for (size_t i = 0; i < again.size(); ++i) EXPECT_EQ(again[i].bytes, parent[i].bytes);
  use_threads(0);
}

}  // namespace
}  // namespace fsdpa_test
