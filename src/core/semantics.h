// The attention semantics that are not a tensor operation: which keys a row
// may see (causal / sliding window with either diagonal alignment), the ALiBi
// bias, and the Philox-4x32-10 dropout stream. Header-only and usable from
// host C++ and CUDA device code, so every backend computes exactly the same
// thing as the fp64 reference. The Metal kernels re-state these rules in MSL
// (src/metal/kernels); tests hold them to this file.
#pragma once

#include <math.h>
#include <stdint.h>

#include "core/attn_params.h"

#if defined(__CUDACC__)
#  define FSDPA_HD __host__ __device__ __forceinline__
#else
#  define FSDPA_HD inline
#endif

namespace fsdpa {

// Offset of row i's diagonal: key (i + diag_offset) is "on the diagonal".
FSDPA_HD int64_t diag_offset(int32_t bottom_right, int64_t sq, int64_t sk) {
  return bottom_right ? sk - sq : 0;
}

// Keys visible to one row form the closed interval [lo, hi] (empty if
// lo > hi), clipped to [0, sk). The causal/window band is the only
// structural mask; bool/additive masks are applied per element on top.
struct KeyRange {
  int64_t lo, hi;
};

FSDPA_HD KeyRange visible_keys(int64_t row, int64_t sq, int64_t sk,
                               int64_t window_left, int64_t window_right,
                               int32_t bottom_right) {
  const int64_t d = row + diag_offset(bottom_right, sq, sk);
  int64_t lo = window_left >= 0 ? d - window_left : 0;
  int64_t hi = window_right >= 0 ? d + window_right : sk - 1;
  if (lo < 0) lo = 0;
  if (hi > sk - 1) hi = sk - 1;
  return KeyRange{lo, hi};
}

// An additive mask value at or below -FLT_MAX / 2 masks the score like
// -inf (finfo(float32 / bfloat16).min, which HF models use for padding, is
// such a value). Without the rule a row masked everywhere that way would
// attend uniformly (q.k is absorbed into the huge constant) and the lse,
// -FLT_MAX + log n, would round to -FLT_MAX, so the lse-based backward
// (P = exp(S - lse) = 1 instead of 1/n) could not match the forward; in
// fp32 the score times log2 e overflows as well. With it the row has
// nothing to attend: out 0, lse -inf.
constexpr double kMaskedAtOrBelow = -3.4028234663852886e38 / 2;  // exact in fp32 too
template <typename F>
FSDPA_HD F additive_mask_value(F v) {
  return v <= static_cast<F>(kMaskedAtOrBelow) ? -static_cast<F>(INFINITY) : v;
}

// Score s plus the additive mask value v. A value that masks (-inf, or at
// or below -FLT_MAX / 2) masks the key as a bool mask does: the result is
// -inf whatever s is (NaN and +inf included), so a masked key is never
// attended and tiles masked everywhere may be skipped. Otherwise s + v, in
// which NaN stays NaN.
template <typename F>
FSDPA_HD F add_mask_value(F s, F v) {
  const F a = additive_mask_value(v);
  return a == -static_cast<F>(INFINITY) ? a : s + a;
}

// ALiBi bias added to score (row, col): -slope * |row + off - col|.
FSDPA_HD float alibi_bias(float slope, int64_t row, int64_t col, int64_t off) {
  int64_t dist = row + off - col;
  if (dist < 0) dist = -dist;
  return -slope * static_cast<float>(dist);
}

// ---- Philox-4x32-10 ---------------------------------------------------
struct Philox4 {
  uint32_t x[4];
};

FSDPA_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

FSDPA_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                               uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, &hi0, &lo0);
    mulhilo32(0xCD9E8D57u, c2, &hi1, &lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Integer threshold: an element is kept iff its 32-bit draw >= threshold,
// i.e. with probability 1 - p (to within 2^-32).
FSDPA_HD uint32_t dropout_threshold(float p) {
  const double t = static_cast<double>(p) * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

// The dropout stream. Row id of (b, h, i) is (b * Hq + h) * Sq + i with Sq
// the padded (or max varlen) query length; validation guarantees it fits
// 32 bits. Element (row, col) takes word col % 4 of
//   Philox(counter = {col / 4, row, offset_lo, offset_hi}, key = seed).
// A kernel that walks a row four columns at a time calls this once per
// four columns.
FSDPA_HD Philox4 dropout_bits4(uint64_t seed, uint64_t offset, uint32_t row,
                               int64_t col4) {
  return philox4x32_10(static_cast<uint32_t>(col4), row,
                       static_cast<uint32_t>(offset),
                       static_cast<uint32_t>(offset >> 32),
                       static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

FSDPA_HD uint32_t dropout_row_id(int64_t b, int64_t h, int64_t i, int64_t heads_q,
                                 int64_t seqlen_q) {
  return static_cast<uint32_t>((b * heads_q + h) * seqlen_q + i);
}

FSDPA_HD bool dropout_keep(uint64_t seed, uint64_t offset, uint32_t row, int64_t col,
                           uint32_t threshold) {
  return dropout_bits4(seed, offset, row, col >> 2).x[col & 3] >= threshold;
}

}  // namespace fsdpa
