// One attention problem (sizes + semantics), its random inputs, and runs of
// the library and of the fp64 reference on it. Shared by the C++ tests.
#pragma once

#include <float.h>

#include <string>

#include "test_tensor.h"

namespace fsdpa_test {

// finfo_min_rows: additive, every 5th row -FLT_MAX on every key (HF's
// padding value; core/semantics.h additive_mask_value: those rows see no key).
// additive_qdtype: the additive mask's values stored in q's dtype.
enum class MaskKind { none, boolean, additive, empty_rows, finfo_min_rows, additive_qdtype };

struct Case {
  std::string name;
  int64_t B = 1, Hq = 1, Hk = 1, Sq = 1, Sk = 1, D = 32, Dv = 32;
  DT dt = DT::f32;
  bool causal = false;
  int align = FSDPA_ALIGN_TOP_LEFT;
  int64_t wl = -1, wr = -1;
  float softcap = 0;
  bool alibi = false;
  MaskKind mask = MaskKind::none;
  float dropout = 0;
  bool varlen = false;
  bool bshd = false;  // store q/k/v/out as [B, S, H, D] (non-contiguous view)
  float scale = NAN;
};

inline std::string describe(const Case& c) {
  std::string s = c.name;
  const char* dts[] = {"f32", "f16", "bf16", "f64", "u8", "i32"};
  s += "_" + std::string(dts[static_cast<int>(c.dt)]);
  for (char& ch : s)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

// Inputs and params of one case; tensors in the padded or varlen form.
struct Problem {
  Case c;
  fsdpa_params p;
  Tensor q, k, v, dout, mask, alibi, cu_q, cu_k;
  std::vector<int64_t> lens_q, lens_k;
  int64_t total_q = 0, total_k = 0;

  explicit Problem(const Case& c_, uint32_t seed = 1234) : c(c_) {
    std::mt19937 g(seed);
    fsdpa_params_init(&p);
    p.scale = c.scale;
    p.causal = c.causal;
    p.align = c.align;
    p.window_left = c.wl;
    p.window_right = c.wr;
    p.softcap = c.softcap;
    p.dropout_p = c.dropout;
    p.seed = 0x1234567890ABCDEFull;
    p.offset = 42;
    if (c.varlen) {
      // Uneven lengths including an empty sequence; 3 spare tokens at the end.
      for (int64_t b = 0; b < c.B; ++b) {
        lens_q.push_back(b == 1 ? 0 : std::max<int64_t>(1, c.Sq - 17 * b));
        lens_k.push_back(std::max<int64_t>(1, c.Sk - 29 * b));
      }
      cu_q = Tensor({c.B + 1}, DT::i32);
      cu_k = Tensor({c.B + 1}, DT::i32);
      for (int64_t b = 0; b < c.B; ++b) {
        cu_q.set(b, total_q);
        cu_k.set(b, total_k);
        total_q += lens_q[b];
        total_k += lens_k[b];
      }
      cu_q.set(c.B, total_q);
      cu_k.set(c.B, total_k);
      total_q += 3;
      total_k += 3;
      p.cu_seqlens_q = &cu_q;
      p.cu_seqlens_k = &cu_k;
      p.max_seqlen_q = c.Sq;
      p.max_seqlen_k = c.Sk;
    }
    q = make(c.Hq, c.Sq, total_q, c.D, c.dt);
    k = make(c.Hk, c.Sk, total_k, c.D, c.dt);
    v = make(c.Hk, c.Sk, total_k, c.Dv, c.dt);
    dout = make(c.Hq, c.Sq, total_q, c.Dv, c.dt);
    q.fill_normal(g);
    k.fill_normal(g);
    v.fill_normal(g);
    dout.fill_normal(g);
    if (c.mask == MaskKind::boolean || c.mask == MaskKind::empty_rows) {
      // [B, 1, Sq, Sk]: broadcast over heads.
      mask = Tensor({c.B, 1, c.Sq, c.Sk}, DT::u8);
      std::bernoulli_distribution keep(0.8);
      for (int64_t i = 0; i < mask.numel(); ++i) {
        const int64_t row = (i / c.Sk) % c.Sq;
        mask.set(i, c.mask == MaskKind::empty_rows && row % 7 == 3 ? 0 : keep(g));
      }
      p.mask = &mask;
    } else if (c.mask == MaskKind::additive || c.mask == MaskKind::finfo_min_rows ||
               c.mask == MaskKind::additive_qdtype) {
      // [Sq, Sk] float32 (or q's dtype): broadcast over batch and heads, some -inf.
      mask = Tensor({c.Sq, c.Sk}, c.mask == MaskKind::additive_qdtype ? c.dt : DT::f32);
      std::normal_distribution<double> n(0.0, 1.0);
      for (int64_t i = 0; i < mask.numel(); ++i) {
        const bool lowest = c.mask == MaskKind::finfo_min_rows && (i / c.Sk) % 5 == 2;
        mask.set(i, lowest ? -FLT_MAX : i % 11 == 5 ? -INFINITY : n(g));
      }
      p.mask = &mask;
    }
    if (c.alibi) {
      alibi = Tensor({c.Hq}, DT::f32);
      for (int64_t h = 0; h < c.Hq; ++h) alibi.set(h, pow(2.0, -8.0 * (h + 1) / c.Hq));
      p.alibi_slopes = &alibi;
    }
  }

  // [B,H,S,D] (optionally stored BSHD) or varlen [T,H,D].
  Tensor make(int64_t H, int64_t S, int64_t T, int64_t Dim, DT t) const {
    if (c.varlen) return Tensor({T, H, Dim}, t);
    if (c.bshd) return Tensor({c.B, H, S, Dim}, t, {0, 2, 1, 3});
    return Tensor({c.B, H, S, Dim}, t);
  }
  Tensor make_lse(DT t = DT::f32) const {
    return c.varlen ? Tensor({c.Hq, total_q}, t) : Tensor({c.B, c.Hq, c.Sq}, t);
  }
  // Longest reduction of the problem (for the fp32 accumulation baseline).
  int64_t reduction_len() const { return std::max({c.Sk, c.Sq, c.D, c.Dv}); }
};

}  // namespace fsdpa_test

namespace fsdpa_test {
// gtest prints parameters with this instead of a byte dump.
inline void PrintTo(const Case& c, std::ostream* os) { *os << describe(c); }
}  // namespace fsdpa_test
