// The KV-cache parameters and fsdpa_merge_attn_states through the C ABI:
// an old caller's smaller fsdpa_params still works, a paged cache with an
// odd page size gives the dense answer, bad values name their argument,
// a merge in place of two key halves gives the whole, and the registry's
// KV-cache cases (pages, cache rows, seqused_k, leftpad, varlen; the same
// as CUDA's) match the fp64 reference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "reference_checks.h"
#include "registry_case.h"

namespace fsdpa_test {
namespace {

// B=2, Hq=4, Hk=2, Sq=3, D=Dv=16; dense keys [B, Hk, Sk, D].
constexpr int64_t B = 2, Hq = 4, Hk = 2, Sq = 3, D = 16, Sk = 23;

struct Dense {
  Tensor q{{B, Hq, Sq, D}, DT::f32}, k{{B, Hk, Sk, D}, DT::f32}, v{{B, Hk, Sk, D}, DT::f32};
  Dense() {
    std::mt19937 g(7);
    q.fill_normal(g);
    k.fill_normal(g);
    v.fill_normal(g);
  }
};

// The dense keys scattered into pages of `page` rows, pages in reverse
// order; pool [num_pages, Hk, page, D] (a [pages, page, Hk, D] buffer).
struct Paged {
  int64_t page, max_pages, num_pages;
  Tensor k, v, table;
  Paged(const Dense& d, int64_t page_) : page(page_) {
    max_pages = (Sk + page - 1) / page;
    num_pages = B * max_pages;
    k = Tensor({num_pages, Hk, page, D}, DT::f32, {0, 2, 1, 3});
    v = Tensor({num_pages, Hk, page, D}, DT::f32, {0, 2, 1, 3});
    k.poison();
    v.poison();
    table = Tensor({B, max_pages}, DT::i32);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < max_pages; ++i) table.set(b * max_pages + i, num_pages - 1 - (b * max_pages + i));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hk; ++h)
        for (int64_t t = 0; t < Sk; ++t) {
          const int64_t pg = static_cast<int64_t>(table.get(b * max_pages + t / page));
          for (int64_t x = 0; x < D; ++x) {
            const int64_t src = ((b * Hk + h) * Sk + t) * D + x;
            const int64_t dst = ((pg * Hk + h) * page + t % page) * D + x;
            k.set(dst, d.k.get(src));
            v.set(dst, d.v.get(src));
          }
        }
  }
};

TEST(KvCache, OldCallerStructSize) {
  Dense d;
  Tensor out_new({B, Hq, Sq, D}, DT::f32), out_old({B, Hq, Sq, D}, DT::f32);
  fsdpa_params p;
  fsdpa_params_init(&p);
  ASSERT_EQ(fsdpa_forward(&p, &d.q, &d.k, &d.v, &out_new, nullptr, nullptr), FSDPA_OK)
      << fsdpa_last_error();
  // An old caller's struct: only the first-release fields, then memory the
  // library must not read as the new pointers.
  std::vector<unsigned char> old(sizeof(fsdpa_params), 0xAB);
  std::memcpy(old.data(), &p, FSDPA_PARAMS_SIZE_V0_1);
  uint32_t size = FSDPA_PARAMS_SIZE_V0_1;
  std::memcpy(old.data(), &size, sizeof(size));
  ASSERT_EQ(fsdpa_forward(reinterpret_cast<const fsdpa_params*>(old.data()), &d.q, &d.k, &d.v,
                          &out_old, nullptr, nullptr),
            FSDPA_OK)
      << fsdpa_last_error();
  EXPECT_EQ(max_abs_diff(out_new, out_old), 0.0);
}

// Initialisation never writes past the caller's struct: the first release's
// exported fsdpa_params_init (what a program built against it calls) fills
// FSDPA_PARAMS_SIZE_V0_1 bytes; the header's macro passes sizeof(*p).
TEST(KvCache, InitWritesOnlyTheCallersStruct) {
  std::vector<unsigned char> buf(sizeof(fsdpa_params) + 16, 0xAB);
  auto* p = reinterpret_cast<fsdpa_params*>(buf.data());
  (fsdpa_params_init)(p);  // parenthesised: the exported function, not the macro
  EXPECT_EQ(p->struct_size, FSDPA_PARAMS_SIZE_V0_1);
  EXPECT_EQ(p->window_left, -1);
  EXPECT_EQ(p->check_finite, 1);
  for (size_t i = FSDPA_PARAMS_SIZE_V0_1; i < buf.size(); ++i) ASSERT_EQ(buf[i], 0xAB) << i;

  std::fill(buf.begin(), buf.end(), 0xAB);
  fsdpa_params_init(p);  // the macro: this header's size
  EXPECT_EQ(p->struct_size, sizeof(fsdpa_params));
  EXPECT_EQ(p->block_table, nullptr);
  for (size_t i = sizeof(fsdpa_params); i < buf.size(); ++i) ASSERT_EQ(buf[i], 0xAB) << i;

  std::fill(buf.begin(), buf.end(), 0xAB);
  fsdpa_params_init_sized(p, FSDPA_PARAMS_SIZE_V0_1 - 1);  // smaller than any struct: untouched
  for (unsigned char c : buf) ASSERT_EQ(c, 0xAB);
}

TEST(KvCache, PagedEqualsDense) {
  Dense d;
  Tensor used({B}, DT::i32);
  used.set(0, 17);
  used.set(1, Sk);
  Tensor ref({B, Hq, Sq, D}, DT::f32);
  for (int64_t page : {1, 3, 16, 64}) {
    Paged pg(d, page);
    fsdpa_params p;
    fsdpa_params_init(&p);
    p.causal = 1;
    p.align = FSDPA_ALIGN_BOTTOM_RIGHT;
    p.seqused_k = &used;
    // Dense with seqused_k: the reference's answer.
    ASSERT_EQ(fsdpa_reference_forward(&p, &d.q, &d.k, &d.v, &ref, nullptr), FSDPA_OK)
        << fsdpa_last_error();
    p.block_table = &pg.table;
    Tensor out({B, Hq, Sq, D}, DT::f32), out_ref({B, Hq, Sq, D}, DT::f32);
    out.poison();
    ASSERT_EQ(fsdpa_forward(&p, &d.q, &pg.k, &pg.v, &out, nullptr, nullptr), FSDPA_OK)
        << fsdpa_last_error();
    EXPECT_LT(max_abs_diff(out, ref), 1e-5) << "page " << page;
    ASSERT_EQ(fsdpa_reference_forward(&p, &d.q, &pg.k, &pg.v, &out_ref, nullptr), FSDPA_OK)
        << fsdpa_last_error();
    EXPECT_LT(max_abs_diff(out_ref, ref), 1e-6) << "page " << page;
  }
}

TEST(KvCache, BadValuesNameTheArgument) {
  Dense d;
  Paged pg(d, 5);
  Tensor used({B}, DT::i32), out({B, Hq, Sq, D}, DT::f32), dq = d.q, dk = d.k, dv = d.v;
  used.set(0, 10);
  used.set(1, 10);
  fsdpa_params p;
  fsdpa_params_init(&p);
  p.block_table = &pg.table;
  p.seqused_k = &used;
  pg.table.set(1, 999);  // sequence 0, page 1 (positions 5..9: used)
  EXPECT_EQ(fsdpa_forward(&p, &d.q, &pg.k, &pg.v, &out, nullptr, nullptr),
            FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::strstr(fsdpa_last_error(), "block_table: entry [0, 1] is 999"), nullptr)
      << fsdpa_last_error();
  pg.table.set(1, 0);
  used.set(1, int32_t(pg.max_pages * 5 + 1));
  EXPECT_EQ(fsdpa_forward(&p, &d.q, &pg.k, &pg.v, &out, nullptr, nullptr),
            FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::strstr(fsdpa_last_error(), "seqused_k: entry 1"), nullptr) << fsdpa_last_error();
  used.set(1, 10);
  Tensor lse({B, Hq, Sq}, DT::f32);
  EXPECT_EQ(fsdpa_backward(&p, &out, &d.q, &pg.k, &pg.v, &out, &lse, &dq, &dk, &dv, nullptr),
            FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::strstr(fsdpa_last_error(), "forward only"), nullptr) << fsdpa_last_error();
  // Contiguous cache: cache_leftpad beyond the cache length.
  fsdpa_params_init(&p);
  Tensor leftpad({B}, DT::i32);
  leftpad.set(1, Sk + 1);
  p.cache_leftpad = &leftpad;
  EXPECT_EQ(fsdpa_forward(&p, &d.q, &d.k, &d.v, &out, nullptr, nullptr),
            FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::strstr(fsdpa_last_error(), "cache_leftpad: entry 1"), nullptr)
      << fsdpa_last_error();
}

TEST(Merge, InPlaceHalvesGiveTheWhole) {
  Dense d;
  // Keys [0, 9) and [9, Sk) as two dense problems, merged in place into the first.
  Tensor k1({B, Hk, 9, D}, DT::f32), v1({B, Hk, 9, D}, DT::f32);
  Tensor k2({B, Hk, Sk - 9, D}, DT::f32), v2({B, Hk, Sk - 9, D}, DT::f32);
  for (int64_t bh = 0; bh < B * Hk; ++bh)
    for (int64_t t = 0; t < Sk; ++t)
      for (int64_t x = 0; x < D; ++x) {
        const int64_t src = (bh * Sk + t) * D + x;
        if (t < 9) {
          k1.set((bh * 9 + t) * D + x, d.k.get(src));
          v1.set((bh * 9 + t) * D + x, d.v.get(src));
        } else {
          k2.set((bh * (Sk - 9) + t - 9) * D + x, d.k.get(src));
          v2.set((bh * (Sk - 9) + t - 9) * D + x, d.v.get(src));
        }
      }
  fsdpa_params p;
  fsdpa_params_init(&p);
  Tensor o1({B, Hq, Sq, D}, DT::f32), l1({B, Hq, Sq}, DT::f32);
  Tensor o2({B, Hq, Sq, D}, DT::f32), l2({B, Hq, Sq}, DT::f32);
  Tensor whole({B, Hq, Sq, D}, DT::f32), lw({B, Hq, Sq}, DT::f32);
  ASSERT_EQ(fsdpa_forward(&p, &d.q, &k1, &v1, &o1, &l1, nullptr), FSDPA_OK);
  ASSERT_EQ(fsdpa_forward(&p, &d.q, &k2, &v2, &o2, &l2, nullptr), FSDPA_OK);
  ASSERT_EQ(fsdpa_forward(&p, &d.q, &d.k, &d.v, &whole, &lw, nullptr), FSDPA_OK);
  ASSERT_EQ(fsdpa_merge_attn_states(&o1, &l1, &o2, &l2, &o1, &l1, nullptr), FSDPA_OK)
      << fsdpa_last_error();
  EXPECT_LT(max_abs_diff(o1, whole), 1e-5);
  EXPECT_LT(max_abs_diff(l1, lw), 1e-5);
  // Mismatched lse shape names the argument.
  Tensor bad({B, Hq, Sq + 1}, DT::f32);
  EXPECT_EQ(fsdpa_merge_attn_states(&o1, &l1, &o2, &bad, &o1, &l1, nullptr),
            FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::strstr(fsdpa_last_error(), "lse_b: size of dim 2"), nullptr) << fsdpa_last_error();
}

// The registry's KV-cache cases for the CPU (kv_cache_case.h builds each:
// unused cache positions and spare pages hold NaN).
class KvCacheGrid : public ::testing::TestWithParam<KvCase> {};

TEST_P(KvCacheGrid, ForwardMatchesReference) {
  const KvCase& c = GetParam();
  KvProblem pr(c);
  Tensor out = pr.make_out(c.dt), lse = pr.make_lse();
  out.poison();
  lse.poison();
  ASSERT_EQ(fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, &lse, nullptr), FSDPA_OK)
      << fsdpa_last_error();
  Tensor out64 = pr.make_out(DT::f64), lse64 = pr.make_lse();
  ASSERT_EQ(fsdpa_reference_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out64, &lse64), FSDPA_OK)
      << fsdpa_last_error();
  const int64_t red = std::max({c.cap, c.Sq, c.D, c.Dv});
  expect_close("out", out, out64, c.dt, red);
  expect_close("lse", lse, lse64, DT::f32, red);
}

INSTANTIATE_TEST_SUITE_P(Grid, KvCacheGrid, ::testing::ValuesIn(registry_kv_cases(fsdpa_cases::kCpu)),
                         [](const ::testing::TestParamInfo<KvCase>& i) {
                           std::string s = kv_describe(i.param);
                           for (char& ch : s)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

}  // namespace
}  // namespace fsdpa_test
