// The cases (case_registry.h). Sections, each tagged with the backends that
// run it: the grid the CPU and CUDA share (odd sizes, head dims 16 to 256,
// Dv != D, GQA/MQA, every feature alone and all combined), each backend's
// own shapes (CPU in-place decode, CUDA kernel scopes: Hopper, decode,
// masks), block-sparse, KV cache, determinism, and the Metal kernels'
// grid (small shapes: the emulator is slow), which the CPU runs too.
// A case's name is its test name without the dtype: tools/device/device.sh
// and bench/RESULTS.md select CUDA cases by these names (h_s1, hbm_s,
// hb256, bsp, gqa_causal_bf16, kv_*, ...), so keep them.
#include "case_registry.h"

#include <utility>

namespace fsdpa_cases {

namespace {

constexpr unsigned kCpuCuda = kCpu | kCuda;
constexpr DType kDtypes[] = {DType::f32, DType::f16, DType::bf16};
constexpr int BR = 1;  // FSDPA_ALIGN_BOTTOM_RIGHT

struct Shape {
  const char* name;
  int64_t B, Hq, Hk, Sq, Sk, D, Dv;
};

Case of(const Shape& s, DType dt, unsigned backends, unsigned quick = 0) {
  Case c;
  c.name = s.name;
  c.B = s.B, c.Hq = s.Hq, c.Hk = s.Hk, c.Sq = s.Sq, c.Sk = s.Sk, c.D = s.D, c.Dv = s.Dv;
  c.dtype = dt;
  c.backends = backends;
  c.quick = quick;
  return c;
}

// Bottom-right causal, window, ALiBi, softcap, bool mask and a scale at once.
Case with_all_features(Case c, int64_t window_left = 37) {
  c.name += "_combo";
  c.causal = true;
  c.align = BR;
  c.wl = window_left;
  c.alibi = true;
  c.softcap = 5.0f;
  c.mask = Mask::boolean;
  c.scale = 0.3f;
  return c;
}

using Set = void (*)(Case&);
struct Variant {
  const char* name;
  Set set;
};

// Every feature alone (and a few pairs), named base.name + "_" + feature.
const Variant kFeatureVariants[] = {
    {"causal_tl", [](Case& c) { c.causal = true; }},
    {"causal_br", [](Case& c) { c.causal = true; c.align = BR; }},
    {"window_br", [](Case& c) { c.wl = 16; c.wr = 8; c.align = BR; }},
    {"window_tl_left", [](Case& c) { c.wl = 50; }},
    {"window_tl_right", [](Case& c) { c.wr = 3; }},
    {"bool_mask", [](Case& c) { c.mask = Mask::boolean; }},
    {"additive_mask", [](Case& c) { c.mask = Mask::additive; }},
    {"empty_rows", [](Case& c) { c.mask = Mask::empty_rows; }},
    {"finfo_min_rows", [](Case& c) { c.mask = Mask::finfo_min_rows; }},
    {"alibi", [](Case& c) { c.alibi = true; }},
    {"alibi_causal_br", [](Case& c) { c.alibi = true; c.causal = true; c.align = BR; }},
    {"softcap", [](Case& c) { c.softcap = 2.0f; c.scale = 1.0f; }},
    {"dropout", [](Case& c) { c.dropout = 0.2f; }},
    {"dropout_causal", [](Case& c) { c.dropout = 0.5f; c.causal = true; }},
    {"bshd", [](Case& c) { c.bshd = true; }},
    {"bshd_causal_additive", [](Case& c) { c.bshd = true; c.causal = true; c.mask = Mask::additive; }},
    {"varlen", [](Case& c) { c.varlen = true; c.B = 3; }},
    {"varlen_causal_br", [](Case& c) { c.varlen = true; c.B = 3; c.causal = true; c.align = BR; }},
    {"varlen_window_dropout", [](Case& c) { c.varlen = true; c.B = 3; c.wl = 20; c.wr = 5; c.dropout = 0.1f; }},
    {"causal_br_sq_gt_sk", [](Case& c) { std::swap(c.Sq, c.Sk); c.causal = true; c.align = BR; }},
};

void add_variant(std::vector<Case>& g, Case c, const char* name, Set set) {
  c.name += std::string("_") + name;
  set(c);
  g.push_back(c);
}

// ---- the grid the CPU and CUDA share, and each one's shapes ------------------
// The shared shapes: odd sizes, head dims from 16 to 256, Dv != D, GQA and MQA.
const Shape kSharedShapes[] = {
    {"s1x1", 1, 1, 1, 1, 1, 32, 32},
    {"s113x203_d59_gqa", 2, 4, 2, 113, 203, 59, 59},
    {"s128x217_d64", 1, 2, 2, 128, 217, 64, 64},
    {"s256x512_d32_mqa", 2, 3, 1, 256, 512, 32, 32},
    {"s512x256_d111", 1, 2, 1, 512, 256, 111, 111},
    {"s1023x1024_d32", 1, 1, 1, 1023, 1024, 32, 32},
    {"s113x203_d128", 1, 2, 2, 113, 203, 128, 128},
    {"s77x90_d256", 1, 1, 1, 77, 90, 256, 256},
    {"s100x150_d64_dv40", 2, 3, 3, 100, 150, 64, 40},
    {"s65x64_d16_dv96", 1, 2, 1, 65, 64, 16, 96},
};

void add_shared_grid(std::vector<Case>& g) {
  // Every shape x dtype: plain, and all features combined (CUDA --quick:
  // the first four shapes).
  for (int si = 0; si < 10; ++si)
    for (DType dt : kDtypes) {
      const Case c = of(kSharedShapes[si], dt, kCpuCuda, si < 4 ? unsigned(kCuda) : 0u);
      g.push_back(c);
      g.push_back(with_all_features(c));
    }
  // Every feature alone on an odd GQA shape, each dtype (CUDA --quick:
  // bf16, the tensor-core path).
  for (DType dt : kDtypes)
    for (const Variant& v : kFeatureVariants)
      add_variant(g, of(kSharedShapes[1], dt, kCpuCuda, dt == DType::bf16 ? unsigned(kCuda) : 0u), v.name, v.set);
}

void add_cpu_grid(std::vector<Case>& g) {
  const Shape shapes[] = {
      {"s37x300_d59_gqa_decode", 2, 4, 2, 37, 300, 59, 59},
      // Decode with <= 16 query rows: K/V read in place (row tails, D < 8
      // vectors, D = 2 blocks of 8 vectors).
      {"s5x300_d59_gqa_inplace", 2, 4, 2, 5, 300, 59, 59},
      {"s1x1000_d80_dv48_inplace", 1, 2, 1, 1, 1000, 80, 48},
      {"s16x130_d256_inplace", 1, 2, 2, 16, 130, 256, 256},
      // K/V over 1 MiB a head: the fp32 forward takes q-blocks in pairs
      // (fp32_pair_q_blocks; 20 tasks of q-blocks), the last one alone.
      {"s265x2100_d64_gqa_qpairs", 1, 4, 2, 265, 2100, 64, 64},
  };
  for (const Shape& s : shapes)
    for (DType dt : kDtypes) {
      g.push_back(of(s, dt, kCpu));
      g.push_back(with_all_features(of(s, dt, kCpu)));
    }
  // Layouts and band/varlen features on the in-place decode path.
  const Variant inplace[] = {
      {"bshd", [](Case& c) { c.bshd = true; }},
      {"varlen", [](Case& c) { c.varlen = true; c.B = 3; }},
      {"causal_br_window", [](Case& c) { c.causal = true; c.align = BR; c.wl = 70; }},
      {"empty_rows", [](Case& c) { c.mask = Mask::empty_rows; }},
      {"dropout", [](Case& c) { c.dropout = 0.3f; }},
  };
  for (DType dt : kDtypes)
    for (const Variant& v : inplace) add_variant(g, of(shapes[1], dt, kCpu), v.name, v.set);
}

void add_cuda_grid(std::vector<Case>& g) {
  // Every head-dim bucket, tiny dims, split-KV decode.
  const Shape shapes[] = {
      {"s70x131_d96", 1, 2, 1, 70, 131, 96, 96},
      {"s90x77_d192_dv160", 1, 2, 2, 90, 77, 192, 160},
      {"s33x47_d1_dv3", 1, 2, 1, 33, 47, 1, 3},
      {"s203x113_d200_dv256", 1, 1, 1, 203, 113, 200, 256},
      {"decode_s1x4099_d128_gqa", 2, 8, 2, 1, 4099, 128, 128},
      {"decode_s3x2500_d64", 1, 4, 4, 3, 2500, 64, 64},
  };
  for (DType dt : kDtypes) {
    for (const Shape& s : shapes) {
      g.push_back(of(s, dt, kCuda));
      g.push_back(with_all_features(of(s, dt, kCuda)));
    }
    // Bottom-right causal with dropout on a shared shape and on split-KV decode.
    for (const Shape* s : {&kSharedShapes[2], &shapes[4]})
      add_variant(g, of(*s, dt, kCuda), "causal_br_dropout", [](Case& c) {
        c.causal = true; c.align = BR; c.dropout = 0.15f;
      });
    // Block-structured masks (the driver's blockify, by name): exercise
    // mask block skipping.
    const Variant blockmask[] = {
        {"blockmask_bool", [](Case& c) { c.mask = Mask::boolean; }},
        {"blockmask_bool_causal_alibi", [](Case& c) { c.mask = Mask::boolean; c.causal = true; c.alibi = true; }},
        {"blockmask_bool_dropout", [](Case& c) { c.mask = Mask::boolean; c.dropout = 0.1f; }},
        {"blockmask_additive", [](Case& c) { c.mask = Mask::additive; }},
        {"blockmask_additive_softcap_window", [](Case& c) { c.mask = Mask::additive; c.softcap = 3.0f; c.wl = 70; }},
    };
    for (const Variant& v : blockmask)
      add_variant(g, of(kSharedShapes[1], dt, kCuda, dt == DType::bf16 ? unsigned(kCuda) : 0u), v.name, v.set);
  }
}

// ---- CUDA kernel scopes (Hopper forward/backward, decode, masks) -------------
// A shape of the scope blocks below (h_, hbm_, hb256_, dec_, hm_; Dv 0:
// = D), in bf16 and fp16. A block's variants up to its `rest()` call are in
// --quick (bf16 only); those after it are not.
struct ScopeShape {
  const char* n;
  int64_t B, Hq, Hk, Sq, Sk, D, Dv = 0;
};

class Scope {
 public:
  Scope(std::vector<Case>& g, const ScopeShape& x, DType dt) : g_(g), x_(x), dt_(dt), quick_(dt == DType::bf16) {}
  const ScopeShape& shape() const { return x_; }
  void add(const char* variant, Mask mask, Set set) {
    Case c;
    c.name = std::string(x_.n) + "_" + variant;
    c.B = x_.B, c.Hq = x_.Hq, c.Hk = x_.Hk, c.Sq = x_.Sq, c.Sk = x_.Sk, c.D = x_.D, c.Dv = x_.Dv ? x_.Dv : x_.D;
    c.dtype = dt_;
    c.mask = mask;
    c.backends = kCuda;
    c.quick = quick_ ? unsigned(kCuda) : 0u;
    set(c);
    g_.push_back(c);
  }
  void add(const char* variant, Set set) { add(variant, Mask::none, set); }
  void rest() { quick_ = false; }

 private:
  std::vector<Case>& g_;
  const ScopeShape& x_;
  DType dt_;
  bool quick_;
};

template <size_t N, typename F>
void add_scope(std::vector<Case>& g, const ScopeShape (&shapes)[N], F&& variants) {
  for (DType dt : {DType::bf16, DType::f16})
    for (const ScopeShape& x : shapes) {
      Scope s(g, x, dt);
      variants(s);
    }
}

void none(Case&) {}

// The Hopper forward's scope (D, Dv in {64, 128, 256} or a multiple of 8
// in between, fp16/bf16, band only): tiles of 128 query rows x 128 keys
// (80 at D = 256), so sizes around and across those edges, windows crossing
// key blocks, rows and whole blocks with no visible key (Sq > Sk
// bottom-right), GQA/MQA, varlen, BSHD strides. Shapes keep choose_splits()
// at 1 (Sk <= 448 or >= 132 query blocks of 64 rows; at D = 256 Sk <= 224
// or >= 132 blocks): split-KV calls stay on the sm_80 kernels.
void add_hopper_cases(std::vector<Case>& g) {
  const ScopeShape hs[] = {
      {"h_s113x203_d128_gqa", 2, 4, 2, 113, 203, 128},
      {"h_s300x440_d64_mqa", 1, 4, 1, 300, 440, 64},
      {"h_s700x300_d128", 1, 2, 2, 700, 300, 128},
      {"h_s600x1100_d128_gqa", 1, 16, 4, 600, 1100, 128},
      {"h_s129x128_d64", 2, 2, 2, 129, 128, 64},
      {"h_s300x440_d256_gqa", 2, 16, 4, 300, 440, 256},
      {"h_s129x200_d256", 2, 2, 2, 129, 200, 256},
      {"h_s300x170_d256_mqa", 1, 4, 1, 300, 170, 256},
      // Head dims between 64 and 128 run the D 128 kernels on zero columns
      // (hopper_kernel_dim): loads past D, stores past D, the dQ pitch.
      {"h_s300x440_d96_gqa", 2, 8, 2, 300, 440, 96},
      {"h_s129x200_d80", 2, 2, 2, 129, 200, 80},
      {"h_s113x203_d112_mqa", 1, 4, 1, 113, 203, 112},
      // Dv != D: the kernel of the larger, V / dO loads and O / dV stores
      // at Dv columns.
      {"h_s300x440_d128_dv64_gqa", 2, 8, 2, 300, 440, 128, 64},
      {"h_s129x200_d64_dv96", 2, 2, 2, 129, 200, 64, 96},
      // 144 tiles: more than one per CTA on an H100 (132 SMs), so causal
      // and windowed calls take tiles from the dynamic scheduler's counter.
      {"h_s1100x1100_d64_gqa", 1, 16, 4, 1100, 1100, 64},
  };
  add_scope(g, hs, [](Scope& s) {
    s.add("plain", none);
    s.add("causal_tl", [](Case& c) { c.causal = true; });
    s.add("causal_br", [](Case& c) { c.causal = true; c.align = BR; });
    s.rest();
    s.add("window_tl_l130_r0", [](Case& c) { c.wl = 130; c.wr = 0; });
    s.add("window_br_l64_r64", [](Case& c) { c.wl = 64; c.wr = 64; c.align = BR; });
    s.add("window_tl_right50", [](Case& c) { c.wr = 50; });
    s.add("window_br_left200", [](Case& c) { c.wl = 200; c.align = BR; });
    s.add("varlen_causal_br", [](Case& c) { c.varlen = true; c.B = 3; c.causal = true; c.align = BR; });
    s.add("varlen_window", [](Case& c) { c.varlen = true; c.B = 3; c.wl = 90; c.wr = 10; });
    s.add("bshd_causal", [](Case& c) { c.bshd = true; c.causal = true; });
    s.add("scale0.3", [](Case& c) { c.scale = 0.3f; });
  });
}

// hbm_*: masks on the Hopper backward (sm_90). Shapes in the Hopper
// kernels' scope (D 64/128, fp16/bf16) with bool and additive masks whose
// patterns (the driver's hbm_mask, by name) make the backward skip steps of
// 128 keys x 64/128 query rows (state 0), run them unmasked (state 1) or
// with the per-element mask (state 2): blocks aligned and unaligned to 128,
// rows and keys with no visible entry, broadcast and per-(b, h) masks, with
// causal / windows and GQA/MQA, sizes across the 128 edges.
void add_hopper_backward_mask_cases(std::vector<Case>& g) {
  const ScopeShape hs[] = {
      {"hbm_s300x440_d64_gqa", 2, 4, 2, 300, 440, 64},
      {"hbm_s257x384_d128_gqa", 1, 4, 2, 257, 384, 128},
      {"hbm_s640x520_d128_mqa", 1, 2, 1, 640, 520, 128},
      {"hbm_s129x260_d64", 2, 2, 2, 129, 260, 64},
      {"hbm_s257x384_d96_gqa", 1, 4, 2, 257, 384, 96},  // the D 128 kernels, zero columns
  };
  add_scope(g, hs, [](Scope& s) {
    s.add("bs128", Mask::boolean, none);
    s.add("bs48_causal_br", Mask::boolean, [](Case& c) { c.causal = true; c.align = BR; });
    s.add("add96", Mask::additive, none);
    s.rest();
    s.add("perbh_window_l150_r20", Mask::boolean, [](Case& c) { c.wl = 150; c.wr = 20; });
    s.add("bs128_causal_tl", Mask::boolean, [](Case& c) { c.causal = true; });
    s.add("addbh_causal_tl", Mask::additive, [](Case& c) { c.causal = true; });
    s.add("add96_window_br_l64_r64", Mask::additive, [](Case& c) { c.wl = 64; c.wr = 64; c.align = BR; });
    s.add("dense_bool", Mask::boolean, none);
  });
}

// hb256_*: the Hopper backward at D = Dv = 256 (bwd256_kernel.cuh), and
// D, Dv in (128, 256) on it (zero columns). 64-key
// CTAs and 64-row query steps: sizes across those edges, GQA/MQA, causal
// both alignments (rows and steps with no visible key), windows across
// blocks, varlen, BSHD strides, scale 0.3 (no masks: those stay on the
// sm_80 kernels at D 256).
void add_hopper_d256_backward_cases(std::vector<Case>& g) {
  const ScopeShape hs[] = {
      {"hb256_s300x440_gqa", 2, 4, 2, 300, 440, 256},
      {"hb256_s129x300_mqa", 1, 4, 1, 129, 300, 256},
      {"hb256_s700x257", 1, 2, 2, 700, 257, 256},
      {"hb256_s64x64", 1, 2, 2, 64, 64, 256},
      // Head dims between 128 and 256 on the D 256 kernels, zero columns.
      {"hb256_s300x440_d192_gqa", 2, 4, 2, 300, 440, 192},
      {"hb256_s129x300_d160_mqa", 1, 4, 1, 129, 300, 160},
      // Dv != D (DeepSeek's 192 / 128; 128 / 256).
      {"hb256_s300x440_d192_dv128_gqa", 2, 8, 2, 300, 440, 192, 128},
      {"hb256_s129x300_d128_dv256_mqa", 1, 4, 1, 129, 300, 128, 256},
  };
  add_scope(g, hs, [](Scope& s) {
    if (s.shape().Sq != 300 && s.shape().Sq != 129) s.rest();
    s.add("causal_br", [](Case& c) { c.causal = true; c.align = BR; });
    s.rest();
    s.add("plain", none);
    s.add("causal_tl", [](Case& c) { c.causal = true; });
    s.add("window_tl_l130_r0", [](Case& c) { c.wl = 130; c.wr = 0; });
    s.add("window_br_l64_r64", [](Case& c) { c.wl = 64; c.wr = 64; c.align = BR; });
    s.add("varlen_causal_br", [](Case& c) { c.varlen = true; c.B = 3; c.causal = true; c.align = BR; });
    s.add("varlen_window", [](Case& c) { c.varlen = true; c.B = 3; c.wl = 90; c.wr = 10; });
    s.add("bshd_causal", [](Case& c) { c.bshd = true; c.causal = true; });
    s.add("scale0.3", [](Case& c) { c.scale = 0.3f; });
  });
}

// The decode kernel's scope (decode.cu: fp16/bf16, D = Dv in {64, 128},
// band only, Sq <= 16, Sq * Hq/Hk <= 64 packed rows in groups of 16): GQA
// 1/4/8 and MQA, one to four row groups, Sk not a multiple of the key chunk
// and Sk below one chunk, rows with no visible key (Sq > Sk bottom-right),
// windows, varlen, BSHD, and a batch wide enough for one split (the kernel
// writes out itself instead of partials).
void add_decode_cases(std::vector<Case>& g) {
  const ScopeShape ds[] = {
      {"dec_s1x4097_d128", 2, 4, 4, 1, 4097, 128},
      {"dec_s4x1000_d64_gqa4", 2, 8, 2, 4, 1000, 64},
      {"dec_s2x3001_d128_gqa8", 1, 16, 2, 2, 3001, 128},
      {"dec_s3x777_d64_mqa", 1, 8, 1, 3, 777, 64},
      {"dec_s16x300_d128_gqa4", 1, 8, 2, 16, 300, 128},
      {"dec_s16x10_d128", 2, 2, 2, 16, 10, 128},
      {"dec_s5x3_d64_gqa4", 1, 4, 1, 5, 3, 64},
      {"dec_b64_s1x200_d64", 64, 8, 8, 1, 200, 64},
  };
  add_scope(g, ds, [](Scope& s) {
    s.add("plain", none);
    s.add("causal_br", [](Case& c) { c.causal = true; c.align = BR; });
    s.rest();
    s.add("causal_tl", [](Case& c) { c.causal = true; });
    s.add("window_br_l100_r0", [](Case& c) { c.wl = 100; c.wr = 0; c.align = BR; });
    s.add("window_tl_l40_r7", [](Case& c) { c.wl = 40; c.wr = 7; });
    s.add("varlen_causal_br", [](Case& c) { c.varlen = true; c.B = 3; c.causal = true; c.align = BR; });
    s.add("bshd_scale0.3", [](Case& c) { c.bshd = true; c.scale = 0.3f; });
  });
}

// hm_*: the Hopper forward with masks (the driver's hmaskify, by name).
// Shapes in the Hopper forward's scope that choose_splits() does not split;
// patterns: block-sparse 128-aligned (bs128) and not (bs96), random (all
// tiles mixed), key padding per batch ([B, 1, 1, Sk]), rows and a whole
// 128-row query tile with no visible key; bool, additive float32 and
// additive in q's dtype (mlow); broadcast over batch (bcb), heads (bch),
// both, or per (b, h); with causal / windows.
void add_hopper_forward_mask_cases(std::vector<Case>& g) {
  const ScopeShape ms[] = {
      {"hm_s300x440_d128_gqa", 2, 4, 2, 300, 440, 128},
      {"hm_s640x1000_d64", 2, 8, 8, 640, 1000, 64},
      {"hm_s1030x1200_d128_gqa", 1, 16, 4, 1030, 1200, 128},
      {"hm_s129x300_d64_mqa", 2, 4, 1, 129, 300, 64},
  };
  add_scope(g, ms, [](Scope& s) {
    const Mask B = Mask::boolean, A = Mask::additive;
    s.add("bool_bs128_bch", B, none);
    s.add("add_bs96_mlow_bch", A, none);
    s.add("add_keypad", A, none);
    s.add("bool_emptyrows_emptytile", B, none);
    s.add("add_finfo_emptyrows_emptytile", A, none);
    s.rest();
    // Not with "_emptyrows": in fp16 a row masked entirely with -65504 is an
    // ordinary row of scores near -65504, and fp32 holds its lse to 4e-3
    // only: the Hopper backward's gradients there measured 2.2-2.8x the
    // reference's error (hopper/README.md, Not done).
    s.add("add_finfo_bs128_mlow_bch", A, none);
    s.add("bool_bs96", B, none);
    s.add("bool_rand_bcb", B, none);
    s.add("add_bs128_bcb_bch", A, none);
    s.add("add_rand_emptyrows_mlow", A, none);
    s.add("bool_bs128_causal_bch", B, [](Case& c) { c.causal = true; });
    s.add("add_bs96_window_br_l100_r20", A, [](Case& c) { c.wl = 100; c.wr = 20; c.align = BR; });
    s.add("bool_keypad_causal_br", B, [](Case& c) { c.causal = true; c.align = BR; });
    s.add("bool_emptytile_window_l200", B, [](Case& c) { c.wl = 200; });
  });
}

// ---- determinism: three runs of forward + deterministic backward -------------
void add_determinism_cases(std::vector<Case>& g) {
  Case c;
  c.check = Check::determinism;
  c.name = "determinism_causal_dropout_mqa";
  c.B = 1, c.Hq = 4, c.Hk = 1, c.Sq = 300, c.Sk = 700, c.D = c.Dv = 64;
  c.causal = true;
  c.dropout = 0.1f;
  c.backends = kCpu;
  g.push_back(c);
  // CUDA: the first case (dropout, ALiBi) runs the sm_80 kernels; the others
  // are in the Hopper kernels' scope (on sm_90: the dQ adds of the key
  // blocks in turns), with many key blocks per query block (Sk 2100: 17
  // turns), GQA, D 256, windows and a mask with skipped steps (hbm_ patterns).
  Case base;
  base.check = Check::determinism;
  base.B = 2, base.Hq = 4, base.Hk = 2, base.Sq = 300, base.Sk = 701, base.D = base.Dv = 64;
  base.dtype = DType::bf16;
  base.causal = true;
  base.backends = base.quick = kCuda;
  c = base;
  c.name = "determinism_sm80_dropout_alibi";
  c.dropout = 0.1f;
  c.alibi = true;
  g.push_back(c);
  c = base;
  c.name = "determinism_hopper_d64_causal";
  c.Sk = 440;
  g.push_back(c);
  c = base;
  c.name = "determinism_hopper_d128_gqa_s1000x2100";
  c.B = 1, c.Hq = 8, c.Sq = 1000, c.Sk = 2100, c.D = c.Dv = 128, c.causal = false;
  g.push_back(c);
  c = base;
  // the Hopper forward's 80-key blocks; Sk 200 keeps choose_splits() at 1
  c.name = "determinism_hopper_d256_causal";
  c.Sk = 200, c.D = c.Dv = 256;
  g.push_back(c);
  c = base;
  c.name = "hbm_determinism_hopper_d128_bs128_window";
  c.Sq = 700, c.Sk = 1500, c.D = c.Dv = 128, c.causal = false, c.wl = 600, c.wr = 100, c.align = BR;
  c.mask = Mask::boolean;
  g.push_back(c);
}

// ---- block-sparse masks (flashsdpa.h's block lists) --------------------------
Case sparse(Case c, Sparse kind, int64_t bq, int64_t bk, const char* suffix = "") {
  c.name += suffix;
  c.sparse = kind;
  c.sparse_bq = bq;
  c.sparse_bk = bk;
  return c;
}

const Sparse kSparseKinds[] = {Sparse::random,      Sparse::empty_rows,      Sparse::all_full,
                               Sparse::all_partial, Sparse::partial_as_full, Sparse::full_only};

// The CPU: patterns, block sizes below, equal to and above its 64 x 64
// tiles and unaligned, broadcasts, GQA, decode rows, every other feature.
void add_cpu_block_sparse_cases(std::vector<Case>& g) {
  const Shape odd{"s203x331_d40_gqa", 2, 4, 2, 203, 331, 40, 40};  // not multiples of any block size
  for (Sparse k : kSparseKinds) {
    Case c = sparse(of(odd, DType::f32, kCpu), k, 64, 48);
    c.sparse_per_head = true;
    g.push_back(c);
  }
  const int64_t sizes[][2] = {{128, 128}, {16, 16}, {100, 37}, {7, 130}, {256, 32}};
  for (auto& bs : sizes) {
    Case c = sparse(of(odd, DType::f32, kCpu), Sparse::random, bs[0], bs[1]);
    c.sparse_per_batch = true;
    g.push_back(c);
  }
  // Dtypes, broadcast over both, extra query blocks (ignored), decode rows.
  for (DType dt : {DType::f16, DType::bf16}) {
    Case c = sparse(of({"s300x517_d64_mqa", 1, 3, 1, 300, 517, 64, 64}, dt, kCpu), Sparse::random, 32, 64);
    c.sparse_extra_q_blocks = 2;
    g.push_back(c);
  }
  Case d = sparse(of({"s5x700_d32_gqa_decode", 2, 4, 2, 5, 700, 32, 32}, DType::f32, kCpu), Sparse::random, 128, 64);
  d.sparse_per_head = true;
  g.push_back(d);
  // Every other feature on top (not varlen: refused with block lists).
  std::vector<Case> features;
  for (const Variant& v : kFeatureVariants) add_variant(features, of(odd, DType::f32, kCpu), v.name, v.set);
  features.push_back(with_all_features(of(odd, DType::bf16, kCpu)));
  for (const Case& f : features) {
    if (f.varlen) continue;
    Case c = sparse(f, Sparse::random, 64, 80);
    c.sparse_per_head = true;
    g.push_back(c);
  }
}

// CUDA: patterns, block sizes below/above the tiles and unaligned, odd
// sizes, GQA, with the other features on top; run on the tensor-core path
// and (fp32 / forced) SIMT. Names repeat (the driver prints the pattern).
void add_cuda_block_sparse_cases(std::vector<Case>& g) {
  const Shape odd{"bsp_s203x331_d64_gqa", 2, 4, 2, 203, 331, 64, 64};
  auto add = [&](Case c, Sparse kind, int64_t bq, int64_t bk, const char* suffix = "") {
    c = sparse(c, kind, bq, bk, suffix);
    c.sparse_per_head = true;
    c.backends = c.quick = kCuda;
    g.push_back(c);
  };
  for (DType dt : {DType::bf16, DType::f16})
    for (Sparse k : kSparseKinds) add(of(odd, dt, kCuda), k, 128, 128);
  const int64_t sizes[][2] = {{64, 64}, {16, 48}, {100, 37}, {256, 32}};
  for (auto& bsz : sizes) add(of(odd, DType::bf16, kCuda), Sparse::random, bsz[0], bsz[1]);
  add(of(odd, DType::f32, kCuda), Sparse::random, 64, 80);
  add(of({"bsp_s1000x1500_d128", 1, 2, 1, 1000, 1500, 128, 128}, DType::bf16, kCuda), Sparse::random, 128, 128);
  add(of({"bsp_s5x700_d64_decode", 2, 4, 1, 5, 700, 64, 64}, DType::bf16, kCuda), Sparse::random, 128, 64);
  Case c = of(odd, DType::bf16, kCuda);
  c.causal = true;
  add(c, Sparse::random, 64, 64, "_causal");
  // Band-only variant (no element masks, 128-multiple blocks) with a band.
  add(c, Sparse::full_only, 256, 128, "_causal");
  add(c, Sparse::partial_as_full, 128, 256, "_causal");
  c = of(odd, DType::bf16, kCuda);
  c.dropout = 0.2f;
  add(c, Sparse::random, 64, 64, "_dropout");
  c = of(odd, DType::f16, kCuda);
  c.softcap = 5.0f;
  c.alibi = true;
  add(c, Sparse::all_partial, 32, 64, "_softcap_alibi");
  add(with_all_features(of(odd, DType::bf16, kCuda)), Sparse::random, 64, 80);
}

// ---- KV caches: pages, cache rows, seqused_k, leftpad (forward only) ---------
// Page sizes 1, 16, 64, 256 and contiguous; cache_batch_idx permutations;
// leftpad; GQA 8:1 and 4:1; Sq 1 (CUDA's decode kernel) and Sq > 1 (decode
// up to 16 rows per head, the tensor-core kernels beyond and for softcap /
// ALiBi / Dv != D); windows; varlen with pages; every dtype. A cache of 300
// positions per row (Sk), 3 sequences, bottom-right causal.
// CUDA --quick: page 16 in full, the first three of every other page size;
// bf16 and fp32.
void add_kv_cache_cases(std::vector<Case>& g) {
  std::vector<Case> grid;
  Case base;
  base.B = 3, base.Hq = 8, base.Hk = 2, base.Sq = 1, base.Sk = 300, base.D = base.Dv = 128;
  base.causal = true;
  base.align = BR;
  base.backward = false;
  base.backends = kCpuCuda;
  for (int64_t page : {0, 1, 16, 64, 256}) {
    Case c = base;
    c.kv = page > 0 ? KvCache::paged : KvCache::contiguous;
    c.kv_page = page;
    c.quick = kCuda;
    c.name = "decode_gqa8";
    c.Hq = 8, c.Hk = 1, c.Sq = 1;
    grid.push_back(c);
    c.name = "decode_rows_leftpad";
    c.Hq = 8, c.Hk = 2, c.Sq = 3, c.kv_batch_idx = true, c.kv_leftpad = true;
    grid.push_back(c);
    c.name = "prefill_chunk_window";
    c.Sq = 40, c.D = 64, c.Dv = 64, c.wl = 90, c.kv_batch_idx = false;
    grid.push_back(c);
    const unsigned quick = page == 16 ? unsigned(kCuda) : 0u;
    c = base;
    c.kv = page > 0 ? KvCache::paged : KvCache::contiguous;
    c.kv_page = page;
    c.quick = quick;
    c.name = "softcap_alibi_dv";
    c.Sq = 2, c.D = 64, c.Dv = 96, c.softcap = 5.0f, c.alibi = true, c.kv_leftpad = true, c.kv_batch_idx = true;
    grid.push_back(c);
    c = base;
    c.kv = page > 0 ? KvCache::paged : KvCache::contiguous;
    c.kv_page = page;
    c.quick = quick;
    c.name = "varlen_d64";
    c.varlen = true, c.Sq = 5, c.D = 64, c.Dv = 64;
    if (page > 0) grid.push_back(c);  // varlen KV caches are paged (or seqused_k)
  }
  for (DType dt : {DType::bf16, DType::f16, DType::f32})
    for (Case c : grid) {
      c.dtype = dt;
      if (dt == DType::f16) c.quick = 0;
      g.push_back(c);
    }
}

// ---- the Metal kernels' grid (the CPU runs it too) ---------------------------
// Small shapes: the MSL emulator runs every threadgroup on the CPU. Metal's
// reduced run (sanitizer builds): every head dim for float32, the first
// three shapes for the 16-bit types, never the 300x257 shape; the feature
// cases in float32 and float16; the bands and decode in float32, Sk < 1000.
void add_metal_grid(std::vector<Case>& g) {
  constexpr unsigned kMetalCpu = kMetal | kCpu;
  const Shape shapes[] = {
      {"s1x1_d32", 1, 1, 1, 1, 1, 32, 32},
      {"s37x45_d59_gqa", 2, 4, 2, 37, 45, 59, 59},
      {"s64x129_d64_mqa", 1, 3, 1, 64, 129, 64, 64},
      {"s33x70_d128", 1, 2, 2, 33, 70, 128, 128},
      {"s20x27_d256", 1, 1, 1, 20, 27, 256, 256},
      {"s50x41_d64_dv40", 2, 2, 2, 50, 41, 64, 40},
      {"s300x257_d32", 1, 1, 1, 300, 257, 32, 32},
  };
  const int n = static_cast<int>(sizeof(shapes) / sizeof(shapes[0]));
  for (DType dt : kDtypes)
    for (int si = 0; si < n; ++si) {
      const bool reduced = si < (dt == DType::f32 ? n - 1 : 3);
      const Case c = of(shapes[si], dt, kMetalCpu, reduced ? unsigned(kMetal) : 0u);
      g.push_back(c);
      g.push_back(with_all_features(c, 23));
    }
  // Every feature alone on an odd GQA shape, each dtype; varlen at Sq 70,
  // Sk 80 (lengths: q {70, 0, 36}, k {80, 51, 22}).
  for (DType dt : kDtypes)
    for (const Variant& v : kFeatureVariants) {
      const Case c = of(shapes[1], dt, kMetalCpu, dt != DType::bf16 ? unsigned(kMetal) : 0u);
      const std::string name = v.name;
      if (name == "window_tl_left") {  // a window shorter than the 45 keys
        add_variant(g, c, v.name, [](Case& x) { x.wl = 20; });
        continue;
      }
      add_variant(g, c, v.name, v.set);
      if (name.rfind("varlen", 0) == 0) g.back().Sq = 70, g.back().Sk = 80;
      if (name == "additive_mask" && dt != DType::f32)
        add_variant(g, c, "additive_mask_qdtype", [](Case& x) { x.mask = Mask::additive_qdtype; });
    }
  // Bands against block boundaries: several key blocks per row block, so
  // block skipping (key_range / query_range) decides what is computed;
  // window_right = 1 puts a row block's last visible key on a block's first.
  const Variant bands[] = {
      {"causal_tl", [](Case& c) { c.causal = true; }},
      {"causal_br", [](Case& c) { c.causal = true; c.align = BR; }},
      {"window_br", [](Case& c) { c.wl = 50; c.wr = 17; c.align = BR; }},
      {"window_right1", [](Case& c) { c.wr = 1; }},
      {"diagonal_only", [](Case& c) { c.wl = 0; c.wr = 0; c.align = BR; }},
  };
  for (DType dt : kDtypes)
    for (const Variant& v : bands)
      add_variant(g, of({"s193x250_d32_mqa", 1, 2, 1, 193, 250, 32, 32}, dt, kMetalCpu,
                        dt == DType::f32 ? unsigned(kMetal) : 0u),
                  v.name, v.set);
  // Split-KV decode (forward only: the backward of these shapes is the
  // normal one): GQA 8:1, head dim 59, so every case reuses a kernel key of
  // the feature cases above. The planner's own choice where the shape is
  // long enough, forced splits on small shapes (empty splits, one key per
  // split).
  for (DType dt : kDtypes) {
    auto add = [&](const char* name, int64_t sq, int64_t sk, int forced, Set set) {
      Case c = of({"decode_gqa8", 1, 8, 1, sq, sk, 59, 59}, dt, kMetalCpu,
                  dt == DType::f32 && sk < 1000 ? unsigned(kMetal) : 0u);
      c.name = std::string("decode_gqa8_") + name;
      c.backward = false;
      c.metal_forced_splits = forced;
      c.metal_expect_split = forced == 0;
      set(c);
      g.push_back(c);
    };
    add("sq1_sk1000_b2", 1, 1000, 0, [](Case& c) { c.B = 2; });
    add("sq4_sk3000_causal_br", 4, 3000, 0, [](Case& c) { c.causal = true; c.align = BR; });
    add("sq1_sk1000_causal_tl", 1, 1000, 0, [](Case& c) { c.causal = true; });  // one visible key
    add("sq3_sk2000_combo", 3, 2000, 0, [](Case& c) {
      c.causal = true, c.align = BR, c.wl = 23, c.alibi = true, c.softcap = 5.0f, c.mask = Mask::boolean, c.scale = 0.3f;
    });
    add("sq2_sk257_additive", 2, 257, 0, [](Case& c) { c.mask = Mask::additive; });
    add("sq4_sk300_empty_rows", 4, 300, 0, [](Case& c) { c.mask = Mask::empty_rows; });
    add("sq3_sk333_finfo_min_rows", 3, 333, 0, [](Case& c) { c.mask = Mask::finfo_min_rows; });
    add("sq1_sk200_dropout", 1, 200, 0, [](Case& c) { c.dropout = 0.2f; });
    add("sq3_sk7_split7", 3, 7, 7, none);
    add("sq2_sk100_window_split6", 2, 100, 6, [](Case& c) { c.wl = 20, c.wr = 5, c.align = BR; });
    add("sq4_sk45_causal_tl_split5", 4, 45, 5, [](Case& c) { c.causal = true; });
    add("sq1_sk1_split1", 1, 1, 1, none);
  }
}

// Block-sparse lists on the Metal kernels, forward and gradients: every
// pattern kind, block sizes below, across and above the kernels' tiles (not
// dividing the sequence lengths), broadcast and per-(batch, head) lists,
// GQA, every dtype, and the other features on top; decode rows through the
// split kernels. Reduced grid: float32 only.
void add_metal_block_sparse_cases(std::vector<Case>& g) {
  auto add = [&](const char* name, DType dt, Sparse kind, int64_t bq, int64_t bk, Set set) {
    Case c = of({"sparse_s75x93_d40_gqa", 2, 4, 2, 75, 93, 40, 40}, dt, kMetal,
                dt == DType::f32 ? unsigned(kMetal) : 0u);
    c.name = std::string("sparse_s75x93_d40_gqa_") + name;
    c.sparse = kind, c.sparse_bq = bq, c.sparse_bk = bk;
    set(c);
    g.push_back(c);
  };
  const DType f32 = DType::f32;
  for (DType dt : kDtypes)
    add("random_b16x16_perh", dt, Sparse::random, 16, 16, [](Case& c) { c.sparse_per_head = true; });
  add("empty_rows_b8x24_perb", f32, Sparse::empty_rows, 8, 24, [](Case& c) { c.sparse_per_batch = true; });
  add("all_full_b32x32", f32, Sparse::all_full, 32, 32, none);
  add("all_partial_b7x13_perh", f32, Sparse::all_partial, 7, 13, [](Case& c) { c.sparse_per_head = true; });
  add("partial_as_full_b64x48", f32, Sparse::partial_as_full, 64, 48, none);
  add("full_only_b20x40_extra2", f32, Sparse::full_only, 20, 40, [](Case& c) { c.sparse_extra_q_blocks = 2; });
  add("random_b100x37_causal_br", f32, Sparse::random, 100, 37, [](Case& c) {
    c.sparse_per_batch = c.sparse_per_head = true, c.causal = true, c.align = BR;
  });
  for (DType dt : {DType::f32, DType::bf16})
    add("random_b24x16_combo", dt, Sparse::random, 24, 16, [](Case& c) {
      c.sparse_per_head = true, c.wl = 30, c.wr = 5, c.align = BR, c.alibi = true, c.softcap = 5.0f, c.scale = 0.3f;
    });
  add("empty_rows_b16x64_bool_mask", f32, Sparse::empty_rows, 16, 64, [](Case& c) { c.mask = Mask::boolean; });
  add("random_b32x16_dropout_causal", f32, Sparse::random, 32, 16, [](Case& c) { c.dropout = 0.2f, c.causal = true; });
  add("random_b1x5_decode_split", f32, Sparse::random, 1, 5, [](Case& c) {
    c.Sq = 3, c.Sk = 700, c.sparse_per_head = true, c.backward = false, c.metal_expect_split = true;
  });
}

std::vector<Case> build() {
  std::vector<Case> g;
  add_shared_grid(g);
  add_cpu_grid(g);
  add_cuda_grid(g);
  add_hopper_cases(g);
  add_hopper_backward_mask_cases(g);
  add_hopper_d256_backward_cases(g);
  add_decode_cases(g);
  add_hopper_forward_mask_cases(g);
  add_determinism_cases(g);
  add_cpu_block_sparse_cases(g);
  add_cuda_block_sparse_cases(g);
  add_kv_cache_cases(g);
  add_metal_grid(g);
  add_metal_block_sparse_cases(g);
  return g;
}

}  // namespace

const char* backend_name(Backend b) { return b == kCpu ? "CPU" : b == kCuda ? "CUDA" : "Metal"; }

const std::vector<Case>& registry() {
  static const std::vector<Case> cases = build();
  return cases;
}

std::vector<Case> cases_for(Backend b, bool quick) {
  std::vector<Case> out;
  for (const Case& c : registry())
    if (runs_on(b, c) && (!quick || (c.quick & b))) out.push_back(c);
  return out;
}

}  // namespace fsdpa_cases
