// Highway's dynamic dispatch: this file is compiled once per SIMD target by
// re-including itself through foreach_target.h.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/simd_kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/cache_control.h"
#include "hwy/contrib/math/math-inl.h"

#include <math.h>
#include <string.h>

#include <algorithm>
#include <limits>

#include "core/dtype.h"
#include "cpu/heuristics.h"
#include "cpu/simd_kernels.h"

HWY_BEFORE_NAMESPACE();
namespace fsdpa::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// At most 16 lanes so kPanelAlign (16) is always a whole number of vectors.
using DF = hn::CappedTag<float, 16>;

// Register block: kRows rows x kVecs vectors of C held in registers while K
// is streamed; A is broadcast, B is loaded once per k for all rows. A is
// row-major (element (r, k) at A[r * lda + k]) or, with kTransA, stored
// transposed (at A[k * lda + r]); a compile-time choice keeps the address
// arithmetic of the broadcasts to one add per k.
// With accumulate, C's rows are first scaled by row_scale[r] if given.
template <int kRows, int kVecs, bool kTransA>
HWY_INLINE void gemm_block(int K, const float* HWY_RESTRICT A, int lda,
                           const float* HWY_RESTRICT B, int ldb, float* HWY_RESTRICT C, int ldc,
                           bool accumulate, const float* row_scale) {
  const DF d;
  const size_t N = hn::Lanes(d);
  using V = hn::Vec<DF>;
  V acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r) {
    const V scale = hn::Set(d, row_scale ? row_scale[r] : 1.0f);
    for (int v = 0; v < kVecs; ++v)
      acc[r][v] = !accumulate ? hn::Zero(d)
                  : row_scale ? hn::Mul(scale, hn::LoadU(d, C + r * ldc + v * N))
                              : hn::LoadU(d, C + r * ldc + v * N);
  }
  for (int k = 0; k < K; ++k) {
    V b[kVecs];
    for (int v = 0; v < kVecs; ++v) b[v] = hn::LoadU(d, B + k * ldb + v * N);
    const float* a = kTransA ? A + k * lda : A + k;
    for (int r = 0; r < kRows; ++r) {
      const V ar = hn::Set(d, kTransA ? a[r] : a[r * lda]);
      for (int v = 0; v < kVecs; ++v) acc[r][v] = hn::MulAdd(ar, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v) hn::StoreU(acc[r][v], d, C + r * ldc + v * N);
}

// The rows of one column chunk of kVecs vectors: blocks of kRows rows, then
// of 4, then single rows.
template <int kRows, int kVecs, bool kTransA>
HWY_INLINE void gemm_chunk(int M, int K, const float* A, int lda, const float* B, int ldb,
                           float* C, int ldc, bool accumulate, const float* row_scale) {
  // Row i of the product starts at A + i (transposed) or A + i * lda.
  auto a_row = [&](int i) { return kTransA ? A + i : A + i * lda; };
  auto scale = [&](int i) { return row_scale ? row_scale + i : nullptr; };
  int i = 0;
  for (; i + kRows <= M; i += kRows)
    gemm_block<kRows, kVecs, kTransA>(K, a_row(i), lda, B, ldb, C + i * ldc, ldc, accumulate,
                                      scale(i));
  for (; i + 4 <= M; i += 4)
    gemm_block<4, kVecs, kTransA>(K, a_row(i), lda, B, ldb, C + i * ldc, ldc, accumulate,
                                  scale(i));
  for (; i < M; ++i)
    gemm_block<1, kVecs, kTransA>(K, a_row(i), lda, B, ldb, C + i * ldc, ldc, accumulate,
                                  scale(i));
}

// C[M x N] (+)= A[M x K] * B[K x N]; with kTransA, A is given as At [K x M].
// Column chunks of 4 vectors (6 rows a block: 24 accumulators of 32
// registers), the rest of N as one chunk of 3 or 2 vectors, or 1 (a rest of
// 5 as 3 + 2), with as many rows per block as keep ~24 accumulators busy
// (8, 12, 16 rows where there are 32 vector registers): head dims that are not a multiple of 64 (40 -> 3
// vectors, 176 -> 4 + 4 + 3) had run their rest in 6-row blocks of 2 or 1
// vectors, 6-12 accumulators, too few to hide the FMA latency. Each chunk
// runs all its rows before the next (its slice of B stays in L1). Every
// element's sum runs over k in order whatever the blocking: the same bits.
// Measured (intrinsics copy of this loop, 1 thread): M 64 K 64, N 48
// 137-143 -> 173-187 GFLOP/s, N 176 159-164 -> 174-181, N 224 155-159 ->
// 165-166, N 128 even.
template <bool kTransA>
void gemm_any(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
              int ldc, bool accumulate, const float* row_scale = nullptr) {
  const DF d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  int j = 0, vecs = N / lanes;  // columns done, vectors left
  auto run = [&](auto chunk, int chunk_vecs) {
    chunk(M, K, A, lda, B + j, ldb, C + j, ldc, accumulate, row_scale);
    j += chunk_vecs * lanes;
    vecs -= chunk_vecs;
  };
  // x86 below AVX-512 has 16 vector registers, not 32: 6-row blocks there.
  constexpr bool kRegs32 = !(HWY_ARCH_X86 && HWY_TARGET > HWY_AVX3);
  while (vecs >= 4 && vecs != 5) run(gemm_chunk<6, 4, kTransA>, 4);
  if (vecs == 5 || vecs == 3) run(gemm_chunk<kRegs32 ? 8 : 6, 3, kTransA>, 3);
  if (vecs == 2) run(gemm_chunk<kRegs32 ? 12 : 6, 2, kTransA>, 2);
  if (vecs == 1) run(gemm_chunk<kRegs32 ? 16 : 6, 1, kTransA>, 1);
}

void Gemm(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
          int ldc, bool accumulate) {
  gemm_any<false>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

void GemmScaleC(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
                int ldc, const float* row_scale) {
  gemm_any<false>(M, N, K, A, lda, B, ldb, C, ldc, true, row_scale);
}

void GemmAt(int M, int N, int K, const float* At, int ldat, const float* B, int ldb, float* C,
            int ldc, bool accumulate) {
  gemm_any<true>(M, N, K, At, ldat, B, ldb, C, ldc, accumulate);
}

// C[M x N] = A[M x K] * Bt^T with Bt [N x K] row-major: one dot product per
// output, for few rows (decode), where packing B transposed would cost more
// than the product.
void GemmBt(int M, int N, int K, const float* HWY_RESTRICT A, int lda,
            const float* HWY_RESTRICT Bt, int ldbt, float* HWY_RESTRICT C, int ldc) {
  const DF d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  for (int j = 0; j < N; ++j) {
    const float* b = Bt + j * ldbt;
    for (int r = 0; r < M; ++r) {
      const float* a = A + r * lda;
      auto acc0 = hn::Zero(d), acc1 = hn::Zero(d);
      int k = 0;
      for (; k + 2 * lanes <= K; k += 2 * lanes) {
        acc0 = hn::MulAdd(hn::LoadU(d, a + k), hn::LoadU(d, b + k), acc0);
        acc1 = hn::MulAdd(hn::LoadU(d, a + k + lanes), hn::LoadU(d, b + k + lanes), acc1);
      }
      for (; k < K; k += lanes) acc0 = hn::MulAdd(hn::LoadU(d, a + k), hn::LoadU(d, b + k), acc0);
      C[r * ldc + j] = hn::GetLane(hn::SumOfLanes(d, hn::Add(acc0, acc1)));
    }
  }
}

// dst [cols x rows] = src^T, src [rows x cols]: a column of `lanes` rows is
// one gather and one contiguous store (the scalar loop, one strided store
// per element, was 13% of a small forward).
void Transpose(const float* HWY_RESTRICT src, int64_t ld_src, int64_t rows, int64_t cols,
               float* HWY_RESTRICT dst, int64_t ld_dst) {
  const DF d;
  const hn::RebindToSigned<DF> di;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  int64_t r = 0;
  if (ld_src * lanes < (int64_t{1} << 31)) {  // int32 gather offsets
    alignas(64) int32_t offs[16];
    for (int64_t i = 0; i < lanes; ++i) offs[i] = static_cast<int32_t>(i * ld_src);
    const auto idx = hn::Load(di, offs);
    for (; r + lanes <= rows; r += lanes)
      for (int64_t c = 0; c < cols; ++c)
        hn::StoreU(hn::GatherIndex(d, src + r * ld_src + c, idx), d, dst + c * ld_dst + r);
  }
  for (; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
}

// ---- Decode kernels: K/V rows read in place from the caller's tensor ------
using DU = hn::RebindToUnsigned<DF>;
using VU = hn::Vec<DU>;

// Requests a row's cache lines (kPrefetchRows, heuristics.h).
HWY_INLINE void PrefetchRow(const char* row, int bytes, bool inside) {
  if (!inside) return;
  for (int off = 0; off < bytes; off += 64) hwy::Prefetch(row + off);
}

// fp32 bits of one vector of a contiguous fp32 or (kBF16) bf16 row at i.
template <bool kBF16>
HWY_INLINE VU LoadBits(const void* HWY_RESTRICT src, int64_t i) {
  const DU du;
  if constexpr (kBF16) {
    const hn::Rebind<uint16_t, DF> du16;
    return hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(du16, static_cast<const uint16_t*>(src) + i)));
  } else {
    return hn::LoadU(du, static_cast<const uint32_t*>(src) + i);
  }
}

// The same for a row tail of n < lanes elements, zeros after; element by
// element, since masked loads may read past the row (and the tensor).
template <bool kBF16>
HWY_INLINE VU LoadBitsTail(const void* HWY_RESTRICT src, int64_t i, int64_t n) {
  alignas(64) uint32_t tail[16] = {};
  for (int64_t t = 0; t < n; ++t) {
    if constexpr (kBF16) tail[t] = uint32_t(static_cast<const uint16_t*>(src)[i + t]) << 16;
    else memcpy(&tail[t], static_cast<const uint32_t*>(src) + i + t, 4);
  }
  return hn::LoadU(DU(), tail);
}

// Register block of DotRowsSrc: C[r0 + i][j] for i < kR, one key j, as kR
// dot products over K; each vector of the key row serves kR query rows.
// Every row sums into 4 / kR accumulators, so that 4 independent FMA chains
// are in flight: with one chain per key (kR = 1) the FMA latency bounds a
// decode step (perf: a single vfmadd chain, ~32 cycles per key at D = 128).
template <bool kBF16, int kR>
HWY_INLINE void DotBlock(int r0, int j, int K, const float* HWY_RESTRICT A, int lda,
                         const char* row, float* HWY_RESTRICT C, int ldc) {
  constexpr int kSplit = 4 / kR;
  const DF d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  hn::Vec<DF> acc[kR][kSplit];
  for (int i = 0; i < kR; ++i)
    for (int s = 0; s < kSplit; ++s) acc[i][s] = hn::Zero(d);
  auto step = [&](int k, int s, VU bits) {
    for (int i = 0; i < kR; ++i)
      acc[i][s] = hn::MulAdd(hn::LoadU(d, A + (r0 + i) * lda + k), hn::BitCast(d, bits), acc[i][s]);
  };
  const int whole = K / lanes * lanes;
  int k = 0;
  for (; k + kSplit * lanes <= whole; k += kSplit * lanes)
    for (int s = 0; s < kSplit; ++s) step(k + s * lanes, s, LoadBits<kBF16>(row, k + s * lanes));
  for (; k < whole; k += lanes) step(k, 0, LoadBits<kBF16>(row, k));
  if (whole < K) step(whole, 0, LoadBitsTail<kBF16>(row, whole, K - whole));
  for (int i = 0; i < kR; ++i) {
    for (int s = 1; s < kSplit; ++s) acc[i][0] = hn::Add(acc[i][0], acc[i][s]);
    C[(r0 + i) * ldc + j] = hn::GetLane(hn::SumOfLanes(d, acc[i][0]));
  }
}

// DotRowsSrc for a single query row (decode, Sq = 1): C[j + t] for t <
// kKeys, one FMA chain per key (four keys give the four chains in flight
// that DotBlock<kBF16, 1> gets by splitting one key's sum), so A's vectors
// load once per four keys and no partial sums are added per key (perf:
// the per-key adds and reloads made the K pass 35% slower than the V pass
// over the same bytes). Each score sums its products in DotBlock<kBF16, 4>'s
// order for a row, so a row alone and a row of a stacked GQA group (the
// backward recomputes per head) get the same bits.
template <bool kBF16, int kKeys>
HWY_INLINE void DotKeys(int j, int K, const float* HWY_RESTRICT A, const char* bt, int64_t ldb,
                        float* HWY_RESTRICT C) {
  const DF d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  hn::Vec<DF> acc[kKeys];
  for (int t = 0; t < kKeys; ++t) acc[t] = hn::Zero(d);
  const int whole = K / lanes * lanes;
  for (int k = 0; k < whole; k += lanes) {
    const auto a = hn::LoadU(d, A + k);
    for (int t = 0; t < kKeys; ++t)
      acc[t] = hn::MulAdd(a, hn::BitCast(d, LoadBits<kBF16>(bt + (j + t) * ldb, k)), acc[t]);
  }
  if (whole < K) {
    const auto a = hn::LoadU(d, A + whole);
    for (int t = 0; t < kKeys; ++t)
      acc[t] = hn::MulAdd(
          a, hn::BitCast(d, LoadBitsTail<kBF16>(bt + (j + t) * ldb, whole, K - whole)), acc[t]);
  }
  for (int t = 0; t < kKeys; ++t) C[j + t] = hn::GetLane(hn::SumOfLanes(d, acc[t]));
}

// C[M x N] = A[M x K] * Bt^T with Bt the N rows (K elements each, row r at
// element offset r * ldbt) of a caller's fp32/bf16 tensor, read in place.
// A is a padded fp32 panel (K rounded up to whole vectors, zero padded).
template <bool kBF16>
void DotRowsSrcT(int M, int N, int K, const float* HWY_RESTRICT A, int lda, const void* Bt,
                 int64_t ldbt, float* HWY_RESTRICT C, int ldc) {
  const char* bt = static_cast<const char*>(Bt);
  const int64_t ldb = ldbt * (kBF16 ? 2 : 4);
  const int row_bytes = K * (kBF16 ? 2 : 4);
  if (M == 1) {
    int j = 0;
    for (; j + 4 <= N; j += 4) {
      for (int t = 0; t < 4; ++t)
        PrefetchRow(bt + (j + t + kPrefetchRows) * ldb, row_bytes, j + t + kPrefetchRows < N);
      DotKeys<kBF16, 4>(j, K, A, bt, ldb, C);
    }
    for (; j < N; ++j) DotKeys<kBF16, 1>(j, K, A, bt, ldb, C);
    return;
  }
  for (int j = 0; j < N; ++j) {
    const char* row = bt + j * ldb;
    PrefetchRow(row + kPrefetchRows * ldb, row_bytes, j + kPrefetchRows < N);
    int r = 0;
    for (; r + 4 <= M; r += 4) DotBlock<kBF16, 4>(r, j, K, A, lda, row, C, ldc);
    if (r + 2 <= M) {
      DotBlock<kBF16, 2>(r, j, K, A, lda, row, C, ldc);
      r += 2;
    }
    if (r < M) DotBlock<kBF16, 1>(r, j, K, A, lda, row, C, ldc);
  }
}

// Register block of AccumRowsSrc: rows [r0, r0 + kR) x vectors [k, k + kC)
// of O, accumulated over all N rows of B, each read as one contiguous run.
// kC == 1 with n < lanes: the row tail.
template <bool kBF16, int kR, int kC>
HWY_INLINE void AccumBlock(int r0, int k, int64_t n, int N, const float* HWY_RESTRICT P, int ldp,
                           const char* B, int64_t ldb_bytes, float* HWY_RESTRICT O, int ldo,
                           int row_bytes) {
  const DF d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  hn::Vec<DF> acc[kR][kC];
  for (int i = 0; i < kR; ++i)
    for (int c = 0; c < kC; ++c) acc[i][c] = hn::LoadU(d, O + (r0 + i) * ldo + k + c * lanes);
  for (int j = 0; j < N; ++j) {
    const char* row = B + j * ldb_bytes;
    if (k == 0) PrefetchRow(row + kPrefetchRows * ldb_bytes, row_bytes, j + kPrefetchRows < N);
    hn::Vec<DF> p[kR];
    for (int i = 0; i < kR; ++i) p[i] = hn::Set(d, P[(r0 + i) * ldp + j]);
    for (int c = 0; c < kC; ++c) {
      const VU bits = n < lanes ? LoadBitsTail<kBF16>(row, k, n) : LoadBits<kBF16>(row, k + c * lanes);
      for (int i = 0; i < kR; ++i) acc[i][c] = hn::MulAdd(p[i], hn::BitCast(d, bits), acc[i][c]);
    }
  }
  for (int i = 0; i < kR; ++i)
    for (int c = 0; c < kC; ++c) hn::StoreU(acc[i][c], d, O + (r0 + i) * ldo + k + c * lanes);
}

// O[M x K] += P[M x N] * B, B the N rows (K elements each, row r at element
// offset r * ldb) of a caller's fp32/bf16 tensor, read in place; O's rows
// are padded to whole vectors (the padding stays 0). Blocks of up to
// 2 rows x 8 vectors of O stay in registers while B's rows stream past.
template <bool kBF16>
void AccumRowsSrcT(int M, int N, int K, const float* HWY_RESTRICT P, int ldp, const void* B,
                   int64_t ldb, float* HWY_RESTRICT O, int ldo) {
  const int lanes = static_cast<int>(hn::Lanes(DF()));
  const char* b = static_cast<const char*>(B);
  const int64_t ldb_bytes = ldb * (kBF16 ? 2 : 4);
  const int row_bytes = K * (kBF16 ? 2 : 4);
  for (int r = 0; r < M; r += 2) {
    const bool two = r + 1 < M;
    int k = 0;
    for (; k + 8 * lanes <= K; k += 8 * lanes) {
      if (two) AccumBlock<kBF16, 2, 8>(r, k, lanes, N, P, ldp, b, ldb_bytes, O, ldo, row_bytes);
      else AccumBlock<kBF16, 1, 8>(r, k, lanes, N, P, ldp, b, ldb_bytes, O, ldo, row_bytes);
    }
    for (; k < K; k += lanes) {
      const int64_t n = std::min<int64_t>(lanes, K - k);
      if (two) AccumBlock<kBF16, 2, 1>(r, k, n, N, P, ldp, b, ldb_bytes, O, ldo, row_bytes);
      else AccumBlock<kBF16, 1, 1>(r, k, n, N, P, ldp, b, ldb_bytes, O, ldo, row_bytes);
    }
  }
}

void DotRowsSrc(int M, int N, int K, const float* HWY_RESTRICT A, int lda, const void* Bt,
                bool bf16, int64_t ldbt, float* HWY_RESTRICT C, int ldc) {
  bf16 ? DotRowsSrcT<true>(M, N, K, A, lda, Bt, ldbt, C, ldc)
              : DotRowsSrcT<false>(M, N, K, A, lda, Bt, ldbt, C, ldc);
}

void AccumRowsSrc(int M, int N, int K, const float* HWY_RESTRICT P, int ldp, const void* B,
                  bool bf16, int64_t ldb, float* HWY_RESTRICT O, int ldo) {
  bf16 ? AccumRowsSrcT<true>(M, N, K, P, ldp, B, ldb, O, ldo)
              : AccumRowsSrcT<false>(M, N, K, P, ldp, B, ldb, O, ldo);
}

// dst[i] = src[i] * mul for a contiguous fp32 (bf16 = false) or bf16 row;
// returns false if an element is NaN or Inf (all exponent bits set).
bool ConvertRow(const void* HWY_RESTRICT src, bool bf16, int64_t n, float mul,
                float* HWY_RESTRICT dst) {
  const DF d;
  const hn::RebindToUnsigned<DF> du;
  const hn::Rebind<uint16_t, DF> du16;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto exp_mask = hn::Set(du, 0x7F800000u);
  const auto vmul = hn::Set(d, mul);
  auto bad = hn::Zero(du);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto bits =
        bf16 ? hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(du16, static_cast<const uint16_t*>(src) + i)))
             : hn::LoadU(du, static_cast<const uint32_t*>(src) + i);
    bad = hn::Or(bad, hn::VecFromMask(du, hn::Eq(hn::And(bits, exp_mask), exp_mask)));
    hn::StoreU(hn::Mul(hn::BitCast(d, bits), vmul), d, dst + i);
  }
  bool finite = hn::AllTrue(du, hn::Eq(bad, hn::Zero(du)));
  for (; i < n; ++i) {
    uint32_t u;
    if (bf16) u = static_cast<uint32_t>(static_cast<const uint16_t*>(src)[i]) << 16;
    else memcpy(&u, static_cast<const uint32_t*>(src) + i, 4);
    finite &= (u & 0x7F800000u) != 0x7F800000u;
    float f;
    memcpy(&f, &u, 4);
    dst[i] = f * mul;
  }
  return finite;
}

// bf16 bits (in the low half of each u32 lane) of v rounded to nearest even,
// as f32_to_bf16 (NaN stays a quiet NaN).
HWY_INLINE hn::Vec<hn::Rebind<uint16_t, DF>> ToBf16(hn::Vec<DF> v) {
  const DU du;
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<uint16_t, DF> du16;
  const auto u = hn::BitCast(du, v);
  const auto rounded =
      hn::Add(u, hn::Add(hn::Set(du, 0x7FFFu), hn::And(hn::ShiftRight<16>(u), hn::Set(du, 1u))));
  const auto nan = hn::Gt(hn::And(u, hn::Set(du, 0x7FFFFFFFu)), hn::Set(du, 0x7F800000u));
  const auto r = hn::IfThenElse(nan, hn::Or(u, hn::Set(du, 0x00400000u)), rounded);
  return hn::DemoteTo(du16, hn::BitCast(di, hn::ShiftRight<16>(r)));
}

// dst[i] = src[i] * mul, stored as fp32 or (bf16) bfloat16 rounded to
// nearest even like f32_to_bf16 (NaN stays a quiet NaN).
void StoreRow(const float* HWY_RESTRICT src, float mul, bool bf16, int64_t n, void* dst) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto vmul = hn::Set(d, mul);
  int64_t i = 0;
  if (!bf16) {
    float* out = static_cast<float*>(dst);
    for (; i + lanes <= n; i += lanes) hn::StoreU(hn::Mul(hn::LoadU(d, src + i), vmul), d, out + i);
    for (; i < n; ++i) out[i] = src[i] * mul;
    return;
  }
  const hn::Rebind<uint16_t, DF> du16;
  uint16_t* out = static_cast<uint16_t*>(dst);
  for (; i + lanes <= n; i += lanes)
    hn::StoreU(ToBf16(hn::Mul(hn::LoadU(d, src + i), vmul)), du16, out + i);
  for (; i < n; ++i) out[i] = f32_to_bf16(src[i] * mul);
}

bool AllFinite(const float* HWY_RESTRICT x, int64_t n) {
  const DF d;
  const DU du;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto exp_mask = hn::Set(du, 0x7F800000u);
  auto mx = hn::Zero(du);  // largest exponent field seen
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) mx = hn::Max(mx, hn::And(hn::BitCast(du, hn::LoadU(d, x + i)), exp_mask));
  bool finite = hn::AllTrue(du, hn::Lt(mx, exp_mask));
  for (; i < n; ++i) finite &= std::isfinite(x[i]);
  return finite;
}

// exp(x) of the probabilities (x = score - max <= 0, or score - lse), to
// ~2 ulp: 2^k e^r with x = k ln2 + r (ln2 in two parts), |r| <= ln2 / 2,
// e^r by its degree-6 Taylor polynomial (truncation < 1.3e-7 relative).
// About half the instructions of hn::Exp (perf: Exp was 8% of a large fp32
// forward). Results below ~2^-126 are 0 (also exp(-inf)); the input is
// clamped to [-100, 88] (exp(88) < FLT_MAX); NaN becomes a number: callers
// that must keep it test for it.
template <class D, class V>
HWY_INLINE V ExpProb(D d, V x) {
  const hn::RebindToSigned<D> di;
  // (Clamped below too: from -inf, r would be -inf and the polynomial
  // +-inf, whose product with 2^-127 = 0 is NaN.)
  const auto xc = hn::Min(hn::Max(x, hn::Set(d, -100.0f)), hn::Set(d, 88.0f));
  const auto k = hn::Round(hn::Max(hn::Mul(xc, hn::Set(d, 1.44269504088896341f)),
                                   hn::Set(d, -127.0f)));
  auto r = hn::NegMulAdd(k, hn::Set(d, 0.693145751953125f), xc);  // ln2's high part: exact k * hi
  r = hn::NegMulAdd(k, hn::Set(d, 1.4286068203094172e-06f), r);
  auto p = hn::Set(d, 1.0f / 720);
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 120));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 24));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 6));
  p = hn::MulAdd(p, r, hn::Set(d, 0.5f));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f));
  // k >= -127: 2^-127 gets exponent field 0, i.e. 0.0 (flushing results
  // below ~2^-126 without a compare); k <= 127 from the clamp at 88.
  const auto two_k = hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, k), hn::Set(di, 127))));
  return hn::Mul(p, two_k);
}

// exp(x - m) of one vector, NaN kept: a NaN score (or +inf, which makes
// x - m NaN) stays NaN, so it reaches the row's sum and output as in PyTorch.
template <class D, class V>
HWY_INLINE V ExpSubKeepNaN(D d, V x, V m) {
  const auto x_m = hn::Sub(x, m);
  return hn::IfThenElse(hn::IsNaN(x_m), x_m, ExpProb(d, x_m));
}

float ExpSubSum(float* HWY_RESTRICT x, int n, float m) {
  const DF d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  const auto vm = hn::Set(d, m);
  auto sum = hn::Zero(d);
  for (int i = 0; i < n; i += lanes) {
    const auto e = ExpSubKeepNaN(d, hn::LoadU(d, x + i), vm);
    hn::StoreU(e, d, x + i);
    sum = hn::Add(sum, e);
  }
  return hn::GetLane(hn::SumOfLanes(d, sum));
}

// max(a, b), NaN if either is (a NaN score must reach the output).
inline float MaxKeepNaN(float a, float b) { return a != a || b != b ? NAN : std::max(a, b); }

// The online softmax step of `rows` rows of scores (n multiple of the
// lanes, ld apart), one call per tile: per row m_new = max(m, row max);
// where m_new > -inf the row becomes exp(s - m_new), alpha[r] =
// exp(m - m_new) (0 for m = -inf), l = l * alpha + row sum, m = m_new.
// Rows whose m_new is -inf (nothing visible yet) are left as they are,
// with m[r] = -inf and alpha[r] = NaN: the caller's to handle.
// SoftmaxRows' pass over kR rows: m[i] becomes the new max, m_old[i] the
// previous one, the rows exp(s - m_new) (unless m_new is -inf), sums[i] the
// rows' sums (0 where m_new is -inf).
template <int kR>
HWY_INLINE void SoftmaxRowGroup(float* HWY_RESTRICT S, int ld, int n, float* HWY_RESTRICT m,
                                float* HWY_RESTRICT m_old, float* HWY_RESTRICT sums) {
  const DF d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  const float ninf = -std::numeric_limits<float>::infinity();
  hn::Vec<DF> acc[kR];
  for (int g = 0; g < kR; ++g) acc[g] = hn::Set(d, ninf);
  for (int i = 0; i < n; i += lanes)
    for (int g = 0; g < kR; ++g) acc[g] = hn::Max(acc[g], hn::LoadU(d, S + g * ld + i));
  bool any = false;
  for (int g = 0; g < kR; ++g) {
    const float m_new = MaxKeepNaN(m[g], hn::GetLane(hn::MaxOfLanes(d, acc[g])));
    m_old[g] = m[g];
    m[g] = m_new;
    any |= m_new != ninf;
    acc[g] = hn::Set(d, m_new);
  }
  if (!any) {
    for (int g = 0; g < kR; ++g) sums[g] = 0.0f;
    return;
  }
  hn::Vec<DF> sum[kR];
  for (int g = 0; g < kR; ++g) sum[g] = hn::Zero(d);
  for (int i = 0; i < n; i += lanes)
    for (int g = 0; g < kR; ++g) {
      if (m[g] == ninf) continue;  // left as is: the caller's
      const auto e = ExpSubKeepNaN(d, hn::LoadU(d, S + g * ld + i), acc[g]);
      hn::StoreU(e, d, S + g * ld + i);
      sum[g] = hn::Add(sum[g], e);
    }
  for (int g = 0; g < kR; ++g) sums[g] = hn::GetLane(hn::SumOfLanes(d, sum[g]));
}

void SoftmaxRows(float* HWY_RESTRICT S, int ld, int rows, int n, float* HWY_RESTRICT m,
                 float* HWY_RESTRICT l, float* HWY_RESTRICT alpha) {
  const DF d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  const float ninf = -std::numeric_limits<float>::infinity();
  float sums[64 + 16], m_old[64 + 16];
  for (int r0 = 0; r0 < rows; r0 += 64) {  // 64 rows at a time (a tile's)
    const int rn = std::min(64, rows - r0);
    // Four rows at a time: their max and sum reductions and exps are
    // independent chains the core overlaps (one row at a time, the
    // horizontal reductions' latency dominated).
    int r = 0;
    for (; r + 4 <= rn; r += 4) SoftmaxRowGroup<4>(S + (r0 + r) * ld, ld, n, m + r0 + r, m_old + r, sums + r);
    for (; r < rn; ++r) SoftmaxRowGroup<1>(S + (r0 + r) * ld, ld, n, m + r0 + r, m_old + r, sums + r);
    // alpha = exp(m_old - m_new) of all rows at once: 0 from m_old = -inf,
    // NaN where m_new is -inf (-inf - -inf); l = l * alpha + the row's sum.
    // (Local copies padded to whole vectors.)
    alignas(64) float mn[64 + 16], lo[64 + 16], a[64 + 16];
    const int padded = static_cast<int>(round_up(rn, lanes));
    for (int r = 0; r < padded; ++r) {
      const bool in = r < rn;
      mn[r] = in ? m[r0 + r] : 0.0f;
      lo[r] = in ? l[r0 + r] : 0.0f;
      if (!in) m_old[r] = sums[r] = 0.0f;
    }
    for (int r = 0; r < padded; r += lanes) {
      const auto av = ExpSubKeepNaN(d, hn::LoadU(d, m_old + r), hn::Load(d, mn + r));
      hn::Store(av, d, a + r);
      hn::Store(hn::MulAdd(hn::Load(d, lo + r), av, hn::LoadU(d, sums + r)), d, lo + r);
    }
    for (int r = 0; r < rn; ++r) {
      alpha[r0 + r] = a[r];
      if (m[r0 + r] != ninf) l[r0 + r] = lo[r];
    }
  }
}

void SoftmaxGradRow(const float* HWY_RESTRICT p, float* HWY_RESTRICT dp, float delta, int n) {
  const DF d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  const auto vd = hn::Set(d, delta);
  for (int i = 0; i < n; i += lanes)
    hn::StoreU(hn::Mul(hn::LoadU(d, p + i), hn::Sub(hn::LoadU(d, dp + i), vd)), d, dp + i);
}

void ScaleRow(float* HWY_RESTRICT y, int n, float a) {
  const DF d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  const auto va = hn::Set(d, a);
  for (int i = 0; i < n; i += lanes) hn::StoreU(hn::Mul(hn::LoadU(d, y + i), va), d, y + i);
}

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace fsdpa::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace fsdpa::cpu {

HWY_EXPORT(Gemm);
HWY_EXPORT(GemmScaleC);
HWY_EXPORT(Transpose);
HWY_EXPORT(SoftmaxRows);
HWY_EXPORT(GemmAt);
HWY_EXPORT(ExpSubSum);
HWY_EXPORT(ScaleRow);
HWY_EXPORT(GemmBt);
HWY_EXPORT(ConvertRow);
HWY_EXPORT(DotRowsSrc);
HWY_EXPORT(AllFinite);
HWY_EXPORT(StoreRow);
HWY_EXPORT(AccumRowsSrc);
HWY_EXPORT(SoftmaxGradRow);
HWY_EXPORT(TargetName);

void gemm(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
          int ldc, bool accumulate) {
  HWY_DYNAMIC_DISPATCH(Gemm)(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}
void gemm_scale_c(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
                  int ldc, const float* row_scale) {
  HWY_DYNAMIC_DISPATCH(GemmScaleC)(M, N, K, A, lda, B, ldb, C, ldc, row_scale);
}
void transpose(const float* src, int64_t ld_src, int64_t rows, int64_t cols, float* dst,
               int64_t ld_dst) {
  HWY_DYNAMIC_DISPATCH(Transpose)(src, ld_src, rows, cols, dst, ld_dst);
}
void softmax_rows(float* S, int ld, int rows, int n, float* m, float* l, float* alpha) {
  HWY_DYNAMIC_DISPATCH(SoftmaxRows)(S, ld, rows, n, m, l, alpha);
}
void gemm_at(int M, int N, int K, const float* At, int ldat, const float* B, int ldb, float* C,
             int ldc, bool accumulate) {
  HWY_DYNAMIC_DISPATCH(GemmAt)(M, N, K, At, ldat, B, ldb, C, ldc, accumulate);
}
void gemm_bt(int M, int N, int K, const float* A, int lda, const float* Bt, int ldbt, float* C,
             int ldc) {
  HWY_DYNAMIC_DISPATCH(GemmBt)(M, N, K, A, lda, Bt, ldbt, C, ldc);
}
bool all_finite(const float* x, int64_t n) { return HWY_DYNAMIC_DISPATCH(AllFinite)(x, n); }
void store_row(const float* src, float mul, bool bf16, int64_t n, void* dst) {
  HWY_DYNAMIC_DISPATCH(StoreRow)(src, mul, bf16, n, dst);
}
void dot_rows_src(int M, int N, int K, const float* A, int lda, const void* Bt, bool bf16,
                  int64_t ldbt, float* C, int ldc) {
  HWY_DYNAMIC_DISPATCH(DotRowsSrc)(M, N, K, A, lda, Bt, bf16, ldbt, C, ldc);
}
void accum_rows_src(int M, int N, int K, const float* P, int ldp, const void* B, bool bf16,
                    int64_t ldb, float* O, int ldo) {
  HWY_DYNAMIC_DISPATCH(AccumRowsSrc)(M, N, K, P, ldp, B, bf16, ldb, O, ldo);
}
bool convert_row(const void* src, bool bf16, int64_t n, float mul, float* dst) {
  return HWY_DYNAMIC_DISPATCH(ConvertRow)(src, bf16, n, mul, dst);
}
void softmax_grad_row(const float* p, float* dp, float delta, int n) {
  HWY_DYNAMIC_DISPATCH(SoftmaxGradRow)(p, dp, delta, n);
}
float exp_sub_sum(float* x, int n, float m) { return HWY_DYNAMIC_DISPATCH(ExpSubSum)(x, n, m); }
void scale_row(float* y, int n, float a) { HWY_DYNAMIC_DISPATCH(ScaleRow)(y, n, a); }
const char* simd_target_name() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }

}  // namespace fsdpa::cpu
#endif  // HWY_ONCE
