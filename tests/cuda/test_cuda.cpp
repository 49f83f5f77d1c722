// The CUDA backend against the fp64 reference, through the C ABI on device
// memory: the case registry's cases for CUDA (tests/common/case_registry.cc;
// the grid shared with the CPU, CUDA's kernel scopes, block-sparse, KV
// cache, determinism). Same inputs and tolerance rule as the CPU backend's
// test (tests/cpp/attention_case.h, test_tensor.h): error <= 2x that of a
// same-precision computation (rounding of the exact result + fp32
// accumulation). Every case runs on the tensor-core path (fp16/bf16) and
// again on the SIMT path; outputs are poisoned (NaN) before each run.
// The registry also gives the bitwise determinism cases and the KV caches
// (paged, cache rows, seqused_k, leftpad: kv_grid). Plus checks internal to
// this backend, kept here: forced split counts (decode kernel and
// tensor-core path), long sequences (tensor-core vs the fp32 SIMT path on
// the GPU), the NaN-input check, the workspace allocator, the plan's
// explanations and the KV-cache debug checks.
//
// No GPU: prints SKIP and exits 77 (ctest SKIP_RETURN_CODE).
// On sm_90 the fp16/bf16 cases in its scope run the Hopper (wgmma) forward
// and, with deterministic = 0 (every case but the determinism check), the
// Hopper backward; --no-hopper (FLASHSDPA_CUDA_FORCE=sm80) runs them on the
// sm_80 kernels.
// Usage: flashsdpa_cuda_tests [--quick] [--filter SUBSTR] [--threads N] [--no-long]
//                             [--no-hopper] [--long-only] [--list] [--deterministic]
//                             [--determinism-only] [--kv-only]
// --deterministic runs the grid's backwards with deterministic = 1;
// --determinism-only runs only the bitwise determinism cases.
// --list prints the grid's cases with their fields and exits (no GPU needed).
// --kv-only runs only the KV-cache cases (pages, cache rows, seqused_k,
// leftpad; kv_grid) and the KV-cache debug checks.
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "registry_case.h"

using namespace fsdpa_test;

namespace {

#define CUDA_OK(x)                                                                    \
  do {                                                                                \
    cudaError_t e_ = (x);                                                             \
    if (e_ != cudaSuccess) {                                                          \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      exit(2);                                                                        \
    }                                                                                 \
  } while (0)

// A device copy of a host Tensor (same shape and strides).
struct Dev {
  void* ptr = nullptr;
  size_t bytes = 0;
  DLTensor dl{};
  Dev() = default;
  explicit Dev(const Tensor& h, bool copy = true) {
    bytes = h.bytes.size();
    CUDA_OK(cudaMalloc(&ptr, bytes));
    if (copy) CUDA_OK(cudaMemcpy(ptr, h.bytes.data(), bytes, cudaMemcpyHostToDevice));
    dl = h.dl;
    dl.data = ptr;
    dl.device = {kDLCUDA, 0};
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() {
    if (ptr) cudaFree(ptr);
  }
  void poison(cudaStream_t s) { CUDA_OK(cudaMemsetAsync(ptr, 0xFF, bytes, s)); }
  void to_host(Tensor& h, cudaStream_t s) {
    CUDA_OK(cudaMemcpyAsync(h.bytes.data(), ptr, bytes, cudaMemcpyDeviceToHost, s));
    CUDA_OK(cudaStreamSynchronize(s));
  }
  DLTensor* operator&() { return &dl; }
};

// The registry's cases for CUDA (tests/common/case_registry.cc): the grid
// shared with the CPU, the CUDA shapes (every head-dim bucket, tiny dims,
// split-KV decode, block-structured masks), and the kernel scopes (h_:
// Hopper forward, hbm_/hb256_: Hopper backward with masks / at D 256, dec_:
// decode kernel, hm_: Hopper forward with masks); quick: --quick's subset.
std::vector<Case> make_grid(bool quick) { return registry_reference_cases(fsdpa_cases::kCuda, quick); }

const char* dt_name(DT t) {
  const char* names[] = {"f32", "f16", "bf16", "f64", "u8", "i32"};
  return names[static_cast<int>(t)];
}

struct Stats {
  std::mutex mu;
  int passed = 0, failed = 0;
  // (dtype/path, quantity) -> max error and max err/tol ratio
  std::map<std::string, std::pair<double, double>> maxerr;
  void record(const std::string& key, double err, double ratio) {
    std::lock_guard<std::mutex> l(mu);
    auto& e = maxerr[key];
    e.first = std::max(e.first, err);
    e.second = std::max(e.second, ratio);
  }
};
Stats g_stats;
bool g_deterministic = false;  // --deterministic: every grid case with deterministic = 1
std::mutex g_print;

// The override FLASHSDPA_CUDA_FORCE (src/cuda/plan.h) the run started with
// (--no-hopper puts "sm80" first); set_force() sets it for a case.
std::string g_force_base;
void set_force(const std::string& v) {
  if (v.empty()) unsetenv("FLASHSDPA_CUDA_FORCE");
  else setenv("FLASHSDPA_CUDA_FORCE", v.c_str(), 1);
}
// setenv is process-wide: the path is chosen by the backend from the
// environment, so cases of the two paths do not run concurrently.
void set_path(bool simt) { set_force(simt ? std::string("simt") : g_force_base); }

struct Check {
  std::string msg;
  bool ok = true;
  void close(const char* what, const Tensor& got, const Tensor& ref64, DT dt, int64_t red,
             bool grad, const std::string& key, double factor) {
    const double err = max_abs_diff(got, ref64);
    const double base = baseline_error(ref64, dt, red, grad);
    const double tol = factor * base;
    g_stats.record(key + " " + what, err, base > 0 ? err / base : 0);
    char buf[256];
    snprintf(buf, sizeof buf, " %s=%.3g(%.2fx)", what, err, base > 0 ? err / base : 0.0);
    msg += buf;
    if (!(err <= tol)) ok = false;
  }
};

// Cases named "blockmask": replace the mask by one made of 32x32 tiles that
// are all masked, all visible or mixed (plus a fully masked row block), so
// that the backend's mask block skipping sees every tile state.
void blockify(Problem& pr) {
  const Case& c = pr.c;
  std::mt19937 g(99);
  std::normal_distribution<double> n(0.0, 1.0);
  if (c.mask == MaskKind::boolean) {
    pr.mask = Tensor({c.B, 1, c.Sq, c.Sk}, DT::u8);
    for (int64_t x = 0; x < pr.mask.numel(); ++x) {
      const int64_t j = x % c.Sk, i = (x / c.Sk) % c.Sq, b = x / (c.Sk * c.Sq);
      const int64_t ti = i / 32, tj = j / 32;
      bool keep = (ti + tj + b) % 3 != 0;
      if (ti == tj) keep = (i + j) % 5 != 0;  // mixed tiles on the diagonal
      if (ti == 1) keep = false;              // rows 32..63: no visible key
      pr.mask.set(x, keep);
    }
  } else if (c.mask == MaskKind::additive) {
    pr.mask = Tensor({c.Sq, c.Sk}, DT::f32);
    for (int64_t x = 0; x < pr.mask.numel(); ++x) {
      const int64_t j = x % c.Sk, i = x / c.Sk;
      const int64_t k = (i / 32 + 2 * (j / 32)) % 4;
      pr.mask.set(x, k == 1 ? -INFINITY : k == 2 ? n(g) : 0.0);
    }
  }
  pr.p.mask = &pr.mask;
}

// Masks of the hbm_* cases (tests/common/case_registry.cc), by the pattern in the name:
//   bs128 / bs48: bool [B, 1, Sq, Sk], blocks of 128 (48) x 128 (48): block
//     (bi, bj) of batch b all false when (bi + 2 bj + b) % 3 == 0, random
//     where (bi + bj) % 4 == 1, else all true;
//   perbh: bool [B, Hq, Sq, Sk], blocks of 64 rows x 128 keys, the same rule
//     with the head in the phase;
//   add96: additive fp32 [Sq, Sk], blocks of 96: -inf, random or 0;
//   addbh: additive in the case's dtype, [1, Hq, Sq, Sk] (broadcast over
//     the batch), blocks of 64 x 128 as perbh;
//   dense_bool: bool [B, 1, Sq, Sk], 85% true (every step mixed).
// Every pattern also masks rows 40..50 (no visible key) and keys 140..170
// (no query sees them) entirely.
void hbm_mask(Problem& pr) {
  const Case& c = pr.c;
  std::mt19937 g(7);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::bernoulli_distribution keep(0.7), dense(0.85);
  const std::string& n = c.name;
  auto has = [&](const char* x) { return n.find(x) != std::string::npos; };
  const bool additive = c.mask == MaskKind::additive;
  const bool perbh = has("perbh") || has("addbh");
  const int64_t bi_sz = has("bs48") ? 48 : has("add96") ? 96 : perbh ? 64 : 128;
  const int64_t bj_sz = has("bs48") ? 48 : has("add96") ? 96 : 128;
  const int64_t MB = has("addbh") ? 1 : c.B, MH = perbh ? c.Hq : 1;
  const DT mdt = !additive ? DT::u8 : has("addbh") ? c.dt : DT::f32;
  pr.mask = has("add96") ? Tensor({c.Sq, c.Sk}, mdt) : Tensor({MB, MH, c.Sq, c.Sk}, mdt);
  for (int64_t x = 0; x < pr.mask.numel(); ++x) {
    const int64_t j = x % c.Sk, i = (x / c.Sk) % c.Sq, h = (x / (c.Sk * c.Sq)) % MH,
                  b = x / (c.Sk * c.Sq * MH);
    // 0: masked, 1: visible (additive 0), 2: random.
    int kind;
    if (has("dense_bool")) {
      kind = 2;
    } else {
      const int64_t bi = i / bi_sz, bj = j / bj_sz;
      kind = (bi + 2 * bj + b + h) % 3 == 0 ? 0 : (bi + bj) % 4 == 1 ? 2 : 1;
    }
    if ((i >= 40 && i <= 50) || (j >= 140 && j <= 170)) kind = 0;
    double v;
    if (!additive) {
      v = kind == 0 ? 0 : kind == 1 ? 1 : (has("dense_bool") ? dense(g) : keep(g));
    } else {
      v = kind == 0 ? -INFINITY : kind == 1 ? 0.0 : (x % 13 == 4 ? -INFINITY : nd(g));
    }
    pr.mask.set(x, v);
  }
  pr.p.mask = &pr.mask;
}

// Cases named "hm_" (the Hopper forward's masks): the mask's layout and
// pattern come from the name (tests/common/case_registry.cc): bool (u8) or additive (float32,
// or q's dtype with "mlow"); [B, Hq, Sq, Sk] with dims of 1 where it
// broadcasts ("bcb" batch, "bch" heads, "keypad": [B, 1, 1, Sk]).
void hmaskify(Problem& pr) {
  const Case& c = pr.c;
  auto has = [&](const char* t) { return c.name.find(t) != std::string::npos; };
  const bool keypad = has("_keypad");
  const int64_t mb = has("_bcb") ? 1 : c.B, mh = has("_bch") || keypad ? 1 : c.Hq;
  const int64_t mq = keypad ? 1 : c.Sq;
  const bool bmask = c.mask == MaskKind::boolean;
  pr.mask = Tensor({mb, mh, mq, c.Sk}, bmask ? DT::u8 : has("_mlow") ? c.dt : DT::f32);
  std::mt19937 g(7);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::bernoulli_distribution keep(0.8);
  const int64_t bs = has("_bs96") ? 96 : 128;
  for (int64_t x = 0; x < pr.mask.numel(); ++x) {
    const int64_t j = x % c.Sk, i = (x / c.Sk) % mq, h = (x / (c.Sk * mq)) % mh,
                  b = x / (c.Sk * mq * mh);
    bool vis;
    if (has("_bs")) vis = (i / bs + j / bs + b + h) % 3 != 0 || i / bs == j / bs;
    else if (keypad) vis = j < c.Sk - 37 * (b + 1);
    else vis = keep(g);
    if (has("_emptyrows") && i % 29 == 3) vis = false;
    if (has("_emptytile") && i >= 128 && i < 256) vis = false;  // every key block skipped
    // "_finfo": masked entries hold the mask dtype's lowest finite value
    // (HF models' finfo.min; masks like -inf for fp32 / bf16, see
    // additive_mask_value; fp16's -65504 is an ordinary large bias).
    const double lowest = pr.mask.dtype == DT::f16 ? -65504.0
                          : pr.mask.dtype == DT::bf16 ? -3.3895313892515355e38 : -3.4028234663852886e38;
    double v = vis ? 0.0 : has("_finfo") ? lowest : -INFINITY;
    // Additive: 0 (no effect: 32x32 tiles of state 1) except in some tiles
    // (mixed) and everywhere for random patterns.
    if (vis && !bmask && (!has("_bs") || (i / 32 + j / 32) % 5 == 0)) v = nd(g);
    pr.mask.set(x, bmask ? (vis ? 1.0 : 0.0) : v);
  }
  pr.p.mask = &pr.mask;
}

// Runs one case on the current path; returns true if it passed.
// sparse: also a block-sparse mask of that spec (lists on the device for
// the backend, on the host for the reference).
bool run_case(const Case& c, bool simt, cudaStream_t s, const SparseSpec* sparse = nullptr) {
  Problem pr(c);
  std::unique_ptr<BlockSparse> bs;
  if (sparse) {
    bs.reset(new BlockSparse(c, *sparse));
    bs->attach(&pr.p, *sparse);
  }
  if (c.name.find("blockmask") != std::string::npos) blockify(pr);
  if (c.name.rfind("hbm_", 0) == 0) hbm_mask(pr);
  if (c.name.rfind("hm_", 0) == 0) hmaskify(pr);
  fsdpa_params& p = pr.p;
  p.deterministic = g_deterministic;
  const std::string key = std::string(dt_name(c.dt)) + (simt ? "/simt" : "/tc");
  Check chk;

  // Host reference first (fp64).
  Tensor out64 = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, DT::f64), lse64 = pr.make_lse();
  out64.poison();
  lse64.poison();
  if (fsdpa_reference_forward(&p, &pr.q, &pr.k, &pr.v, &out64, &lse64) != FSDPA_OK) {
    fprintf(stderr, "reference failed: %s\n", fsdpa_last_error());
    return false;
  }
  Tensor dq64 = pr.make(c.Hq, c.Sq, pr.total_q, c.D, DT::f64);
  Tensor dk64 = pr.make(c.Hk, c.Sk, pr.total_k, c.D, DT::f64);
  Tensor dv64 = pr.make(c.Hk, c.Sk, pr.total_k, c.Dv, DT::f64);
  if (fsdpa_reference_backward(&p, &pr.dout, &pr.q, &pr.k, &pr.v, &dq64, &dk64, &dv64) !=
      FSDPA_OK) {
    fprintf(stderr, "reference bwd failed: %s\n", fsdpa_last_error());
    return false;
  }

  // Device copies of the inputs; params pointing at device tensors.
  Dev q(pr.q), k(pr.k), v(pr.v), dout(pr.dout);
  std::unique_ptr<Dev> mask, alibi, cuq, cuk;
  fsdpa_params dp = p;
  if (p.mask) { mask.reset(new Dev(pr.mask)); dp.mask = &mask->dl; }
  if (p.alibi_slopes) { alibi.reset(new Dev(pr.alibi)); dp.alibi_slopes = &alibi->dl; }
  std::unique_ptr<Dev> sp_num, sp_idx, sp_mask, sp_fnum, sp_fidx;
  if (bs) {
    auto dev = [](std::unique_ptr<Dev>& d, const Tensor& h, const DLTensor*& field) {
      if (field) { d.reset(new Dev(h)); field = &d->dl; }
    };
    dev(sp_num, bs->kv_num, dp.kv_num_blocks);
    dev(sp_idx, bs->kv_idx, dp.kv_indices);
    dev(sp_mask, bs->kv_mask, dp.kv_block_mask);
    dev(sp_fnum, bs->full_num, dp.full_kv_num_blocks);
    dev(sp_fidx, bs->full_idx, dp.full_kv_indices);
  }
  if (p.cu_seqlens_q) {
    cuq.reset(new Dev(pr.cu_q));
    cuk.reset(new Dev(pr.cu_k));
    dp.cu_seqlens_q = &cuq->dl;
    dp.cu_seqlens_k = &cuk->dl;
  }
  Tensor out = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, c.dt), lse = pr.make_lse();
  Dev dout_dev(out, false), dlse(lse, false);
  dout_dev.poison(s);
  dlse.poison(s);
  fsdpa_status st = fsdpa_forward(&dp, &q, &k, &v, &dout_dev, &dlse, s);
  if (st != FSDPA_OK) {
    std::lock_guard<std::mutex> l(g_print);
    printf("FAIL %s [%s] forward status %d: %s\n", describe(c).c_str(), key.c_str(), st,
           fsdpa_last_error());
    return false;
  }
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaGetLastError());
  out.poison();
  lse.poison();
  dout_dev.to_host(out, s);
  dlse.to_host(lse, s);
  const int64_t red = pr.reduction_len();
  // The tensor-core path rounds P to the input dtype before P V (as
  // FlashAttention does, and as a naive computation in that dtype would):
  // its baseline includes one more unit roundoff of max|out|.
  chk.close("out", out, out64, c.dt, red, !simt && c.dt != DT::f32, key, 2.0);
  chk.close("lse", lse, lse64, DT::f32, red, false, key, 2.0);

  Tensor dq = pr.make(c.Hq, c.Sq, pr.total_q, c.D, c.dt);
  Tensor dk = pr.make(c.Hk, c.Sk, pr.total_k, c.D, c.dt);
  Tensor dv = pr.make(c.Hk, c.Sk, pr.total_k, c.Dv, c.dt);
  Dev ddq(dq, false), ddk(dk, false), ddv(dv, false);
  ddq.poison(s);
  ddk.poison(s);
  ddv.poison(s);
  st = fsdpa_backward(&dp, &dout, &q, &k, &v, &dout_dev, &dlse, &ddq, &ddk, &ddv, s);
  if (st != FSDPA_OK) {
    std::lock_guard<std::mutex> l(g_print);
    printf("FAIL %s [%s] backward status %d: %s\n", describe(c).c_str(), key.c_str(), st,
           fsdpa_last_error());
    return false;
  }
  CUDA_OK(cudaStreamSynchronize(s));
  ddq.to_host(dq, s);
  ddk.to_host(dk, s);
  ddv.to_host(dv, s);
  // Varlen: dq rows of tokens no sequence covers are not compared (the
  // reference leaves them unwritten, zero here).
  chk.close("dq", dq, dq64, c.dt, red, true, key, 2.0);
  chk.close("dk", dk, dk64, c.dt, red, true, key, 2.0);
  chk.close("dv", dv, dv64, c.dt, red, true, key, 2.0);
  {
    std::lock_guard<std::mutex> l(g_print);
    printf("%s %s%s [%s]%s\n", chk.ok ? "ok  " : "FAIL", describe(c).c_str(),
           sparse ? (std::string("_sparse_") + sparse_kind_name(sparse->kind) + "_b" +
                     std::to_string(sparse->bq) + "x" + std::to_string(sparse->bk)).c_str()
                  : "",
           key.c_str(), chk.msg.c_str());
  }
  return chk.ok;
}

// Block-sparse masks (flashsdpa.h's block lists), the registry's bsp_ cases:
// patterns, block sizes below/above the tiles and unaligned, odd sizes,
// GQA, with the other features on top; run on the tensor-core path and
// (fp32 / forced) SIMT.
std::vector<std::pair<Case, SparseSpec>> block_sparse_cases() {
  return registry_sparse_cases(fsdpa_cases::kCuda);
}

// ---- GPU-only comparisons (no host reference) ------------------------------------
struct DevProblem {
  int64_t B, Hq, Hk, Sq, Sk, D, Dv;
  DT dt;
  std::vector<int64_t> qs, ks, vs, os, ls;
  Tensor hq, hk, hv, hdo;
  Dev *q = nullptr, *k = nullptr, *v = nullptr, *dout = nullptr;
};

double max_rel_diff(const Tensor& a, const Tensor& b) {
  double m = 0, mx = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.get(i), y = b.get(i);
    if (std::isnan(x) || std::isnan(y)) return INFINITY;
    if (std::isinf(x) || std::isinf(y)) {
      if (x != y) return INFINITY;
      continue;
    }
    m = std::max(m, fabs(x - y));
    mx = std::max(mx, fabs(y));
  }
  return mx > 0 ? m / mx : m;
}

// Runs forward (+ backward) on the tensor-core and SIMT paths and compares
// (max |tc - simt| / max |simt|); also checks repeated runs bitwise.
bool long_case(const char* name, int64_t B, int64_t H, int64_t Hk, int64_t Sq, int64_t Sk,
               int64_t D, DT dt, bool causal, bool backward, cudaStream_t s) {
  Case c;
  c.B = B; c.Hq = H; c.Hk = Hk; c.Sq = Sq; c.Sk = Sk; c.D = D; c.Dv = D; c.dt = dt;
  c.causal = causal;
  c.align = FSDPA_ALIGN_BOTTOM_RIGHT;
  // Building the full Problem fills inputs on the host (fine up to ~1e8).
  Problem pr(c);
  pr.p.check_finite = 0;
  Dev q(pr.q), k(pr.k), v(pr.v), dout(pr.dout);
  Tensor res[2][4];
  bool ok = true;
  std::string msg;
  for (int path = 0; path < 2; ++path) {
    set_path(path == 1);
    Tensor out = pr.make(H, Sq, 0, D, dt), lse = pr.make_lse();
    Dev dO(out, false), dl(lse, false);
    dO.poison(s);
    dl.poison(s);
    if (fsdpa_forward(&pr.p, &q, &k, &v, &dO, &dl, s) != FSDPA_OK) {
      printf("FAIL %s forward: %s\n", name, fsdpa_last_error());
      set_path(false);
      return false;
    }
    CUDA_OK(cudaStreamSynchronize(s));
    dO.to_host(out, s);
    res[path][0] = out;
    if (backward) {
      Tensor dq = pr.make(H, Sq, 0, D, dt), dk = pr.make(Hk, Sk, 0, D, dt),
             dv = pr.make(Hk, Sk, 0, D, dt);
      Dev ddq(dq, false), ddk(dk, false), ddv(dv, false);
      if (fsdpa_backward(&pr.p, &dout, &q, &k, &v, &dO, &dl, &ddq, &ddk, &ddv, s) != FSDPA_OK) {
        printf("FAIL %s backward: %s\n", name, fsdpa_last_error());
        set_path(false);
        return false;
      }
      ddq.to_host(dq, s);
      ddk.to_host(dk, s);
      ddv.to_host(dv, s);
      res[path][1] = dq;
      res[path][2] = dk;
      res[path][3] = dv;
    }
  }
  set_path(false);
  const char* names[4] = {"out", "dq", "dk", "dv"};
  const double tol = dt == DT::bf16 ? 2e-2 : 4e-3;
  for (int x = 0; x < (backward ? 4 : 1); ++x) {
    const double r = max_rel_diff(res[0][x], res[1][x]);
    char buf[96];
    snprintf(buf, sizeof buf, " %s=%.3g", names[x], r);
    msg += buf;
    if (!(r <= tol)) ok = false;
  }
  printf("%s long %s (tc vs simt, max|diff|/max|simt|, tol %.0e)%s\n", ok ? "ok  " : "FAIL", name,
         tol, msg.c_str());
  return ok;
}

// Three runs of forward + deterministic backward give the same bits: the
// registry's determinism cases for CUDA (the sm_80 kernels with dropout and
// ALiBi; the Hopper kernels' scope with many key blocks per query block,
// GQA, D 256, windows and an hbm_ mask with skipped steps).

bool determinism_case(cudaStream_t s, const Case& c) {
  Problem pr(c);
  if (c.name.rfind("hbm_", 0) == 0) hbm_mask(pr);
  pr.p.deterministic = 1;
  Dev q(pr.q), k(pr.k), v(pr.v), dout(pr.dout);
  std::unique_ptr<Dev> al, mask;
  if (c.alibi) { al.reset(new Dev(pr.alibi)); pr.p.alibi_slopes = &al->dl; }
  if (pr.p.mask) { mask.reset(new Dev(pr.mask)); pr.p.mask = &mask->dl; }
  std::vector<uint8_t> first[5];
  bool ok = true;
  for (int run = 0; run < 3; ++run) {
    Tensor out = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, c.dt), lse = pr.make_lse();
    Tensor dq = pr.make(c.Hq, c.Sq, pr.total_q, c.D, c.dt),
           dk = pr.make(c.Hk, c.Sk, pr.total_k, c.D, c.dt),
           dv = pr.make(c.Hk, c.Sk, pr.total_k, c.Dv, c.dt);
    Dev o(out, false), l(lse, false), a(dq, false), b(dk, false), d(dv, false);
    if (fsdpa_forward(&pr.p, &q, &k, &v, &o, &l, s) != FSDPA_OK ||
        fsdpa_backward(&pr.p, &dout, &q, &k, &v, &o, &l, &a, &b, &d, s) != FSDPA_OK) {
      printf("FAIL %s: %s\n", c.name.c_str(), fsdpa_last_error());
      return false;
    }
    o.to_host(out, s); l.to_host(lse, s); a.to_host(dq, s); b.to_host(dk, s); d.to_host(dv, s);
    Tensor* all[5] = {std::addressof(out), std::addressof(lse), std::addressof(dq), std::addressof(dk), std::addressof(dv)};
    for (int x = 0; x < 5; ++x) {
      if (run == 0) first[x] = all[x]->bytes;
      else if (first[x] != all[x]->bytes) ok = false;
    }
  }
  printf("%s %s: 3 runs of forward + deterministic backward bitwise identical\n",
         ok ? "ok  " : "FAIL", c.name.c_str());
  return ok;
}

// Forced split counts must agree with no split (up to fp32 rounding); on the
// decode kernel (decode = true) or the tensor-core split-KV path.
bool splitkv_case(cudaStream_t s, bool decode) {
  Case c;
  c.B = 1; c.Hq = 4; c.Hk = 1; c.Sq = 2; c.Sk = 3001; c.D = 128; c.Dv = 128; c.dt = DT::f16;
  c.causal = true;
  c.align = FSDPA_ALIGN_BOTTOM_RIGHT;
  c.wl = 2000;
  Problem pr(c);
  Dev q(pr.q), k(pr.k), v(pr.v);
  Tensor out64 = pr.make(4, 2, 0, 128, DT::f64), lse64 = pr.make_lse();
  fsdpa_reference_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out64, &lse64);
  bool ok = true;
  std::string msg;
  for (int n : {1, 2, 7, 33}) {
    char buf[32];
    snprintf(buf, sizeof buf, "%s,splits=%d", decode ? "decode" : "sm80", n);
    set_force(buf);
    Tensor out = pr.make(4, 2, 0, 128, c.dt), lse = pr.make_lse();
    Dev o(out, false), l(lse, false);
    o.poison(s);
    l.poison(s);
    if (fsdpa_forward(&pr.p, &q, &k, &v, &o, &l, s) != FSDPA_OK) {
      printf("FAIL splitkv: %s\n", fsdpa_last_error());
      ok = false;
      continue;
    }
    o.to_host(out, s);
    l.to_host(lse, s);
    const double e1 = max_abs_diff(out, out64), e2 = max_abs_diff(lse, lse64);
    const double t1 = 2 * baseline_error(out64, c.dt, 3001), t2 = 2 * baseline_error(lse64, DT::f32, 3001);
    snprintf(buf, sizeof buf, " n=%d:", n);
    msg += buf;
    char b2[96];
    snprintf(b2, sizeof b2, "out %.2g lse %.2g", e1, e2);
    msg += b2;
    if (!(e1 <= t1 && e2 <= t2)) ok = false;
  }
  set_force(g_force_base);
  printf("%s splitkv%s forced splits vs fp64 reference:%s\n", ok ? "ok  " : "FAIL",
         decode ? " (decode kernel)" : " (tensor-core path)", msg.c_str());
  return ok;
}

bool nonfinite_case(cudaStream_t s) {
  Case c;
  c.B = 1; c.Hq = 2; c.Hk = 2; c.Sq = 40; c.Sk = 50; c.D = 64; c.Dv = 64; c.dt = DT::bf16;
  Problem pr(c);
  pr.k.set(2 * 50 * 64 - 7, NAN);  // last head
  Dev q(pr.q), k(pr.k), v(pr.v);
  Tensor out = pr.make(2, 40, 0, 64, c.dt);
  Dev o(out, false);
  const fsdpa_status st = fsdpa_forward(&pr.p, &q, &k, &v, &o, nullptr, s);
  const bool ok = st == FSDPA_ERROR_NONFINITE_INPUT && strstr(fsdpa_last_error(), "k:") != nullptr;
  printf("%s nonfinite input reported: status %d, \"%s\"\n", ok ? "ok  " : "FAIL", st,
         fsdpa_last_error());
  pr.p.check_finite = 0;
  return ok && fsdpa_forward(&pr.p, &q, &k, &v, &o, nullptr, s) == FSDPA_OK;
}

// fsdpa_set_workspace_allocator: a caller's stream-ordered allocator serves
// every workspace (one per call, returned on the call's stream), gives the
// same bits as the library's pool, and a failing one is OUT_OF_MEMORY.
struct CountingAllocator {
  std::atomic<int> allocs{0}, frees{0};
  bool fail = false;
};
void* counting_alloc(size_t bytes, void* stream, void* ctx) {
  auto* a = static_cast<CountingAllocator*>(ctx);
  if (a->fail) return nullptr;
  void* ptr = nullptr;
  if (cudaMallocAsync(&ptr, bytes, static_cast<cudaStream_t>(stream)) != cudaSuccess) return nullptr;
  a->allocs++;
  return ptr;
}
void counting_free(void* ptr, void* stream, void* ctx) {
  static_cast<CountingAllocator*>(ctx)->frees++;
  cudaFreeAsync(ptr, static_cast<cudaStream_t>(stream));
}

bool workspace_allocator_case(cudaStream_t s) {
  Case c;
  c.B = 2; c.Hq = 4; c.Hk = 2; c.Sq = 300; c.Sk = 257; c.D = 128; c.Dv = 128; c.dt = DT::bf16;
  c.causal = true;
  Problem pr(c);
  pr.p.deterministic = 1;  // bitwise comparable backward
  Dev q(pr.q), k(pr.k), v(pr.v), dout(pr.dout);
  auto run = [&](std::vector<uint8_t>* bytes) {
    Tensor out = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, c.dt), lse = pr.make_lse();
    Tensor dq = pr.make(c.Hq, c.Sq, pr.total_q, c.D, c.dt);
    Tensor dk = pr.make(c.Hk, c.Sk, pr.total_k, c.D, c.dt), dv = pr.make(c.Hk, c.Sk, pr.total_k, c.Dv, c.dt);
    Dev o(out, false), l(lse, false), a(dq, false), b(dk, false), d(dv, false);
    fsdpa_status st = fsdpa_forward(&pr.p, &q, &k, &v, &o, &l, s);
    if (st == FSDPA_OK) st = fsdpa_backward(&pr.p, &dout, &q, &k, &v, &o, &l, &a, &b, &d, s);
    if (st != FSDPA_OK) return st;
    a.to_host(dq, s);
    *bytes = dq.bytes;
    return st;
  };
  std::vector<uint8_t> pooled, mine, unused;
  CountingAllocator counter;
  bool ok = run(&pooled) == FSDPA_OK;
  fsdpa_set_workspace_allocator(counting_alloc, counting_free, &counter);
  ok = ok && run(&mine) == FSDPA_OK && mine == pooled;
  cudaStreamSynchronize(s);
  const int allocs = counter.allocs, frees = counter.frees;
  ok = ok && allocs >= 1 && allocs == frees;
  counter.fail = true;
  const fsdpa_status st = run(&unused);
  const std::string msg = fsdpa_last_error();
  ok = ok && st == FSDPA_ERROR_OUT_OF_MEMORY && msg.find("workspace") != std::string::npos;
  fsdpa_set_workspace_allocator(nullptr, nullptr, nullptr);
  ok = ok && run(&unused) == FSDPA_OK;
  printf("%s workspace allocator: %d allocs, %d frees, same dQ bits as the pool, failing "
         "allocator -> status %d \"%s\"\n",
         ok ? "ok  " : "FAIL", allocs, frees, st, msg.c_str());
  return ok;
}

// fsdpa_explain names the family the plan picks and why; the override
// is validated (src/cuda/plan.h).
bool explain_case(cudaStream_t s, bool hopper_gpu) {
  (void)s;
  Case c;
  c.B = 1; c.Hq = 4; c.Hk = 1; c.Sq = 2; c.Sk = 300; c.D = 128; c.Dv = 128; c.dt = DT::bf16;
  Problem pr(c);
  Dev q(pr.q), k(pr.k), v(pr.v);
  Tensor out = pr.make(4, 2, 0, 128, c.dt), lse = pr.make_lse();
  Dev o(out, false), l(lse, false);
  char buf[2048];
  auto run = [&](const char* force) {
    set_force(force);
    const fsdpa_status st = fsdpa_explain(&pr.p, 0, nullptr, &q, &k, &v, &o, &l, nullptr, nullptr,
                                          nullptr, buf, sizeof buf);
    set_force(g_force_base);
    return st;
  };
  bool ok = run("") == FSDPA_OK && strstr(buf, "family decode") != nullptr;
  ok = ok && run("sm80") == FSDPA_OK && strstr(buf, "family sm80") != nullptr;
  ok = ok && run("hopper") == (hopper_gpu ? FSDPA_OK : FSDPA_ERROR_UNSUPPORTED);
  ok = ok && (!hopper_gpu || strstr(buf, "family hopper") != nullptr);
  ok = ok && run("warp9") == FSDPA_ERROR_INVALID_ARGUMENT &&
       strstr(fsdpa_last_error(), "FLASHSDPA_CUDA_FORCE") != nullptr;
  run("");
  printf("%s explain: decode / forced sm80 / forced hopper / invalid override: \"%.60s\"\n",
         ok ? "ok  " : "FAIL", buf);
  return ok;
}

// Device copies of a KvProblem's tensors and params pointing at them.
struct KvDev {
  Dev q, k, v;
  std::unique_ptr<Dev> table, used, pad, bidx, cu_q, cu_k, alibi;
  fsdpa_params p;
  explicit KvDev(KvProblem& pr) : q(pr.q), k(pr.k), v(pr.v), p(pr.p) {
    auto dev = [](std::unique_ptr<Dev>& d, const DLTensor* host, const Tensor& t,
                  const DLTensor** slot) {
      if (host == nullptr) return;
      d.reset(new Dev(t));
      *slot = &d->dl;
    };
    dev(table, pr.p.block_table, pr.table, &p.block_table);
    dev(used, pr.p.seqused_k, pr.used, &p.seqused_k);
    dev(pad, pr.p.cache_leftpad, pr.pad, &p.cache_leftpad);
    dev(bidx, pr.p.cache_batch_idx, pr.bidx, &p.cache_batch_idx);
    dev(cu_q, pr.p.cu_seqlens_q, pr.cu_q, &p.cu_seqlens_q);
    dev(cu_k, pr.p.cu_seqlens_k, pr.cu_k, &p.cu_seqlens_k);
    dev(alibi, pr.p.alibi_slopes, pr.alibi, &p.alibi_slopes);
  }
};

// One KV case on one path (force: FLASHSDPA_CUDA_FORCE, "" = the plan's
// choice, whose family must be `family` when given) against the reference.
bool kv_run(const KvCase& c, const char* force, const char* family, cudaStream_t s) {
  KvProblem pr(c);
  Tensor out64 = pr.make_out(DT::f64), lse64 = pr.make_lse();
  if (fsdpa_reference_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out64, &lse64) != FSDPA_OK) {
    printf("FAIL %s reference: %s\n", kv_describe(c).c_str(), fsdpa_last_error());
    return false;
  }
  KvDev d(pr);
  Tensor out = pr.make_out(c.dt), lse = pr.make_lse();
  Dev o(out, false), l(lse, false);
  o.poison(s);
  l.poison(s);
  set_force(force);
  char plan[2048] = "";
  fsdpa_status st = fsdpa_explain(&d.p, 0, nullptr, &d.q, &d.k, &d.v, &o, &l, nullptr, nullptr,
                                  nullptr, plan, sizeof plan);
  if (st == FSDPA_OK) st = fsdpa_forward(&d.p, &d.q, &d.k, &d.v, &o, &l, s);
  set_force(g_force_base);
  const std::string what = kv_describe(c) + " [" + (*force ? force : "auto") + "]";
  if (st != FSDPA_OK) {
    printf("FAIL %s status %d: %s\n", what.c_str(), st, fsdpa_last_error());
    return false;
  }
  CUDA_OK(cudaStreamSynchronize(s));
  o.to_host(out, s);
  l.to_host(lse, s);
  Check chk;
  const bool simt = c.dt == DT::f32 || strncmp(force, "simt", 4) == 0;
  const int64_t red = std::max({c.cap, c.Sq, c.D, c.Dv});
  const std::string key = std::string(dt_name(c.dt)) + "/kv";
  chk.close("out", out, out64, c.dt, red, !simt && c.dt != DT::f32, key, 2.0);
  chk.close("lse", lse, lse64, DT::f32, red, false, key, 2.0);
  const char* fam = strstr(plan, "family ");
  if (family != nullptr && (fam == nullptr || strncmp(fam + 7, family, strlen(family)) != 0)) {
    chk.ok = false;
    chk.msg += std::string(" plan: expected family ") + family + ", got \"" +
               (fam ? std::string(fam, strcspn(fam, ",\n")) : std::string(plan)) + "\"";
  }
  printf("%s %s%s\n", chk.ok ? "ok  " : "FAIL", what.c_str(), chk.msg.c_str());
  return chk.ok;
}

// The registry's KV-cache cases (tests/common/case_registry.cc: page sizes
// 1, 16, 64, 256 and contiguous, cache_batch_idx, leftpad, GQA, decode and
// prefill rows, windows, varlen with pages, every dtype). Each 16-bit case
// also runs forced onto the tensor-core kernels (with key splits) and the
// SIMT kernels, and decode cases with forced key splits.
std::vector<KvCase> kv_grid(bool quick) { return registry_kv_cases(fsdpa_cases::kCuda, quick); }

int kv_cache_cases(cudaStream_t s, bool quick, int* failed) {
  int passed = 0;
  auto tally = [&](bool ok) { ok ? ++passed : ++*failed; };
  for (const KvCase& c : kv_grid(quick)) {
    if (c.dt == DT::f32) {
      tally(kv_run(c, "", "simt", s));
      continue;
    }
    const bool decode = c.D == c.Dv && (c.D == 64 || c.D == 128) && c.softcap == 0 && !c.alibi &&
                        c.Sq <= 16 && c.Sq * (c.Hq / c.Hk) <= 64;
    tally(kv_run(c, "", decode ? "decode" : "sm80", s));
    if (decode) tally(kv_run(c, "decode,splits=3", "decode", s));
    tally(kv_run(c, "sm80", "sm80", s));
    tally(kv_run(c, "sm80,splits=4", "sm80", s));
    if (!quick) tally(kv_run(c, "simt", "simt", s));
  }
  return passed;
}

// The debug check (check_finite = 1, or FLASHSDPA_CHECK_INDICES=1 with
// check_finite = 0) names a bad page index, seqused_k and cache_batch_idx
// entry; a NaN in a used key is reported by the scan, NaN in unused rows
// and spare pages (every case above) is not.
bool kv_checks_case(cudaStream_t s) {
  KvCase c;
  c.name = "checks";
  c.page = 16;
  c.batch_idx = true;
  bool ok = true;
  std::string msg;
  auto expect = [&](KvProblem& pr, fsdpa_status want, const char* text, bool env) {
    KvDev d(pr);
    if (env) {
      d.p.check_finite = 0;
      setenv("FLASHSDPA_CHECK_INDICES", "1", 1);
    }
    Tensor out = pr.make_out(c.dt);
    Dev o(out, false);
    const fsdpa_status st = fsdpa_forward(&d.p, &d.q, &d.k, &d.v, &o, nullptr, s);
    unsetenv("FLASHSDPA_CHECK_INDICES");
    CUDA_OK(cudaStreamSynchronize(s));
    const bool good =
        st == want && (text == nullptr || strstr(fsdpa_last_error(), text) != nullptr);
    if (!good) msg += std::string(" [want \"") + (text ? text : "ok") + "\", got " +
                      std::to_string(st) + " \"" + fsdpa_last_error() + "\"]";
    ok = ok && good;
  };
  {
    KvProblem pr(c);
    expect(pr, FSDPA_OK, nullptr, false);
    const int64_t row = pr.row_of[1];
    pr.table.set(row * pr.max_pages + 2, 1e6);
    char text[64];
    snprintf(text, sizeof text, "block_table: entry [%lld, 2] is 1000000", (long long)row);
    expect(pr, FSDPA_ERROR_INVALID_ARGUMENT, text, false);
    expect(pr, FSDPA_ERROR_INVALID_ARGUMENT, text, true);
  }
  {
    KvProblem pr(c);
    pr.used.set(2, 10000.0);  // past the 304 positions of its block_table row
    expect(pr, FSDPA_ERROR_INVALID_ARGUMENT, "seqused_k: entry 2", false);
  }
  {
    KvProblem pr(c);
    pr.bidx.set(0, double(pr.rows));
    expect(pr, FSDPA_ERROR_INVALID_ARGUMENT, "cache_batch_idx: entry 0", true);
  }
  {
    // The plan names the cache, and the Hopper forward (forced) refuses it.
    KvProblem pr(c);
    KvDev d(pr);
    Tensor out = pr.make_out(c.dt);
    Dev o(out, false);
    char plan[2048] = "";
    fsdpa_status st = fsdpa_explain(&d.p, 0, nullptr, &d.q, &d.k, &d.v, &o, nullptr, nullptr,
                                    nullptr, nullptr, plan, sizeof plan);
    if (st != FSDPA_OK || strstr(plan, "kv cache: paged (") == nullptr) {
      ok = false;
      msg += std::string(" [explain: \"") + plan + "\"]";
    }
    set_force("hopper");
    st = fsdpa_forward(&d.p, &d.q, &d.k, &d.v, &o, nullptr, s);
    set_force(g_force_base);
    if (st != FSDPA_ERROR_UNSUPPORTED ||
        strstr(fsdpa_last_error(), "FLASHSDPA_CUDA_FORCE=hopper") == nullptr) {
      ok = false;
      msg += std::string(" [forced hopper: ") + std::to_string(st) + " \"" + fsdpa_last_error() + "\"]";
    }
  }
  {
    KvProblem pr(c);
    pr.k.set(pr.flat(pr.row_of[1], 1, 77, 5, c.D), NAN);
    expect(pr, FSDPA_ERROR_NONFINITE_INPUT,
           "k: contains a non-finite value (NaN or Inf) at key 77 of sequence 1", false);
  }
  printf("%s kv cache checks: bad page index / seqused_k / cache_batch_idx, plan, forced hopper, "
         "NaN in a used key%s\n",
         ok ? "ok  " : "FAIL", msg.c_str());
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, do_long = true, long_only = false, list = false, determinism_only = false,
       no_hopper = false, kv_only = false;
  std::string filter;
  int threads = static_cast<int>(std::min(16u, std::max(1u, std::thread::hardware_concurrency())));
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--list")) list = true;
    else if (!strcmp(argv[i], "--quick")) quick = true;
    else if (!strcmp(argv[i], "--no-long")) do_long = false;
    else if (!strcmp(argv[i], "--filter") && i + 1 < argc) filter = argv[++i];
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--no-hopper")) no_hopper = true;
    else if (!strcmp(argv[i], "--long-only")) long_only = true;
    else if (!strcmp(argv[i], "--deterministic")) g_deterministic = true;
    else if (!strcmp(argv[i], "--determinism-only")) determinism_only = true;
    else if (!strcmp(argv[i], "--kv-only")) kv_only = true;
  }
  if (const char* f = getenv("FLASHSDPA_CUDA_FORCE")) g_force_base = f;
  if (no_hopper) g_force_base = g_force_base.empty() ? "sm80" : "sm80," + g_force_base;
  set_force(g_force_base);
  if (determinism_only) filter = "\x01";  // no grid case matches
  if (list) {  // the grid's cases and their fields, one per line; no GPU needed
    for (const Case& c : make_grid(quick))
      printf("%s B%lld Hq%lld Hk%lld Sq%lld Sk%lld D%lld Dv%lld causal%d align%d wl%lld wr%lld "
             "softcap%g alibi%d mask%d dropout%g varlen%d bshd%d scale%g\n",
             describe(c).c_str(), (long long)c.B, (long long)c.Hq, (long long)c.Hk,
             (long long)c.Sq, (long long)c.Sk, (long long)c.D, (long long)c.Dv, c.causal, c.align,
             (long long)c.wl, (long long)c.wr, c.softcap, c.alibi, static_cast<int>(c.mask),
             c.dropout, c.varlen, c.bshd, c.scale);
    return 0;
  }
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    printf("SKIP: no CUDA device\n");
    return 77;
  }
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  printf("device: %s (sm_%d%d), backends: %s%s\n", prop.name, prop.major, prop.minor,
         fsdpa_backends(),
         g_force_base.empty() ? "" : (" (FLASHSDPA_CUDA_FORCE=" + g_force_base + ")").c_str());

  std::vector<Case> grid = make_grid(quick);
  if (long_only || kv_only) grid.clear();
  if (!filter.empty())
    grid.erase(std::remove_if(grid.begin(), grid.end(),
                              [&](const Case& c) { return describe(c).find(filter) == std::string::npos; }),
               grid.end());
  int passed = 0, failed = 0;
  for (int path = 0; path < 2; ++path) {
    const bool simt = path == 1;
    set_path(simt);
    std::vector<const Case*> todo;
    for (const Case& c : grid)
      if (!simt || c.dt != DT::f32) todo.push_back(&c);  // fp32 is SIMT already
    std::atomic<size_t> next{0};
    std::atomic<int> np{0}, nf{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&] {
        cudaStream_t s;
        CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        for (size_t i; (i = next++) < todo.size();) (run_case(*todo[i], simt, s) ? np : nf)++;
        cudaStreamDestroy(s);
      });
    for (auto& th : pool) th.join();
    passed += np;
    failed += nf;
  }
  set_path(false);

  cudaStream_t s;
  CUDA_OK(cudaStreamCreate(&s));
  auto tally = [&](bool ok) { (ok ? passed : failed)++; };
  if (determinism_only)
    for (const Case& c : registry_determinism_cases(fsdpa_cases::kCuda)) tally(determinism_case(s, c));
  if (kv_only || (filter.empty() && !long_only)) {
    passed += kv_cache_cases(s, quick, &failed);
    tally(kv_checks_case(s));
  }
  if (filter.empty() && !kv_only) {
    if (!long_only) {
      for (const Case& c : registry_determinism_cases(fsdpa_cases::kCuda)) tally(determinism_case(s, c));
      tally(splitkv_case(s, true));
      tally(splitkv_case(s, false));
      tally(nonfinite_case(s));
      tally(workspace_allocator_case(s));
      tally(explain_case(s, prop.major == 9 && strstr(fsdpa_backends(), "cuda") != nullptr));
    }
  }
  if (!long_only) {
    for (const auto& [c, sp] : block_sparse_cases()) {
      if (!filter.empty() && describe(c).find(filter) == std::string::npos) continue;
      for (int path = 0; path < 2; ++path) {
        if (path == 1 && c.dt == DT::f32) continue;  // fp32 is SIMT already
        set_path(path == 1);
        tally(run_case(c, path == 1, s, &sp));
      }
    }
    set_path(false);
  }
  if (filter.empty()) {
    if (do_long && !quick) {
      tally(long_case("s16384_causal_bf16_d128_fwd_bwd", 1, 2, 1, 16384, 16384, 128, DT::bf16, true, true, s));
      tally(long_case("s4096_b2h4_f16_d64_fwd_bwd", 2, 4, 4, 4096, 4096, 64, DT::f16, false, true, s));
      tally(long_case("decode_s1_k65536_bf16_d128", 4, 8, 1, 1, 65536, 128, DT::bf16, false, false, s));
      tally(long_case("q4096_k65536_causal_br_bf16_d64_fwd", 1, 1, 1, 4096, 65536, 64, DT::bf16, true, false, s));
      // The dynamic schedule in sections of 4 heads (K/V 4 MB each): 320
      // tiles, the last section partial.
      tally(long_case("s8192_h5_causal_bf16_d128_fwd", 1, 5, 5, 8192, 8192, 128, DT::bf16, true, false, s));
    }
  }
  CUDA_OK(cudaStreamDestroy(s));

  printf("\nmax error per dtype/path and quantity (absolute, and as a multiple of the\n"
         "same-precision baseline; the test fails above 2x):\n");
  for (auto& kv : g_stats.maxerr)
    printf("MAXERR %-22s %.3g  (%.2fx baseline)\n", kv.first.c_str(), kv.second.first,
           kv.second.second);
  printf("\nCUDA TESTS: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
