// The Metal forward kernels reading a KV cache in place (flashsdpa.h's
// seqused_k, cache_batch_idx, cache_leftpad, block_table), executed on the
// MSL emulator against the fp64 reference over metal_grid.h's KV grid:
// contiguous and paged caches (page sizes 1, 5, 13, 16, 64, pages in a
// random order), permuted cache rows, left padding, per-sequence lengths
// (one sequence without keys), varlen queries over pages, GQA, Sq = 1 (the
// split-KV decode kernels, which the planner must choose) and Sq > 1, every
// dtype. Every cache position no sequence uses is NaN and every page-table
// entry no sequence uses is -1, so a read of the wrong row or page shows.
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <random>

#include "attention_case.h"
#include "core/validate.h"
#include "metal/plan.h"
#include "metal_emu_run.h"
#include "metal_grid.h"

#ifndef FSDPA_METAL_TEST_REDUCED
#define FSDPA_METAL_TEST_REDUCED 0
#endif

namespace fsdpa_test {
namespace {

using fsdpa_metal_test::KvCase;
namespace mtl = fsdpa::metal;

// One KV-cache call: queries, the cache (contiguous or paged), the optional
// int32 vectors, and its params.
struct KvProblem {
  KvCase c;
  DT dt;
  fsdpa_params p;
  Tensor q, k, v, out, lse, alibi, used_t, bidx_t, leftpad_t, table, cu_q, cu_k;
  int64_t rows = 0, total_q = 0;
  std::vector<int64_t> lens_q, begin, end;  // per sequence: cache positions [begin, end)

  explicit KvProblem(const KvCase& c_) : c(c_) {
    dt = c.dt == 0 ? DT::f32 : c.dt == 1 ? DT::f16 : DT::bf16;
    std::mt19937 g(static_cast<uint32_t>(std::hash<std::string>{}(c.name) ^ uint64_t(c.dt)));
    auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(g); };
    fsdpa_params_init(&p);
    p.check_finite = 0;  // unused cache positions are NaN on purpose
    p.causal = c.causal;
    p.align = c.align;
    p.window_left = c.wl;
    p.window_right = c.wr;
    p.softcap = c.softcap;
    const int64_t B = c.B;
    rows = c.batch_idx ? B + 1 : B;  // one cache row no sequence uses

    // Cache positions of each sequence.
    for (int64_t b = 0; b < B; ++b) {
      int64_t e = c.seqused ? (b == 0 ? c.cap : uniform(1, c.cap)) : c.cap;
      if (c.varlen && !c.seqused) e = c.cap - 7 * b;
      int64_t s = c.leftpad ? (b == 0 ? 0 : uniform(0, e / 2)) : 0;
      if (c.leftpad && c.seqused && b == B - 1) s = e;  // a sequence without keys
      begin.push_back(s);
      end.push_back(e);
    }
    auto row_of = [&](int64_t b) { return c.batch_idx ? rows - 1 - b : b; };  // rows permuted, row 0 spare

    // Queries.
    if (c.varlen) {
      cu_q = Tensor({B + 1}, DT::i32);
      cu_k = Tensor({B + 1}, DT::i32);
      int64_t tk = 0;
      for (int64_t b = 0; b < B; ++b) {
        lens_q.push_back(b == 1 ? 0 : std::max<int64_t>(1, c.Sq - 3 * b));
        cu_q.set(b, double(total_q));
        cu_k.set(b, double(tk));
        total_q += lens_q[b];
        tk += c.cap - 7 * b;  // the varlen key lengths (seqused_k, when set, wins)
      }
      cu_q.set(B, double(total_q));
      cu_k.set(B, double(tk));
      total_q += 2;  // tokens after the last sequence
      p.cu_seqlens_q = &cu_q;
      p.cu_seqlens_k = &cu_k;
      p.max_seqlen_q = c.Sq;
      p.max_seqlen_k = c.cap;
      q = Tensor({total_q, c.Hq, c.D}, dt);
      out = Tensor({total_q, c.Hq, c.Dv}, dt);
      lse = Tensor({c.Hq, total_q}, DT::f32);
    } else {
      q = Tensor({B, c.Hq, c.Sq, c.D}, dt, {0, 2, 1, 3});  // BSHD storage, as FlashAttention's
      out = Tensor({B, c.Hq, c.Sq, c.Dv}, dt, {0, 2, 1, 3});
      lse = Tensor({B, c.Hq, c.Sq}, DT::f32);
    }
    q.fill_normal(g);
    out.poison();
    lse.poison();

    // The cache: NaN except where a sequence reads.
    std::normal_distribution<double> normal(0.0, 1.0);
    if (c.page > 0) {
      const int64_t max_pages = (c.cap + c.page - 1) / c.page, num_pages = rows * max_pages + 2;
      k = Tensor({num_pages, c.Hk, c.page, c.D}, dt, {0, 2, 1, 3});
      v = Tensor({num_pages, c.Hk, c.page, c.Dv}, dt, {0, 2, 1, 3});
      table = Tensor({rows, max_pages}, DT::i32);
      for (int64_t i = 0; i < table.numel(); ++i) table.set(i, -1);
      std::vector<int64_t> order(num_pages);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), g);
      for (int64_t b = 0; b < B; ++b)
        if (end[b] > begin[b])
          for (int64_t pg = begin[b] / c.page; pg <= (end[b] - 1) / c.page; ++pg)
            table.set(row_of(b) * max_pages + pg, double(order[row_of(b) * max_pages + pg]));
      p.block_table = &table;
    } else {
      k = Tensor({rows, c.Hk, c.cap, c.D}, dt, {0, 2, 1, 3});
      v = Tensor({rows, c.Hk, c.cap, c.Dv}, dt, {0, 2, 1, 3});
    }
    k.poison();
    v.poison();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = begin[b]; t < end[b]; ++t) {
        int64_t r = row_of(b), pos = t;
        if (c.page > 0) {
          r = static_cast<int64_t>(table.get(row_of(b) * table.shape[1] + t / c.page));
          pos = t % c.page;
        }
        const int64_t len = c.page > 0 ? c.page : c.cap;
        for (int64_t h = 0; h < c.Hk; ++h) {
          for (int64_t d = 0; d < c.D; ++d) k.set(((r * c.Hk + h) * len + pos) * c.D + d, normal(g));
          for (int64_t d = 0; d < c.Dv; ++d) v.set(((r * c.Hk + h) * len + pos) * c.Dv + d, normal(g));
        }
      }

    // The int32 vectors.
    if (c.seqused) {
      used_t = Tensor({B}, DT::i32);
      for (int64_t b = 0; b < B; ++b) used_t.set(b, double(end[b]));
      p.seqused_k = &used_t;
    }
    if (c.leftpad) {
      leftpad_t = Tensor({B}, DT::i32);
      for (int64_t b = 0; b < B; ++b) leftpad_t.set(b, double(begin[b]));
      p.cache_leftpad = &leftpad_t;
    }
    if (c.batch_idx) {
      bidx_t = Tensor({B}, DT::i32);
      for (int64_t b = 0; b < B; ++b) bidx_t.set(b, double(row_of(b)));
      p.cache_batch_idx = &bidx_t;
    }
    if (c.alibi) {
      alibi = Tensor({c.Hq}, DT::f32);
      for (int64_t h = 0; h < c.Hq; ++h) alibi.set(h, pow(2.0, -8.0 * (h + 1) / c.Hq));
      p.alibi_slopes = &alibi;
    }
  }

  Tensor out64() const {
    return c.varlen ? Tensor({total_q, c.Hq, c.Dv}, DT::f64) : Tensor({c.B, c.Hq, c.Sq, c.Dv}, DT::f64);
  }
};

std::string kv_test_name(const KvCase& m) {
  std::string s = m.name + (m.dt == 0 ? "_f32" : m.dt == 1 ? "_f16" : "_bf16");
  for (char& ch : s)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

class MetalEmuKvCache : public ::testing::TestWithParam<KvCase> {};

TEST_P(MetalEmuKvCache, ForwardMatchesReference) {
  const KvCase& m = GetParam();
  KvProblem pr(m);
  fsdpa::AttnParams ap;
  fsdpa::CallTensors ct;
  ct.q = &pr.q, ct.k = &pr.k, ct.v = &pr.v, ct.out = &pr.out, ct.lse = &pr.lse;
  ASSERT_EQ(fsdpa::make_attn_params(fsdpa::CallKind::forward, &pr.p, ct, &ap), FSDPA_OK) << fsdpa_last_error();
  const mtl::Plan plan = mtl::plan_forward(ap, static_cast<mtl::GpuFamily>(m.family));
  EXPECT_TRUE(plan.config.key.kv_cache);
  if (m.expect_split) {
    ASSERT_EQ(plan.dispatches.size(), 2u) << plan.reason;
    EXPECT_EQ(plan.dispatches[0].pass, mtl::Pass::decode_split) << plan.reason;
  } else {
    ASSERT_EQ(plan.dispatches.size(), 1u) << plan.reason;
    EXPECT_EQ(plan.dispatches[0].pass, mtl::Pass::forward) << plan.reason;
  }
  {
    Binder bd;
    bd.bind(FSDPA_BUF_Q, std::addressof(pr.q), ap.q);
    bd.bind(FSDPA_BUF_K, std::addressof(pr.k), ap.k);
    bd.bind(FSDPA_BUF_V, std::addressof(pr.v), ap.v);
    bd.bind(FSDPA_BUF_OUT, std::addressof(pr.out), ap.out);
    bd.bind(FSDPA_BUF_LSE, std::addressof(pr.lse), ap.lse);
    bd.bind(FSDPA_BUF_ALIBI, std::addressof(pr.alibi), ap.alibi);
    bd.bind(FSDPA_BUF_CU_Q, std::addressof(pr.cu_q), ap.cu_seqlens_q);
    bd.bind(FSDPA_BUF_CU_K, std::addressof(pr.cu_k), ap.cu_seqlens_k);
    bd.bind(FSDPA_BUF_SEQUSED_K, std::addressof(pr.used_t), ap.seqused_k);
    bd.bind(FSDPA_BUF_CACHE_BATCH_IDX, std::addressof(pr.bidx_t), ap.cache_batch_idx);
    bd.bind(FSDPA_BUF_CACHE_LEFTPAD, std::addressof(pr.leftpad_t), ap.cache_leftpad);
    bd.bind(FSDPA_BUF_BLOCK_TABLE, std::addressof(pr.table), ap.block_table);
    bd.bind_scratch(plan);
    ASSERT_NO_FATAL_FAILURE(run_plan(plan, bd, std::hash<std::string>{}(m.name)));
    bd.read_back(FSDPA_BUF_OUT, std::addressof(pr.out));
    bd.read_back(FSDPA_BUF_LSE, std::addressof(pr.lse));
  }
  Tensor out64 = pr.out64(), lse64 = pr.lse;
  lse64.poison();
  ASSERT_EQ(fsdpa_reference_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out64, &lse64), FSDPA_OK) << fsdpa_last_error();
  const int64_t reduction = std::max({m.cap, m.D, m.Dv, m.Sq});
  expect_close("out", pr.out, out64, pr.dt, reduction);
  expect_close("lse", pr.lse, lse64, DT::f32, reduction);
  if (m.leftpad && m.seqused) {  // the sequence without keys: out 0, lse -inf
    const int64_t b = m.B - 1;
    for (int64_t h = 0; h < m.Hq; ++h)
      for (int64_t i = 0; i < m.Sq; ++i) {
        EXPECT_EQ(pr.lse.get((b * m.Hq + h) * m.Sq + i), -INFINITY);
        EXPECT_EQ(pr.out.get(((b * m.Hq + h) * m.Sq + i) * m.Dv), 0.0);
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Grid, MetalEmuKvCache,
                         ::testing::ValuesIn(fsdpa_metal_test::metal_kv_grid(FSDPA_METAL_TEST_REDUCED)),
                         [](const ::testing::TestParamInfo<KvCase>& i) { return kv_test_name(i.param); });

// The backward never reads a KV cache: the planner refuses it (the core
// already refuses the call, "for the forward only").
TEST(MetalKvCache, BackwardIsRefused) {
  KvCase m;
  m.page = 16, m.seqused = true, m.Sq = 2, m.cap = 40;
  KvProblem pr(m);
  fsdpa::AttnParams ap;
  fsdpa::CallTensors ct;
  ct.q = &pr.q, ct.k = &pr.k, ct.v = &pr.v, ct.out = &pr.out, ct.lse = &pr.lse;
  ASSERT_EQ(fsdpa::make_attn_params(fsdpa::CallKind::forward, &pr.p, ct, &ap), FSDPA_OK) << fsdpa_last_error();
  try {
    (void)mtl::plan_backward(ap, mtl::GpuFamily::apple9);
    ADD_FAILURE() << "a KV-cache backward was planned";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("forward only"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fsdpa_test
