// fsdpa_merge_attn_states on the CPU: one pass over the rows, each row's
// two lse values giving the weights of its two partial outputs.
#include <math.h>

#include <algorithm>

#include "core/dtype.h"
#include "core/error.h"
#include "cpu/cpu_backend.h"
#include "cpu/thread_pool.h"

namespace fsdpa::cpu {
namespace {

constexpr int64_t kRowsPerTask = 256;

// NaN or +inf has no meaning as a log-sum-exp (-inf is an empty part).
fsdpa_status check_lse(const MergeParams& m, const float* lse, const int64_t* st,
                       const char* name) {
  const int64_t rows = m.shape[0] * m.shape[1] * m.shape[2];
  for (int64_t r = 0; r < rows; ++r) {
    const MergeRow x = merge_row(m, r);
    const float v = lse[merge_offset(st, x)];
    if (isnan(v) || v == INFINITY)
      return set_error(FSDPA_ERROR_INVALID_ARGUMENT,
                       "%s: entry [%lld, %lld, %lld] is %s; a log-sum-exp is finite or -inf",
                       name, (long long)x.i[0], (long long)x.i[1], (long long)x.i[2],
                       isnan(v) ? "NaN" : "+inf");
  }
  return FSDPA_OK;
}

void merge_row_values(const MergeParams& m, int64_t r) {
  const MergeRow x = merge_row(m, r);
  const float la = m.lse_a[merge_offset(m.lse_a_stride, x)];
  const float lb = m.lse_b[merge_offset(m.lse_b_stride, x)];
  const float mx = std::max(la, lb);
  const int64_t oa = merge_offset(m.out_a_stride, x), ob = merge_offset(m.out_b_stride, x);
  const int64_t o = merge_offset(m.out_stride, x);
  if (mx == -INFINITY) {  // both parts empty
    for (int64_t d = 0; d < m.dim; ++d) store_from_double(m.out, o + d * m.out_stride[3], m.dtype, 0.0);
    m.lse[merge_offset(m.lse_stride, x)] = -INFINITY;
    return;
  }
  // exp(-inf) = 0: an empty part gets weight 0 and its values (whatever
  // they are) are not read.
  const float wa = expf(la - mx), wb = expf(lb - mx), sum = wa + wb;
  const float ca = wa / sum, cb = wb / sum;
  for (int64_t d = 0; d < m.dim; ++d) {
    float acc = 0.0f;
    if (ca != 0.0f)
      acc += ca * static_cast<float>(load_as_double(m.out_a, oa + d * m.out_a_stride[3], m.dtype));
    if (cb != 0.0f)
      acc += cb * static_cast<float>(load_as_double(m.out_b, ob + d * m.out_b_stride[3], m.dtype));
    store_from_double(m.out, o + d * m.out_stride[3], m.dtype, acc);
  }
  m.lse[merge_offset(m.lse_stride, x)] = mx + logf(sum);
}

}  // namespace

fsdpa_status merge(const MergeParams& m) {
  if (fsdpa_status s = check_lse(m, m.lse_a, m.lse_a_stride, "lse_a"); s != FSDPA_OK) return s;
  if (fsdpa_status s = check_lse(m, m.lse_b, m.lse_b_stride, "lse_b"); s != FSDPA_OK) return s;
  const int64_t rows = m.shape[0] * m.shape[1] * m.shape[2];
  parallel_for((rows + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t task) {
    const int64_t end = std::min(rows, (task + 1) * kRowsPerTask);
    for (int64_t r = task * kRowsPerTask; r < end; ++r) merge_row_values(m, r);
  });
  return FSDPA_OK;
}

}  // namespace fsdpa::cpu
