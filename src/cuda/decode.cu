// Decode forward (flash-decoding): few query rows, long key ranges.
//
// One CTA per (row group, key split, kv head, batch). The query rows of a
// GQA group (Sq * Hq / Hk of them: row r is query token r / G of query head
// hk * G + r % G) are packed as the 16 rows of one mma m-fragment, so every
// K/V byte is read once per group instead of once per query head, and the
// time is the time to stream K and V: the kernel is a memory pipeline.
//
// Each warp runs its own cp.async pipeline of kStages stages of kKeys keys
// (K and V), on the chunks w, w + NW, w + 2 NW, ... of the CTA's key range
// (so the CTA as a whole reads contiguous spans), with its own online
// softmax; no block barrier inside the loop, only cp.async.wait_group and
// __syncwarp. At the end the warps' (m, l, O) are combined through shared
// memory; with one split the CTA writes out and lse itself, with several
// it writes normalised fp32 partials + lse for splitkv_merge (misc.cu).
//
// Scope (decode_scope): fp16/bf16, D == Dv in {64, 128}, 16-byte
// loadable q/k/v, band-only semantics (causal / windows with either
// alignment), GQA/MQA, varlen, Sq <= 16 and Sq * G <= 64; and the KV-cache
// parameters (the KV instantiation): seqused_k / cache_leftpad bound each
// sequence's keys, cache_batch_idx picks its cache row, and with a
// block_table every lane copies its rows from their pages (any page size;
// the page index is looked up once per page a lane enters, so the copies
// stay 16-byte cp.async of whole rows and no gather pass runs before the
// kernel).
#include "cuda/tc.cuh"  // PTX wrappers (ldmatrix, mma.sync, cp.async), pitch<DP>
#include "cuda/smem_opt_in.h"

namespace fsdpa {
namespace cuda {
namespace {

// ---- tile heuristics (the one place) -------------------------------------
// Per warp and stage: kKeys rows of K and of V (8 KB at either head dim), 3
// stages, 4 warps: 64 KB of loads in flight per CTA. Measured on an H100
// with bench/decode_sweep.py (Sq 1, Sk 32k, B 8, no split): twice the keys
// per stage at one CTA per SM ran 0.747 vs 0.738 ms (H 16, D 128) and 0.478
// vs 0.389 ms (Hq 32 / Hk 8); 4 or 5 stages, or 8 warps, no faster.
template <int DP> struct DecodeConfig {
  static constexpr int kWarps = 4;
  static constexpr int kKeys = DP == 64 ? 32 : 16;
  static constexpr int kStages = 3;
  static constexpr int kMinBlocks = 2;  // CTAs per SM the registers must allow
};
constexpr int kRows = 16;         // packed query rows per CTA (one m16 fragment)
constexpr int kMaxRows = 64;      // Sq * G above this: the general kernels
constexpr int kMaxSq = 16;        // longer query ranges are not decode
constexpr int kMaxSplits = 128;
// A CTA's fixed cost (pipeline fill, epilogue) in units of one CTA step
// (kWarps * kKeys keys), used by decode_splits' wave model.
constexpr double kCtaOverheadUnits = 2.0;
// CTAs per SM the split model fills: one. On an H100 (bf16, Sk 32k, B 8,
// H 16, D 128) 128 CTAs streamed K/V at 2.9 TB/s (0.740 ms); 256, 512 and
// 1024 CTAs (2-8 splits) took 0.765-0.785 ms. Hq 32 / Hk 8: 64 CTAs 0.403,
// 128 0.409, 256 0.423 ms.
constexpr int kSlotsPerSm = 1;

template <int DP> constexpr size_t decode_pipe_elems() {
  using C = DecodeConfig<DP>;
  return size_t(C::kWarps) * C::kStages * 2 * C::kKeys * DP;
}
template <typename T, int DP> constexpr size_t decode_smem() {
  return (kRows * pitch<DP>() + decode_pipe_elems<DP>()) * sizeof(T);
}

// Element offset of (row, col) in a K/V stage: unpadded rows of DP, the
// 16-byte chunk c of row r stored at chunk c ^ (r % 8). The 8 lanes that
// copy one aligned 128-byte global segment then fill one 128-byte line of
// shared memory, so each such copy is one L2 request of 4 sectors; and the
// 8 rows an ldmatrix reads sit in 8 different bank groups. (With rows
// padded to DP + 8 instead, the copies' shared-memory side straddled lines
// and the L2 saw 2.7x the requests for 1.5x the sectors; ncu on an H100,
// bf16 B 8 H 16 Sk 32k D 128: 720 -> 698 us, DRAM 89% -> 92% of peak.)
template <int DP> __device__ __forceinline__ int kv_off(int row, int col) {
  return row * DP + ((((col >> 3) ^ (row & 7)) << 3) | (col & 7));
}

template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// KV: the call has KV-cache parameters (get_kv_seq's key ranges, cache rows,
// pages); a template flag, so that every other call runs the kernel as it was.
template <typename T, int DP, bool KV>
__global__ void __launch_bounds__(DecodeConfig<DP>::kWarps * 32, DecodeConfig<DP>::kMinBlocks)
decode_kernel(AttnParams p, int ngroups, int nsplit, float* opart, float* lsepart) {
  using C = DecodeConfig<DP>;
  constexpr int NW = C::kWarps, KW = C::kKeys, ST = C::kStages, P = pitch<DP>();
  constexpr int NT = NW * 32, CH = DP / 8;  // 16-byte chunks per row
  static_assert(KW % 16 == 0 && ST >= 2, "decode tile");
  static_assert(kRows * P * sizeof(T) % 128 == 0, "K/V stages start on a 128-byte line (kv_off)");
  // The epilogue reuses the pipeline's shared memory for the warps' O, m, l.
  static_assert((NW * kRows * (DP + 4) + 2 * NW * kRows) * sizeof(float) <=
                    decode_pipe_elems<DP>() * sizeof(T),
                "decode epilogue scratch");
  extern __shared__ __align__(16) char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* KVs = Qs + kRows * P;  // [NW][ST][K, V][KW][DP], swizzled (kv_off)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rg = blockIdx.x % ngroups, split = blockIdx.x / ngroups;
  const int64_t hk = blockIdx.y, b = blockIdx.z;
  const int G = static_cast<int>(p.heads_q / p.heads_k);
  const Seq e = KV ? get_kv_seq(p, b) : get_seq(p, b);
  const int R = e.sq * G, r0 = rg * kRows;
  if (r0 >= R) return;  // no rows of this batch in this group: nothing to write
  const int rend = min(R, r0 + kRows);

  // Key range of the group: rows' bands are monotone in the query index, so
  // the union is [lo(first), hi(last)] and the keys every row sees are
  // [lo(last), hi(first)].
  const int i_first = r0 / G, i_last = (rend - 1) / G;
  const KeyRange kf = visible_keys(i_first, e.sq, e.sk, p.window_left, p.window_right,
                                   p.bottom_right);
  const KeyRange kl = visible_keys(i_last, e.sq, e.sk, p.window_left, p.window_right,
                                   p.bottom_right);
  const int band_lo_max = static_cast<int>(kl.lo), band_hi_min = static_cast<int>(kf.hi);
  int sc_lo = 0, sc_hi = -1;  // kKeys-chunks of the union
  if (kl.hi >= kf.lo && e.sk > 0) {
    sc_lo = static_cast<int>(kf.lo) / KW;
    sc_hi = static_cast<int>(kl.hi) / KW;
  }
  // This split's chunks: a multiple of NW per split, so the warps get equal shares.
  const int nsub = sc_hi - sc_lo + 1;
  const int per = ((nsub + nsplit - 1) / nsplit + NW - 1) / NW * NW;
  const int s_begin = sc_lo + split * per;
  const int s_end = min(sc_hi, s_begin + per - 1);
  const int nst = s_end >= s_begin + warp ? (s_end - s_begin - warp) / NW + 1 : 0;

  // Q tile (zero rows past the group), its own cp.async group.
  const T* qb = static_cast<const T*>(p.q);
  for (int x = threadIdx.x; x < kRows * CH; x += NT) {
    const int row = x / CH, c = (x % CH) * 8, r = r0 + row;
    const bool ok = r < rend;
    const T* src = ok ? qb + off4(p.q_stride, b, hk * G + r % G, e.q_begin + r / G, c) : qb;
    cp_async16(Qs + row * P + c, src, ok);
  }
  cp_async_commit();

  // K/V of the sequence: its cache row (cache_batch_idx) from k_begin on;
  // paged, kg/vg are the page pools and each row goes through the page table.
  const bool paged = KV && p.block_table != nullptr;
  const int64_t kvrow = KV ? kv_cache_row(p, b) : b;
  const int kbeg = static_cast<int>(e.k_begin);
  const T* kg = static_cast<const T*>(p.k);
  const T* vg = static_cast<const T*>(p.v);
  if (!KV) {
    kg += off4(p.k_stride, b, hk, e.k_begin, 0);
    vg += off4(p.v_stride, b, hk, e.k_begin, 0);
  } else if (!paged) {
    kg += kv_row_off(p, p.k_stride, kvrow, hk, kbeg);
    vg += kv_row_off(p, p.v_stride, kvrow, hk, kbeg);
  }
  const int32_t* pages = paged ? p.block_table + kvrow * p.block_table_stride : nullptr;
  const int ps = paged ? static_cast<int>(p.page_size) : 1;
  const int64_t ks = p.k_stride[2], vs = p.v_stride[2];
  // Pointer step of one warp copy (RPI rows; see load_step).
  const int64_t kstep = (32 / CH) * ks, vstep = (32 / CH) * vs;
  T* myKV = KVs + warp * ST * 2 * KW * DP;
  // Warp step t -> stage t % ST; always commits (empty groups past the end)
  // so that the group count per step is fixed.
  auto load_step = [&](int t) {
    if (t < nst) {
      T* Kb = myKV + (t % ST) * 2 * KW * DP;
      T* Vb = Kb + KW * DP;
      // A warp instruction copies RPI whole rows (512 contiguous bytes
      // when rows are contiguous); per-lane pointers step by RPI rows.
      constexpr int RPI = 32 / CH;
      static_assert(32 % CH == 0 && KW % RPI == 0, "whole rows per warp copy");
      const int r = lane / CH, c = (lane % CH) * 8, j0 = (s_begin + warp + NW * t) * KW + r;
      if (KV && paged) {
        // Row j0 + y RPI is cache position kbeg + j0 + y RPI: row po of page
        // index pi, stepped without a division; the page's base offsets are
        // looked up once per page the lane enters (pages of any size >= 1).
        const int tok = kbeg + j0;
        int pi = tok / ps, po = tok - pi * ps, seen = -1;
        int64_t pk = 0, pv = 0;
#pragma unroll
        for (int y = 0; y < KW / RPI; ++y) {
          const bool ok = j0 + y * RPI < e.sk;  // keys past the end: zeros
          if (ok && pi != seen) {
            const int64_t page = pages[pi];
            pk = page * p.k_stride[0] + hk * p.k_stride[1];
            pv = page * p.v_stride[0] + hk * p.v_stride[1];
            seen = pi;
          }
          cp_async16(Kb + kv_off<DP>(r + y * RPI, c), ok ? kg + pk + po * ks + c : kg, ok);
          cp_async16(Vb + kv_off<DP>(r + y * RPI, c), ok ? vg + pv + po * vs + c : vg, ok);
          po += RPI;
          while (po >= ps) {
            po -= ps;
            ++pi;
          }
        }
      } else {
        const T* ksrc = kg + j0 * ks + c;
        const T* vsrc = vg + j0 * vs + c;
#pragma unroll
        for (int y = 0; y < KW / RPI; ++y) {
          const bool ok = j0 + y * RPI < e.sk;  // keys past the end: zeros (finite V for P = 0)
          cp_async16(Kb + kv_off<DP>(r + y * RPI, c), ok ? ksrc : kg, ok);
          cp_async16(Vb + kv_off<DP>(r + y * RPI, c), ok ? vsrc : vg, ok);
          ksrc += kstep;
          vsrc += vstep;
        }
      }
    }
    cp_async_commit();
  };
#pragma unroll
  for (int t = 0; t < ST - 1; ++t) load_step(t);
  cp_async_wait<ST - 1>();  // the Q group is the oldest
  __syncthreads();
  uint32_t qa[DP / 16][4];
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk) load_a<DP>(qa[kk], Qs, 0, kk * 16, lane);

  // Rows of this thread: g = lane / 4 and g + 8 of the fragment.
  int rlo[2], rhi[2];
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    const int r = r0 + lane / 4 + 8 * x;
    rlo[x] = 1;
    rhi[x] = 0;
    if (r < rend) {
      const KeyRange kr = visible_keys(r / G, e.sq, e.sk, p.window_left, p.window_right,
                                       p.bottom_right);
      rlo[x] = static_cast<int>(kr.lo);
      rhi[x] = static_cast<int>(kr.hi);
    }
  }
  const float sl2 = p.scale * kLog2e;
  float mrow[2] = {neg_inf(), neg_inf()}, lrow[2] = {0.0f, 0.0f};
  float oacc[DP / 8][4];
#pragma unroll
  for (int n = 0; n < DP / 8; ++n) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.0f;

  for (int t = 0; t < nst; ++t) {
    cp_async_wait<ST - 2>();
    __syncwarp();  // every lane's copies of step t landed; stage (t-1) % ST is free
    load_step(t + ST - 1);
    const T* Kb = myKV + (t % ST) * 2 * KW * DP;
    const T* Vb = Kb + KW * DP;
    const int j0 = (s_begin + warp + NW * t) * KW;

    float s[KW / 8][4];
#pragma unroll
    for (int n = 0; n < KW / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk)
#pragma unroll
      for (int n = 0; n < KW / 8; n += 2) {
        uint32_t bf[4];
        // K as the B operand (load_b_rows_n's addressing, swizzled).
        ldsm_x4(bf, Kb + kv_off<DP>(n * 8 + (lane % 8) + (lane / 16) * 8,
                                    kk * 16 + ((lane / 8) % 2) * 8));
        mma16816<T>(s[n], qa[kk], bf[0], bf[1]);
        mma16816<T>(s[n + 1], qa[kk], bf[2], bf[3]);
      }

    // Scores in the log2 domain; chunks inside every row's band skip the test.
    const bool inner = j0 >= band_lo_max && j0 + KW - 1 <= band_hi_min;
    float mx[2] = {neg_inf(), neg_inf()};
#pragma unroll
    for (int n = 0; n < KW / 8; ++n)
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int r = x / 2, j = j0 + n * 8 + 2 * (lane % 4) + (x % 2);
        const float v = (inner || (j >= rlo[r] && j <= rhi[r])) ? s[n][x] * sl2 : neg_inf();
        s[n][x] = v;
        mx[r] = fmaxf(mx[r], v);
      }
    float muse[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mnew = fmaxf(mrow[r], mx[r]);
      muse[r] = mnew == neg_inf() ? 0.0f : mnew;
      const float alpha = exp2f(mrow[r] - muse[r]);
      mrow[r] = mnew;
      lrow[r] *= alpha;
#pragma unroll
      for (int n = 0; n < DP / 8; ++n) {
        oacc[n][2 * r] *= alpha;
        oacc[n][2 * r + 1] *= alpha;
      }
    }
#pragma unroll
    for (int n = 0; n < KW / 8; ++n)
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const float pr = exp2f(s[n][x] - muse[x / 2]);
        lrow[x / 2] += pr;
        s[n][x] = pr;
      }
    // O += P V, P rounded to T (as the other tensor-core kernels).
#pragma unroll
    for (int kk = 0; kk < KW / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int n = 0; n < DP / 8; n += 2) {
        uint32_t bf[4];
        // V as the B operand, transposed (load_b_rows_k's addressing, swizzled).
        ldsm_x4_t(bf, Vb + kv_off<DP>(kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8,
                                      n * 8 + (lane / 16) * 8));
        mma16816<T>(oacc[n], a, bf[0], bf[1]);
        mma16816<T>(oacc[n + 1], a, bf[2], bf[3]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with its stages: reuse them

  // Combine the warps: O_w, m_w, l_w per row -> the CTA's (m, l, O).
  constexpr int OP = DP + 4;  // float pitch of the scratch rows
  float* Ow = reinterpret_cast<float*>(KVs);
  float* Mw = Ow + NW * kRows * OP;
  float* Lw = Mw + NW * kRows;
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    const int row = lane / 4 + 8 * x;
    float l = lrow[x];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (lane % 4 == 0) {
      Mw[warp * kRows + row] = mrow[x];
      Lw[warp * kRows + row] = l;
    }
    float* o = Ow + (warp * kRows + row) * OP + 2 * (lane % 4);
#pragma unroll
    for (int n = 0; n < DP / 8; ++n)
      *reinterpret_cast<float2*>(o + n * 8) = make_float2(oacc[n][2 * x], oacc[n][2 * x + 1]);
  }
  __syncthreads();

  const int64_t rows_total = p.total_q * p.heads_q;
  for (int x = threadIdx.x; x < kRows * DP; x += NT) {
    const int row = x / DP, d = x % DP, r = r0 + row;
    if (r >= rend) break;  // rows are in order: the rest are past the group too
    float m = neg_inf();
#pragma unroll
    for (int w = 0; w < NW; ++w) m = fmaxf(m, Mw[w * kRows + row]);
    // Merged also when every warp's max is -inf: a warp whose scores were
    // all NaN has max -inf (fmaxf skips NaN) but l NaN, which must reach the
    // row (f = 0 there, and 0 * NaN is NaN). A row that attended nothing
    // ends with l == 0: out 0, lse -inf; a NaN l gives NaN out and lse.
    const float muse = m == neg_inf() ? 0.0f : m;
    float l = 0.0f, o = 0.0f;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      const float f = exp2f(Mw[w * kRows + row] - muse);
      l += f * Lw[w * kRows + row];
      o += f * Ow[(w * kRows + row) * OP + d];
    }
    const bool empty = l == 0.0f;
    const float inv = empty ? 0.0f : 1.0f / l;
    const float lse = empty ? neg_inf() : (m + log2f(l)) * kLn2;
    o = empty ? 0.0f : o;
    const int i = r / G;
    const int64_t h = hk * G + r % G;
    if (nsplit == 1) {
      static_cast<T*>(p.out)[off4(p.out_stride, b, h, e.q_begin + i, d)] = from_f<T>(o * inv);
      if (p.lse && d == 0)
        p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + (e.q_begin + i) * p.lse_stride[2]] = lse;
    } else {
      // splitkv_merge reads O only where lse is finite.
      const int64_t prow = split * rows_total + q_token(p, b, e, i) * p.heads_q + h;
      opart[prow * DP + d] = o * inv;
      if (d == 0) lsepart[prow] = lse;
    }
  }
}

template <typename T, int DP, bool KV> cudaError_t set_smem() {
  return allow_dynamic_smem(decode_kernel<T, DP, KV>, int(decode_smem<T, DP>()));
}

int groups_of(const AttnParams& p) {
  const int64_t rows = p.seqlen_q * (p.heads_q / p.heads_k);
  return static_cast<int>((rows + kRows - 1) / kRows);
}

template <typename T, int DP> int decode_splits_t(const AttnParams& p, int sms) {
  using C = DecodeConfig<DP>;
  // Keys a group can see (a window bounds it).
  int64_t span = p.seqlen_k;
  if (p.window_left >= 0 && p.window_right >= 0) {
    const int64_t w = p.window_left + p.window_right + p.seqlen_q;
    if (w < span) span = w;
  }
  const int64_t step = int64_t(C::kWarps) * C::kKeys;
  const int64_t units = (span + step - 1) / step;  // CTA steps of one (b, hk, group)
  const int64_t base = p.batch * p.heads_k * groups_of(p), slots = int64_t(sms) * kSlotsPerSm;
  // Wave model: time ~ waves * (steps per CTA + fixed cost); the fewest
  // splits among the cheapest.
  int best = 1;
  double best_cost = 1e300;
  const int64_t nmax = units < kMaxSplits ? units : kMaxSplits;
  for (int64_t n = 1; n <= nmax; ++n) {
    const int64_t waves = (base * n + slots - 1) / slots;
    const double cost = double(waves) * (double((units + n - 1) / n) + kCtaOverheadUnits);
    if (cost < best_cost * 0.999) {
      best_cost = cost;
      best = static_cast<int>(n);
    }
  }
  // Keep the fp32 partials under 1 GiB.
  while (best > 1 && int64_t(best) * p.total_q * p.heads_q * DP * 4 > (int64_t(1) << 30)) best /= 2;
  return best;
}

template <typename T, int DP, bool KV>
cudaError_t decode_launch_t(const AttnParams& p, int nsplit, float* opart, float* lsepart,
                            cudaStream_t s) {
  using C = DecodeConfig<DP>;
  const cudaError_t err = set_smem<T, DP, KV>();
  if (err != cudaSuccess) return err;
  const int ng = groups_of(p);
  const dim3 grid(static_cast<unsigned>(ng * nsplit), static_cast<unsigned>(p.heads_k),
                  static_cast<unsigned>(p.batch));
  decode_kernel<T, DP, KV><<<grid, C::kWarps * 32, decode_smem<T, DP>(), s>>>(p, ng, nsplit,
                                                                              opart, lsepart);
  return cudaGetLastError();
}

template <typename T, int DP>
cudaError_t decode_launch(const AttnParams& p, int nsplit, float* opart, float* lsepart,
                          cudaStream_t s) {
  return uses_kv_cache(p) ? decode_launch_t<T, DP, true>(p, nsplit, opart, lsepart, s)
                          : decode_launch_t<T, DP, false>(p, nsplit, opart, lsepart, s);
}

}  // namespace

const char* decode_scope(const AttnParams& p) {
  if (p.dtype != DType::f16 && p.dtype != DType::bf16) return "dtype not fp16/bf16";
  if (p.head_dim != p.head_dim_v || (p.head_dim != 64 && p.head_dim != 128))
    return "D != Dv or D not in {64, 128}";
  if (p.mask_kind != MaskKind::none || p.alibi != nullptr || p.softcap > 0.0f ||
      p.dropout_p > 0.0f)
    return "mask, ALiBi, softcap or dropout";
  if (p.sparse) return "block-sparse mask (read by the sm80 and simt kernels)";
  if (p.seqlen_q > kMaxSq) return "more than 16 query rows per head";
  if (p.seqlen_q * (p.heads_q / p.heads_k) > kMaxRows)
    return "more than 64 query rows per GQA group";
  if (p.batch > 65535 || p.heads_k > 65535) return "batch or kv heads past 65535";  // grid z, y
  if (!(rows16(p.q, p.q_stride) && rows16(p.k, p.k_stride) && rows16(p.v, p.v_stride)))
    return "q/k/v rows not 16-byte loadable";
  return nullptr;
}

int decode_splits(const AttnParams& p, int sms) {
  const bool f16 = p.dtype == DType::f16;
  if (p.head_dim == 64)
    return f16 ? decode_splits_t<__half, 64>(p, sms) : decode_splits_t<__nv_bfloat16, 64>(p, sms);
  return f16 ? decode_splits_t<__half, 128>(p, sms) : decode_splits_t<__nv_bfloat16, 128>(p, sms);
}

cudaError_t decode_fwd(const AttnParams& p, int nsplit, float* opart, float* lsepart,
                       cudaStream_t s) {
  const bool f16 = p.dtype == DType::f16;
  if (p.head_dim == 64)
    return f16 ? decode_launch<__half, 64>(p, nsplit, opart, lsepart, s)
               : decode_launch<__nv_bfloat16, 64>(p, nsplit, opart, lsepart, s);
  return f16 ? decode_launch<__half, 128>(p, nsplit, opart, lsepart, s)
             : decode_launch<__nv_bfloat16, 128>(p, nsplit, opart, lsepart, s);
}

}  // namespace cuda
}  // namespace fsdpa
