// The fp64 reference: a direct, unfused statement of the semantics in
// flashsdpa.h. Every backend's tests compare against it. Materialises one
// (Sq x Sk) score matrix per (batch, head): for tests only.
#include "core/reference.h"

#include <math.h>

#include <limits>
#include <vector>

#include "core/block_sparse.h"
#include "core/dtype.h"
#include "core/host_view.h"

namespace fsdpa {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Scores of one (b, h) after every bias and mask, before softmax.
// Also returns the pre-mask softcapped values' tanh for the backward.
struct HeadScores {
  int64_t sq, sk;
  std::vector<double> s;       // final scores (-inf = masked)
  std::vector<double> capped;  // tanh(x / softcap) where softcap > 0
  std::vector<uint8_t> masked;  // final score -inf: the key is not attended
  bool attended(int64_t i, int64_t j) const { return !masked[i * sk + j]; }
};

void head_scores(const AttnParams& p, int64_t b, int64_t h, const SeqExtent& e,
                 HeadScores* hs) {
  const int64_t hk = kv_head(p, h);
  const int64_t off = diag_offset(p.bottom_right, e.sq, e.sk);
  const float slope = alibi_slope(p, b, h);
  hs->sq = e.sq;
  hs->sk = e.sk;
  hs->s.assign(e.sq * e.sk, kNegInf);
  hs->capped.assign(p.softcap > 0 ? e.sq * e.sk : 0, 0.0);
  std::vector<int32_t> block_state(p.sparse ? p.sparse_k_blocks : 0);
  for (int64_t i = 0; i < e.sq; ++i) {
    const KeyRange r = row_keys(p, e, i);
    const int64_t qb = p.sparse ? i / p.sparse_block_q : 0;
    if (p.sparse) sparse_row_states(p, b, h, qb, block_state.data());
    for (int64_t j = r.lo; j <= r.hi; ++j) {
      // A key the block lists hide is masked like a false bool mask.
      if (p.sparse && !sparse_element_visible(p, b, h, qb, block_state[j / p.sparse_block_k], i, j))
        continue;
      double dot = 0;
      for (int64_t d = 0; d < p.head_dim; ++d)
        dot += load_as_double(p.q, offset4(p.q_stride, b, h, e.q_begin + i, d), p.dtype) *
               load_as_double(p.k, kv_offset(p, p.k_stride, b, hk, e.k_begin + j, d), p.dtype);
      double s = double(p.scale) * dot;
      if (p.softcap > 0) {
        const double t = tanh(s / p.softcap);
        hs->capped[i * e.sk + j] = t;
        s = p.softcap * t;
      }
      if (p.alibi) s += alibi_bias(slope, i, j, off);
      if (p.mask_kind != MaskKind::none) {
        const double m = load_as_double(p.mask, offset4(p.mask_stride, b, h, i, j), p.mask_dtype);
        if (p.mask_kind == MaskKind::boolean) {
          if (m == 0.0) s = kNegInf;
        } else {
          s = add_mask_value(s, m);
        }
      }
      hs->s[i * e.sk + j] = s;
    }
  }
}

// Softmax in place; returns lse. A row whose scores are all -inf (nothing
// attended) becomes all-zero with lse -inf; a row with a NaN or +inf score
// becomes all-NaN with lse NaN (as softmax does in PyTorch).
void softmax_rows(HeadScores* hs, std::vector<double>* lse) {
  lse->assign(hs->sq, kNegInf);
  hs->masked.resize(hs->s.size());
  for (size_t t = 0; t < hs->s.size(); ++t) hs->masked[t] = hs->s[t] == kNegInf;
  for (int64_t i = 0; i < hs->sq; ++i) {
    double* row = hs->s.data() + i * hs->sk;  // sk may be 0 (no keys): no element to bind
    double mx = kNegInf;
    bool nan = false;
    for (int64_t j = 0; j < hs->sk; ++j) {
      nan |= isnan(row[j]) || row[j] == INFINITY;
      mx = fmax(mx, row[j]);
    }
    if (nan) {
      for (int64_t j = 0; j < hs->sk; ++j) row[j] = NAN;
      (*lse)[i] = NAN;
      continue;
    }
    if (mx == kNegInf) {
      for (int64_t j = 0; j < hs->sk; ++j) row[j] = 0;
      continue;
    }
    double sum = 0;
    for (int64_t j = 0; j < hs->sk; ++j) sum += exp(row[j] - mx);
    for (int64_t j = 0; j < hs->sk; ++j) row[j] = exp(row[j] - mx) / sum;
    (*lse)[i] = mx + log(sum);
  }
}

// Dropout multiplier of (b, h, i, j): 0 or 1 / (1 - p).
double dropout_factor(const AttnParams& p, int64_t b, int64_t h, int64_t i, int64_t j,
                      uint32_t threshold) {
  if (p.dropout_p <= 0) return 1.0;
  const uint32_t row = dropout_row_id(b, h, i, p.heads_q, p.seqlen_q);
  return dropout_keep(p.seed, p.offset, row, j, threshold) ? 1.0 / (1.0 - double(p.dropout_p))
                                                           : 0.0;
}


// Varlen query tokens after the last sequence belong to no row: they get
// out = 0 and lse = -inf (forward) and dq = 0 (backward).
int64_t first_uncovered_q(const AttnParams& p) {
  return p.cu_seqlens_q ? p.cu_seqlens_q[p.batch] : p.total_q;
}

}  // namespace

void reference_forward(const AttnParams& p) {
  const uint32_t thr = dropout_threshold(p.dropout_p);
  for (int64_t h = 0; h < p.heads_q; ++h)
    for (int64_t tok = first_uncovered_q(p); tok < p.total_q; ++tok) {
      for (int64_t d = 0; d < p.head_dim_v; ++d)
        store_from_double(p.out, offset4(p.out_stride, 0, h, tok, d), p.out_dtype, 0.0);
      if (p.lse) p.lse[lse_offset(p, 0, h, tok)] = static_cast<float>(kNegInf);
    }
  HeadScores hs;
  std::vector<double> lse;
  for (int64_t b = 0; b < p.batch; ++b) {
    const SeqExtent e = seq_extent(p, b);
    for (int64_t h = 0; h < p.heads_q; ++h) {
      const int64_t hk = kv_head(p, h);
      head_scores(p, b, h, e, &hs);
      softmax_rows(&hs, &lse);
      for (int64_t i = 0; i < e.sq; ++i) {
        for (int64_t d = 0; d < p.head_dim_v; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < e.sk; ++j) {
            if (!hs.attended(i, j)) continue;  // V of a masked key is not read
            const double pij = hs.s[i * e.sk + j];
            acc += pij * dropout_factor(p, b, h, i, j, thr) *
                   load_as_double(p.v, kv_offset(p, p.v_stride, b, hk, e.k_begin + j, d), p.dtype);
          }
          store_from_double(p.out, offset4(p.out_stride, b, h, e.q_begin + i, d), p.out_dtype,
                            acc);
        }
        if (p.lse) p.lse[lse_offset(p, b, h, e.q_begin + i)] = static_cast<float>(lse[i]);
      }
    }
  }
}

void reference_backward(const AttnParams& p) {
  const DType grad_dtype = p.out_dtype;
  for (int64_t h = 0; h < p.heads_q; ++h)
    for (int64_t tok = first_uncovered_q(p); tok < p.total_q; ++tok)
      for (int64_t d = 0; d < p.head_dim; ++d)
        store_from_double(p.dq, offset4(p.dq_stride, 0, h, tok, d), grad_dtype, 0.0);
  const uint32_t thr = dropout_threshold(p.dropout_p);
  // dk/dv accumulate over the query heads of a group: zero them first.
  std::vector<double> dk(p.total_k * p.heads_k * p.head_dim, 0.0);
  std::vector<double> dv(p.total_k * p.heads_k * p.head_dim_v, 0.0);
  auto kv_index = [&](int64_t b, int64_t hk, int64_t tok, int64_t d, int64_t dim) {
    const int64_t t = p.cu_seqlens_q ? tok : b * p.seqlen_k + tok;
    return (t * p.heads_k + hk) * dim + d;
  };
  HeadScores hs;
  std::vector<double> lse, dp, dsum;
  for (int64_t b = 0; b < p.batch; ++b) {
    const SeqExtent e = seq_extent(p, b);
    for (int64_t h = 0; h < p.heads_q; ++h) {
      const int64_t hk = kv_head(p, h);
      head_scores(p, b, h, e, &hs);
      softmax_rows(&hs, &lse);
      auto dout = [&](int64_t i, int64_t d) {
        return load_as_double(p.dout, offset4(p.dout_stride, b, h, e.q_begin + i, d), p.dout_dtype);
      };
      auto vv = [&](int64_t j, int64_t d) {
        return load_as_double(p.v, kv_offset(p, p.v_stride, b, hk, e.k_begin + j, d), p.dtype);
      };
      // dP_ij = (dO_i . V_j) * Z_ij ; D_i = sum_j P_ij dP_ij ; dV_j += P_ij Z_ij dO_i
      dp.assign(e.sq * e.sk, 0.0);
      dsum.assign(e.sq, 0.0);
      for (int64_t i = 0; i < e.sq; ++i) {
        for (int64_t j = 0; j < e.sk; ++j) {
          if (!hs.attended(i, j)) continue;
          const double pij = hs.s[i * e.sk + j];
          const double z = dropout_factor(p, b, h, i, j, thr);
          double dot = 0;
          for (int64_t d = 0; d < p.head_dim_v; ++d) dot += dout(i, d) * vv(j, d);
          dp[i * e.sk + j] = dot * z;
          dsum[i] += pij * dot * z;
          if (z != 0)
            for (int64_t d = 0; d < p.head_dim_v; ++d)
              dv[kv_index(b, hk, e.k_begin + j, d, p.head_dim_v)] += pij * z * dout(i, d);
        }
      }
      // dS = P (dP - D); through softcap: dX = dS (1 - tanh^2); dQ, dK.
      for (int64_t i = 0; i < e.sq; ++i) {
        std::vector<double> dqi(p.head_dim, 0.0);
        for (int64_t j = 0; j < e.sk; ++j) {
          if (!hs.attended(i, j)) continue;
          const double pij = hs.s[i * e.sk + j];
          double ds = pij * (dp[i * e.sk + j] - dsum[i]);
          if (p.softcap > 0) {
            const double t = hs.capped[i * e.sk + j];
            ds *= 1.0 - t * t;
          }
          ds *= p.scale;
          for (int64_t d = 0; d < p.head_dim; ++d) {
            dqi[d] += ds * load_as_double(p.k, kv_offset(p, p.k_stride, b, hk, e.k_begin + j, d),
                                          p.dtype);
            dk[kv_index(b, hk, e.k_begin + j, d, p.head_dim)] +=
                ds * load_as_double(p.q, offset4(p.q_stride, b, h, e.q_begin + i, d), p.dtype);
          }
        }
        for (int64_t d = 0; d < p.head_dim; ++d)
          store_from_double(p.dq, offset4(p.dq_stride, b, h, e.q_begin + i, d), grad_dtype,
                            dqi[d]);
      }
    }
  }
  // Write dk/dv, including zero rows for tokens no sequence covers.
  for (int64_t b = 0; b < (p.cu_seqlens_q ? 1 : p.batch); ++b) {
    const int64_t ntok = p.cu_seqlens_q ? p.total_k : p.seqlen_k;
    for (int64_t hk = 0; hk < p.heads_k; ++hk)
      for (int64_t t = 0; t < ntok; ++t) {
        for (int64_t d = 0; d < p.head_dim; ++d)
          store_from_double(p.dk, offset4(p.dk_stride, b, hk, t, d), grad_dtype,
                            dk[kv_index(b, hk, t, d, p.head_dim)]);
        for (int64_t d = 0; d < p.head_dim_v; ++d)
          store_from_double(p.dv, offset4(p.dv_stride, b, hk, t, d), grad_dtype,
                            dv[kv_index(b, hk, t, d, p.head_dim_v)]);
      }
  }
}

void reference_dropout_mask(const AttnParams& p) {
  const uint32_t thr = dropout_threshold(p.dropout_p);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h)
      for (int64_t i = 0; i < p.seqlen_q; ++i)
        for (int64_t j = 0; j < p.seqlen_k; ++j)
          static_cast<uint8_t*>(p.out)[offset4(p.out_stride, b, h, i, j)] =
              p.dropout_p <= 0 ||
              dropout_keep(p.seed, p.offset, dropout_row_id(b, h, i, p.heads_q, p.seqlen_q), j,
                           thr);
}

}  // namespace fsdpa
