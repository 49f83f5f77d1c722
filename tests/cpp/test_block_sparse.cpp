// The block-sparse mask (FlexAttention's BlockMask as block lists): the fp64
// reference with the lists equals the reference with the equivalent dense
// bool mask, and the CPU backend (forward and gradients) matches the
// reference over patterns, block sizes, broadcasts, GQA and every other
// feature; bad lists are errors naming the argument.
#include <gtest/gtest.h>

#include <memory>

#include "block_sparse_case.h"
#include "reference_checks.h"
#include "registry_case.h"

namespace fsdpa_test {
namespace {

struct SparseCase {
  Case c;
  SparseSpec s;
};

std::string sparse_name(const SparseCase& sc) {
  std::string n = describe(sc.c) + "_" + sparse_kind_name(sc.s.kind) + "_b" +
                  std::to_string(sc.s.bq) + "x" + std::to_string(sc.s.bk);
  if (sc.s.per_batch) n += "_perb";
  if (sc.s.per_head) n += "_perh";
  return n;
}

// The registry's block-sparse cases for the CPU (tests/common/case_registry.cc):
// patterns, block sizes below, equal to and above the CPU's 64 x 64 tiles
// and unaligned, broadcasts, GQA, decode rows, every other feature on top.
std::vector<SparseCase> make_grid() {
  std::vector<SparseCase> grid;
  for (const auto& [c, s] : registry_sparse_cases(fsdpa_cases::kCpu)) grid.push_back({c, s});
  return grid;
}

void PrintTo(const SparseCase& sc, std::ostream* os) { *os << sparse_name(sc); }

class BlockSparseCpu : public ::testing::TestWithParam<SparseCase> {};

TEST_P(BlockSparseCpu, ForwardAndGradientsMatchReference) {
  const Case& c = GetParam().c;
  const SparseSpec& s = GetParam().s;
  Problem pr(c);
  BlockSparse bs(c, s);
  bs.attach(&pr.p, s);
  fsdpa_params& p = pr.p;

  Tensor out = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, c.dt), lse = pr.make_lse();
  out.poison();
  lse.poison();
  ASSERT_EQ(fsdpa_forward(&p, &pr.q, &pr.k, &pr.v, &out, &lse, nullptr), FSDPA_OK)
      << fsdpa_last_error();
  Tensor out64 = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, DT::f64), lse64 = pr.make_lse();
  ASSERT_EQ(fsdpa_reference_forward(&p, &pr.q, &pr.k, &pr.v, &out64, &lse64), FSDPA_OK)
      << fsdpa_last_error();
  expect_close("out", out, out64, c.dt, pr.reduction_len());
  expect_close("lse", lse, lse64, DT::f32, pr.reduction_len());

  // The reference with the lists is the reference with the dense mask.
  if (c.mask == MaskKind::none) {
    fsdpa_params dense = p;
    dense.kv_num_blocks = dense.kv_indices = dense.kv_block_mask = nullptr;
    dense.full_kv_num_blocks = dense.full_kv_indices = nullptr;
    dense.mask = &bs.dense;
    Tensor o2 = pr.make(c.Hq, c.Sq, pr.total_q, c.Dv, DT::f64), l2 = pr.make_lse();
    ASSERT_EQ(fsdpa_reference_forward(&dense, &pr.q, &pr.k, &pr.v, &o2, &l2), FSDPA_OK)
        << fsdpa_last_error();
    EXPECT_EQ(max_abs_diff(o2, out64), 0.0) << "reference: lists differ from the dense mask";
    EXPECT_EQ(max_abs_diff(l2, lse64), 0.0) << "reference lse: lists differ from the dense mask";
  }

  expect_gradients_match_reference(p, pr, c, out, lse);
}

INSTANTIATE_TEST_SUITE_P(Grid, BlockSparseCpu, ::testing::ValuesIn(make_grid()),
                         [](const ::testing::TestParamInfo<SparseCase>& i) {
                           return sparse_name(i.param);
                         });

// A query block whose lists are empty: out 0 and lse -inf on those rows.
TEST(BlockSparse, EmptyRowsGiveZeroAndMinusInf) {
  Case c;
  c.B = 1; c.Hq = 2; c.Hk = 1; c.Sq = 70; c.Sk = 90; c.D = 16; c.Dv = 16;
  Problem pr(c);
  SparseSpec s;
  s.kind = SparseKind::empty_rows;
  s.bq = 8; s.bk = 16;
  BlockSparse bs(c, s);
  bs.attach(&pr.p, s);
  Tensor out({1, 2, 70, 16}, DT::f32), lse({1, 2, 70}, DT::f32);
  out.poison();
  ASSERT_EQ(fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, &lse, nullptr), FSDPA_OK)
      << fsdpa_last_error();
  int64_t empty = 0;
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < 70; ++i) {
      if ((i / 8) % 3 != 1) continue;
      ++empty;
      EXPECT_EQ(lse.get(h * 70 + i), -INFINITY) << "row " << i;
      for (int64_t d = 0; d < 16; ++d) EXPECT_EQ(out.get((h * 70 + i) * 16 + d), 0.0);
    }
  EXPECT_GT(empty, 0);
}

TEST(BlockSparse, VarlenIsRefused) {
  Case c;
  c.B = 2; c.Sq = 20; c.Sk = 30; c.D = 8; c.Dv = 8;
  c.varlen = true;
  Problem pr(c);
  Case dense = c;
  dense.varlen = false;
  SparseSpec s;
  BlockSparse bs(dense, s);
  bs.attach(&pr.p, s);
  Tensor out({pr.total_q, 1, 8}, DT::f32);
  EXPECT_EQ(fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, nullptr, nullptr),
            FSDPA_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(fsdpa_last_error()).find("not supported with varlen"), std::string::npos)
      << fsdpa_last_error();
}

// A caller built before the block-sparse fields (struct_size = V0_2) gets
// them off, whatever lies in memory after its struct.
TEST(BlockSparse, OldStructSizeReadsFieldsAsOff) {
  Case c;
  c.Sq = 20; c.Sk = 30; c.D = 8; c.Dv = 8;
  Problem pr(c);
  Tensor garbage({1}, DT::i32);
  pr.p.kv_num_blocks = &garbage;  // past the old struct: must not be read
  pr.p.sparse_block_q = -7;
  pr.p.struct_size = FSDPA_PARAMS_SIZE_V0_2;
  Tensor out({1, 1, 20, 8}, DT::f32), out2({1, 1, 20, 8}, DT::f32);
  ASSERT_EQ(fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, nullptr, nullptr), FSDPA_OK)
      << fsdpa_last_error();
  fsdpa_params plain;
  fsdpa_params_init(&plain);
  ASSERT_EQ(fsdpa_forward(&plain, &pr.q, &pr.k, &pr.v, &out2, nullptr, nullptr), FSDPA_OK);
  EXPECT_EQ(out.bytes, out2.bytes);
}

// Bad lists: the status and a message naming the argument.
struct SparseArgs {
  Case c;
  Problem pr;
  SparseSpec s;
  BlockSparse bs;
  Tensor out, lse;
  static Case make_case() {
    Case c;
    c.B = 2; c.Hq = 2; c.Hk = 1; c.Sq = 33; c.Sk = 40; c.D = 8; c.Dv = 8;
    return c;
  }
  SparseArgs() : c(make_case()), pr(c), s(spec()), bs(c, s) {
    bs.attach(&pr.p, s);
    out = Tensor({2, 2, 33, 8}, DT::f32);
    lse = Tensor({2, 2, 33}, DT::f32);
  }
  static SparseSpec spec() {
    SparseSpec s;
    s.bq = 16; s.bk = 16;
    s.per_head = true;
    return s;
  }
  fsdpa_status forward() { return fsdpa_forward(&pr.p, &pr.q, &pr.k, &pr.v, &out, &lse, nullptr); }
};

struct BadSparse {
  const char* name;
  void (*corrupt)(SparseArgs&);
  const char* expect;
  fsdpa_status status = FSDPA_ERROR_INVALID_ARGUMENT;
};

const BadSparse kBadSparse[] = {
    {"index_high", [](SparseArgs& a) { a.bs.full_num.set(0, 1); a.bs.full_idx.set(0, 3); },
     "full_kv_indices: entry [0, 0, 0, 0] is 3, outside the 3 key blocks"},
    {"index_negative", [](SparseArgs& a) { a.bs.kv_num.set(1, 1); a.bs.kv_idx.set(3, -1); },
     "kv_indices: entry [0, 0, 1, 0] is -1"},
    {"count_high", [](SparseArgs& a) { a.bs.kv_num.set(2, 4); }, "kv_num_blocks: entry [0, 0, 2] is 4, outside 0..3"},
    {"duplicate", [](SparseArgs& a) {
       a.bs.full_num.set(0, 1); a.bs.full_idx.set(0, 2);
       a.bs.kv_num.set(0, 1); a.bs.kv_idx.set(0, 2);
     }, "kv_indices: key block 2 is listed twice"},
    {"dtype", [](SparseArgs& a) { a.bs.kv_idx = Tensor(a.bs.kv_idx.shape, DT::f32); a.pr.p.kv_indices = &a.bs.kv_idx; },
     "kv_indices: dtype must be int32"},
    {"num_rank", [](SparseArgs& a) { a.bs.kv_num = Tensor({2, 3}, DT::i32); a.pr.p.kv_num_blocks = &a.bs.kv_num; },
     "kv_num_blocks: expected rank 3"},
    {"heads", [](SparseArgs& a) {
       a.bs.full_num = Tensor({1, 3, 3}, DT::i32); a.pr.p.full_kv_num_blocks = &a.bs.full_num;
     }, "full_kv_num_blocks: size 3 of dim 1 is neither 1 nor the query heads 2"},
    {"too_few_q_blocks", [](SparseArgs& a) {
       a.bs.kv_num = Tensor({1, 2, 2}, DT::i32); a.pr.p.kv_num_blocks = &a.bs.kv_num;
     }, "kv_num_blocks: 2 query blocks (dim 2), expected at least"},
    {"idx_mismatch", [](SparseArgs& a) {
       a.bs.kv_idx = Tensor({1, 1, 3, 3}, DT::i32); a.pr.p.kv_indices = &a.bs.kv_idx;
     }, "kv_indices: size 1 of dim 1 differs from kv_num_blocks's 2"},
    {"pair_missing", [](SparseArgs& a) { a.pr.p.kv_indices = nullptr; },
     "kv_num_blocks and kv_indices must be given together"},
    {"mask_block_shape", [](SparseArgs& a) { a.pr.p.sparse_block_k = 20; },
     "kv_block_mask: a block is [16, 16], expected"},
    {"block_size", [](SparseArgs& a) { a.pr.p.sparse_block_q = 0; }, "sparse_block_q: 0 is outside"},
    {"mask_dtype", [](SparseArgs& a) {
       a.bs.kv_mask = Tensor(a.bs.kv_mask.shape, DT::f32); a.pr.p.kv_block_mask = &a.bs.kv_mask;
     }, "kv_block_mask: dtype must be bool or uint8"},
    {"mask_alone", [](SparseArgs& a) {
       a.pr.p.kv_num_blocks = a.pr.p.kv_indices = nullptr;
       a.pr.p.full_kv_num_blocks = a.pr.p.full_kv_indices = nullptr;
     }, "kv_block_mask: set without kv_num_blocks"},
    {"with_kv_cache", [](SparseArgs& a) {
       static Tensor used({2}, DT::i32);
       used.set(0, 40); used.set(1, 40);
       a.pr.p.seqused_k = &used;
     }, "kv_num_blocks: the block-sparse mask is not supported with the KV-cache"},
};

class BlockSparseBadInput : public ::testing::TestWithParam<BadSparse> {};

TEST_P(BlockSparseBadInput, ErrorNamesArgument) {
  SparseArgs a;
  ASSERT_EQ(a.forward(), FSDPA_OK) << fsdpa_last_error();  // valid before corruption
  GetParam().corrupt(a);
  EXPECT_EQ(a.forward(), GetParam().status);
  EXPECT_NE(std::string(fsdpa_last_error()).find(GetParam().expect), std::string::npos)
      << "message: " << fsdpa_last_error();
}

INSTANTIATE_TEST_SUITE_P(All, BlockSparseBadInput, ::testing::ValuesIn(kBadSparse),
                         [](const ::testing::TestParamInfo<BadSparse>& i) { return std::string(i.param.name); });

// The CPU plan says how it reads the lists.
TEST(BlockSparse, ExplainNamesTheLists) {
  SparseArgs a;
  char buf[2048];
  ASSERT_EQ(fsdpa_explain(&a.pr.p, 0, nullptr, &a.pr.q, &a.pr.k, &a.pr.v, &a.out, &a.lse, nullptr,
                          nullptr, nullptr, buf, sizeof buf),
            FSDPA_OK)
      << fsdpa_last_error();
  EXPECT_NE(std::string(buf).find("block-sparse: 16x16-block lists"), std::string::npos) << buf;
}

}  // namespace
}  // namespace fsdpa_test
