// Unit tests of the portable Metal planner (src/metal/plan.cpp): the
// threadgroup-memory and threads budget over every configuration the planner
// can emit, key and define consistency, grid sizes, the split-KV decode
// choice, argument block layout, and the assembled single-string source.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "metal/finite.h"
#include "metal/heuristics.h"
#include "metal/plan.h"

namespace {
namespace mtl = fsdpa::metal;
using fsdpa::AttnParams;
using fsdpa::DType;

AttnParams params(DType dt, int64_t d, int64_t dv) {
  AttnParams p{};
  p.batch = 2, p.heads_q = 6, p.heads_k = 2, p.seqlen_q = 100, p.seqlen_k = 77;
  p.total_q = 200, p.total_k = 154;
  p.head_dim = d, p.head_dim_v = dv;
  p.dtype = p.out_dtype = p.dout_dtype = dt;
  p.window_left = p.window_right = -1;
  p.scale = 0.125f;
  for (int i = 0; i < 4; ++i) p.q_stride[i] = p.k_stride[i] = p.v_stride[i] = 1 + i;
  return p;
}

TEST(MetalPlan, TilesFitEveryHeadDim) {
  for (int fam : {7, 8, 9})
    for (DType dt : {DType::f32, DType::f16, DType::bf16})
      for (int d = 1; d <= 256; d += 7)
        for (int dv : {8, d, 256}) {
          const mtl::KernelConfig c = mtl::kernel_config(mtl::make_key(params(dt, d, dv), mtl::GpuFamily(fam)));
          for (auto pass : {mtl::Pass::forward, mtl::Pass::backward_dq, mtl::Pass::backward_dkdv}) {
            EXPECT_LE(mtl::threadgroup_bytes(pass, c), size_t(mtl::kThreadgroupMemoryBytes));
            EXPECT_GT(mtl::threads_per_threadgroup(pass, c), 0u);
          }
          for (mtl::Tile t : {c.fwd, c.dq, c.dkv}) {
            EXPECT_EQ(t.parallel % 8, 0);
            EXPECT_EQ(t.traversal % 8, 0);
            EXPECT_GE(t.traversal, 8);
          }
        }
}

TEST(MetalPlan, MlxTilesWhereTheyFit) {
  // MLX steel attention: 32 query rows (4 simdgroups), 32 keys below head dim 128, 16 from 128 on.
  for (int fam : {7, 9}) {
    const auto c = mtl::kernel_config(mtl::make_key(params(DType::f16, 64, 64), mtl::GpuFamily(fam)));
    EXPECT_EQ(c.fwd.parallel, 32);
    EXPECT_EQ(c.fwd.traversal, 32);
    const auto c128 = mtl::kernel_config(mtl::make_key(params(DType::bf16, 128, 128), mtl::GpuFamily(fam)));
    EXPECT_EQ(c128.fwd.parallel, 32);
    EXPECT_EQ(c128.fwd.traversal, 16);
    EXPECT_EQ(mtl::threadgroup_bytes(mtl::Pass::forward, c128), size_t(32 * 128 * 2 + 16 * 128 * 2));  // 12 KiB
  }
}

// Every configuration the planner can emit: 3 families x 3 dtypes x head
// dims D, Dv in 8..256 (multiples of 8; the key rounds up) x the passes.
// Budget (docs/metal.md): <= 32 KiB of threadgroup memory (the hard limit);
// <= 24 KiB for every forward and every 16-bit config; <= 16 KiB (MLX's
// design point) for 16-bit inputs at head dims <= 128 and float32 at <= 64;
// >= 2 simdgroups per threadgroup except the documented case: float32
// backward with D + Dv >= 344, where even (16, 8) tiles exceed 32 KiB.
TEST(MetalPlan, ThreadgroupBudgetOverEveryConfig) {
  const mtl::Pass tiled[] = {mtl::Pass::forward, mtl::Pass::backward_dq, mtl::Pass::backward_dkdv};
  int configs = 0, over16 = 0, over24 = 0, at32 = 0, one_simdgroup = 0, diag_configs = 0, diag_over24 = 0,
      diag_one_simdgroup = 0;
  for (int fam : {7, 8, 9})
    for (DType dt : {DType::f32, DType::f16, DType::bf16})
      for (int d = 8; d <= 256; d += 8)
        for (int dv = 8; dv <= 256; dv += 8) {
          const mtl::KernelConfig c = mtl::kernel_config(mtl::make_key(params(dt, d, dv), mtl::GpuFamily(fam)));
          const bool wide = dt != DType::f32;
          for (mtl::Pass pass : tiled) {
            const size_t bytes = mtl::threadgroup_bytes(pass, c);
            const uint32_t threads = mtl::threads_per_threadgroup(pass, c);
            const std::string what = mtl::key_name(c.key) + " " + mtl::kernel_name(pass);
            ++configs;
            over16 += bytes > 16 * 1024;
            over24 += bytes > 24 * 1024;
            at32 += bytes == 32 * 1024;
            one_simdgroup += threads < 64;
            if (d == dv) {  // the census: D = Dv
              ++diag_configs;
              diag_over24 += bytes > 24 * 1024;
              diag_one_simdgroup += threads < 64;
            }
            EXPECT_LE(bytes, size_t(mtl::kThreadgroupMemoryBytes)) << what;
            if (pass == mtl::Pass::forward || wide) EXPECT_LE(bytes, size_t(24 * 1024)) << what;
            if ((wide && std::max(d, dv) <= 128) || std::max(d, dv) <= 64) EXPECT_LE(bytes, size_t(16 * 1024)) << what;
            if (!(dt == DType::f32 && pass != mtl::Pass::forward && d + dv >= 344)) EXPECT_GE(threads, 64u) << what;
            if (pass == mtl::Pass::forward && wide && std::max(d, dv) <= 128) EXPECT_EQ(threads, 128u) << what;
          }
        }
  EXPECT_EQ(diag_configs, 864);
  printf("CENSUS D=Dv: %d configs, %d > 24 KiB, %d with one simdgroup\n", diag_configs, diag_over24,
         diag_one_simdgroup);
  printf("CENSUS all D,Dv: %d configs, %d > 16 KiB, %d > 24 KiB, %d at 32 KiB, %d with one simdgroup\n", configs,
         over16, over24, at32, one_simdgroup);
  for (int fam : {7, 8, 9})  // the passes without tiles
    for (mtl::Pass pass : {mtl::Pass::backward_preprocess, mtl::Pass::decode_split, mtl::Pass::decode_merge}) {
      const auto c = mtl::kernel_config(mtl::make_key(params(DType::f16, 64, 64), mtl::GpuFamily(fam)));
      EXPECT_EQ(mtl::threadgroup_bytes(pass, c), 0u);
      EXPECT_EQ(mtl::threads_per_threadgroup(pass, c), 128u);
    }
}

// [[max_total_threads_per_threadgroup(N)]]: N is the define the planner
// emits, equal to the threads it dispatches, and every kernel declares it.
TEST(MetalPlan, MaxThreadsDefinesMatchDispatch) {
  std::ifstream f(std::string(FSDPA_METAL_KERNEL_DIR) + "/fsdpa_attention.metal");
  std::stringstream src;
  src << f.rdbuf();
  const auto c = mtl::kernel_config(mtl::make_key(params(DType::f32, 256, 256), mtl::GpuFamily::apple7));
  const auto defs = mtl::kernel_defines(c);
  for (mtl::Pass pass : mtl::kAllPasses) {
    const std::string name = mtl::threads_define(pass);
    int found = 0;
    for (auto& [k, v] : defs)
      if (k == name) found += v == std::to_string(mtl::threads_per_threadgroup(pass, c));
    EXPECT_EQ(found, 1) << name;
    const std::string decl = std::string("[[max_total_threads_per_threadgroup(") + name + ")]]\nkernel void " +
                             mtl::kernel_name(pass) + "(";
    EXPECT_NE(src.str().find(decl), std::string::npos) << decl;
  }
}

TEST(MetalPlan, DecodeSplitChoice) {
  AttnParams p = params(DType::f16, 128, 128);
  p.batch = 1, p.heads_q = 8, p.heads_k = 1, p.seqlen_q = 1, p.seqlen_k = 1000;
  mtl::DecodeSplit d = mtl::choose_decode_split(p);
  EXPECT_EQ(d.splits, 15) << d.reason;  // 1000 / kDecodeMinKeysPerSplit
  EXPECT_GE(int64_t(d.splits) * d.keys_per_split, p.seqlen_k);
  EXPECT_LT(int64_t(d.splits - 1) * d.keys_per_split, p.seqlen_k);  // no empty split
  p.seqlen_k = 100000;
  EXPECT_EQ(mtl::choose_decode_split(p).splits, 64);  // kDecodeTargetWorkItems / 8 rows
  p.seqlen_q = 4;
  EXPECT_EQ(mtl::choose_decode_split(p).splits, 16);
  const mtl::Plan f = mtl::plan_forward(p, mtl::GpuFamily::apple7);
  ASSERT_EQ(f.dispatches.size(), 2u) << f.reason;
  EXPECT_STREQ(f.dispatches[0].kernel, "fsdpa_decode_split");
  EXPECT_EQ(f.dispatches[0].grid[0], 8u * 4 * 16 / 4);  // (row, split) work items / 4 simdgroups
  EXPECT_EQ(f.dispatches[0].grid[1], 1u);              // kv heads
  EXPECT_STREQ(f.dispatches[1].kernel, "fsdpa_decode_merge");
  EXPECT_EQ(f.dispatches[1].grid[0], 1u);
  EXPECT_EQ(f.dispatches[1].grid[1], 8u);
  EXPECT_EQ(f.args.num_splits, 16);
  EXPECT_EQ(f.args.keys_per_split, 6250);
  EXPECT_EQ(f.scratch_elements, int64_t(8) * 4 * 16 * (1 + 128));
  EXPECT_NE(f.reason.find("split-KV"), std::string::npos);

  AttnParams n = p;
  n.seqlen_q = 5;  // too many query rows
  EXPECT_EQ(mtl::choose_decode_split(n).splits, 0);
  n = p;
  n.seqlen_k = 127;  // too few keys
  EXPECT_EQ(mtl::choose_decode_split(n).splits, 0);
  n = p;
  n.batch = 64, n.heads_q = 32, n.heads_k = 8;  // 2048 rows already fill the GPU
  EXPECT_EQ(mtl::choose_decode_split(n).splits, 0);
  n = p;
  int32_t cu[2] = {0, 4};
  n.cu_seqlens_q = n.cu_seqlens_k = cu;  // varlen: normal forward
  const mtl::DecodeSplit v = mtl::choose_decode_split(n);
  EXPECT_EQ(v.splits, 0);
  EXPECT_NE(std::string(v.reason).find("varlen"), std::string::npos);
  const mtl::Plan nf = mtl::plan_forward(n, mtl::GpuFamily::apple7);
  ASSERT_EQ(nf.dispatches.size(), 1u);
  EXPECT_STREQ(nf.dispatches[0].kernel, "fsdpa_forward");
  EXPECT_EQ(nf.scratch_elements, 0);
  // A forced split that does not cover the keys is a planner bug, never a dispatch.
  EXPECT_THROW(mtl::plan_forward_with(p, mtl::GpuFamily::apple7, mtl::DecodeSplit{2, 10, "bad"}),
               std::invalid_argument);
}

TEST(MetalPlan, KeyAndDefines) {
  AttnParams p = params(DType::bf16, 59, 40);
  p.window_right = 0;
  p.softcap = 3.0f;
  const auto key = mtl::make_key(p, mtl::GpuFamily::apple8);
  EXPECT_EQ(key.dp, 64);
  EXPECT_EQ(key.dvp, 40);
  EXPECT_TRUE(key.band);
  EXPECT_TRUE(key.softcap);
  EXPECT_FALSE(key.dropout);
  EXPECT_EQ(mtl::key_name(key), "a8_bf16_d64_v40_m0_b1a0s1p0v0");
  const auto defs = mtl::kernel_defines(mtl::kernel_config(key));
  auto get = [&](const std::string& n) {
    for (auto& [k, v] : defs)
      if (k == n) return v;
    return std::string("?");
  };
  EXPECT_EQ(get("FSDPA_DTYPE"), "2");
  EXPECT_EQ(get("FSDPA_DP"), "64");
  EXPECT_EQ(get("FSDPA_BAND"), "1");
  EXPECT_EQ(get("FSDPA_SOFTCAP"), "1");
}

TEST(MetalPlan, GridsAndArgs) {
  AttnParams p = params(DType::f16, 64, 64);
  const mtl::Plan f = mtl::plan_forward(p, mtl::GpuFamily::apple7);
  ASSERT_EQ(f.dispatches.size(), 1u);
  EXPECT_STREQ(f.dispatches[0].kernel, "fsdpa_forward");
  EXPECT_EQ(f.dispatches[0].grid[0], (100u + f.config.fwd.parallel - 1) / f.config.fwd.parallel);
  EXPECT_EQ(f.dispatches[0].grid[1], 6u);
  EXPECT_EQ(f.dispatches[0].grid[2], 2u);
  EXPECT_EQ(f.dispatches[0].threads[0], uint32_t(f.config.fwd.parallel / 8 * 32));
  EXPECT_EQ(f.args.q_stride[3], 4);
  EXPECT_EQ(f.args.heads_k, 2);
  EXPECT_EQ(f.args.has_lse, 0);

  const mtl::Plan b = mtl::plan_backward(p, mtl::GpuFamily::apple7);
  ASSERT_EQ(b.dispatches.size(), 3u);
  EXPECT_STREQ(b.dispatches[0].kernel, "fsdpa_backward_preprocess");
  EXPECT_STREQ(b.dispatches[1].kernel, "fsdpa_backward_dq");
  EXPECT_STREQ(b.dispatches[2].kernel, "fsdpa_backward_dkdv");
  EXPECT_EQ(b.dispatches[2].grid[1], 2u);  // one threadgroup column per kv head (GQA reduced inside)
  EXPECT_EQ(b.scratch_elements, 2 * 6 * 100);
  EXPECT_EQ(b.args.delta_stride[0], 600);

  int32_t cu[3] = {0, 1, 2};
  p.cu_seqlens_q = p.cu_seqlens_k = cu;  // varlen: one more grid slice for the tail tokens
  const mtl::Plan v = mtl::plan_backward(p, mtl::GpuFamily::apple7);
  EXPECT_EQ(v.dispatches[1].grid[2], 3u);
  EXPECT_EQ(v.dispatches[0].grid[2], 2u);
  EXPECT_EQ(v.scratch_elements, 6 * 200);
  EXPECT_EQ(v.args.delta_stride[0], 0);

  AttnParams e = params(DType::f16, 64, 64);
  e.batch = 0;  // nothing to do: no zero-size dispatch (invalid in Metal)
  EXPECT_TRUE(mtl::plan_forward(e, mtl::GpuFamily::apple7).dispatches.empty());
  EXPECT_TRUE(mtl::plan_backward(e, mtl::GpuFamily::apple7).dispatches.empty());
}

TEST(MetalPlan, DropoutArgs) {
  AttnParams p = params(DType::f32, 32, 32);
  p.dropout_p = 0.25f;
  p.seed = 0x0123456789ABCDEFull;
  p.offset = 0xFEDCBA9876543210ull;
  const auto a = mtl::make_args(p);
  EXPECT_EQ(a.seed_lo, 0x89ABCDEFu);
  EXPECT_EQ(a.seed_hi, 0x01234567u);
  EXPECT_EQ(a.offset_lo, 0x76543210u);
  EXPECT_EQ(a.offset_hi, 0xFEDCBA98u);
  EXPECT_EQ(a.dropout_threshold, 0x40000000u);
  EXPECT_FLOAT_EQ(a.dropout_scale, 1.0f / 0.75f);
}

TEST(MetalPlan, AssembledSourceIsSelfContained) {
  auto read = [](const std::string& name) {
    std::ifstream f(std::string(FSDPA_METAL_KERNEL_DIR) + "/" + name);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
  };
  const auto c = mtl::kernel_config(mtl::make_key(params(DType::f16, 128, 128), mtl::GpuFamily::apple9));
  const std::string src = mtl::assemble_source(c, read);
  EXPECT_EQ(src.find("#include \""), std::string::npos) << "local includes must be inlined";
  EXPECT_NE(src.find("#include <metal_stdlib>"), std::string::npos);
  EXPECT_NE(src.find("#define FSDPA_DP 128"), std::string::npos);
  EXPECT_NE(src.find("struct FsdpaMetalArgs"), std::string::npos);
  EXPECT_NE(src.find("kernel void fsdpa_backward_dkdv"), std::string::npos);
  EXPECT_LT(src.find("#define FSDPA_DTYPE"), src.find("kernel void fsdpa_forward"));
}

}  // namespace

// The MPS bridge: tensor descriptions in, validated plan out.
#include "metal/bridge.h"

namespace {
fsdpa::metal::TensorDesc desc(int dtype, std::vector<int64_t> shape) {
  fsdpa::metal::TensorDesc d;
  d.present = true;
  d.dtype = dtype;
  d.shape = shape;
  d.strides.assign(shape.size(), 1);
  for (int i = int(shape.size()) - 2; i >= 0; --i) d.strides[i] = d.strides[i + 1] * shape[i + 1];
  return d;
}

TEST(MetalBridge, PlansAValidCall) {
  std::vector<fsdpa::metal::TensorDesc> t(FSDPA_NUM_BUFFERS);
  t[FSDPA_BUF_Q] = desc(1, {2, 4, 37, 59});
  t[FSDPA_BUF_K] = desc(1, {2, 2, 45, 59});
  t[FSDPA_BUF_V] = desc(1, {2, 2, 45, 59});
  t[FSDPA_BUF_OUT] = desc(1, {2, 4, 37, 59});
  t[FSDPA_BUF_LSE] = desc(0, {2, 4, 37});
  fsdpa_params p;
  fsdpa_params_init(&p);
  p.causal = 1;
  const auto f = fsdpa::metal::plan_for_tensors(false, p, t, 9);
  EXPECT_EQ(f.key, "a9_f16_d64_v64_m0_b1a0s0p0v0");
  ASSERT_EQ(f.kernels.size(), 1u);
  EXPECT_EQ(f.kernels[0], "fsdpa_forward");
  EXPECT_EQ(f.args.size(), sizeof(FsdpaMetalArgs));
  EXPECT_NE(f.source.find("#define FSDPA_DP 64"), std::string::npos);
  EXPECT_NE(f.source.find("kernel void fsdpa_forward"), std::string::npos);
  FsdpaMetalArgs a;
  std::memcpy(&a, f.args.data(), sizeof(a));
  EXPECT_EQ(a.window_right, 0);
  EXPECT_EQ(a.heads_q, 4);
  EXPECT_FLOAT_EQ(a.scale, 1.0f / std::sqrt(59.0f));

  t[FSDPA_BUF_DOUT] = desc(1, {2, 4, 37, 59});
  t[FSDPA_BUF_DQ] = desc(1, {2, 4, 37, 59});
  t[FSDPA_BUF_DK] = desc(1, {2, 2, 45, 59});
  t[FSDPA_BUF_DV] = desc(1, {2, 2, 45, 59});
  const auto b = fsdpa::metal::plan_for_tensors(true, p, t, 9);
  ASSERT_EQ(b.kernels.size(), 3u);
  EXPECT_EQ(b.scratch_elements, 2 * 4 * 37);
}

// The KV-cache vectors, page table and block lists arrive at their buffer
// indices: the bridge validates them like the C ABI and plans their kernels.
TEST(MetalBridge, PlansKvCacheAndBlockSparseCalls) {
  std::vector<fsdpa::metal::TensorDesc> t(FSDPA_NUM_BUFFERS);
  fsdpa::metal::TensorDesc pool = desc(1, {9, 16, 2, 64});  // [pages, page, Hk, D] viewed as [pages, Hk, page, D]
  pool.shape = {9, 2, 16, 64};
  pool.strides = {16 * 2 * 64, 64, 2 * 64, 1};
  t[FSDPA_BUF_Q] = desc(1, {3, 4, 1, 64});
  t[FSDPA_BUF_K] = pool;
  t[FSDPA_BUF_V] = pool;
  t[FSDPA_BUF_OUT] = desc(1, {3, 4, 1, 64});
  t[FSDPA_BUF_BLOCK_TABLE] = desc(5, {3, 3});
  t[FSDPA_BUF_SEQUSED_K] = desc(5, {3});
  fsdpa_params p;
  fsdpa_params_init(&p);
  const auto f = fsdpa::metal::plan_for_tensors(false, p, t, 7);
  EXPECT_EQ(f.key, "a7_f16_d64_v64_m0_b0a0s0p0v0_kv");
  FsdpaMetalArgs a;
  std::memcpy(&a, f.args.data(), sizeof(a));
  EXPECT_EQ(a.page_size, 16);
  EXPECT_EQ(a.block_table_stride, 3);
  EXPECT_EQ(a.kv_flags, FSDPA_KV_SEQUSED);
  EXPECT_EQ(a.seqlen_k, 48);  // the cache length: 3 pages of 16
  t[FSDPA_BUF_SEQUSED_K] = desc(5, {2});  // not [batch]
  EXPECT_THROW(fsdpa::metal::plan_for_tensors(false, p, t, 7), std::invalid_argument);

  std::vector<fsdpa::metal::TensorDesc> s(FSDPA_NUM_BUFFERS);
  s[FSDPA_BUF_Q] = desc(0, {2, 4, 37, 32});
  s[FSDPA_BUF_K] = desc(0, {2, 2, 45, 32});
  s[FSDPA_BUF_V] = desc(0, {2, 2, 45, 32});
  s[FSDPA_BUF_OUT] = desc(0, {2, 4, 37, 32});
  s[FSDPA_BUF_LSE] = desc(0, {2, 4, 37});
  s[FSDPA_BUF_KV_NUM] = desc(5, {1, 4, 3});
  s[FSDPA_BUF_KV_IDX] = desc(5, {1, 4, 3, 3});
  s[FSDPA_BUF_SPARSE_MASK] = desc(4, {1, 4, 3, 3, 16, 16});
  p.sparse_block_q = p.sparse_block_k = 16;
  const auto b = fsdpa::metal::plan_for_tensors(false, p, s, 7);
  EXPECT_EQ(b.key, "a7_f32_d32_v32_m0_b0a0s0p0v0_bs");
  ASSERT_EQ(b.kernels.size(), 2u);
  EXPECT_EQ(b.kernels[0], "fsdpa_sparse_expand");
  EXPECT_EQ(b.sparse_state_elements, 1 * 4 * 3 * 3);
  s[FSDPA_BUF_DOUT] = s[FSDPA_BUF_DQ] = s[FSDPA_BUF_Q];
  s[FSDPA_BUF_DK] = s[FSDPA_BUF_DV] = s[FSDPA_BUF_K];
  const auto g = fsdpa::metal::plan_for_tensors(true, p, s, 7);
  ASSERT_EQ(g.kernels.size(), 4u);
  EXPECT_EQ(g.kernels[0], "fsdpa_sparse_expand");
}

TEST(MetalBridge, ValidationErrorsPropagate) {
  std::vector<fsdpa::metal::TensorDesc> t(FSDPA_NUM_BUFFERS);
  t[FSDPA_BUF_Q] = desc(1, {2, 4, 37, 59});
  t[FSDPA_BUF_K] = desc(1, {2, 3, 45, 59});  // 4 query heads over 3 kv heads
  t[FSDPA_BUF_V] = desc(1, {2, 3, 45, 59});
  t[FSDPA_BUF_OUT] = desc(1, {2, 4, 37, 59});
  fsdpa_params p;
  fsdpa_params_init(&p);
  EXPECT_THROW(fsdpa::metal::plan_for_tensors(false, p, t, 7), std::invalid_argument);
}
}  // namespace

namespace {
TEST(MetalPlan, CheckFiniteInput) {
  AttnParams p = params(DType::f32, 4, 4);
  p.batch = 2, p.heads_q = 2, p.heads_k = 1, p.seqlen_q = 3, p.seqlen_k = 5;
  const int64_t qs[4] = {2 * 3 * 4, 3 * 4, 4, 1};
  for (int i = 0; i < 4; ++i) p.q_stride[i] = qs[i];
  std::vector<float> q(2 * 2 * 3 * 4, 1.0f);
  EXPECT_EQ(mtl::check_finite_input(p, FSDPA_BUF_Q, q.data()), FSDPA_OK);
  q[1 * 24 + 0 * 12 + 2 * 4 + 3] = NAN;
  EXPECT_EQ(mtl::check_finite_input(p, FSDPA_BUF_Q, q.data()), FSDPA_ERROR_NONFINITE_INPUT);
  EXPECT_NE(std::string(fsdpa_last_error()).find("q: contains a non-finite value (NaN) at index [1, 0, 2, 3]"),
            std::string::npos)
      << fsdpa_last_error();
}
}  // namespace

namespace {
// The KV-cache parameters and the block-sparse lists are compiled in only
// where a call uses them (their own key and defines); a block-sparse plan
// runs the expansion pass first, with int32 scratch for the expanded lists.
TEST(MetalPlan, KvCacheAndBlockSparseKeys) {
  const int32_t ints[4] = {0, 1, 2, 3};
  for (int which = 0; which < 4; ++which) {
    AttnParams p = params(DType::f16, 64, 64);
    if (which == 0) p.seqused_k = ints;
    if (which == 1) p.cache_batch_idx = ints;
    if (which == 2) p.cache_leftpad = ints;
    if (which == 3) {
      p.block_table = ints;
      p.page_size = 16;
      p.num_pages = 4;
      p.block_table_stride = 7;
    }
    const mtl::KernelKey key = mtl::make_key(p, mtl::GpuFamily(9));
    EXPECT_TRUE(key.kv_cache);
    EXPECT_EQ(mtl::key_name(key), "a9_f16_d64_v64_m0_b0a0s0p0v0_kv");
    const auto a = mtl::make_args(p);
    EXPECT_EQ(a.kv_flags, which == 0 ? FSDPA_KV_SEQUSED : which == 1 ? FSDPA_KV_BATCH_IDX
                          : which == 2 ? FSDPA_KV_LEFTPAD : 0);
    EXPECT_EQ(a.page_size, which == 3 ? 16 : 0);
    EXPECT_EQ(a.block_table_stride, which == 3 ? 7 : 0);
    EXPECT_THROW((void)mtl::plan_backward(p, mtl::GpuFamily(9)), std::invalid_argument);
  }
  AttnParams s = params(DType::f32, 32, 32);
  s.sparse = 1, s.sparse_block_q = 16, s.sparse_block_k = 10, s.sparse_k_blocks = 8;
  s.sparse_batches = 1, s.sparse_heads = 6, s.kv_num = ints, s.kv_idx = ints;
  const mtl::Plan f = mtl::plan_forward(s, mtl::GpuFamily::apple7);
  EXPECT_EQ(mtl::key_name(f.config.key), "a7_f32_d32_v32_m0_b0a0s0p0v0_bs");
  ASSERT_EQ(f.dispatches.size(), 2u);
  EXPECT_EQ(f.dispatches[0].pass, mtl::Pass::sparse_expand);
  EXPECT_EQ(f.sparse_state_elements, 1 * 6 * 7 * 8);  // ceil(100 / 16) query blocks x 8 key blocks
  EXPECT_EQ(f.args.sparse_q_blocks, 7);
  EXPECT_EQ(f.args.sparse_lists, 1);
  EXPECT_EQ(f.dispatches[0].grid[0], 1u);  // 42 list rows, one thread each
  const mtl::Plan b = mtl::plan_backward(s, mtl::GpuFamily::apple7);
  ASSERT_EQ(b.dispatches.size(), 4u);
  EXPECT_EQ(b.dispatches[0].pass, mtl::Pass::sparse_expand);
  EXPECT_EQ(b.sparse_state_elements, f.sparse_state_elements);
}
}  // namespace
