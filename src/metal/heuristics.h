// THE tile-size table of the Metal backend (the only place tile sizes are
// chosen): rows per threadgroup ("parallelization", multiple of 8 = 8 rows
// per simdgroup) and rows streamed per loop step ("traversal"), per pass,
// GPU family class and precision, by head dimension.
//
// Starting point: the tables published by metal-flash-attention (Philip
// Turner, https://github.com/philipturner/metal-flash-attention,
// Sources/FlashAttention/Attention/AttentionDescriptor/
// AttentionDescriptor+Parameters.swift, Aug 2024): columns "maximum head
// dimension | parallelization | traversal" of its forward, backwardQuery and
// backwardKeyValue tables, "Mixed" (fp16/bf16 inputs) and FP32 variants,
// Apple9 (M3/M4) and older (M1/M2) families. Their head-dimension blocking
// and register caching columns do not apply: our kernels stage whole-head-dim
// tiles in threadgroup memory, so plan.cpp shrinks the traversal (then the
// parallelization) until the tiles fit the 32 KiB of threadgroup memory.
// Unmeasured on our kernels: to be tuned on Apple hardware (docs/metal.md).
#pragma once

namespace fsdpa::metal {

struct TileRow {
  int max_head_dim;  // first row with max_head_dim >= max(D, Dv) applies
  int parallel;      // rows owned by one threadgroup (queries; keys for dK/dV)
  int traversal;     // rows streamed per step (keys; queries for dK/dV)
};

struct TileTable {
  const TileRow* rows;
  int n;
};

// [pass][apple9 ? 1 : 0][fp32 ? 1 : 0]; pass 0 forward, 1 dQ, 2 dK/dV.
inline TileTable tile_table(int pass, bool apple9, bool fp32) {
  // forward
  static constexpr TileRow fwd_mixed_m1[] = {{96, 32, 128}, {128, 32, 128}, {384, 32, 128}};
  static constexpr TileRow fwd_f32_m1[] = {{24, 32, 64}, {32, 32, 64}, {56, 32, 32}, {384, 32, 80}};
  static constexpr TileRow fwd_mixed_m3[] = {{32, 16, 128}, {96, 16, 128}, {160, 16, 128}, {224, 16, 128}, {384, 16, 128}};
  static constexpr TileRow fwd_f32_m3[] = {{8, 16, 128}, {16, 16, 64}, {48, 16, 32}, {192, 16, 64}, {384, 16, 128}};
  // backward query (dQ)
  static constexpr TileRow dq_mixed_m1[] = {{32, 32, 64}, {96, 32, 64}, {384, 32, 64}};
  static constexpr TileRow dq_f32_m1[] = {{16, 32, 64}, {32, 32, 64}, {56, 32, 64}, {384, 32, 80}};
  static constexpr TileRow dq_mixed_m3[] = {{80, 16, 64}, {192, 16, 64}, {384, 16, 128}};
  static constexpr TileRow dq_f32_m3[] = {{16, 16, 64}, {32, 16, 64}, {192, 16, 64}, {384, 16, 128}};
  // backward key-value (dK, dV)
  static constexpr TileRow dkv_mixed_m1[] = {{16, 32, 64}, {32, 32, 64}, {56, 32, 80}, {96, 32, 64}, {384, 32, 64}};
  static constexpr TileRow dkv_f32_m1[] = {{16, 32, 32}, {24, 32, 64}, {56, 32, 80}, {384, 32, 80}};
  static constexpr TileRow dkv_mixed_m3[] = {{56, 16, 64}, {80, 16, 32}, {144, 16, 128}, {224, 16, 128}, {384, 16, 128}};
  static constexpr TileRow dkv_f32_m3[] = {{16, 16, 64}, {32, 16, 32}, {64, 16, 32}, {128, 16, 128}, {160, 16, 128}, {384, 16, 128}};
#define FSDPA_TT(a) TileTable{a, static_cast<int>(sizeof(a) / sizeof(a[0]))}
  switch (pass) {
    case 0: return apple9 ? (fp32 ? FSDPA_TT(fwd_f32_m3) : FSDPA_TT(fwd_mixed_m3)) : (fp32 ? FSDPA_TT(fwd_f32_m1) : FSDPA_TT(fwd_mixed_m1));
    case 1: return apple9 ? (fp32 ? FSDPA_TT(dq_f32_m3) : FSDPA_TT(dq_mixed_m3)) : (fp32 ? FSDPA_TT(dq_f32_m1) : FSDPA_TT(dq_mixed_m1));
    default: return apple9 ? (fp32 ? FSDPA_TT(dkv_f32_m3) : FSDPA_TT(dkv_mixed_m3)) : (fp32 ? FSDPA_TT(dkv_f32_m1) : FSDPA_TT(dkv_mixed_m1));
  }
#undef FSDPA_TT
}

// Threadgroup memory of Apple GPUs (all families) and our Delta pass size.
constexpr int kThreadgroupMemoryBytes = 32 * 1024;
constexpr int kPreprocessRows = 4;  // rows (simdgroups) per threadgroup of the Delta pass

}  // namespace fsdpa::metal
