// Pieces shared by the CPU forward and backward: the block layout of a
// (possibly varlen) batch, packing of strided inputs of any dtype into fp32
// panels, and the score epilogue that applies softcap, ALiBi, masks and the
// causal/window band to a tile of raw scores.
#pragma once

#include <math.h>

#include <cmath>
#include <stdint.h>

#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/host_view.h"
#include "cpu/amx_kernels.h"
#include "cpu/heuristics.h"
#include "cpu/simd_kernels.h"

namespace fsdpa::cpu {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// 64-byte aligned fp32 workspace.
struct FreeDeleter {
  void operator()(float* ptr) const { free(ptr); }
};
using Buffer = std::unique_ptr<float[], FreeDeleter>;
inline Buffer alloc_floats(int64_t n) {
  const size_t bytes = static_cast<size_t>(round_up(n > 0 ? n : 1, 16)) * sizeof(float);
  float* ptr = static_cast<float*>(aligned_alloc(64, bytes));
  if (!ptr) throw std::bad_alloc();
  return Buffer(ptr);
}

// Per-thread tile memory that outlives calls (the pool's threads are
// persistent): a decode step would otherwise spend more time in mmap/munmap
// and page faults for its ~100 KiB of tiles than in attention. Grow-only;
// `slot` tells apart buffers a thread uses at the same time (forward: 0 a
// task's tiles, 1 key-split partials, 2 AMX panels / packing temporaries,
// 3 the packed K/V of the calling thread; backward: 0 and 2 a task's tiles,
// 1 the dQ sums and 3 the Q side, of the calling thread).
inline float* thread_scratch(int slot, int64_t n) {
  thread_local Buffer bufs[4];
  thread_local int64_t sizes[4] = {0, 0, 0, 0};
  if (sizes[slot] < n) {
    bufs[slot] = alloc_floats(n);
    sizes[slot] = n;
  }
  return bufs[slot].get();
}

// n floats of per-call panels (the forward's packed K/V, the backward's Q
// side and dQ sums) in the calling thread's scratch `slot`, kept from call
// to call up to kKeepPanelBytes (a fresh allocation of tens of MiB costs
// page faults and the kernel's zeroing on every call: ~8% of a B1 H32 S1024
// D128 fp32 forward), else in `owned`, for this call only.
inline float* kept_scratch(int slot, int64_t n, Buffer& owned) {
  if (n * int64_t(sizeof(float)) <= kKeepPanelBytes) return thread_scratch(slot, n);
  owned = alloc_floats(n);
  return owned.get();
}

// Where each sequence's q-blocks and k-blocks start in a flat numbering.
struct BlockLayout {
  std::vector<SeqExtent> seq;
  std::vector<int64_t> q_block0, k_block0;  // prefix sums, size batch + 1
  int64_t q_blocks() const { return q_block0.back(); }
  int64_t k_blocks() const { return k_block0.back(); }
};

inline BlockLayout make_layout(const AttnParams& p) {
  BlockLayout L;
  L.q_block0.push_back(0);
  L.k_block0.push_back(0);
  for (int64_t b = 0; b < p.batch; ++b) {
    const SeqExtent e = seq_extent(p, b);
    L.seq.push_back(e);
    L.q_block0.push_back(L.q_block0.back() + (e.sq + kBlockQ - 1) / kBlockQ);
    L.k_block0.push_back(L.k_block0.back() + (e.sk + kBlockK - 1) / kBlockK);
  }
  return L;
}

// Address of element `off` of a tensor of dtype t (f32, f16 or bf16).
inline const void* element_ptr(const void* base, DType t, int64_t off) {
  return static_cast<const char*>(base) + off * (t == DType::f32 ? 4 : 2);
}

// Converts n elements at base[off + t * step] (t < n) to fp32, times mul.
// Returns false if any element is NaN or Inf (all exponent bits set), so the
// finite check of the inputs rides along with packing them. The check ORs
// integer flags, which the compiler vectorises (a float probe would not be).
inline bool load_f32(const void* base, int64_t off, int64_t step, int64_t n, DType t, float mul,
                     float* dst) {
  if (step == 1 && (t == DType::f32 || t == DType::bf16)) {
    return convert_row(element_ptr(base, t, off), t == DType::bf16, n, mul, dst);
  }
  uint32_t bad = 0;
  switch (t) {
    case DType::f32: {
      const uint32_t* s = static_cast<const uint32_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t u = s[i * step];
        bad |= (u & 0x7F800000u) == 0x7F800000u;
        dst[i] = f32_from_bits(u) * mul;
      }
      break;
    }
    case DType::f16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) {
        bad |= (s[i * step] & 0x7C00u) == 0x7C00u;
        dst[i] = f16_to_f32(s[i * step]) * mul;
      }
      break;
    }
    case DType::bf16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) {
        bad |= (s[i * step] & 0x7F80u) == 0x7F80u;
        dst[i] = bf16_to_f32(s[i * step]) * mul;
      }
      break;
    }
    default:
      for (int64_t i = 0; i < n; ++i) {
        const double x = load_as_double(base, off + i * step, t);
        bad |= !std::isfinite(x);
        dst[i] = static_cast<float>(x) * mul;
      }
  }
  return bad == 0;
}

inline void store_f32(void* base, int64_t off, int64_t step, int64_t n, DType t, const float* src,
                      float mul) {
  if (step == 1 && (t == DType::f32 || t == DType::bf16)) {
    store_row(src, mul, t == DType::bf16, n, static_cast<char*>(base) + off * (t == DType::f32 ? 4 : 2));
    return;
  }
  switch (t) {
    case DType::f32: {
      float* d = static_cast<float*>(base) + off;
      for (int64_t i = 0; i < n; ++i) d[i * step] = src[i] * mul;
      break;
    }
    case DType::f16: {
      uint16_t* d = static_cast<uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) d[i * step] = f32_to_f16(src[i] * mul);
      break;
    }
    case DType::bf16: {
      uint16_t* d = static_cast<uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) d[i * step] = f32_to_bf16(src[i] * mul);
      break;
    }
    default:
      for (int64_t i = 0; i < n; ++i) store_from_double(base, off + i * step, t, src[i] * mul);
  }
}

// Packs rows [row0, row0 + n) of (b, h) of a (b, h, s, d) tensor into a
// row-major [rows_padded x ld] fp32 panel, zero beyond n rows / dim cols.
// Returns false if a packed element is NaN or Inf.
inline bool pack_rows(const void* base, const int64_t* st, DType t, int64_t b, int64_t h,
                      int64_t tok0, int64_t n, int64_t dim, float mul, float* dst, int64_t ld,
                      int64_t rows_padded) {
  bool finite = true;
  for (int64_t r = 0; r < rows_padded; ++r) {
    float* row = dst + r * ld;
    int64_t written = 0;
    if (r < n) {
      finite &= load_f32(base, offset4(st, b, h, tok0 + r, 0), st[3], dim, t, mul, row);
      written = dim;
    }
    for (int64_t d = written; d < ld; ++d) row[d] = 0.0f;
  }
  return finite;
}

// Which inputs were seen to hold NaN/Inf while packing (any thread).
struct NonFiniteFlags {
  std::atomic<bool> q{false}, k{false}, v{false}, dout{false};
  // Call after the parallel work: the error for the first flagged input.
  fsdpa_status status(const AttnParams& p) const {
    if (!p.check_finite) return FSDPA_OK;
    const char* name = q ? "q" : k ? "k" : v ? "v" : dout ? "dout" : nullptr;
    if (!name) return FSDPA_OK;
    return set_error(FSDPA_ERROR_NONFINITE_INPUT,
                     "%s: contains a non-finite value (NaN or Inf); pass check_finite = 0 to "
                     "skip this check",
                     name);
  }
};
inline void flag_if(bool finite, std::atomic<bool>& flag) {
  if (!finite) flag.store(true, std::memory_order_relaxed);
}

// Everything about one (b, h) that the score epilogue needs.
struct HeadCtx {
  const AttnParams* p;
  SeqExtent e;
  int64_t b, h;
  int64_t diag;  // diag_offset for this sequence
  float slope;
  uint32_t dropout_threshold;
  float dropout_scale;  // 1 / (1 - p)
};

inline HeadCtx make_head_ctx(const AttnParams& p, const SeqExtent& e, int64_t b, int64_t h) {
  return HeadCtx{&p, e, b, h, diag_offset(p.bottom_right, e.sq, e.sk), alibi_slope(p, b, h),
                 dropout_threshold(p.dropout_p),
                 p.dropout_p > 0 ? 1.0f / (1.0f - p.dropout_p) : 1.0f};
}

// True if every key of block [j0, j0 + kBlockK) is inside the sequence and
// the band of every row in [i0, i1): then the band needs no per-element test.
inline bool block_fully_visible(const HeadCtx& c, int64_t i0, int64_t i1, int64_t j0) {
  const int64_t j1 = j0 + kBlockK - 1;
  if (j1 >= c.e.sk) return false;
  const AttnParams& p = *c.p;
  const KeyRange first = row_keys(p, c.e, i0), last = row_keys(p, c.e, i1 - 1);
  // lo and hi grow with the row: the first row bounds hi, the last bounds lo.
  return first.hi >= j1 && last.lo <= j0;
}

// Key-block range [kb_lo, kb_hi) that rows [i0, i1) can see (may be empty).
inline void visible_key_blocks(const HeadCtx& c, int64_t i0, int64_t i1, int64_t* kb_lo,
                               int64_t* kb_hi) {
  const KeyRange first = row_keys(*c.p, c.e, i0), last = row_keys(*c.p, c.e, i1 - 1);
  const int64_t lo = first.lo, hi = last.hi;
  if (hi < lo || c.e.sk == 0) {
    *kb_lo = *kb_hi = 0;
    return;
  }
  *kb_lo = lo / kBlockK;
  *kb_hi = hi / kBlockK + 1;
}

// Turns a tile of scaled scores S[rows x kBlockK] (rows i0.., keys j0..)
// into final scores: softcap (tanh values saved to `tanh_out` if given),
// ALiBi, mask, band and sequence end (-inf).
inline void score_epilogue(const HeadCtx& c, int64_t i0, int64_t rows, int64_t j0, float* S,
                           int64_t ld, float* tanh_out) {
  const AttnParams& p = *c.p;
  const bool full = block_fully_visible(c, i0, i0 + rows, j0);
  if (p.softcap > 0) {
    const float inv = 1.0f / p.softcap;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < kBlockK; ++j) {
        const float t = tanhf(S[r * ld + j] * inv);
        if (tanh_out) tanh_out[r * ld + j] = t;
        S[r * ld + j] = p.softcap * t;
      }
  }
  if (p.alibi) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < kBlockK; ++j)
        S[r * ld + j] += alibi_bias(c.slope, i0 + r, j0 + j, c.diag);
  }
  if (p.mask_kind != MaskKind::none) {
    const int64_t ncols = std::min<int64_t>(kBlockK, c.e.sk - j0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t base = offset4(p.mask_stride, c.b, c.h, i0 + r, j0);
      float* s = S + r * ld;
      if (p.mask_kind == MaskKind::boolean) {
        const uint8_t* m = static_cast<const uint8_t*>(p.mask) + base;
        for (int64_t j = 0; j < ncols; ++j)
          if (!m[j * p.mask_stride[3]]) s[j] = kNegInf;
      } else {
        float add[kBlockK];
        load_f32(p.mask, base, p.mask_stride[3], ncols, p.mask_dtype, 1.0f, add);
        for (int64_t j = 0; j < ncols; ++j) s[j] = add_mask_value(s[j], add[j]);
      }
    }
  }
  if (!full) {
    for (int64_t r = 0; r < rows; ++r) {
      // Keys outside [lo, hi] are hidden: two runs, filled (not a test per key).
      const KeyRange kr = row_keys(p, c.e, i0 + r);
      float* s = S + r * ld;
      const int64_t lo = std::clamp<int64_t>(kr.lo - j0, 0, kBlockK);
      const int64_t hi = std::clamp<int64_t>(kr.hi - j0 + 1, lo, kBlockK);
      std::fill(s, s + lo, kNegInf);
      std::fill(s + hi, s + kBlockK, kNegInf);
    }
  }
}

// How the forward computes the scores S = Q K^T of a q-block of `rows` rows.
// The backward recomputes S the same way, so P = exp(S - lse) sees the
// forward's scores bit for bit: a row with one visible key gets P = 1
// exactly (dV = dO), and large logits carry no forward/backward rounding
// mismatch (which, times |S|, exceeded 2x PyTorch's fp32 gradient error).
enum class ScoreGemm {
  packed_kt,      // prefill: K^T panels packed once, gemm
  packed_kt_amx,  // prefill, bf16 with AMX: bf16 Q and K^T panels on AMX tiles, then x scale
  rows_in_place,  // decode, few fp32/bf16 rows, contiguous K/V rows: dot_rows_src
  rows_copied,    // other decode: K rows copied per block, gemm_bt
};
// K/V are packed once into panels for the register-blocked gemm unless the
// queries are few enough for the decode kernels (kInPlaceMaxRows): with one
// q-block of 17-64 rows the dot-product form (gemm_bt: a horizontal sum per
// score) ran at a third of the gemm's rate (B1 H8 S64 D64: 157 us), and
// packing each head's K/V once costs what packing its tiles per task did.
// (With block lists too: the tiles they skip are then still checked for
// NaN/Inf by the packing pass, which the decode paths would not read.)
inline bool forward_packs_all_kv(const AttnParams& p) {
  return p.seqlen_q > kInPlaceMaxRows || p.sparse;
}
// bf16 products on AMX tiles (~15x the fp32 FMA rate, bench/peak_flops.c)
// where the CPU has them: the bf16 inputs are exact in bf16, so only P (and
// in the backward dS) is rounded to bf16 for its product, as in
// FlashAttention's GPU kernels; accumulation stays fp32.
inline bool uses_amx(const AttnParams& p) {
  return p.dtype == DType::bf16 && forward_packs_all_kv(p) && amx_bf16_available();
}
// Head dims of the bf16 panels: whole AMX k-steps.
inline int64_t amx_pad(int64_t dim) { return round_up(dim, kAmxK); }
inline ScoreGemm forward_score_gemm(const AttnParams& p, int64_t rows) {
  if (forward_packs_all_kv(p)) return uses_amx(p) ? ScoreGemm::packed_kt_amx : ScoreGemm::packed_kt;
  if (rows <= kInPlaceMaxRows && (p.dtype == DType::f32 || p.dtype == DType::bf16) &&
      p.k_stride[3] == 1 && p.v_stride[3] == 1)
    return ScoreGemm::rows_in_place;
  return ScoreGemm::rows_copied;
}

// Multiplies a row of probabilities by the dropout keep mask / (1 - p).
inline void apply_dropout_row(const HeadCtx& c, int64_t i, int64_t j0, float* row) {
  const AttnParams& p = *c.p;
  const uint32_t rid = dropout_row_id(c.b, c.h, i, p.heads_q, p.seqlen_q);
  for (int64_t j = 0; j < kBlockK; j += 4) {
    const Philox4 r = dropout_bits4(p.seed, p.offset, rid, (j0 + j) >> 2);
    for (int w = 0; w < 4; ++w)
      row[j + w] = r.x[w] >= c.dropout_threshold ? row[j + w] * c.dropout_scale : 0.0f;
  }
}

}  // namespace fsdpa::cpu
